"""sweep_margins.py: the Table 1 grid, shards, resume, divergence, workers, summary and regression."""
import multiprocessing
import os
import signal
import sys
import time

import pytest

import sweep_margins
from common import sweep_summary
from common.results import read_rows, write_csv

TINY = ["--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12", "--device", "cpu", "--no-amp"]

@pytest.mark.parametrize("count", [1, 3, 7])
def test_shards_are_disjoint_and_cover_the_grid(count):
    grid, seeds = sweep_summary.table1_grid(), [0, 1, 2]
    shards = [sweep_margins.jobs_for(grid, seeds, (i, count)) for i in range(count)]
    everything = [job for shard in shards for job in shard]
    assert len(everything) == len(set(everything)) == 120
    assert set(everything) == set(sweep_margins.jobs_for(grid, seeds, (0, 1)))

def test_custom_grid_with_reference_losses():
    args = sweep_margins.build_parser().parse_args(["--losses", "arcface", "softmax", "combined", "--m2", "0.3", "0.5"])
    grid = sweep_margins.custom_grid(args)
    assert grid == [("arcface", 30.0, 1.0, 0.3, 0.0), ("arcface", 30.0, 1.0, 0.5, 0.0), ("softmax", None, None, None, None),
                    ("combined", 30.0, 1.0, 0.3, 0.2), ("combined", 30.0, 1.0, 0.5, 0.2)]

def sweep(folder, out, *extra):
    return sweep_margins.main(["--losses", "arcface", "softmax", "--m2", "0.3", "0.5", "--seeds", "0", "1",
                               "--data-root", folder, "--out", str(out), *TINY, *extra])

def test_resume_after_interruption_reruns_nothing_that_finished(gray_folder, tmp_path, monkeypatch):
    out = tmp_path / "sweep.csv"
    real_run, calls = sweep_margins.train_mnist.run, []

    def run_then_interrupt(config):
        calls.append((config.loss, config.m2, config.seed))
        if len(calls) == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the fourth run
        return real_run(config)

    monkeypatch.setattr(sweep_margins.train_mnist, "run", run_then_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        sweep(gray_folder, out)
    assert exit_info.value.code == 130 and len(read_rows(str(out))) == 3
    finished = set(calls[:3])
    calls.clear()
    rows = sweep(gray_folder, out)
    assert len(calls) == 3 and not finished & set(calls)  # 6 jobs in all: only the 3 unfinished ran
    keys = [sweep_summary.row_key(r) for r in rows]
    assert len(keys) == len(set(keys)) == 6
    calls.clear()
    sweep(gray_folder, out)
    assert calls == []  # everything done: nothing reruns

def test_other_run_settings_are_not_taken_for_done(gray_folder, tmp_path):
    out = tmp_path / "sweep.csv"
    sweep_margins.main(["--m2", "0.5", "--data-root", gray_folder, "--out", str(out), *TINY])
    sweep_margins.main(["--m2", "0.5", "--data-root", gray_folder, "--out", str(out), *TINY, "--max-train-samples", "30"])
    assert len(read_rows(str(out))) == 2

def test_amp_and_device_are_part_of_a_runs_signature(gray_folder, tmp_path, capsys):
    """A row of the same setting and seed trained with --amp, or on another device, is not this run."""
    out = tmp_path / "sweep.csv"
    flags = ["--m2", "0.5", "--data-root", gray_folder, "--out", str(out), *TINY]
    sweep_margins.main(flags)
    (row,) = read_rows(str(out))
    assert row["amp"] == "False" and row["device"] == "cpu"
    capsys.readouterr()
    sweep_margins.main(flags + ["--dry-run"])
    assert "1 already in" in capsys.readouterr().out
    for changed in ({"amp": "True"}, {"device": "cuda"}, {"momentum": "0.5"}, {"train_subset": "stratified"}):
        write_csv(str(out), [{**row, **changed}])
        sweep_margins.main(flags + ["--dry-run"])
        assert "0 already in" in capsys.readouterr().out, changed
    older = {k: v for k, v in row.items() if k not in ("train_subset", "momentum", "warmup")}  # a row from before them
    write_csv(str(out), [older])
    sweep_margins.main(flags + ["--dry-run"])
    assert "1 already in" in capsys.readouterr().out

def test_diverged_run_is_recorded_as_diverged(gray_folder, tmp_path, monkeypatch):
    from common.training import DivergedError

    def diverge(config):
        raise DivergedError("loss became nan at epoch 1, step 2")

    monkeypatch.setattr(sweep_margins.train_mnist, "run", diverge)
    out = tmp_path / "sweep.csv"
    sweep_margins.main(["--m2", "0.5", "--seeds", "0", "1", "--data-root", gray_folder, "--out", str(out), *TINY])
    rows = read_rows(str(out))
    assert [r["diverged"] for r in rows] == ["1", "1"] and all("test_acc" not in r or r["test_acc"] == "" for r in rows)
    assert all(r["device"] == "cpu" for r in rows)  # part of the signature: a resumed sweep skips them
    summary = read_rows(str(tmp_path / "sweep_summary.csv"))
    assert summary[0]["diverged"] == "2" and summary[0]["runs"] == "0"

def test_workers_run_in_separate_processes(gray_folder, tmp_path):
    out = tmp_path / "sweep.csv"
    rows = sweep_margins.main(["--losses", "softmax", "arcface", "--seeds", "0", "--workers", "2",
                               "--data-root", gray_folder, "--out", str(out), *TINY])
    assert sorted(r["loss"] for r in rows) == ["arcface", "softmax"]


@pytest.mark.parametrize("flags,flag", [(["--losses", "hinge"], "--losses"), (["--m2", "4"], "--m2"),
                                        (["--workers", "0"], "--workers"), (["--shard", "2/2"], "--shard"),
                                        (["--epochs", "0"], "--epochs"), (["--summarize", "/nonexistent.csv"], "--summarize"),
                                        (["--group-size", "2", "--embedding-bn"], "--embedding-bn")])
def test_bad_flags_exit_2_with_one_line(flags, flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        sweep_margins.main(flags + ["--data-root", "/nonexistent"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and flag in err, err

def test_claims_preset_runs_every_loss_in_four_scenarios_and_resumes(four_class_folder, tmp_path, capsys):
    out = tmp_path / "claims.csv"
    flags = ["--preset", "claims", "--data-root", four_class_folder, "--out", str(out), *TINY, "--corruption-samples", "4"]
    sweep_margins.main([*flags, "--dry-run"])
    printed = capsys.readouterr().out
    assert "6 settings x 4 scenarios x 1 seeds" in printed and printed.count("seed=0") == 24
    assert printed.count("imbalance=100 holdout_classes=0 corruptions=False") == 6
    assert printed.count("imbalance=1 holdout_classes=2") == 6 and printed.count("corruptions=True") == 6
    rows = sweep_margins.main(flags)
    assert len(rows) == 24
    table = {r["loss"]: r for r in read_rows(str(tmp_path / "claims_comparison.csv"))}
    assert sorted(table) == sorted(sweep_margins.LOSSES)
    for line in table.values():
        for column, *_ in sweep_summary.COMPARISON:
            assert line[f"{column}_runs"] == "1", column
    markdown = (tmp_path / "claims_comparison.md").read_text()
    assert markdown.count("\n| ") == 6 and "open-set TAR@FAR=1e-3 %" in markdown
    assert sweep_margins.main(flags) and "0 to run" in capsys.readouterr().out  # resumed: nothing left

def test_group_jobs_chunks_margin_settings_of_one_scenario_and_seed():
    grid = [("softmax", None, None, None, None)] + sweep_summary.table1_grid()[:5]
    jobs = sweep_margins.jobs_for(grid, [0, 1], (0, 1))
    units = sweep_margins.group_jobs(jobs, 2)
    assert sorted(job for unit in units for job in unit) == sorted(jobs)  # every job exactly once
    assert all(len({(job[1], job[2]) for job in unit}) == 1 for unit in units)  # one scenario and seed per unit
    assert [len(u) for u in units if u[0][0][0] == "softmax"] == [1, 1]
    assert sorted(len(u) for u in units if u[0][0][0] == "arcface") == [1, 1, 2, 2, 2, 2]
    assert all(len(u) == 1 for u in sweep_margins.group_jobs(jobs, 1))

def test_grouped_sweep_writes_every_row_and_resumes(gray_folder, tmp_path):
    out = tmp_path / "sweep.csv"
    flags = ["--losses", "arcface", "cosface", "softmax", "--m2", "0.3", "0.5", "--seeds", "0", "--group-size", "3",
             "--data-root", gray_folder, "--out", str(out), *TINY]
    rows = sweep_margins.main(flags)
    assert len(rows) == 5
    # 4 margin settings of seed 0: one group of 3 and one left alone; softmax always alone
    assert sorted(str(r.get("group_size", "")) for r in rows) == ["", "", "3", "3", "3"]
    assert sweep_margins.main(flags + ["--dry-run"]) == [] and len(read_rows(str(out))) == 5

@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or sys.platform == "win32", reason="POSIX signals")
def test_sigterm_ends_the_workers_with_the_sweep():
    # The parent alone being killed used to leave its pool's workers running, orphaned, to the end of their runs.
    previous = signal.getsignal(signal.SIGTERM)
    context = multiprocessing.get_context("spawn")
    with pytest.raises(SystemExit):
        with sweep_margins.exit_on_sigterm(), context.Pool(2) as pool:
            workers = list(pool._pool)
            pool.map_async(time.sleep, [60, 60])
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(60)  # the handler raises long before this returns
    for worker in workers:
        worker.join(timeout=20)
        assert not worker.is_alive()
    assert signal.getsignal(signal.SIGTERM) is previous


def test_the_sweep_passes_on_every_training_flag_it_does_not_set_itself():
    from common.cli import build_parser

    own = {"--loss", "--s", "--m1", "--m2", "--m3", "--epochs", "--seed", "--threads", "--corruptions", "--out",
           "--checkpoint", "--resume", "--no-progress", "--no-download"}  # the sweep's own, or per-run files
    passed = set(sweep_margins.PASS_THROUGH) | set(sweep_margins.SWITCHES)
    for script in sweep_margins.SCRIPTS.values():
        parser = build_parser("t", script.DEFAULTS, "")
        flags = {a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}
        assert flags - own - passed == set()
        assert passed <= flags


def test_checkpoint_dir_resumes_an_interrupted_run_from_its_last_epoch(gray_folder, tmp_path, monkeypatch):
    flags = ["--m2", "0.5", "--seeds", "0", "--data-root", gray_folder, *TINY, "--epochs", "2"]
    plain = sweep_margins.main([*flags, "--out", str(tmp_path / "plain.csv")])
    out, ckdir = tmp_path / "sweep.csv", tmp_path / "ck"
    real_save, saves = sweep_margins.train_mnist.save_run, []

    def save_then_interrupt(*args):
        real_save(*args)
        saves.append(args[-1])
        raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(sweep_margins.train_mnist, "save_run", save_then_interrupt)
    with pytest.raises(SystemExit) as exit_info:
        sweep_margins.main([*flags, "--out", str(out), "--checkpoint-dir", str(ckdir)])
    assert exit_info.value.code == 130 and saves == [1] and not os.path.exists(out)
    (name,) = os.listdir(ckdir)
    assert name.startswith("arcface-s30-m11-m20.5-m30-imb1-held0-seed0-") and name.endswith(".pt")
    monkeypatch.setattr(sweep_margins.train_mnist, "save_run", real_save)
    calls, real_run = [], sweep_margins.train_mnist.run
    monkeypatch.setattr(sweep_margins.train_mnist, "run", lambda config: calls.append(config.resume) or real_run(config))
    (row,) = sweep_margins.main([*flags, "--out", str(out), "--checkpoint-dir", str(ckdir)])
    assert calls == [str(ckdir / name)]  # resumed, not started again
    assert row["test_acc"] == plain[0]["test_acc"]  # and bit for bit the uninterrupted run's result
    other = sweep_margins.config_for(sweep_margins.jobs_for([("arcface", 30.0, 1.0, 0.5, 0.0)], [0], (0, 1))[0],
                                     sweep_margins.base_config(sweep_margins.build_parser().parse_args(
                                         [*flags, "--lr", "0.01", "--out", str(out)])), 1, str(ckdir))
    assert other.resume is None and os.path.basename(other.checkpoint) != name  # other settings: another file


def test_checkpoint_dir_is_refused_with_grouped_training_or_when_it_is_a_file(gray_folder, tmp_path, capsys):
    flags = ["--m2", "0.5", "--data-root", gray_folder, *TINY, "--out", str(tmp_path / "s.csv")]
    for extra, message in ((["--group-size", "2", "--checkpoint-dir", str(tmp_path)], "--checkpoint-dir needs --group-size 1"),
                           (["--checkpoint-dir", str(tmp_path / "s.csv")], "--checkpoint-dir")):
        (tmp_path / "s.csv").write_text("")
        with pytest.raises(SystemExit) as exit_info:
            sweep_margins.main([*flags, *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script", sorted(sweep_margins.SCRIPTS))
def test_train_preset_starts_every_run_from_the_scripts_named_defaults(script, tmp_path):
    def base(*flags):
        args = sweep_margins.build_parser().parse_args(["--dataset", script, "--out", str(tmp_path / "s.csv"), *flags])
        return sweep_margins.base_config(args)

    module = sweep_margins.SCRIPTS[script]
    for preset, start in (("default", module.DEFAULTS.resolved()), ("report", module.REPORT.resolved())):
        config = base("--train-preset", preset)
        assert config.preset == preset and config.epochs == start.epochs  # the preset's own schedule length
        changed = {k for k, v in config.as_row().items() if v != start.as_row()[k]}
        assert changed <= {"out"}, changed
    overridden = base("--train-preset", "report", "--epochs", "2", "--lr", "0.01")
    assert (overridden.epochs, overridden.lr, overridden.widths) == (2, 0.01, module.REPORT.widths)
