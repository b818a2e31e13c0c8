"""sweep_margins.py: the Table 1 grid, shards, resume, divergence, workers, summary and regression."""
import os
import subprocess
import sys

import pytest

import sweep_margins
from helpers import one_line_exit_2
from common import jobs, rows as row_keys
from common.results import read_rows, write_csv

# The tiny run of helpers.TINY with progress bars and downloads left at their defaults.
TINY = ["--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12", "--device", "cpu", "--no-amp"]

@pytest.mark.parametrize("count", [1, 3, 7])
def test_shards_are_disjoint_and_cover_the_grid(count):
    grid, seeds = row_keys.table1_grid(), [0, 1, 2]
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
    keys = [row_keys.row_key(r) for r in rows]
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
    for changed in ({"amp": "True"}, {"device": "cuda"}, {"momentum": "0.5"}, {"flip_tta": "True"}):
        write_csv(str(out), [{**row, **changed}])
        sweep_margins.main(flags + ["--dry-run"])
        assert "0 already in" in capsys.readouterr().out, changed
    for bookkeeping in ({"threads": "7"}, {"eval_every": "3"}, {"data_root": "elsewhere"}):  # RUN settings: same run
        write_csv(str(out), [{**row, **bookkeeping}])
        sweep_margins.main(flags + ["--dry-run"])
        assert "1 already in" in capsys.readouterr().out, bookkeeping

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


def sweep_base(argv):
    """The base config a sweep run with `argv` trains every job from."""
    parser = sweep_margins.build_parser()
    args, training_flags = parser.parse_known_args(argv)
    return sweep_margins.base_config(args, training_flags, parser)


def test_the_sweep_hands_every_training_flag_it_does_not_set_itself_to_the_script():
    from common.cli import build_parser

    for script in sweep_margins.SCRIPTS.values():
        parser = build_parser("t", script.DEFAULTS, "")
        flags = {a.option_strings[0] for a in parser._actions if a.option_strings and a.option_strings[0] != "-h"}
        own = set(sweep_margins.build_parser()._option_string_actions)
        for flag in sorted(flags - own - set(sweep_margins.SET_PER_RUN) - {"--no-download"}):
            action = parser._option_string_actions[flag]
            default = getattr(script.DEFAULTS.resolved(), action.dest)
            if action.nargs == 0 or isinstance(action.const, bool) or action.dest == "amp":  # a switch
                given = [f"--no-{flag[2:]}" if default and not flag.startswith("--no-") else flag]
            else:
                given = [flag, "25" if flag == "--batch-per-class" else "40" if action.type is int or flag == "--imbalance" else "0.45" if action.type is float else [c for c in action.choices if c != default][0] if action.choices
                         else "data-x" if flag == "--data-root" else "64-64-64" if flag == "--widths" else "cpu"]
            base = sweep_base(["--dataset", [k for k, m in sweep_margins.SCRIPTS.items() if m is script][0],
                               "--out", "/tmp/unused.csv", *given])
            assert getattr(base, action.dest) != default, flag


@pytest.mark.parametrize("flag,instead", [("--loss", "--losses"), ("--seed", "--seeds"), ("--resume", "--checkpoint-dir")])
def test_training_flags_the_sweep_sets_per_run_are_refused_naming_its_own(flag, instead, capsys):
    err = one_line_exit_2(sweep_margins.main, [flag, "1", "--out", "/tmp/unused.csv"], capsys)
    assert flag in err and instead in err


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
    other = jobs.config_for(sweep_margins.jobs_for([("arcface", 30.0, 1.0, 0.5, 0.0)], [0], (0, 1))[0],
                                     sweep_base([*flags, "--lr", "0.01", "--out", str(out)]), 1, str(ckdir))
    assert other.resume is None and os.path.basename(other.checkpoint) != name  # other settings: another file


def test_checkpoint_dir_is_refused_when_it_is_a_file(gray_folder, tmp_path, capsys):
    flags = ["--m2", "0.5", "--data-root", gray_folder, *TINY, "--out", str(tmp_path / "s.csv")]
    for extra, message in ((["--checkpoint-dir", str(tmp_path / "s.csv")], "--checkpoint-dir"),):
        (tmp_path / "s.csv").write_text("")
        with pytest.raises(SystemExit) as exit_info:
            sweep_margins.main([*flags, *extra])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script", ["mnist", "cifar10"])  # "folder" runs cifar10's script on an image folder
def test_train_preset_starts_every_run_from_the_scripts_named_defaults(script, tmp_path):
    def base(*flags):
        return sweep_base(["--dataset", script, "--out", str(tmp_path / "s.csv"), *flags])

    module = sweep_margins.SCRIPTS[script]
    for preset, start in (("default", module.DEFAULTS.resolved()), ("report", module.REPORT.resolved())):
        config = base("--preset", preset)
        assert config.preset == preset and config.epochs == start.epochs  # the preset's own schedule length
        changed = {k for k, v in config.as_row().items() if v != start.as_row()[k]}
        assert changed <= {"out"}, changed
    overridden = base("--preset", "report", "--epochs", "2", "--lr", "0.01")
    assert (overridden.epochs, overridden.lr, overridden.widths) == (2, 0.01, module.REPORT.widths)


def test_a_row_that_cannot_be_written_ends_the_sweep_in_one_line(gray_folder, tmp_path, capsys, monkeypatch):
    from common.results import RowNotWrittenError

    def folder_in_place_of_out(*args, **kwargs):  # --out replaced by a folder while a run trained
        raise RowNotWrittenError(f"cannot write the results of run r to {tmp_path}/s.csv (it is a folder); its row "
                                 "was printed above")

    monkeypatch.setattr(sweep_margins, "run_sweep", folder_in_place_of_out)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        sweep_margins.main(["--losses", "softmax", "--data-root", gray_folder, "--out", str(tmp_path / "s.csv"), *TINY])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and len(err.splitlines()) == 1 and "it is a folder" in err


def test_a_job_another_sweep_is_running_is_skipped_not_run_twice(gray_folder, tmp_path, capsys):
    out = tmp_path / "s.csv"
    flags = ["--losses", "softmax", "--seeds", "0", "--data-root", gray_folder, "--out", str(out), *TINY]
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live claimant
    try:
        parser = sweep_margins.build_parser()
        args, rest = parser.parse_known_args(flags)
        config = jobs.config_for(sweep_margins.jobs_for([("softmax",) + (None,) * 4], [0], (0, 1))[0],
                                          sweep_margins.base_config(args, rest, parser))
        claims = tmp_path / "s.claims"
        claims.mkdir()
        (claims / jobs.job_name(config)).write_text(str(holder.pid))
        sweep_margins.main(flags)
        assert "in progress in another sweep" in capsys.readouterr().out and read_rows(str(out)) == []
        holder.kill()
        holder.wait()
        sweep_margins.main(flags)  # the claimant is gone: the job is taken over and run once
        assert len(read_rows(str(out))) == 1 and not claims.exists()
    finally:
        holder.kill()


def test_a_truncated_checkpoint_in_a_sweeps_folder_is_set_aside_and_the_run_restarts(gray_folder, tmp_path, capsys):
    flags = ["--losses", "softmax", "--seeds", "0", "--data-root", gray_folder, *TINY, "--epochs", "2"]
    ckdir = tmp_path / "ck"
    sweep_margins.main([*flags, "--out", str(tmp_path / "a.csv"), "--checkpoint-dir", str(ckdir)])
    (name,) = os.listdir(ckdir)
    data = (ckdir / name).read_bytes()
    (ckdir / name).write_bytes(data[: len(data) // 2])
    (row,) = sweep_margins.main([*flags, "--out", str(tmp_path / "b.csv"), "--checkpoint-dir", str(ckdir)])
    out = capsys.readouterr().out
    assert "set aside as" in out and any(n.startswith(name + ".bad-") for n in os.listdir(ckdir))
    assert row["test_acc"] == read_rows(str(tmp_path / "a.csv"))[0]["test_acc"]  # trained again from the start
