"""benchmarks/throughput.py runs both recipes end to end and reports every field (no timing asserted)."""
import json

import pytest

import throughput


FIELDS = ["recipe_images_per_s", "fast_images_per_s", "speedup", "recipe_epoch_s", "fast_epoch_s",
          "train_gflop_per_image", "fast_tflops", "fast_fraction_of_fp32_peak", "fast_fraction_of_bf16_peak",
          "run_tflop", "recipe_run_s", "fast_run_s"]


def test_throughput_reports_both_recipes_for_both_datasets(tmp_path):
    out = tmp_path / "bench_{device}.json"
    result = throughput.main(["--device", "cpu", "--batch-size", "8", "--warmup", "1", "--steps", "2", "--repeats", "1",
                              "--matmul-size", "128", "--out", str(out)])
    saved = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert saved["device"] == "cpu" and [r["dataset"] for r in saved["runs"]] == ["mnist", "cifar10"]
    for row in saved["runs"]:
        assert all(row[f] > 0 for f in FIELDS), row
        assert row["speedup"] == pytest.approx(row["fast_images_per_s"] / row["recipe_images_per_s"])
        images = {"mnist": 60000, "cifar10": 50000}[row["dataset"]]
        assert row["run_tflop"] == pytest.approx(row["train_gflop_per_image"] * images * row["run_epochs"] / 1e3)
    # MNIST: the report's 64-256-64 net, ~37M multiply-adds forward per image, x3 for forward + backward = 0.22
    # GFLOP; the recipe's 32-64-128 x2 net 0.074 GFLOP, and (b) times the recipe
    mnist = {p["preset"]: p for p in saved["runs"][0]["presets"]}
    assert 0.15 < mnist["report"]["train_gflop_per_image"] < 0.3 and 0.05 < mnist["default"]["train_gflop_per_image"] < 0.1
    assert saved["runs"][0]["train_gflop_per_image"] == pytest.approx(mnist["default"]["train_gflop_per_image"])
    assert mnist["report"]["amp"] is False  # the report preset is float32 whatever the machine
    assert saved["fp32_matmul_tflops"] > 0 and saved["bf16_matmul_tflops"] > 0 and result["amp"] in (True, False)
    assert sorted(saved["runs"][0]["images_per_s_by_loss"]) == ["arcface", "softmax", "triplet"]
    for row in saved["runs"]:  # the old recipe (--preset report) beside the new (the defaults), per training run
        presets = {p["preset"]: p for p in row["presets"]}
        assert sorted(presets) == ["default", "report"] and presets["report"]["widths"] == "64-256-64"
        images = {"mnist": 60000, "cifar10": 50000}[row["dataset"]]
        for p in presets.values():
            assert p["run_tflop"] == pytest.approx(p["train_gflop_per_image"] * images * p["epochs"] / 1e3)
            assert p["run_s"] == pytest.approx(p["epochs"] * images / p["images_per_s"])


def test_recipe_dataset_hands_out_normalised_tensors_like_torchvision():
    import torch
    from torchvision import transforms

    images = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    data = throughput.PILImages(images, torch.tensor([1, 0]), transforms.ToTensor())
    tensor, label = data[0]
    assert label == 1 and tensor.shape == (3, 4, 4) and torch.allclose(tensor * 255, images[0].float())


@pytest.mark.parametrize("flags", [["--steps", "0"], ["--threads", "-1"], ["--datasets", "imagenet"]])
def test_bad_flags_exit_2(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        throughput.main(flags)
    assert exit_info.value.code == 2 and len(capsys.readouterr().err.strip().splitlines()) == 1


def test_training_flops_are_counted_without_touching_the_model():
    import torch

    from common import ArcNet, Network
    from common.training import training_flops_per_image

    torch.manual_seed(0)
    net, head = Network(1, 8, (4, 8), 1), ArcNet(8, 3)
    before = {k: v.clone() for k, v in [*net.state_dict().items(), *head.state_dict().items()]}
    images, labels = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    per_image = training_flops_per_image(net, head, images, labels, amp=False)
    after = [*net.state_dict().items(), *head.state_dict().items()]
    assert all(torch.equal(before[k], v) for k, v in after)  # BatchNorm statistics included
    assert all(p.grad is None for p in [*net.parameters(), *head.parameters()])
    assert training_flops_per_image(net, head, images[:4], labels[:4], amp=False) == pytest.approx(per_image)
    # by hand: conv 1->4 (3x3, 12x12), conv 4->8 (3x3, 6x6), linear 8->8, cosines 8x3; forward 2 FLOPs per
    # multiply-add, backward twice that except the first conv (no gradient for the images)
    conv1, conv2 = 2 * 1 * 4 * 9 * 144, 2 * 4 * 8 * 9 * 36
    linear, cosines = 2 * 8 * 8, 2 * 8 * 3
    assert per_image == pytest.approx(conv1 * 2 + (conv2 + linear + cosines) * 3)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_the_benchmark_times_the_scripts_own_train_step(name, monkeypatch):
    from dataclasses import replace

    script, calls = throughput.SCRIPTS[name], []
    step_of_the_script = script.train_step

    def counted(*args):
        calls.append(args[0])  # the config the step ran with
        return step_of_the_script(*args)

    monkeypatch.setattr(script, "train_step", counted)
    data = throughput.load_images(name, None)
    config = replace(script.DEFAULTS, device="cpu", amp=False, batch_size=8, progress=False, epochs=1,
                     widths=(4, 8, 8), latent_dim=8)
    step, flops = throughput.fast_step_fn(name, data, config)
    step()
    step()
    assert len(calls) == 2 and calls[0] is config and flops > 0
