"""The reference recipe the CIFAR-10 target was set against, measured on this machine's data.

airbench94 (Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024) reports 94.0% mean test
accuracy on the original CIFAR-10 with 0.36 PFLOP of training. This script trains that published recipe,
written here from its description (not the project's training loop, and not airbench's code), on whatever
copy of CIFAR-10 `--data-root` holds, so that what the JPEG copy costs can be measured instead of guessed:

- network: a frozen 2x2 patch-whitening conv (24 filters: the 12 eigenvectors of the training patches'
  uncentred covariance, scaled by 1 / sqrt(eigenvalue + 5e-4), and their negatives; its bias trains for the
  first 3 epochs), GELU, three stages of [3x3 conv, 2x2 max-pool, BatchNorm, GELU, 3x3 conv, BatchNorm, GELU]
  at widths 64, 256, 256 (convs without bias, partly dirac-initialised; BatchNorm with fixed scale 1, eps
  1e-12, running-average momentum 0.4), a 3x3 max-pool, a linear layer to the 10 classes, logits x 1/9;
- training: batch 1024, 9.9 epochs, Nesterov SGD with momentum 0.85, learning rate 11.5 and weight decay
  0.0153 "per 1024 examples" (the summed loss; see `optimizer`), BatchNorm biases at 64x the learning rate,
  label smoothing 0.2, the learning rate rising from 0.2x to 1x over the first 23% of the steps and falling
  to 0.07x, lookahead averaging every 5 steps, random 2-pixel translation of reflect-padded images and
  alternating flips (each image's flip is drawn once and the whole set is mirrored every other epoch);
- evaluation: the mean logits of the image, its mirror, and both shifted one pixel (airbench's level 2).

    python benchmarks/airbench_reference.py --data-root data/cifar10-jpg --threads 1 \\
        --checkpoint checkpoints/airbench-s0.pt --out results/recipe/airbench_reference.csv

One row per run (accuracy, training TFLOP counted with torch.utils.flop_counter, seconds, versions, commit).
With --checkpoint the run saves after every epoch and a rerun of the same command resumes it.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from common.cli import OneLineErrorParser  # noqa: E402
from common.config import TrainConfig  # noqa: E402
from common.checkpoints import save_checkpoint  # noqa: E402
from common.data import CIFAR10, DataError, Normalize  # noqa: E402
from common.device import device_flag, device_name, pick_device  # noqa: E402
from common.evaluation import embed  # noqa: E402
from common.results import append_row, check_writable, environment_info  # noqa: E402
from common.training import whitening_sample  # noqa: E402

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)  # airbench's normalisation of CIFAR-10


@dataclass(frozen=True)
class Recipe:
    """The published hyperparameters; the flags change only what a test or a smaller run needs."""
    epochs: float = 9.9
    batch_size: int = 1024
    lr: float = 11.5  # per 1024 examples of summed loss, decoupled from momentum (`optimizer`)
    momentum: float = 0.85
    weight_decay: float = 0.0153  # per 1024 examples, decoupled from the learning rate
    bias_scaler: float = 64.0  # BatchNorm biases: this multiple of the learning rate, the same decay
    label_smoothing: float = 0.2
    whiten_bias_epochs: int = 3
    whiten_eps: float = 5e-4
    whiten_images: int = 5000
    translate: int = 2
    widths: tuple[int, int, int] = (64, 256, 256)
    bn_momentum: float = 0.4  # PyTorch's convention: weight of the new batch in the running statistics
    logit_scale: float = 1 / 9
    warmup: float = 0.23
    lr_start: float = 0.2
    lr_end: float = 0.07
    lookahead_every: int = 5


class Stage(nn.Module):
    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm1, self.norm2 = (nn.BatchNorm2d(c_out, eps=1e-12, momentum=bn_momentum) for _ in range(2))
        for conv in (self.conv1, self.conv2):  # the first min(out, in) filters start as the identity
            nn.init.dirac_(conv.weight.data[:min(conv.out_channels, conv.in_channels)])
        for norm in (self.norm1, self.norm2):
            norm.weight.requires_grad_(False)  # scale fixed at 1: only the shift trains

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.norm1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.norm2(self.conv2(x)))


def make_net(recipe: Recipe, classes: int) -> nn.Sequential:
    whiten = nn.Conv2d(3, 24, 2, bias=True)
    whiten.weight.requires_grad_(False)
    nn.init.zeros_(whiten.bias)
    w1, w2, w3 = recipe.widths
    return nn.Sequential(whiten, nn.GELU(), Stage(24, w1, recipe.bn_momentum), Stage(w1, w2, recipe.bn_momentum),
                         Stage(w2, w3, recipe.bn_momentum), nn.MaxPool2d(3), nn.Flatten(),
                         nn.Linear(w3, classes, bias=False))


def fit_whitening(conv: nn.Conv2d, images: torch.Tensor, eps: float) -> None:
    """Filters from (N, 3, H, W) normalised images: the uncentred covariance of all 2x2 patches (float64),
    its eigenvectors scaled by 1 / sqrt(eigenvalue + eps), and their negatives."""
    patches = images.double().unfold(2, 2, 1).unfold(3, 2, 1)  # (N, 3, H-1, W-1, 2, 2)
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)  # (P, 12): channel, row, column
    values, vectors = torch.linalg.eigh(patches.T @ patches / len(patches))
    filters = (vectors.T / torch.sqrt(values.clamp_min(0) + eps)[:, None]).reshape(12, 3, 2, 2)
    conv.weight.data.copy_(torch.cat([filters, -filters]).float())


def optimizer_for(net: nn.Sequential, recipe: Recipe) -> torch.optim.SGD:
    """Nesterov SGD on the summed loss. With momentum m a constant gradient moves a weight 1 + 1/(1 - m) times
    the learning rate per step, so the per-1024-examples rate is divided by 1024 (1 + 1/(1 - m)); the weight
    decay per step is weight_decay x batch / that same factor, whatever the learning rate of the group."""
    scale = 1024 * (1 + 1 / (1 - recipe.momentum))
    lr, decay = recipe.lr / scale, recipe.weight_decay * recipe.batch_size / scale
    # the whitening bias is among the others (it stops training after whiten_bias_epochs: `train`)
    biases = [p for n, p in net.named_parameters() if "norm" in n and p.requires_grad]
    others = [p for n, p in net.named_parameters() if "norm" not in n and p.requires_grad]
    groups = [{"params": biases, "lr": lr * recipe.bias_scaler, "weight_decay": decay / (lr * recipe.bias_scaler)},
              {"params": others, "lr": lr, "weight_decay": decay / lr}]
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True)


def lookahead(net: nn.Module, average: dict, done: int, total: int, recipe: Recipe) -> None:
    """Every `lookahead_every` steps the average of the floating-point state (weights and BatchNorm statistics)
    moves toward the model by 1 - rho, rho = 0.95**every x (done / total)**3, and the model continues from the
    average; after the last step the model becomes the average."""
    if done % recipe.lookahead_every == 0:
        rho = 0.95 ** recipe.lookahead_every * (done / total) ** 3
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                average[key].lerp_(value, 1 - rho)
                value.copy_(average[key])
    if done == total:
        for key, value in net.state_dict().items():
            if value.is_floating_point():
                value.copy_(average[key])


def lr_factor(step: int, total: int, recipe: Recipe) -> float:
    """Triangular schedule: lr_start -> 1 over the first `warmup` of the steps, then 1 -> lr_end."""
    rise = int(total * recipe.warmup)
    if step < rise:
        return recipe.lr_start + (1 - recipe.lr_start) * step / rise
    return 1 + (recipe.lr_end - 1) * (step - rise) / max(1, total - rise)


def translate(images: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Each (B, C, H, W) image shifted by an independent (dy, dx) in [-pad, pad]^2, reflect padding."""
    if pad == 0:
        return images
    n, _, h, w = images.shape
    padded = F.pad(images, (pad,) * 4, mode="reflect")
    shifts = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator, device=images.device)
    rows = (shifts[:, 0, None] + torch.arange(h, device=images.device))[:, None, :, None]  # (N, 1, H, 1)
    cols = (shifts[:, 1, None] + torch.arange(w, device=images.device))[:, None, None, :]  # (N, 1, 1, W)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    return padded[batch, torch.arange(images.shape[1], device=images.device)[None, :, None, None], rows, cols]


def step_flops(net: nn.Module, images: torch.Tensor, labels: torch.Tensor, recipe: Recipe) -> int:
    """FLOPs of one forward and backward pass on `images` (torch.utils.flop_counter)."""
    state = {k: v.clone() for k, v in net.state_dict().items()}  # BatchNorm statistics stay as they were
    with FlopCounterMode(display=False) as counter:
        loss = F.cross_entropy(net(images) * recipe.logit_scale, labels, label_smoothing=recipe.label_smoothing,
                               reduction="sum")
        loss.backward()
    net.zero_grad(set_to_none=True)
    net.load_state_dict(state)
    return counter.get_total_flops()


def train(args, recipe: Recipe) -> dict:
    device = pick_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    data = CIFAR10.load(TrainConfig(dataset="cifar10", data_root=args.data_root, download=False))
    normalize = Normalize(MEAN, STD, device)  # uint8 -> float32, channels-last (1.3x per step on one CPU thread)
    train_x = normalize(data.train_x.to(device))  # (N, 3, 32, 32)
    train_y, test_y = data.train_y.to(device), data.test_y.to(device)

    net = make_net(recipe, data.num_classes).to(device, memory_format=torch.channels_last)
    # strided, not the first images: an image folder loads class by class (airbench's file is shuffled)
    fit_whitening(net[0], whitening_sample(train_x, recipe.whiten_images), recipe.whiten_eps)
    optimizer = optimizer_for(net, recipe)
    steps_per_epoch = len(train_y) // recipe.batch_size  # the last partial batch is dropped
    if steps_per_epoch == 0:
        raise DataError(f"--batch-size {recipe.batch_size} is larger than the {len(train_y)} training images")
    total = math.ceil(steps_per_epoch * recipe.epochs)
    generator = torch.Generator(device).manual_seed(args.seed)
    flipped = torch.rand(len(train_y), generator=generator, device=device) < 0.5  # alternating flips: epoch 0's
    average = {k: v.clone() for k, v in net.state_dict().items()}  # lookahead's slow weights
    done, seconds = 0, 0.0
    if args.checkpoint and os.path.isfile(args.checkpoint):
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
        net.load_state_dict(state["net"])
        optimizer.load_state_dict(state["optimizer"])
        average, flipped, done, seconds = state["average"], state["flipped"], state["step"], state["seconds"]
        generator.set_state(state["generator"].cpu())  # a generator's state is a CPU tensor on every device
        print(f"resumed from {args.checkpoint} at step {done} of {total}")
    flops = step_flops(net, train_x[:recipe.batch_size], train_y[:recipe.batch_size], recipe)

    while done < total:
        epoch = done // steps_per_epoch
        started = time.perf_counter()
        net.train()
        net[0].bias.requires_grad_(epoch < recipe.whiten_bias_epochs)
        images = torch.where(flipped[:, None, None, None] ^ bool(epoch % 2), train_x.flip(3), train_x)
        images = translate(images, recipe.translate, generator).contiguous(memory_format=torch.channels_last)
        order = torch.randperm(len(train_y), generator=generator, device=device)
        for i in range(steps_per_epoch):
            if done >= total:
                break
            for group in optimizer.param_groups:
                group.setdefault("base_lr", group["lr"])
                group["lr"] = group["base_lr"] * lr_factor(done, total, recipe)
            batch = order[i * recipe.batch_size:(i + 1) * recipe.batch_size]
            logits = net(images[batch]) * recipe.logit_scale
            loss = F.cross_entropy(logits, train_y[batch], label_smoothing=recipe.label_smoothing, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            done += 1
            lookahead(net, average, done, total, recipe)
        seconds += time.perf_counter() - started
        print(f"epoch {epoch + 1}/{math.ceil(recipe.epochs)}  loss {loss.item() / len(batch):.4f}  "
              f"{seconds:.0f} s", flush=True)
        if args.checkpoint:
            save_checkpoint(args.checkpoint, net=net.state_dict(), optimizer=optimizer.state_dict(), average=average,
                            flipped=flipped, step=done, seconds=seconds, generator=generator.get_state())

    # level-2 test-time augmentation on the logits (the x 1/9 scale does not change the argmax)
    predicted = embed(net, data.test_x.to(device), normalize, False, flip_tta=True, translate_tta=True).argmax(1)
    accuracy = (predicted == test_y).float().mean().item()
    row = {"recipe": "airbench94 (reimplemented)", "data_root": args.data_root, "seed": args.seed,
           "epochs": recipe.epochs, "batch_size": recipe.batch_size, "steps": total, "widths": "-".join(map(str, recipe.widths)),
           "test_acc": round(accuracy, 6), "train_tflop": flops * total / 1e12, "train_seconds": round(seconds, 2),
           "threads": torch.get_num_threads(), "device": device.type, "device_name": device_name(device),
           **environment_info()}
    append_row(args.out, row)
    print(f"airbench94 recipe on {args.data_root}: test acc {accuracy:.4f} (TTA level 2), "
          f"{row['train_tflop']:.1f} TFLOP and {seconds:.0f} s to train; row appended to {args.out}")
    return row


def build_parser() -> argparse.ArgumentParser:
    p = OneLineErrorParser(prog="airbench_reference.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="data/cifar10-jpg", help="CIFAR-10: an image folder or torchvision's copy")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialisation, shuffling and augmentation")
    p.add_argument("--epochs", type=float, default=Recipe.epochs, help="training epochs (airbench: 9.9)")
    p.add_argument("--batch-size", type=int, default=Recipe.batch_size, help="images per step (airbench: 1024)")
    p.add_argument("--widths", default="64-256-256", help="the three stages' widths (airbench: 64-256-256)")
    p.add_argument("--whiten-images", type=int, default=Recipe.whiten_images,
                   help="training images the whitening filters are fitted to (airbench: 5000)")
    p.add_argument("--device", default="auto", type=device_flag, help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    p.add_argument("--checkpoint", default=None, help="save after every epoch here; resume from it if it exists")
    p.add_argument("--out", default="results/recipe/airbench_reference.csv", help="results CSV (one row appended)")
    return p


def main(argv: list[str] | None = None) -> dict:
    parser = build_parser()
    args = parser.parse_args(argv)
    parser.check_minimums(args, {"batch_size": 1, "threads": 0, "whiten_images": 1})
    if not 0 < args.epochs <= 1000:
        parser.error(f"--epochs must be above 0 (got {args.epochs:g})")
    try:
        widths = tuple(int(w) for w in args.widths.split("-"))
    except ValueError:
        widths = ()
    if len(widths) != 3 or min(widths) < 1:
        parser.error(f"--widths must be three positive integers like 64-256-256 (got {args.widths})")
    check_writable(args.out, "--out")
    if args.checkpoint:
        check_writable(args.checkpoint, "--checkpoint")
    recipe = Recipe(epochs=args.epochs, batch_size=args.batch_size, widths=widths, whiten_images=args.whiten_images)
    try:
        return train(args, recipe)
    except DataError as exc:
        parser.exit(2, f"airbench_reference.py: error: {exc}\n")


if __name__ == "__main__":
    main()
