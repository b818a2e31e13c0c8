"""common/search.py: the seeded Latin-hypercube search, the same budget for every arm, and the choice of each
arm's setting on validation rows only."""
import math
import os

import pytest

from common import search
from common.results import write_csv


def test_every_range_is_cut_into_as_many_strata_as_trials_and_each_is_used_once():
    for arm, (_, fixed, names) in search.ARMS.items():
        trials = search.draw(arm, 8, 0)
        assert len(trials) == 8 and all(t.items() >= fixed.items() for t in trials)
        for name in names:
            low, high, scale = search.RANGES[name]
            units = [(math.log(t[name] / low) / math.log(high / low)) if scale == "log" else (t[name] - low) / (high - low)
                     for t in trials]
            assert sorted(min(int(u * 8), 7) for u in units) == list(range(8)), (arm, name)  # one per stratum


def test_the_draw_is_seeded_per_arm_and_the_plan_interleaves_arms():
    assert search.draw("arcface", 8, 0) == search.draw("arcface", 8, 0) != search.draw("arcface", 8, 1)
    assert search.draw("cosface", 8, 0) == search.draw("cosface", 8, 0)
    plan = search.plan(list(search.TRIAL_ARMS), 2, 0)
    assert [line.split()[1] for line in plan] == ["softmax", "arcface", "arcface", "cosface"] * 2
    assert "--m2 0" in plan[1] and "--label-smoothing" in plan[0]  # normalised softmax: ArcFace without margin


def row(loss, acc, val=50, **settings):
    return {"loss": loss, "s": settings.get("s", ""), "m1": 1 if loss != "softmax" else "", "m2": settings.get("m2", ""),
            "m3": settings.get("m3", ""), "lr": settings.get("lr", 0.1), "label_smoothing": settings.get("ls", 0.0),
            "seed": 0, "test_acc": acc, "val_per_class": val, "imbalance": 1.0, "holdout_classes": 0,
            "corruptions": False, "run_id": f"{loss}-{acc}"}


def test_each_arm_keeps_its_best_validation_trial_and_test_rows_are_refused(tmp_path, capsys):
    rows = [row("softmax", 0.40, lr=0.05, ls=0.1), row("softmax", 0.42, lr=0.1, ls=0.0),
            row("arcface", 0.41, s=16, m2=0.0, lr=0.1), row("arcface", 0.43, s=20, m2=0.3, lr=0.2),
            row("arcface", 0.39, s=30, m2=0.5, lr=0.1), row("cosface", 0.38, s=30, m3=0.35, lr=0.1)]
    assert search.arm_of(rows[2]) == "normsoftmax" and search.arm_of(rows[3]) == "arcface"
    best = search.chosen(rows)
    assert {arm: r["test_acc"] for arm, r in best.items()} == {"softmax": 0.42, "normsoftmax": 0.41, "arcface": 0.43,
                                                               "cosface": 0.38}
    assert search.choice_flags("arcface", best["arcface"]) == "--losses arcface --s 20 --m2 0.3 --lr 0.2"
    path = tmp_path / "t.csv"
    write_csv(str(path), rows)
    search.main(["--pick", str(path), "--figure", str(tmp_path / "t.png")])
    out = capsys.readouterr().out
    assert "arcface: 2 trials, chosen 43.00%: --losses arcface --s 20 --m2 0.3 --lr 0.2" in out
    assert os.path.getsize(tmp_path / "t.png") > 0
    write_csv(str(path), [row("softmax", 0.5, val=0)])  # scored the test set
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--pick", str(path)])
    assert exit_info.value.code == 2 and "validation data only" in capsys.readouterr().err


def test_the_default_draw_is_the_four_trial_arms_and_triplet_is_searched_apart(tmp_path, capsys):
    search.main(["--trials", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert lines == search.plan(list(search.TRIAL_ARMS), 2, 0) and not any("triplet" in line for line in lines)
    search.main(["--arms", "triplet", "--trials", "4"])
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and all(line.startswith("--losses triplet --lr ") for line in lines)
    lrs = sorted(float(line.split()[3]) for line in lines)  # one per quarter of log(lr)'s range
    low, high, _ = search.RANGES["lr"]
    assert [int(4 * math.log(lr / low) / math.log(high / low)) for lr in lrs] == [0, 1, 2, 3]
    path = tmp_path / "triplet.csv"
    semihard = {"triplet_mining": "semihard"}
    write_csv(str(path), [row("triplet", 0.30, lr=0.05) | semihard, row("triplet", 0.35, lr=0.2) | semihard])
    search.main(["--pick", str(path), "--figure", str(tmp_path / "triplet.png")])
    assert "triplet: 2 trials, chosen 35.00%: --losses triplet --lr 0.2 --triplet-mining semihard" in capsys.readouterr().out


def test_triplet_arm_mines_semihard_and_leaves_batch_hard_rows_out():
    assert all(line.endswith("--triplet-mining semihard") for line in search.plan(["triplet"], 4, 0))
    hard = {**row("triplet", 0.02, lr=0.134), "triplet_mining": ""}  # batch-hard: empty, as rows before the setting
    semi = {**row("triplet", 0.30, lr=0.0755), "triplet_mining": "semihard"}
    assert search.arm_of(hard) is None and search.arm_of(semi) == "triplet"
    assert search.chosen([hard, semi]) == {"triplet": semi}
    assert search.choice_flags("triplet", semi) == "--losses triplet --lr 0.0755 --triplet-mining semihard"


def test_pick_without_a_trial_of_any_arm_says_so_and_exits_2(tmp_path, capsys):
    path = tmp_path / "hard.csv"
    write_csv(str(path), [{**row("triplet", 0.02, lr=0.134), "triplet_mining": ""}])  # batch-hard only
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--pick", str(path), "--figure", str(tmp_path / "t.png")])
    assert exit_info.value.code == 2 and "no finished trial of an arm" in capsys.readouterr().err
    assert not (tmp_path / "t.png").exists()


def test_the_trial_figure_draws_each_arm_against_softmax_and_refuses_what_it_cannot_draw(tmp_path, capsys):
    runs = [row("softmax", 0.40 + 0.002 * k, val=0, lr=0.07, ls=0.1) | {"seed": k, "map_at_r": 0.05} for k in range(5)]
    runs += [row("arcface", 0.41 + 0.002 * k, val=0, s=16, m2=0.0, m3=0.0, lr=0.07) | {"seed": k, "map_at_r": 0.04}
             for k in range(5)]
    one = row("cosface", 0.43, val=0, s=15, m2=0.0, m3=0.2, lr=0.09) | {"map_at_r": 0.06}  # one run: no interval
    path, figure = tmp_path / "trial.csv", tmp_path / "trial.png"
    write_csv(str(path), runs + [one])
    search.main(["--trial", str(path), "--figure", str(figure)])
    assert capsys.readouterr().out == f"wrote {figure}\n" and os.path.getsize(figure) > 0
    for argv, message in ((["--trial", str(path)], "--trial: needs --figure PNG"),
                          (["--figure", str(figure)], "--figure: needs --pick or --trial"),
                          (["--trial", str(path), "--pick", str(path), "--figure", str(figure)], "not both"),
                          (["--trial", str(tmp_path / "none.csv"), "--figure", str(figure)], "no such file")):
        with pytest.raises(SystemExit) as exit_info:
            search.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    write_csv(str(path), runs[:5])  # softmax alone: nothing to set against it
    with pytest.raises(SystemExit) as exit_info:
        search.main(["--trial", str(path), "--figure", str(tmp_path / "alone.png")])
    assert exit_info.value.code == 2 and "only the softmax arm" in capsys.readouterr().err
    assert not (tmp_path / "alone.png").exists()
