"""Pieces every training script shares: optimiser and schedule, evaluation, divergence guard,
checkpoints and the result files. The loops themselves live in the scripts."""
from __future__ import annotations

import math
import os
import random
import sys
import time
import uuid
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .checkpoints import check_resume, read_checkpoint, save_checkpoint
from .config import TrainConfig, fail, parse_config
from .data import DataError, ImageData, Normalize
from .device import autocast, configure_backends, device_name, has_native_bf16, pick_device
from .evaluation import (VERIFY_MAX_IMAGES, corruption_accuracy, corruption_columns, open_set_metrics, subsample,
                         tail_recall)
from .heads import ArcNet, CentroidHead, build_head
from .metrics import classification_metrics, confusion_matrix
from .network import Network, init_whitening
from .results import append_row, environment_info, write_csv
from .retrieval import retrieval_metrics

EVAL_BATCH = 1000
WHITENING_IMAGES = 5000  # training images the --whiten stem's patch statistics come from


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(config: TrainConfig, net: nn.Module, head: nn.Module, total_steps: int):
    """SGD with Nesterov momentum; LR warms up linearly for `warmup` of the steps, then decays linearly to 0.
    The head's parameters take --head-weight-decay (default: --weight-decay); with --bn-bias-lr F != 1 the
    BatchNorm biases form their own group at F x --lr and --weight-decay / F."""
    # At F = 1 no group of their own (it is dropped empty), so older checkpoints' optimiser state still loads.
    biases = [] if config.bn_bias_lr == 1 else [m.bias for m in net.modules()
                                                if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    groups = [{"params": [p for p in net.parameters() if all(p is not b for b in biases)],
               "weight_decay": config.weight_decay},
              {"params": biases, "lr": config.lr * config.bn_bias_lr,
               "weight_decay": config.weight_decay / config.bn_bias_lr},
              {"params": list(head.parameters()), "weight_decay": config.head_decay()}]
    groups = [g for g in groups if g["params"]]  # a triplet head has no parameters
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    warmup_steps = max(1, round(config.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def margin_ramp(config: TrainConfig, step: int, total_steps: int) -> float:
    """Fraction of the margins applied at optimiser step `step` (0-based) of `total_steps`: grows linearly
    to 1 over the first --margin-warmup of the steps; 1 throughout without warm-up."""
    ramp_steps = config.margin_warmup * total_steps
    return 1.0 if ramp_steps < 1 else min(1.0, (step + 1) / ramp_steps)


def set_margin_ramp(head: nn.Module, config: TrainConfig, step: int, total_steps: int) -> None:
    """Apply `margin_ramp` to a margin head (other heads have no margins)."""
    if hasattr(head, "ramp"):
        head.ramp = margin_ramp(config, step, total_steps)


def check_finite(losses: torch.Tensor, start: int, stop: int, epoch: int) -> None:
    """Raise DivergedError naming the first non-finite loss among steps [start, stop) of `losses`.

    The per-step losses stay on the device; checking a window at a time costs one sync per
    window instead of one per step.
    """
    window = losses[start:stop]
    if not bool(torch.isfinite(window).all()):
        step = start + int((~torch.isfinite(window)).nonzero()[0, 0])
        raise DivergedError(f"loss became {losses[step].item()} at epoch {epoch + 1}, step {step + 1}")


def as_float(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 / float16 (what the backbone returns under --amp) -> float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


@torch.no_grad()
def embed(net: nn.Module, images: torch.Tensor, normalize, amp: bool, flip_tta: bool = False) -> torch.Tensor:
    """Embeddings (N, D), float32 (float64 for a float64 model), of uint8 images (N, C, H, W), in eval mode, in
    batches. flip_tta: the mean of the embeddings of each image and its mirror image (test-time augmentation;
    every head and metric then sees that mean)."""
    net.eval()

    def one(chunk: torch.Tensor) -> torch.Tensor:
        x = normalize(chunk)
        out = as_float(net_forward(net, x, amp))
        return (out + as_float(net_forward(net, x.flip(3), amp))) / 2 if flip_tta else out

    return torch.cat([one(chunk) for chunk in images.split(EVAL_BATCH)])


def whitening_sample(images: torch.Tensor) -> torch.Tensor:
    """About WHITENING_IMAGES training images, evenly strided (a class-sorted folder gives every class)."""
    return images[::max(1, len(images) // WHITENING_IMAGES)][:WHITENING_IMAGES]


def net_forward(net: nn.Module, images: torch.Tensor, amp: bool) -> torch.Tensor:
    with autocast(images.device, amp):
        return net(images)


def training_flops_per_image(net: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             amp: bool) -> float:
    """FLOPs of one training step (forward and backward through backbone and head) per image, as
    torch.utils.flop_counter counts them (matrix products and convolutions) on this batch.

    Counted on deep copies, so the models' weights, gradients and BatchNorm statistics are left as
    they were, and no random number is drawn: counting never changes a run. images: normalised
    (B, C, H, W); FLOPs are linear in B, so any batch size gives the same per-image count.
    """
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    net, head = copy.deepcopy(net).train(), copy.deepcopy(head).train()
    with FlopCounterMode(display=False) as counter:
        head.loss(as_float(net_forward(net, images, amp)), labels).backward()
    return counter.get_total_flops() / len(labels)


def first_batch_flops_per_image(config: TrainConfig, net: nn.Module, head: nn.Module, data: ImageData,
                                normalize) -> float:
    """`training_flops_per_image` on the first training batch, unaugmented (cropping and flipping do not
    change the count). A run's `train_tflop` is this times images per epoch times epochs."""
    images = normalize(data.train_x[:config.batch_size])
    return training_flops_per_image(net, head, images, data.train_y[:config.batch_size], config.amp)


@torch.no_grad()
def evaluate(net: nn.Module, head: nn.Module, data: ImageData, normalize, config: TrainConfig) -> tuple[dict, torch.Tensor]:
    """Test-set metrics and (C, C) confusion matrix (with config's --amp and --flip-tta). A triplet head's
    centres are refitted first. Two diagnostics of the geometry go with the metrics: `embedding_norm`,
    the mean length of the test embeddings before any normalisation, and, for a margin head,
    `target_angle`, the mean angle in degrees between a test embedding and its own class centre, and
    `centre_angle`, the mean angle between two class centres (`mean_pairwise_angle`)."""
    head.eval()
    amp, tta = config.amp, config.flip_tta
    if isinstance(head, CentroidHead):
        head.fit_centres(embed(net, data.train_x, normalize, amp, tta), data.train_y)
    embeddings = embed(net, data.test_x, normalize, amp, tta)  # (N, D)
    logits = head(embeddings)  # (N, C); s * cos for a margin head (no labels: no margin)
    confusion = confusion_matrix(data.test_y, logits.argmax(dim=1), data.num_classes)
    metrics = {**classification_metrics(confusion), "embedding_norm": embeddings.norm(dim=1).mean().item()}
    if isinstance(head, ArcNet):
        cos = (logits.gather(1, data.test_y.view(-1, 1)) / head.s).clamp(-1.0, 1.0)  # (N, 1)
        metrics["target_angle"] = torch.rad2deg(torch.acos(cos)).mean().item()
        metrics["centre_angle"] = mean_pairwise_angle(head.weight.detach().float())
    return metrics, confusion


def mean_pairwise_angle(vectors: torch.Tensor) -> float:
    """Mean angle in degrees over all pairs of rows of `vectors` (C, D), C >= 2: about 90 for random
    directions, 96.4 for 10 classes spread as far apart as they can be, near 0 when they collapse."""
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cos = (unit @ unit.t()).clamp(-1.0, 1.0)  # (C, C)
    pairs = torch.triu_indices(len(unit), len(unit), offset=1, device=unit.device)
    return torch.rad2deg(torch.acos(cos[pairs[0], pairs[1]])).mean().item()


@torch.no_grad()
def evaluate_extras(config: TrainConfig, setup: "RunSetup", metrics: dict) -> tuple[dict, list[dict]]:
    """Result columns beyond clean accuracy: training class counts, rare-class recall, retrieval on the
    test embeddings; with --holdout-classes, open-set verification; with --corruptions, corrupted
    accuracy (also returned per corruption and severity). Call after the final `evaluate`, which
    fits a triplet head's class centres."""
    net, head, data, normalize = setup.net, setup.head, setup.data, setup.normalize
    head.eval()
    columns = {"train_class_counts": ";".join(map(str, data.train_class_counts())),
               "tail_recall": tail_recall(metrics["per_class_recall"]),
               **retrieval_metrics(embed(net, data.test_x, normalize, config.amp, config.flip_tta), data.test_y)}
    if config.holdout_classes:
        open_x, open_y = subsample(*setup.open_set, VERIFY_MAX_IMAGES)
        columns.update(open_set_metrics(embed(net, open_x, normalize, config.amp, config.flip_tta), open_y))
    corrupted = []
    if config.corruptions:
        def classify(images: torch.Tensor) -> torch.Tensor:
            return head(embed(net, images, normalize, config.amp, config.flip_tta)).argmax(dim=1)
        corrupted = corruption_accuracy(classify, data.test_x, data.test_y, config.corruption_samples)
        columns.update(corruption_columns(corrupted))
    return columns, corrupted


def load_checkpoint(path: str, config: TrainConfig) -> dict:
    """The checkpoint at `path` if `config` can resume it on its device; ValueError saying why not."""
    return check_resume(path, config.as_row(), pick_device(config.device))


def run_id(config: TrainConfig) -> str:
    # the random suffix keeps apart runs of one process finished in the same second (a grouped sweep)
    return f"{config.dataset}-{config.loss}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def write_results(config: TrainConfig, setup: "RunSetup", metrics: dict, confusion: torch.Tensor,
                  extras: tuple[dict, list[dict]]) -> dict:
    """Append the run's row to config.out; history.csv, confusion.csv (and corruptions.csv) go to a
    folder beside it. `extras` is what `evaluate_extras` returns. A run whose row (same run_id, as a
    resumed finished checkpoint has) is already in config.out is not appended twice."""
    columns, corrupted = extras
    history, train_seconds, device, classes = setup.history, setup.train_seconds, setup.device, setup.data.classes
    rid = setup.run_id
    train_tflop = setup.flops_per_image * len(setup.data.train_y) * config.epochs / 1e12
    row = {**config.as_row(), "test_acc": metrics["accuracy"], "test_precision": metrics["precision"],
           "test_recall": metrics["recall"], "test_f1": metrics["f1"],
           "per_class_recall": ";".join(f"{r:.4f}" for r in metrics["per_class_recall"]), **columns,
           "train_tflop": train_tflop,
           "train_seconds": round(train_seconds, 2), "seconds_per_epoch": round(train_seconds / config.epochs, 2),
           "device": device.type, "device_name": device_name(device), **setup.environment, "run_id": rid,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for key in ("out", "checkpoint", "resume", "progress"):
        row.pop(key)
    run_dir = os.path.join(os.path.splitext(config.out)[0], rid)
    write_csv(os.path.join(run_dir, "history.csv"), history)
    write_csv(os.path.join(run_dir, "confusion.csv"),
              [{"true": name, **{p: int(n) for p, n in zip(classes, counts)}} for name, counts in zip(classes, confusion.tolist())])
    if corrupted:
        write_csv(os.path.join(run_dir, "corruptions.csv"), corrupted)
    if append_row(config.out, row, unique="run_id"):
        print(f"{config.dataset} {config.loss}: test acc {metrics['accuracy']:.4f}, macro F1 {metrics['f1']:.4f}, "
              f"{train_tflop:.3g} TFLOP and {train_seconds:.0f} s to train; row appended to {config.out}", flush=True)
    else:
        print(f"run {rid} already has its row in {config.out}: not appended again")
    return row


def format_epoch(epoch: int, epochs: int, loss: float, metrics: dict, seconds: float) -> str:
    return (f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}  test acc {metrics['accuracy']:.4f}  "
            f"macro F1 {metrics['f1']:.4f}  {seconds:.1f}s")


def steps_per_epoch(num_train: int, batch_size: int) -> int:
    return math.ceil(num_train / batch_size)



def load_resume_state(config: TrainConfig, net: nn.Module, head: nn.Module, optimizer, scheduler,
                      generator: torch.Generator) -> tuple[int, list[dict], float, str]:
    """Restore a --resume checkpoint into the given objects; returns (next epoch, history, seconds so far,
    run id). Without --resume: (0, [], 0.0, a new run id)."""
    if config.resume is None:
        return 0, [], 0.0, run_id(config)
    state = read_checkpoint(config.resume)  # start_run's config.validate() has checked it can be resumed
    net.load_state_dict(state["net"])
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    print(f"resumed from {config.resume} after epoch {state['epoch']}")
    # checkpoints from before run ids were saved get a new one
    return state["epoch"], state["history"], state["train_seconds"], state.get("run_id") or run_id(config)


def warn_if_slow_amp(config: TrainConfig, device: torch.device) -> None:
    if config.amp and device.type in ("cpu", "cuda") and not has_native_bf16(device):
        what = "a CPU without AVX512-BF16/AMX" if device.type == "cpu" else "a GPU older than Ampere"
        print(f"warning: --amp on {what}: bfloat16 is emulated and much slower than float32")


def cli_main(run, defaults: TrainConfig, prog: str, description: str, argv: list[str] | None = None,
             presets: dict[str, TrainConfig] | None = None) -> dict:
    """Parse flags (--preset picks one of `presets` as the defaults), call run(config), and turn the
    expected failures into one-line errors."""
    config = parse_config(argv, defaults, prog, description, presets)
    try:
        return run(config)
    except (DataError, ValueError) as exc:
        fail(prog, str(exc), 2)
    except DivergedError as exc:
        kept = f"; the last good checkpoint is {config.checkpoint}" if config.checkpoint else ""
        fail(prog, f"{exc}: stopped, no result row written{kept}", 1)
    except KeyboardInterrupt:
        hint = f"; continue with --resume {config.checkpoint}" if config.checkpoint else ""
        print(f"\n{prog}: interrupted{hint}", file=sys.stderr)
        sys.exit(130)


def record_epoch(history: list[dict], epoch: int, epochs: int, losses: torch.Tensor, metrics: dict,
                 scheduler, train_seconds: float, epoch_seconds: float) -> None:
    """Append the epoch's summary to `history` and print its one-line report."""
    mean_loss = losses.mean().item()
    history.append({"epoch": epoch + 1, "train_loss": mean_loss, "test_acc": metrics["accuracy"],
                    "test_f1": metrics["f1"], "lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                    "embedding_norm": metrics["embedding_norm"], "target_angle": metrics.get("target_angle", ""),
                    "centre_angle": metrics.get("centre_angle", "")})
    print(format_epoch(epoch, epochs, mean_loss, metrics, epoch_seconds), flush=True)


def save_training_state(config: TrainConfig, setup: "RunSetup", epochs_done: int) -> None:
    """Everything --resume needs to continue bit-for-bit, saved to config.checkpoint (if set)."""
    if config.checkpoint:
        save_checkpoint(config.checkpoint, net=setup.net.state_dict(), head=setup.head.state_dict(),
                        optimizer=setup.optimizer.state_dict(), scheduler=setup.scheduler.state_dict(),
                        generator=setup.generator.get_state(), epoch=epochs_done, history=setup.history,
                        train_seconds=setup.train_seconds, config=config.as_row(), run_id=setup.run_id,
                        device=setup.device.type)


@dataclass
class RunSetup:
    """Everything a training loop needs, built from a validated config."""

    device: torch.device
    data: ImageData  # on `device`
    normalize: Normalize
    net: nn.Module
    head: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # drives shuffling and augmentation; saved in checkpoints
    steps: int  # optimiser steps per epoch
    first_epoch: int
    history: list[dict]
    train_seconds: float
    environment: dict  # versions and git commit, read when the run starts
    open_set: tuple[torch.Tensor, torch.Tensor]  # held-out classes' test images and labels (empty without --holdout-classes)
    run_id: str  # names the row and its folder; kept across --resume
    flops_per_image: float  # training FLOPs (forward + backward) per image, first_batch_flops_per_image


def build_model(config: TrainConfig, in_channels: int, num_classes: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The backbone (channels-last) and the loss's head that `config` describes, on `device`."""
    s, m1, m2, m3 = config.margins()
    net = Network(in_channels, config.latent_dim, config.widths, config.convs_per_stage, config.embedding_bn,
                  config.whiten, config.dirac_init)
    head = build_head(config.loss, config.latent_dim, num_classes, s, m1, m2, m3, config.triplet_margin,
                      config.label_smoothing, config.margin_tail, config.margin_grad)
    return net.to(device, memory_format=torch.channels_last), head.to(device)


def start_run(config: TrainConfig, load_data) -> tuple[torch.device, ImageData, tuple[torch.Tensor, torch.Tensor]]:
    """Validate, pick the device, set threads, seed, and load the training data as `config` shapes it
    (held-out classes, then a stratified subset of N images, then a long tail), on the device:
    (device, data, held-out test set)."""
    config.validate()
    device = pick_device(config.device)
    configure_backends(device)
    warn_if_slow_amp(config, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data, open_x, open_y = load_data(config).hold_out_classes(config.holdout_classes)
    data = data.subset_train(config.max_train_samples, config.seed).long_tailed(config.imbalance, config.seed).to(device)
    return device, data, (open_x.to(device), open_y.to(device))


def prepare_run(config: TrainConfig, load_data, in_channels: int, mean: tuple, std: tuple) -> RunSetup:
    """Validate, pick the device, seed, load the data onto the device, build the model, restore --resume."""
    device, data, open_set = start_run(config, load_data)
    net, head = build_model(config, in_channels, data.num_classes, device)
    normalize = Normalize(mean, std, device)
    if config.whiten:  # fits the stem's filters; draws no random numbers
        init_whitening(net, normalize(whitening_sample(data.train_x)))
    steps = steps_per_epoch(len(data.train_y), config.batch_size)
    optimizer, scheduler = make_optimizer(config, net, head, steps * config.epochs)
    generator = torch.Generator(device).manual_seed(config.seed)
    first_epoch, history, train_seconds, rid = load_resume_state(config, net, head, optimizer, scheduler, generator)
    flops = first_batch_flops_per_image(config, net, head, data, normalize)
    return RunSetup(device, data, normalize, net, head, optimizer, scheduler, generator, steps,
                    first_epoch, history, train_seconds, environment_info(), open_set, rid, flops)
