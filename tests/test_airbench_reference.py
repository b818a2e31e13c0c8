"""benchmarks/airbench_reference.py: the reference recipe's parts at their edges, and a tiny end-to-end run."""
import math

import pytest
import torch

import airbench_reference as ref
from common.results import read_rows
from common.training import whitening_sample


def test_whitening_filters_make_the_patch_covariance_the_identity():
    torch.manual_seed(0)
    mix = torch.randn(3, 3) + 2 * torch.eye(3)
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(40, 3, 9, 9)).cumsum(3)  # correlated channels and pixels
    conv = torch.nn.Conv2d(3, 24, 2)
    ref.fit_whitening(conv, images, eps=0.0)
    out = torch.nn.functional.conv2d(images.double(), conv.weight.double())[:, :12]  # (N, 12, 8, 8)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    torch.testing.assert_close(flat.T @ flat / len(flat), torch.eye(12, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(conv.weight[12:], -conv.weight[:12])  # the negatives: GELU keeps both signs


def test_whitening_images_come_from_every_class_of_a_class_sorted_set():
    labels = torch.arange(10).repeat_interleave(500)  # (5000,) class-sorted, as an image folder loads
    images = labels.view(-1, 1, 1, 1).float().expand(-1, 3, 2, 2)
    chosen = whitening_sample(images, 100)
    assert chosen.shape[0] == 100 and set(chosen[:, 0, 0, 0].long().tolist()) == set(range(10))
    assert whitening_sample(images[:50], 100).shape[0] == 50  # fewer images than asked: all of them


def test_translate_moves_each_image_by_at_most_pad_with_reflect_padding():
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    out = ref.translate(images, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (2,) * 4, mode="reflect")
    for i in range(2):  # every output is one of the 25 windows of its own padded image
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(ref.translate(images, 0, torch.Generator()), images)


def test_lr_schedule_rises_then_falls_to_its_end_values():
    recipe = ref.Recipe()
    total = 476
    rise = int(total * recipe.warmup)
    assert ref.lr_factor(0, total, recipe) == pytest.approx(0.2) and ref.lr_factor(rise, total, recipe) == pytest.approx(1)
    assert ref.lr_factor(total, total, recipe) == pytest.approx(0.07)
    factors = [ref.lr_factor(s, total, recipe) for s in range(total)]
    assert max(factors) == pytest.approx(1) and all(0.07 <= f <= 1 for f in factors)


def test_optimizer_decouples_lr_and_decay_and_scales_the_batchnorm_biases():
    recipe = ref.Recipe()
    net = ref.make_net(recipe, 10)
    biases, others = ref.optimizer_for(net, recipe).param_groups
    scale = 1024 * (1 + 1 / 0.15)
    assert others["lr"] == pytest.approx(11.5 / scale) and biases["lr"] == pytest.approx(64 * 11.5 / scale)
    for group in (biases, others):  # the decay per step, lr x weight_decay, is the same for both
        assert group["lr"] * group["weight_decay"] == pytest.approx(0.0153 * 1024 / scale)
    assert all(p.dim() == 1 for p in biases["params"]) and not any(p is net[0].weight for p in others["params"])
    assert any(p is net[0].bias for p in others["params"])


def test_lookahead_pulls_toward_the_average_and_ends_on_it():
    recipe = ref.Recipe()
    net = torch.nn.Linear(2, 1, bias=False)
    average = {"weight": torch.zeros(1, 2)}
    with torch.no_grad():
        net.weight.fill_(1.0)
    ref.lookahead(net, average, 3, 10, recipe)  # not a multiple of 5: nothing happens
    assert torch.equal(net.weight.detach(), torch.ones(1, 2))
    ref.lookahead(net, average, 5, 10, recipe)
    rho = 0.95 ** 5 * 0.5 ** 3
    torch.testing.assert_close(net.weight.detach(), torch.full((1, 2), 1 - rho))
    torch.testing.assert_close(average["weight"], torch.full((1, 2), 1 - rho))


def test_a_tiny_run_writes_its_row_and_a_finished_checkpoint_resumes_to_the_same_result(rgb_folder, tmp_path, capsys):
    out, ckpt = tmp_path / "r.csv", tmp_path / "new-folder" / "ck.pt"  # the folder is made
    flags = ["--data-root", rgb_folder, "--batch-size", "12", "--epochs", "2", "--widths", "8-16-8",
             "--whiten-images", "10", "--device", "cpu", "--out", str(out), "--checkpoint", str(ckpt)]
    row = ref.main(flags)
    assert row["steps"] == 12 and 0 <= row["test_acc"] <= 1 and row["train_tflop"] > 0
    again = ref.main(flags)  # all 12 steps are in the checkpoint: nothing trains, the same model is evaluated
    assert again["test_acc"] == row["test_acc"] and "resumed from" in capsys.readouterr().out
    assert [r["test_acc"] for r in read_rows(str(out))] == [str(row["test_acc"])] * 2
    assert math.isclose(float(read_rows(str(out))[0]["train_tflop"]), row["train_tflop"])


@pytest.mark.parametrize("flags, message", [(["--widths", "8-16"], "--widths must be three positive integers"),
                                            (["--epochs", "0"], "--epochs must be above 0"),
                                            (["--batch-size", "0"], "--batch-size")])
def test_bad_flags_exit_2_in_one_line(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ref.main(["--data-root", "does-not-exist", *flags])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_a_batch_larger_than_the_training_set_exits_2(rgb_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ref.main(["--data-root", rgb_folder, "--batch-size", "1000", "--device", "cpu", "--out", str(tmp_path / "r.csv")])
    assert exit_info.value.code == 2 and "larger than the 72 training images" in capsys.readouterr().err


def test_resuming_after_an_epoch_gives_the_uninterrupted_run_bit_for_bit(rgb_folder, tmp_path, monkeypatch):
    flags = ["--data-root", rgb_folder, "--batch-size", "12", "--epochs", "3", "--widths", "8-16-8",
             "--whiten-images", "10", "--device", "cpu", "--threads", "1"]
    saved, replace = [], ref.os.replace

    def keep_first(src, dst):  # keep a copy of the checkpoint written after the first epoch
        replace(src, dst)
        if not saved:
            saved.append(torch.load(dst, weights_only=True))
            torch.save(saved[0], str(tmp_path / "epoch1.pt"))

    monkeypatch.setattr(ref.os, "replace", keep_first)
    ref.main([*flags, "--out", str(tmp_path / "a.csv"), "--checkpoint", str(tmp_path / "full.pt")])
    monkeypatch.setattr(ref.os, "replace", replace)
    assert saved[0]["step"] == 6
    ref.main([*flags, "--out", str(tmp_path / "b.csv"), "--checkpoint", str(tmp_path / "epoch1.pt")])
    full, resumed = (torch.load(str(tmp_path / name), weights_only=True) for name in ("full.pt", "epoch1.pt"))
    assert full["step"] == resumed["step"] == 18
    for key, value in full["net"].items():
        assert torch.equal(value, resumed["net"][key]), key
