"""Faults injected on purpose (a damaged checkpoint or CSV, a full disk, a killed sweep, two sweeps at once, odd
inputs): no finished result is lost, none turns into a wrong number, and each says what went wrong in one line."""
import errno
import os
import subprocess
import sys

import pytest
import torch

import sweep_margins
import train_mnist
from common import jobs, results as results_module
from common.checkpoints import read_checkpoint
from common.results import read_rows, write_csv
from common.summary import summarize
from helpers import TINY, no_data_reads, one_line_exit_2

PLAIN = {"dataset": "mnist", "imbalance": 1.0, "holdout_classes": 0, "corruptions": False, "loss": "arcface",
         "s": 30, "m1": 1, "m2": 0.5, "m3": 0}


def train(folder, out, *extra):
    return train_mnist.main([*TINY, "--data-root", folder, "--out", str(out), *extra])


# 1, 2: what a summary averages
def test_the_summary_keeps_runs_of_other_settings_apart_and_says_which_differ():
    rows = [{**PLAIN, "epochs": epochs, "seed": seed, "test_acc": acc}
            for epochs, acc in ((2, 0.90), (20, 0.99)) for seed in (0, 1)]
    lines = summarize(rows)
    assert [(line["settings"], line["runs"], round(line["mean_acc"], 2)) for line in lines] == [
        ("epochs 2", 2, 90.0), ("epochs 20", 2, 99.0)]


def test_one_run_counts_once_however_often_its_row_appears():
    row = {**PLAIN, "epochs": 4, "test_acc": 0.99}
    rows = [{**row, "seed": 0}, {**row, "seed": 1, "test_acc": 0.97}, {**row, "seed": 1, "test_acc": 0.97}]
    (line,) = summarize(rows)
    assert line["runs"] == 2 and line["mean_acc"] == pytest.approx(98.0)


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


# 3, 7: damaged checkpoints
def flip_a_weight_byte(path):
    state = torch.load(path, weights_only=True)
    weight = next(t for t in state["net"].values() if t.dim() == 4 and t.numel() > 100)
    data = bytearray(open(path, "rb").read())
    stored = weight.permute(0, 2, 3, 1).contiguous()  # the channels-last order its storage holds
    at = data.find(stored.view(torch.uint8).numpy().tobytes())
    assert at > 0
    data[at + 40] ^= 0xFF
    open(path, "wb").write(bytes(data))


def test_a_checkpoint_with_a_flipped_weight_byte_is_refused_in_one_line(gray_folder, tmp_path, capsys, monkeypatch):
    path = tmp_path / "run.pt"
    train(gray_folder, tmp_path / "r.csv", "--checkpoint", str(path))
    flip_a_weight_byte(path)
    with pytest.raises(ValueError, match="damaged"):
        read_checkpoint(str(path))
    no_data_reads(monkeypatch)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--resume", str(path),
                                             "--out", str(tmp_path / "r2.csv")], capsys)
    assert "is damaged" in err and str(path) in err


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


# 4, 5, 9: the results CSV
@pytest.mark.parametrize("damage", ["cut", "extra", "short"])
def test_a_damaged_results_csv_is_refused_and_left_as_it_was(damage, gray_folder, tmp_path, capsys):
    out = tmp_path / "r.csv"
    train(gray_folder, out)
    text = out.read_text()
    header, line = text.splitlines()
    damaged = {"cut": text[:-20], "extra": text.rstrip("\n") + ",surplus\n",
               "short": text + ",".join(line.split(",")[:5]) + "\n"}[damage]
    out.write_text(damaged)
    with pytest.raises(SystemExit) as exit_info:
        train(gray_folder, out)
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 1 and str(out) in err and "line" in err
    assert out.read_text() == damaged  # untouched: no valid-looking row made of the damage


def test_a_symlinked_out_is_written_through_to_its_target(gray_folder, tmp_path):
    target, link = tmp_path / "evidence" / "r.csv", tmp_path / "r.csv"
    target.parent.mkdir()
    target.write_text("")
    link.symlink_to(target)
    train(gray_folder, link)
    assert link.is_symlink() and len(read_rows(str(target))) == 1


def test_temp_files_of_killed_writers_are_removed_by_the_next_writer(gray_folder, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a process id that is no longer running
    stale_csv = tmp_path / f".tmp-{dead.pid}-abcdef-r.csv"
    stale_ck = tmp_path / f"run.pt.tmp-{dead.pid}"
    stale_csv.write_text("half a file")
    stale_ck.write_bytes(b"half a checkpoint")
    train(gray_folder, tmp_path / "r.csv", "--checkpoint", str(tmp_path / "run.pt"))
    assert not stale_csv.exists() and not stale_ck.exists()


# 6, 13: disks and names
def test_too_little_free_space_is_refused_before_any_data_is_read(gray_folder, tmp_path, capsys, monkeypatch):
    no_data_reads(monkeypatch)
    full = type("Usage", (), {"free": 1000, "total": 10 ** 9, "used": 10 ** 9})
    monkeypatch.setattr(results_module.shutil, "disk_usage", lambda path: full)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--out", str(tmp_path / "r.csv")],
                          capsys)
    assert "--out" in err and "MiB free" in err


def test_a_full_disk_at_the_end_keeps_the_row_and_removes_the_temp_file(gray_folder, tmp_path, capsys, monkeypatch):
    out = tmp_path / "r.csv"
    real_replace = os.replace

    def full_disk(src, dst):
        if str(dst).endswith("r.csv"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(results_module.os, "replace", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        train(gray_folder, out)
    captured = capsys.readouterr()
    assert exit_info.value.code == 1 and len(captured.err.strip().splitlines()) == 1
    assert "No space left" in captured.err and "python -m common.results append" in captured.err
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]
    printed = captured.out.split("as one JSON line:\n")[1].splitlines()[0]
    monkeypatch.setattr(results_module.os, "replace", real_replace)
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO(printed + "\n"))
    results_module.main(["append", str(out)])  # the command the message names restores the row
    (row,) = read_rows(str(out))
    assert 0 <= float(row["test_acc"]) <= 1


def test_a_checkpoint_that_cannot_be_written_is_one_line_and_the_run_finishes(gray_folder, tmp_path, capsys, monkeypatch):
    def half_written(state, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 512 vs 448")

    monkeypatch.setattr(torch, "save", half_written)
    row = train(gray_folder, tmp_path / "r.csv", "--checkpoint", str(tmp_path / "run.pt"))
    out = capsys.readouterr().out
    assert "warning: cannot write checkpoint" in out and "training goes on (none was written)" in out
    assert read_rows(str(tmp_path / "r.csv"))[0]["run_id"] == row["run_id"]  # the result is not lost
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n or n == "run.pt"]


def test_an_out_name_too_long_for_the_file_system_is_refused_up_front(gray_folder, tmp_path, capsys, monkeypatch):
    no_data_reads(monkeypatch)
    out = tmp_path / ("r" * 240 + ".csv")  # fits, but its temporary and lock names do not
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--out", str(out)], capsys)
    assert "--out" in err and "too long" in err.lower()


# 10, 11: messages about checkpoints
def test_a_run_that_diverges_before_its_first_checkpoint_names_none(gray_folder, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(train_mnist, "train_step", lambda *a, **k: torch.tensor(float("nan")))
    with pytest.raises(SystemExit):
        train(gray_folder, tmp_path / "r.csv", "--checkpoint", str(tmp_path / "div.pt"))
    err = capsys.readouterr().err
    assert "no result row written" in err and "last good checkpoint" not in err


def test_resuming_with_another_thread_count_says_the_result_will_not_match_bit_for_bit(gray_folder, tmp_path, capsys):
    path = tmp_path / "run.pt"
    train(gray_folder, tmp_path / "a.csv", "--epochs", "2", "--threads", "1", "--checkpoint", str(path))
    state = read_checkpoint(str(path))
    from common.checkpoints import save_checkpoint
    save_checkpoint(str(path), **{**state, "epoch": 1, "threads": 3})  # as if saved after epoch 1 on 3 threads
    capsys.readouterr()
    train(gray_folder, tmp_path / "b.csv", "--epochs", "2", "--threads", "1", "--resume", str(path))
    assert "will not match an uninterrupted run bit for bit" in capsys.readouterr().out


# 12, 14-17: odd inputs
def test_an_image_folder_with_one_class_is_refused(tmp_path, capsys):
    from conftest import make_image_folder
    folder = make_image_folder(tmp_path / "one", 28, "L", classes=1)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", folder, "--out", str(tmp_path / "r.csv")], capsys)
    assert "at least 2 class folders" in err


def test_summarize_counts_what_it_skips_and_refuses_nothing_usable(tmp_path, capsys):
    rows = [{**PLAIN, "epochs": 4, "seed": s, "test_acc": 0.9 + s / 100} for s in range(3)]
    path = tmp_path / "rows.csv"
    write_csv(str(path), rows)
    path.write_text(path.read_text()[:-4])  # the last row cut mid-line
    sweep_margins.main(["--summarize", str(path), "--out", str(tmp_path / "merged.csv")])
    assert "3 rows read, 2 used, 1 skipped (the last line is cut mid-way)" in capsys.readouterr().out
    empty = tmp_path / "empty.csv"
    empty.write_text("loss,seed\n")
    err = one_line_exit_2(sweep_margins.main, ["--summarize", str(empty), "--out", str(tmp_path / "e.csv")], capsys)
    assert "no usable rows" in err and not (tmp_path / "e_summary.csv").exists()


@pytest.mark.parametrize("flags,message", [
    (["--max-train-samples", "2"], "fewer than the 3 classes"),
    (["--seed", "-1"], "--seed must be in [0, 4294967296), got -1"),
])
def test_inputs_a_run_cannot_honour_are_refused_naming_the_flag(flags, message, gray_folder, tmp_path, capsys):
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--out", str(tmp_path / "r.csv"),
                                             *flags], capsys)
    assert message in err


def test_a_data_root_that_is_a_file_says_so(tmp_path, capsys):
    (tmp_path / "data.zip").write_bytes(b"PK")
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", str(tmp_path / "data.zip"),
                                             "--out", str(tmp_path / "r.csv")], capsys)
    assert "is a file, not a folder" in err


def test_an_image_folders_rows_and_final_line_carry_its_own_name(rgb_folder, tmp_path, capsys):
    import train_cifar10
    row = train_cifar10.main([*TINY, "--data-root", rgb_folder, "--out", str(tmp_path / "r.csv")])
    name = os.path.basename(rgb_folder)
    assert row["dataset"] == name and f"{name} arcface:" in capsys.readouterr().out and "cifar10" not in name
