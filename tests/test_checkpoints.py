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


def test_checkpoints_from_before_a_recipe_setting_resume_with_its_old_value(gray_folder, tmp_path):
    from common.checkpoints import check_resume
    path, out = str(tmp_path / "old.pt"), str(tmp_path / "r.csv")
    old = ["--data-root", gray_folder, "--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12",
           "--device", "cpu", "--no-amp", "--no-progress", "--out", out, "--margin-grad", "exact", "--margin-warmup", "0"]
    train_mnist.main(old + ["--checkpoint", path])
    state = torch.load(path, weights_only=True)
    for key in ("whiten", "margin_grad", "margin_warmup", "margin_tail", "embedding_bn", "label_smoothing",
                "activation", "pool_first", "global_pool", "bn_scale"):
        del state["config"][key]  # as a checkpoint written before these settings existed
    torch.save(state, path)
    as_then = parse_config(old, train_mnist.DEFAULTS, "t", "")
    assert check_resume(path, as_then.as_row(), torch.device("cpu"))["epoch"] == 1
    with pytest.raises(ValueError, match="margin_grad exact \\(here unit\\)"):
        check_resume(path, parse_config(old[:-4], train_mnist.DEFAULTS, "t", "").as_row(), torch.device("cpu"))


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
    state = torch.load(checkpoint, weights_only=True)
    state.update(device="cuda", generator=torch.zeros(16, dtype=torch.uint8))  # a CUDA Philox state
    torch.save(state, tmp_path / "cuda.pt")
    no_data_reads(monkeypatch)
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--resume", str(tmp_path / "cuda.pt"),
                                             "--out", str(tmp_path / "r.csv")], capsys)
    assert "was saved on cuda, this run is on cpu" in err and "--device cuda" in err
    del state["device"]  # an older checkpoint: the generator state alone tells
    torch.save(state, tmp_path / "old.pt")
    err = one_line_exit_2(train_mnist.main, [*TINY, "--data-root", gray_folder, "--resume", str(tmp_path / "old.pt"),
                                             "--out", str(tmp_path / "r.csv")], capsys)
    assert "was saved on cuda" in err


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
