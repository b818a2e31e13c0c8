"""Training throughput: the source report's straightforward recipe against this repository's training
step, side by side in one process, for MNIST and CIFAR-10.

(a) recipe: a Dataset that hands out PIL images as torchvision's MNIST / CIFAR10 do, per-sample
    ToTensor + Normalize (CIFAR-10: RandomCrop(32, 4) + RandomHorizontalFlip first), a DataLoader
    with batches of 100, float32 NCHW, eager, loss.item() every step.
(b) this repository: the scripts' step exactly (uint8 data as one tensor on the device, batched
    crop/flip, channels-last, --amp where it pays, per-step losses kept on the device).
Both train the same network and ArcFace head. Also measured in the same run: matrix-multiply
rates (float32 and bfloat16) to put the achieved FLOP/s in proportion, and (b) with the softmax
and triplet heads (--other-losses), so what a loss costs per training step is a ratio too.

    python benchmarks/throughput.py                         # both datasets, synthetic images
    python benchmarks/throughput.py --mnist-root ../shared/data --cifar10-root data/cifar10-jpg
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from common.cli import OneLineErrorParser  # noqa: E402
from common.heads import LOSSES  # noqa: E402
from common.batches import steps_per_epoch  # noqa: E402
from common.data import DATASETS, DataError, ImageData  # noqa: E402
from common.device import configure_backends, device_flag, device_name, has_native_bf16, synchronize  # noqa: E402
from common.results import atomic_write_text, check_writable, environment_info  # noqa: E402
from sweep_margins import SCRIPTS  # noqa: E402
from common.training import (build_model, first_batch_flops_per_image, fit_whitening, make_optimizer,  # noqa: E402
                             set_margin_ramp, start)

SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
SYNTHETIC_IMAGES = 6000  # enough for several passes of timed steps; content does not change the speed


class PILImages(torch.utils.data.Dataset):
    """uint8 images handed out one at a time as PIL images, as torchvision's MNIST and CIFAR10 do."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from PIL import Image

        image = self.images[i]  # (C, H, W) uint8
        pil = Image.fromarray(image[0].numpy() if image.shape[0] == 1 else image.permute(1, 2, 0).numpy())  # L / RGB
        return self.transform(pil), int(self.labels[i])


def load_images(name: str, root: str | None) -> ImageData:
    if root is None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (SYNTHETIC_IMAGES, *SHAPES[name]), dtype=torch.uint8, generator=generator)
        y = torch.randint(0, 10, (SYNTHETIC_IMAGES,), generator=generator)
        return ImageData(x, y, x[:100], y[:100], [str(c) for c in range(10)])
    return DATASETS[name].load(replace(SCRIPTS[name].DEFAULTS, data_root=root, download=False))


def recipe_step_fn(name: str, data: ImageData, config, device: torch.device, loader_workers: int):
    """(a): the straightforward recipe's training step, as a zero-argument callable."""
    from torchvision import transforms

    dataset = DATASETS[name]
    steps = [transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip()] if name == "cifar10" else []
    transform = transforms.Compose([*steps, transforms.ToTensor(), transforms.Normalize(dataset.mean, dataset.std)])
    loader = torch.utils.data.DataLoader(PILImages(data.train_x, data.train_y, transform), batch_size=config.batch_size,
                                         shuffle=True, num_workers=loader_workers, drop_last=True,
                                         pin_memory=device.type == "cuda")  # as pytorch/examples does on CUDA
    net, head = build_model(config, dataset.channels, data.num_classes, device)
    net = net.to(memory_format=torch.contiguous_format)  # the recipe's default NCHW
    optimizer = torch.optim.SGD([*net.parameters(), *head.parameters()], lr=config.lr, momentum=0.9, nesterov=True)
    batches = iter(loader)

    def step():
        nonlocal batches
        try:
            images, labels = next(batches)
        except StopIteration:
            batches = iter(loader)
            images, labels = next(batches)
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        loss = head.loss(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()  # the usual per-step logging: one host-device sync per step

    return step, net, head


def fast_step_fn(name: str, data: ImageData, config):
    """(b): the training script's own `train_step`, with the margin ramp its loop sets before each step, on the
    model, optimiser and schedule its run() builds with the same calls. Returns (step, training FLOPs per image)."""
    script, dataset = SCRIPTS[name], DATASETS[name]
    device, _ = start(config)  # validate, device, files, threads, seed
    data = data.to(device)
    normalize = dataset.normalizer(device)
    net, head = build_model(config, dataset.channels, data.num_classes, device)
    fit_whitening(config, net, data, normalize)
    steps = steps_per_epoch(len(data.train_y), config.batch_size)
    optimizer, scheduler = make_optimizer(config, net, head, steps * config.epochs)
    generator = torch.Generator(device).manual_seed(config.seed)
    flops = first_batch_flops_per_image(config, net, head, data, normalize)  # what count_train_tflop scales up
    state = {"order": [], "step": 0}
    net.train()
    head.train()

    def step():
        if not state["order"]:
            state["order"] = list(torch.randperm(len(data.train_y), generator=generator, device=device)
                                  .split(config.batch_size)[:-1])  # full batches only, as (a) drops the last
        batch = state["order"].pop()
        set_margin_ramp(head, config, state["step"] % (steps * config.epochs), steps * config.epochs)
        script.train_step(config, net, head, optimizer, scheduler, normalize, generator, data.train_x[batch],
                          data.train_y[batch])
        state["step"] += 1

    return step, flops


def images_per_second(step, batch_size: int, device: torch.device, warmup: int, steps: int, repeats: int) -> float:
    """Median over `repeats` of `steps` timed steps, after `warmup` untimed ones; synchronised on GPUs."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return batch_size * steps / statistics.median(times)


def matmul_tflops(device: torch.device, dtype: torch.dtype, size: int, budget_s: float = 2.0) -> tuple[float, int]:
    """Sustained square matmul rate in TFLOP/s by torch.utils.benchmark, and the side length used.

    Where a dtype is emulated (bfloat16 on CPUs without AVX512-BF16/AMX is ~400x slower than
    float32), one (size x size) product could take a minute: the side is halved until a 256-side
    probe predicts one product within `budget_s`.
    """
    from torch.utils import benchmark

    def timed(side: int, min_run_time: float) -> float:
        a = torch.randn(side, side, device=device).to(dtype)
        b = torch.randn(side, side, device=device).to(dtype)
        timer = benchmark.Timer("a @ b", globals={"a": a, "b": b}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=min_run_time).median

    probe = timed(256, 0.2)
    while size > 256 and probe * (size / 256) ** 3 > budget_s:
        size //= 2
    return 2 * size ** 3 / timed(size, 1.0) / 1e12, size


def benchmark_dataset(name: str, data: ImageData, args, device: torch.device, amp: bool) -> dict:
    config = replace(SCRIPTS[name].DEFAULTS, device=str(device), amp=amp, batch_size=args.batch_size, progress=False,
                     threads=args.threads, epochs=1)
    recipe, _, _ = recipe_step_fn(name, data, config, device, args.loader_workers)
    fast, flops = fast_step_fn(name, data, config)
    timing = (args.warmup, args.steps, args.repeats)
    recipe_rate = images_per_second(recipe, args.batch_size, device, *timing)
    fast_rate = images_per_second(fast, args.batch_size, device, *timing)
    per_loss = {"arcface": fast_rate}  # (b) with other heads: what the loss itself costs per step
    for loss in args.other_losses:
        per_loss[loss] = images_per_second(fast_step_fn(name, data, replace(config, loss=loss))[0], args.batch_size,
                                           device, *timing)
    epoch_images = {"mnist": 60000, "cifar10": 50000}[name]
    epochs = SCRIPTS[name].DEFAULTS.epochs  # a default run of the training script
    return {"dataset": name, "images": "synthetic" if getattr(args, f"{name}_root") is None else "real",
            "widths": "-".join(map(str, config.widths)), "batch_size": args.batch_size, "amp": amp,
            "recipe_images_per_s": recipe_rate, "fast_images_per_s": fast_rate, "speedup": fast_rate / recipe_rate,
            "recipe_epoch_s": epoch_images / recipe_rate, "fast_epoch_s": epoch_images / fast_rate,
            "train_gflop_per_image": flops / 1e9, "fast_tflops": flops * fast_rate / 1e12,
            "run_epochs": epochs, "run_tflop": flops * epoch_images * epochs / 1e12,
            "recipe_run_s": epochs * epoch_images / recipe_rate, "fast_run_s": epochs * epoch_images / fast_rate,
            "recipe_tflops": flops * recipe_rate / 1e12, "images_per_s_by_loss": per_loss}


def compare_presets(name: str, data: ImageData, args, device: torch.device, amp: bool) -> list[dict]:
    """The old recipe (--preset report) and the new (the script's defaults), each with its own network, batch
    size and epochs: training FLOPs per run, and time per run from (b)'s measured rate on this machine
    (training steps only; evaluation left out). Each in its own precision: the report preset is float32;
    the defaults' --amp auto takes `amp`, this benchmark's --amp."""
    script = SCRIPTS[name]
    epoch_images = {"mnist": 60000, "cifar10": 50000}[name]
    rows = []
    for preset, defaults in (("report", script.REPORT), ("default", script.DEFAULTS)):
        own_amp = amp if defaults.amp is None else defaults.amp
        config = replace(defaults, device=str(device), amp=own_amp, progress=False, threads=args.threads, epochs=1)
        step, flops = fast_step_fn(name, data, config)
        rate = images_per_second(step, config.batch_size, device, args.warmup, args.steps, args.repeats)
        rows.append({"dataset": name, "preset": preset, "widths": "-".join(map(str, config.widths)),
                     "convs_per_stage": config.convs_per_stage, "batch_size": config.batch_size,
                     "epochs": defaults.epochs, "amp": own_amp, "train_gflop_per_image": flops / 1e9,
                     "run_tflop": flops * epoch_images * defaults.epochs / 1e12, "images_per_s": rate,
                     "run_s": defaults.epochs * epoch_images / rate})
    return rows


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="throughput.py", description=__doc__)
    p.add_argument("--datasets", nargs="+", choices=sorted(SCRIPTS), default=["mnist", "cifar10"], help="which to time")
    p.add_argument("--other-losses", nargs="*", choices=[loss for loss in LOSSES if loss != "arcface"],
                   default=["softmax", "triplet"], help="also time (b) with these heads (ArcFace always)")
    p.add_argument("--mnist-root", default=None, help="MNIST data root (default: synthetic images of MNIST's shape)")
    p.add_argument("--cifar10-root", default=None, help="CIFAR-10 data root or image folder (default: synthetic)")
    p.add_argument("--device", default="auto", type=device_flag,
                   help="auto, cpu, cuda, cuda:N or mps; auto picks cuda, then mps, then cpu")
    p.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                   help="bfloat16 autocast for (b); auto: on where bfloat16 runs in hardware (CUDA from Ampere on, "
                        "CPUs with AVX512-BF16 or AMX), else off")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--batch-size", type=int, default=100, help="batch size of both recipes")
    p.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes of recipe (a)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repetition")
    p.add_argument("--repeats", type=int, default=3, help="repetitions; the median is reported")
    p.add_argument("--matmul-size", type=int, default=2048, help="side of the square matrices timed for peak rates")
    p.add_argument("--out", default="results/bench/throughput_{device}.json", help="JSON file of the results")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    parser.check_minimums(args, {"threads": 0, "loader_workers": 0, "warmup": 0, "batch_size": 1, "steps": 1,
                                 "repeats": 1, "matmul_size": 1})
    device = parser.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out.format(device=device.type)
    try:
        check_writable(out, "--out")
    except ValueError as exc:
        parser.error(str(exc))
    # Both recipes run with the same backend settings (on CUDA: cuDNN autotuning and TF32, as the
    # training scripts use), so the ratio measures the data pipeline and the step, not a flag.
    configure_backends(device)
    amp = {"on": True, "off": False, "auto": has_native_bf16(device)}[args.amp]
    try:  # read the data first: a missing dataset is one line, not a traceback after minutes of timing
        datasets = {name: load_images(name, getattr(args, f"{name}_root")) for name in args.datasets}
    except DataError as exc:
        parser.exit(2, f"{parser.prog}: error: {exc}\n")
    (fp32, fp32_side), (bf16, bf16_side) = (matmul_tflops(device, dtype, args.matmul_size)
                                            for dtype in (torch.float32, torch.bfloat16))
    peaks = {"fp32_matmul_tflops": fp32, "fp32_matmul_side": fp32_side, "bf16_matmul_tflops": bf16,
             "bf16_matmul_side": bf16_side}
    rows = []
    for name in args.datasets:
        row = benchmark_dataset(name, datasets[name], args, device, amp)
        row["fast_fraction_of_fp32_peak"] = row["fast_tflops"] / peaks["fp32_matmul_tflops"]
        row["fast_fraction_of_bf16_peak"] = row["fast_tflops"] / peaks["bf16_matmul_tflops"]
        rows.append(row)
        print(f"{name}: (a) recipe {row['recipe_images_per_s']:.0f} img/s, (b) this repo {row['fast_images_per_s']:.0f} "
              f"img/s: {row['speedup']:.2f}x; epoch {row['recipe_epoch_s']:.1f} s -> {row['fast_epoch_s']:.1f} s; "
              f"{row['train_gflop_per_image']:.3f} GFLOP/image, {row['run_tflop']:.1f} TFLOP per default run "
              f"({row['run_epochs']} epochs: {row['recipe_run_s']:.0f} s -> {row['fast_run_s']:.0f} s), (b) at {row['fast_tflops']:.4f} TFLOP/s = "
              f"{100 * row['fast_fraction_of_fp32_peak']:.1f}% of float32 / {100 * row['fast_fraction_of_bf16_peak']:.1f}% "
              f"of bfloat16 matmul", flush=True)
        rates = row["images_per_s_by_loss"]
        print(f"{name}: (b) by loss: " + ", ".join(f"{loss} {rate:.0f} img/s ({rate / rates['arcface']:.2f}x ArcFace)"
                                                 for loss, rate in rates.items()), flush=True)
        row["presets"] = compare_presets(name, datasets[name], args, device, amp)
        print(f"{name}: per training run, " + "; ".join(
            f"--preset {p['preset']} ({p['widths']} x{p['convs_per_stage']}, batch {p['batch_size']}, "
            f"{p['epochs']} epochs{', bf16' if p['amp'] else ''}): "
            f"{p['run_tflop']:.1f} TFLOP, {p['run_s']:.0f} s" for p in row["presets"]), flush=True)
    result = {"device": device.type, "device_name": device_name(device), "amp": amp, **peaks, "runs": rows,
              "command": " ".join(["python benchmarks/throughput.py", *(argv if argv is not None else sys.argv[1:])]),
              **environment_info(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    print(f"matmul: float32 {peaks['fp32_matmul_tflops']:.3f} TFLOP/s, bfloat16 {peaks['bf16_matmul_tflops']:.4f} TFLOP/s "
          f"on {device_name(device)}; wrote {out}")
    return result


if __name__ == "__main__":
    main()
