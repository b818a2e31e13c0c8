"""End-to-end runs of both training scripts on tiny generated image folders, and their errors."""
import csv
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import train_cifar10
import train_mnist
from common.corruptions import CORRUPTIONS, SEVERITIES
from common.data import Dataset
from common.results import read_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TINY = ["--widths", "8-16-8", "--latent-dim", "8", "--epochs", "2", "--batch-size", "12", "--lr", "0.05",
        "--device", "cpu", "--no-amp", "--no-progress", "--no-download"]
ONE_EPOCH = ["--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12", "--device", "cpu",
             "--no-amp", "--no-progress", "--no-download"]


REQUIRED_COLUMNS = ["dataset", "loss", "s", "m1", "m2", "m3", "latent_dim", "epochs", "batch_size", "lr", "seed",
                    "test_acc", "test_precision", "test_recall", "test_f1", "train_seconds", "device",
                    "torch_version", "git_commit"]


SCRIPTS = {"mnist": (train_mnist, "gray_folder"), "cifar10": (train_cifar10, "rgb_folder")}


def train(script, folder, out, *extra):
    return script.main([*TINY, "--data-root", folder, "--out", str(out), *extra])


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("loss", ["arcface", "softmax", "triplet", "combined"])
def test_scripts_train_and_write_results(name, loss, tmp_path, request):
    script, fixture = SCRIPTS[name]
    out = tmp_path / "results.csv"
    row = train(script, request.getfixturevalue(fixture), out, "--loss", loss)
    rows = read_rows(str(out))
    assert len(rows) == 1 and all(column in rows[0] for column in REQUIRED_COLUMNS)
    folder = request.getfixturevalue(fixture)
    # an image folder's rows are named after the folder, never after the script's torchvision dataset
    assert rows[0]["loss"] == loss and rows[0]["dataset"] == os.path.basename(folder) and rows[0]["device"] == "cpu"
    margins = [rows[0][k] for k in ("s", "m1", "m2", "m3")]
    assert margins == ["", "", "", ""] if loss in ("softmax", "triplet") else all(margins)
    assert 0.0 <= float(rows[0]["test_acc"]) <= 1.0 and row["test_acc"] == float(rows[0]["test_acc"])
    run_dir = tmp_path / "results" / row["run_id"]
    with open(run_dir / "history.csv") as handle:
        assert [int(r["epoch"]) for r in csv.DictReader(handle)] == [1, 2]
    with open(run_dir / "confusion.csv") as handle:
        confusion = list(csv.DictReader(handle))
    assert len(confusion) == 3 and sum(int(v) for r in confusion for k, v in r.items() if k != "true") == 12


def test_every_run_records_its_training_compute(rgb_folder, tmp_path, capsys):
    one = train(train_cifar10, rgb_folder, tmp_path / "r.csv", "--epochs", "1")
    two = train(train_cifar10, rgb_folder, tmp_path / "r.csv", "--epochs", "2")
    assert one["train_tflop"] > 0 and two["train_tflop"] == pytest.approx(2 * one["train_tflop"], rel=1e-3)
    assert [float(r["train_tflop"]) for r in read_rows(str(tmp_path / "r.csv"))] == [one["train_tflop"], two["train_tflop"]]
    assert f"{two['train_tflop']:.3g} TFLOP and" in capsys.readouterr().out


def test_the_tiny_task_is_learned(gray_folder, tmp_path):
    row = train(train_mnist, gray_folder, tmp_path / "r.csv", "--epochs", "12", "--lr", "0.2", "--loss", "softmax")
    assert row["test_acc"] >= 0.75  # 3 classes: chance is 0.33


def test_named_losses_set_margins_and_flags_override(gray_folder, tmp_path):
    row = train(train_mnist, gray_folder, tmp_path / "r.csv", "--loss", "cosface", "--m3", "0.2", "--epochs", "1")
    assert (row["s"], row["m1"], row["m2"], row["m3"]) == (30.0, 1.0, 0.0, 0.2)


def test_same_seed_same_results_on_cpu(rgb_folder, tmp_path):
    a = train(train_cifar10, rgb_folder, tmp_path / "a.csv", "--seed", "3")
    b = train(train_cifar10, rgb_folder, tmp_path / "b.csv", "--seed", "3")
    keys = ["test_acc", "test_f1", "per_class_recall"]
    assert [a[k] for k in keys] == [b[k] for k in keys]
    assert _history(tmp_path / "a", a) == _history(tmp_path / "b", b)


def _history(results_stem, row):
    with open(os.path.join(results_stem, row["run_id"], "history.csv")) as handle:
        return [(r["train_loss"], r["test_acc"]) for r in csv.DictReader(handle)]


def test_resume_continues_exactly_where_the_checkpoint_left(rgb_folder, tmp_path, monkeypatch):
    extra = []
    ckpt = str(tmp_path / "run.pt")
    saved = train_cifar10.save_run

    def save_and_keep_each_epoch(config, *state):
        saved(config, *state)
        epochs_done = state[-1]
        shutil.copy(config.checkpoint, f"{config.checkpoint}.epoch{epochs_done}")

    monkeypatch.setattr(train_cifar10, "save_run", save_and_keep_each_epoch)
    full = train(train_cifar10, rgb_folder, tmp_path / "full.csv", "--epochs", "3", "--checkpoint", ckpt, *extra)
    monkeypatch.setattr(train_cifar10, "save_run", saved)
    resumed = train(train_cifar10, rgb_folder, tmp_path / "resumed.csv", "--epochs", "3",
                    "--resume", f"{ckpt}.epoch1", *extra)
    assert resumed["test_acc"] == full["test_acc"] and resumed["per_class_recall"] == full["per_class_recall"]
    assert _history(tmp_path / "full", full) == _history(tmp_path / "resumed", resumed)


def test_resume_refuses_a_checkpoint_of_other_settings_before_reading_data(gray_folder, tmp_path, capsys, monkeypatch):
    ckpt = str(tmp_path / "run.pt")
    train(train_mnist, gray_folder, tmp_path / "r.csv", "--epochs", "1", "--checkpoint", ckpt)
    capsys.readouterr()
    monkeypatch.setattr(Dataset, "load", lambda self, config: pytest.fail("data was read before the check"))
    with pytest.raises(SystemExit) as exit_info:
        train(train_mnist, gray_folder, tmp_path / "r.csv", "--epochs", "1", "--resume", ckpt, "--loss", "softmax")
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert "loss arcface (here softmax)" in err and "m2 0.5 (here none)" in err and " vs " not in err, err


def test_nan_loss_stops_names_epoch_and_step_keeps_checkpoint_writes_no_row(gray_folder, tmp_path, monkeypatch, capsys):
    from common.heads import ArcNet

    calls = {"n": 0}
    real_loss = ArcNet.loss

    def loss_that_diverges_in_epoch_two(self, embeddings, labels):
        calls["n"] += 1
        value = real_loss(self, embeddings, labels)
        # call 1 counts the training FLOPs (on a copy) at set-up; then 6 steps per epoch: epoch 2, step 2
        return value * float("nan") if calls["n"] == 9 else value

    monkeypatch.setattr(ArcNet, "loss", loss_that_diverges_in_epoch_two)
    ckpt, out = tmp_path / "run.pt", tmp_path / "r.csv"
    with pytest.raises(SystemExit) as exit_info:
        train(train_mnist, gray_folder, out, "--checkpoint", str(ckpt))
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 1 and "epoch 2, step 2" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1


BAD_INPUTS = [
    (["--loss", "hinge"], "--loss"), (["--s", "0"], "--s"), (["--m1", "0.5"], "--m1"), (["--m2", "3.2"], "--m2"),
    (["--m2", "-0.1"], "--m2"), (["--m3", "-1"], "--m3"), (["--latent-dim", "1"], "--latent-dim"),
    (["--epochs", "0"], "--epochs"), (["--eval-every", "0"], "--eval-every"), (["--batch-size", "-5"], "--batch-size"),
    (["--epochs", "two"], "--epochs"),
    (["--lr", "0"], "--lr"), (["--resume", "/nonexistent/ckpt.pt"], "--resume"), (["--device", "tpu"], "--device"),
    (["--margin-warmup", "1.5"], "--margin-warmup"), (["--label-smoothing", "1"], "--label-smoothing"),
    (["--head-weight-decay", "-1"], "--head-weight-decay"), (["--crop-padding", "-1"], "--crop-padding"),
    (["--preset", "fast"], "--preset"),
]


if not torch.cuda.is_available():
    BAD_INPUTS.append((["--device", "cuda"], "--device"))


@pytest.mark.parametrize("name", SCRIPTS)
@pytest.mark.parametrize("flags,flag", BAD_INPUTS)
def test_bad_input_is_one_line_naming_the_flag_exit_2_before_reading_data(name, flags, flag, capsys, monkeypatch):
    script = SCRIPTS[name][0]
    monkeypatch.setattr(Dataset, "load", lambda self, config: pytest.fail("data was read before validation"))
    with pytest.raises(SystemExit) as exit_info:
        script.main(["--data-root", "/nonexistent", *flags])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and flag in err, err


@pytest.mark.parametrize("name,expected", [("mnist", "MNIST/raw"), ("cifar10", "cifar-10-batches-py")])
def test_missing_dataset_says_where_and_how(name, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        SCRIPTS[name][0].main(["--data-root", str(tmp_path), "--no-download"])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert str(tmp_path) in err and expected in err


def test_command_line_entry_point(tmp_path):
    """The shell path: `python train_mnist.py ...` exits 2 with one line for a bad flag."""
    result = subprocess.run([sys.executable, "train_mnist.py", "--m2", "4"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "train_mnist.py: error: --m2 must be in [0, pi), got 4.0"]


def test_amp_runs_backbone_in_bfloat16_and_margin_in_float32():
    from common import ArcNet, Network
    from common.network import net_forward

    net, head = Network(3, 8, (8, 8), 1), ArcNet(8, 4)
    images = torch.randn(6, 3, 16, 16)
    embeddings = net_forward(net, images, amp=True)
    assert embeddings.dtype == torch.bfloat16 and net_forward(net, images, amp=False).dtype == torch.float32
    logits = head(embeddings, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, head(embeddings.float(), torch.tensor([0, 1, 2, 3, 0, 1])), atol=0, rtol=0)


@pytest.mark.parametrize("script_name", ["train_mnist", "train_cifar10"])
def test_max_train_samples_on_a_class_sorted_folder_trains_on_every_class(script_name, gray_folder, rgb_folder, tmp_path):
    import train_cifar10

    script, folder = (train_mnist, gray_folder) if script_name == "train_mnist" else (train_cifar10, rgb_folder)
    row = script.main([*ONE_EPOCH, "--data-root", folder, "--out", str(tmp_path / "r.csv"), "--max-train-samples", "30"])
    assert row["train_class_counts"] == "10;10;10" and row["train_subset"] == "stratified"


def test_script_reports_imbalance_verification_and_corruptions(four_class_folder, tmp_path):
    out = tmp_path / "r.csv"
    row = train_mnist.main([*ONE_EPOCH, "--data-root", four_class_folder, "--out", str(out), "--imbalance", "3",
                            "--holdout-classes", "2", "--corruptions", "--corruption-samples", "5"])
    saved = read_rows(str(out))[0]
    assert saved["train_class_counts"] == "24;8" and saved["imbalance"] == "3.0" and saved["holdout_classes"] == "2"
    for column in ("tail_recall", "precision_at_1", "r_precision", "map_at_r", "verify_auc", "verify_tar",
                   "open_map_at_r", "corrupted_acc", *(f"acc_{name}" for name in CORRUPTIONS)):
        assert 0.0 <= float(saved[column]) <= 1.0, column
    details = read_rows(os.path.join(tmp_path, "r", row["run_id"], "corruptions.csv"))
    assert len(details) == len(CORRUPTIONS) * len(SEVERITIES)


def test_plain_run_has_retrieval_but_no_verification_or_corruption_columns(four_class_folder, tmp_path):
    row = train_mnist.main([*ONE_EPOCH, "--data-root", four_class_folder, "--out", str(tmp_path / "r.csv")])
    assert "map_at_r" in row and row["train_class_counts"] == "24;24;24;24"
    assert "verify_tar" not in row and "corrupted_acc" not in row


def test_recipe_flags_reach_the_model_and_the_row(gray_folder, tmp_path):
    out = tmp_path / "r.csv"
    row = train_mnist.main(["--data-root", gray_folder, "--widths", "8-16-8", "--latent-dim", "8", "--epochs", "2",
                            "--batch-size", "12", "--device", "cpu", "--no-amp", "--no-progress", "--out", str(out),
                            "--embedding-bn", "--margin-warmup", "0.5", "--label-smoothing", "0.1",
                            "--head-weight-decay", "0", "--crop-padding", "2", "--flip-tta"])
    assert (row["embedding_bn"], row["margin_warmup"], row["label_smoothing"], row["head_weight_decay"],
            row["crop_padding"], row["flip"], row["flip_tta"]) == (True, 0.5, 0.1, 0.0, 2, False, True)
    assert math.isfinite(row["test_acc"])


def test_whiten_trains_end_to_end_and_needs_one_more_pixel(rgb_folder, tmp_path, capsys):
    flags = ["--data-root", rgb_folder, "--widths", "8-16", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12",
             "--device", "cpu", "--no-amp", "--no-progress", "--out", str(tmp_path / "r.csv"), "--whiten"]
    row = train_cifar10.main(flags)
    assert row["whiten"] is True and math.isfinite(row["test_acc"])
    with pytest.raises(SystemExit) as exit_info:
        train_cifar10.main(flags + ["--image-size", "4"])  # 2**2 pixels are enough without the stem, not with it
    assert exit_info.value.code == 2 and "--image-size must be >= 5" in capsys.readouterr().err


def test_airbench_network_options_train_end_to_end_and_a_bad_choice_exits_2(rgb_folder, tmp_path, capsys):
    flags = ["--data-root", rgb_folder, "--widths", "8-16", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12",
             "--device", "cpu", "--no-amp", "--no-progress", "--out", str(tmp_path / "r.csv"),
             "--whiten", "--dirac-init"]
    row = train_cifar10.main(flags + ["--activation", "gelu", "--pool-first", "--global-pool", "max", "--no-bn-scale"])
    assert (row["activation"], row["pool_first"], row["global_pool"], row["bn_scale"]) == ("gelu", True, "max", False)
    assert math.isfinite(row["test_acc"])
    for flag, value in (("--activation", "tanh"), ("--global-pool", "median")):
        with pytest.raises(SystemExit) as exit_info:
            train_cifar10.main(flags + [flag, value])
        assert exit_info.value.code == 2 and f"argument {flag}: invalid choice" in capsys.readouterr().err


def test_eval_every_leaves_training_and_the_row_unchanged(gray_folder, tmp_path):
    every = train(train_mnist, gray_folder, tmp_path / "every.csv", "--epochs", "3")
    sparse = train(train_mnist, gray_folder, tmp_path / "sparse.csv", "--epochs", "3", "--eval-every", "2")
    for key in ("test_acc", "test_f1", "per_class_recall", "map_at_r", "train_tflop"):
        assert sparse[key] == every[key], key
    dense_history = read_rows(os.path.join(tmp_path / "every", every["run_id"], "history.csv"))
    sparse_history = read_rows(os.path.join(tmp_path / "sparse", sparse["run_id"], "history.csv"))
    assert [h["train_loss"] for h in sparse_history] == [h["train_loss"] for h in dense_history]
    assert [h["test_acc"] != "" for h in sparse_history] == [False, True, True]  # epoch 2, and the last
    assert sparse_history[1]["test_acc"] == dense_history[1]["test_acc"]
