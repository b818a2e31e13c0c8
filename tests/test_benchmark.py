"""benchmarks/throughput.py runs both recipes end to end and reports every field (no timing asserted)."""
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import throughput  # noqa: E402

FIELDS = ["recipe_images_per_s", "fast_images_per_s", "speedup", "recipe_epoch_s", "fast_epoch_s",
          "train_gflop_per_image", "fast_tflops", "fast_fraction_of_fp32_peak", "fast_fraction_of_bf16_peak"]


def test_throughput_reports_both_recipes_for_both_datasets(tmp_path):
    out = tmp_path / "bench_{device}.json"
    result = throughput.main(["--device", "cpu", "--batch-size", "8", "--warmup", "1", "--steps", "2", "--repeats", "1",
                              "--matmul-size", "128", "--out", str(out)])
    saved = json.loads((tmp_path / "bench_cpu.json").read_text())
    assert saved["device"] == "cpu" and [r["dataset"] for r in saved["runs"]] == ["mnist", "cifar10"]
    for row in saved["runs"]:
        assert all(row[f] > 0 for f in FIELDS), row
        assert row["speedup"] == pytest.approx(row["fast_images_per_s"] / row["recipe_images_per_s"])
    # the report's 64-256-64 net: ~37M multiply-adds forward per MNIST image, x3 for forward + backward
    assert 0.15 < saved["runs"][0]["train_gflop_per_image"] < 0.3
    assert saved["fp32_matmul_tflops"] > 0 and saved["bf16_matmul_tflops"] > 0 and result["amp"] in (True, False)
    assert sorted(saved["runs"][0]["images_per_s_by_loss"]) == ["arcface", "softmax", "triplet"]


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
