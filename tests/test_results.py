"""common/results.py: results CSVs and the files a run writes survive damage, full disks, symlinks,
long names and killed writers; no finished row is lost and none turns into a wrong number."""
import errno
import os
import subprocess
import sys

import pytest

import train_mnist
from common import results as results_module
from common.results import read_rows
from helpers import TINY, no_data_reads, one_line_exit_2, train_tiny as train


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


def test_an_out_name_too_long_for_the_file_system_is_refused_up_front(gray_folder, tmp_path, capsys, monkeypatch):
    no_data_reads(monkeypatch)
    out = tmp_path / ("r" * 240 + ".csv")  # fits, but its temporary and lock names do not
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--out", str(out)], capsys)
    assert "--out" in err and "too long" in err.lower()
