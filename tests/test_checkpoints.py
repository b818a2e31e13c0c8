"""Checkpoints (common/checkpoints.py): what --resume refuses, and what it accepts."""
import os

import pytest
import torch

import train_mnist
from common.checkpoints import read_checkpoint
from common.cli import parse_config
from common.results import read_rows
from helpers import TINY, no_data_reads, one_line_exit_2, train_tiny as train


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
