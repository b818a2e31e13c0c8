"""Checkpoints (common/checkpoints.py): what --resume refuses, and what it accepts."""

import pytest
import torch

import train_mnist
from common.checkpoints import read_checkpoint
from common.cli import parse_config
from common.results import read_rows
from helpers import TINY, no_data_reads, one_line_exit_2


@pytest.fixture
def checkpoint(gray_folder, tmp_path):
    path = tmp_path / "run.pt"
    train_mnist.main([*TINY, "--data-root", gray_folder, "--out", str(tmp_path / "r.csv"), "--checkpoint", str(path)])
    return path


def test_resume_must_match_every_training_setting_but_not_evaluation_or_run_settings(gray_folder, tmp_path):
    from common.checkpoints import check_resume
    path, out = str(tmp_path / "run.pt"), str(tmp_path / "r.csv")
    flags = ["--data-root", gray_folder, "--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12",
             "--device", "cpu", "--no-amp", "--no-progress", "--out", out, "--margin-grad", "exact"]
    train_mnist.main(flags + ["--checkpoint", path])
    cpu = torch.device("cpu")
    as_then = parse_config(flags, train_mnist.DEFAULTS, "t", "")
    assert check_resume(path, as_then.as_row(), cpu)["epoch"] == 1
    later = parse_config(flags + ["--flip-tta", "--eval-every", "3", "--threads", "1"], train_mnist.DEFAULTS, "t", "")
    assert check_resume(path, later.as_row(), cpu)["epoch"] == 1  # scores and bookkeeping may change
    with pytest.raises(ValueError, match="margin_grad exact \\(here unit\\)"):
        check_resume(path, parse_config(flags[:-2], train_mnist.DEFAULTS, "t", "").as_row(), cpu)


@pytest.mark.parametrize("content", [b"", b"epoch,loss\n1,0.5\n", b"PK\x03\x04 not really a zip"])
def test_resume_of_a_file_that_is_not_a_checkpoint(content, tmp_path, capsys, monkeypatch):
    no_data_reads(monkeypatch)
    bogus = tmp_path / "notes.pt"
    bogus.write_bytes(content)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--resume", str(bogus), "--out", str(tmp_path / "r.csv")], capsys)
    assert f"--resume {bogus} is not a checkpoint written by --checkpoint" in err


def test_resume_of_a_dict_that_is_not_a_checkpoint(tmp_path, capsys, monkeypatch):
    no_data_reads(monkeypatch)
    path = tmp_path / "weights.pt"
    torch.save({"net": {}}, path)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--resume", str(path), "--out", str(tmp_path / "r.csv")], capsys)
    assert "is not a checkpoint written by --checkpoint (no 'head' entry)" in err


def test_resume_of_a_checkpoint_from_another_device_is_refused(checkpoint, gray_folder, tmp_path, capsys, monkeypatch):
    from common.checkpoints import save_checkpoint
    state = read_checkpoint(str(checkpoint))
    state.update(device="cuda", generator=torch.zeros(16, dtype=torch.uint8))  # a CUDA Philox state
    save_checkpoint(str(tmp_path / "cuda.pt"), **state)
    no_data_reads(monkeypatch)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--resume", str(tmp_path / "cuda.pt"),
                                             "--out", str(tmp_path / "r.csv")], capsys)
    assert "was saved on cuda, this run is on cpu" in err and "--device cuda" in err


def test_checkpoints_load_without_unpickling_code(checkpoint):
    state = read_checkpoint(str(checkpoint))  # torch.load(weights_only=True) inside
    assert state["epoch"] == 1 and state["device"] == "cpu" and state["run_id"]


def test_resuming_a_finished_run_adds_no_second_row(checkpoint, gray_folder, tmp_path, capsys):
    out = tmp_path / "r.csv"
    first = read_rows(str(out))
    assert len(first) == 1
    row = train_mnist.main([*TINY, "--data-root", gray_folder, "--out", str(out), "--resume", str(checkpoint)])
    assert len(read_rows(str(out))) == 1 and row["run_id"] == first[0]["run_id"]
    assert "already has its row" in capsys.readouterr().out
