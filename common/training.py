"""The steps every training script's `run()` takes before and inside its loop, in the order it takes them:
`start` (validate, device, threads, seed), `load_training_data`, `build_model`, `fit_whitening`,
`make_optimizer` (SGD and its schedule), `count_train_tflop`; in the loop `set_margin_ramp` (--margin-warmup),
`check_finite` (the divergence guard) and `record_epoch`. The loops themselves live
in the scripts; evaluation, checkpoints and result files have modules of their own."""
from __future__ import annotations

import copy
import os
import random

import numpy as np
import torch
from torch import nn

from .checkpoints import check_resume
from .config import TrainConfig
from .results import MIN_FREE_BYTES, check_writable
from .data import Dataset, ImageData, Normalize
from .image_folder import check_same_data
from .device import configure_backends, has_native_bf16, pick_device
from .heads import build_head
from .network import Network, as_float, init_whitening, net_forward

WHITENING_IMAGES = 5000  # training images the --whiten stem's patch statistics come from


class DivergedError(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def start(config: TrainConfig) -> tuple[torch.device, dict | None]:
    """Everything a run checks and sets before it reads data: validate the settings (once, here), pick the
    device and its backend settings, check the files the run will write (`check_files`) and read the
    --resume checkpoint, set torch's CPU threads (--threads), and seed every generator (--seed). Returns
    the device and the checkpoint to resume (None without --resume)."""
    config.validate()
    device = pick_device(config.device)
    configure_backends(device)
    warn_if_slow_amp(config, device)
    resumed = check_files(config, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    return device, resumed


def check_files(config: TrainConfig, device: torch.device) -> dict | None:
    """ValueError naming the flag unless --out (with its lock and temporary file) and --checkpoint can be
    created with room on their disks; with --resume, the checkpoint, read once and checked (`check_resume`)."""
    check_writable(config.out, "--out", companions=(".lock",))
    if config.checkpoint is not None:
        check_writable(config.checkpoint, "--checkpoint")
    if config.resume is None:
        return None
    if not os.path.isfile(config.resume):
        raise ValueError(f"--resume: no checkpoint file at {config.resume}")
    return check_resume(config.resume, config.as_row(), device)


def check_checkpoint_space(config: TrainConfig, net: nn.Module, head: nn.Module) -> None:
    """ValueError naming --checkpoint when its disk has less room than a checkpoint of this model takes:
    weights and one momentum buffer each (SGD), twice over while the new file replaces the old."""
    if config.checkpoint is not None:
        size = sum(t.numel() * t.element_size() for m in (net, head) for t in m.state_dict().values())
        check_writable(config.checkpoint, "--checkpoint", need_bytes=4 * size + MIN_FREE_BYTES)


def warn_if_slow_amp(config: TrainConfig, device: torch.device) -> None:
    if config.amp and device.type in ("cpu", "cuda") and not has_native_bf16(device):
        what = "a CPU without AVX512-BF16/AMX" if device.type == "cpu" else "a GPU older than Ampere"
        print(f"warning: --amp on {what}: bfloat16 is emulated and much slower than float32")


def load_training_data(config: TrainConfig, dataset: Dataset, device: torch.device,
                       resumed: dict | None = None) -> tuple[ImageData, tuple[torch.Tensor, torch.Tensor]]:
    """The dataset as `config` shapes it, on the device: the --num-classes subset of classes, the
    --val-per-class validation split (evaluated instead of the test set), held-out classes set apart, then a
    stratified subset of --max-train-samples images, then a long tail (--imbalance). Returns (data, open
    set), the open set being the held-out classes' evaluation images and labels (empty without
    --holdout-classes). Its `identity()` says what it is (classes and files); a --resume checkpoint
    (`resumed`) trained on other data is refused (ValueError naming both), before any model is built."""
    data = dataset.load(config).keep_classes(config.num_classes).validation_split(config.val_per_class)
    data, open_x, open_y = data.hold_out_classes(config.holdout_classes)
    data = data.subset_train(config.max_train_samples, config.seed).long_tailed(config.imbalance, config.seed).to(device)
    if resumed is not None:
        check_same_data(resumed.get("data", {}), data.identity(), "--resume", config.resume, config.data_root)
    return data, (open_x.to(device), open_y.to(device))


def build_model(config: TrainConfig, in_channels: int, num_classes: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    """The backbone (channels-last) and the loss's head that `config` describes, on `device`."""
    net = Network(in_channels, config.latent_dim, config.widths, config.convs_per_stage, config.embedding_bn,
                  config.whiten, config.dirac_init, config.activation, config.pool_first, config.global_pool,
                  config.bn_scale)
    head = build_head(config.loss, config.latent_dim, num_classes, config.margins(), config.triplet_margin,
                      config.label_smoothing, config.margin_tail, config.margin_grad, config.triplet_mining)
    return net.to(device, memory_format=torch.channels_last), head.to(device)


def whitening_sample(images: torch.Tensor, count: int = WHITENING_IMAGES) -> torch.Tensor:
    """About `count` training images, evenly strided (a class-sorted folder gives every class)."""
    return images[::max(1, len(images) // count)][:count]


def fit_whitening(config: TrainConfig, net: nn.Module, data: ImageData, normalize: Normalize) -> None:
    """With --whiten, set the stem's filters from training images; draws no random numbers."""
    if config.whiten:
        init_whitening(net, normalize(whitening_sample(data.train_x)))


def make_optimizer(config: TrainConfig, net: nn.Module, head: nn.Module, total_steps: int):
    """SGD with Nesterov momentum; LR warms up linearly for `warmup` of the steps, then decays linearly to 0.
    The head's parameters take --head-weight-decay (default: --weight-decay)."""
    groups = [{"params": list(net.parameters()), "weight_decay": config.weight_decay},
              {"params": list(head.parameters()), "weight_decay": config.head_decay()}]
    groups = [g for g in groups if g["params"]]  # a triplet head has no parameters
    optimizer = torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    warmup_steps = max(1, round(config.warmup * total_steps))

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def training_flops_per_image(net: nn.Module, head: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                             amp: bool) -> float:
    """FLOPs of one training step (forward and backward through backbone and head) per image, as
    torch.utils.flop_counter counts them (matrix products and convolutions) on this batch.

    Counted on deep copies, so the models' weights, gradients and BatchNorm statistics are left as
    they were, and no random number is drawn: counting never changes a run. images: normalised
    (B, C, H, W); FLOPs are linear in B, so any batch size gives the same per-image count.
    """
    from torch.utils.flop_counter import FlopCounterMode

    net, head = copy.deepcopy(net).train(), copy.deepcopy(head).train()
    with FlopCounterMode(display=False) as counter:
        head.loss(as_float(net_forward(net, images, amp)), labels).backward()
    return counter.get_total_flops() / len(labels)


def first_batch_flops_per_image(config: TrainConfig, net: nn.Module, head: nn.Module, data: ImageData,
                                normalize: Normalize) -> float:
    """`training_flops_per_image` on the first training batch, unaugmented (cropping and flipping do not
    change the count)."""
    images = normalize(data.train_x[:config.batch_size])
    return training_flops_per_image(net, head, images, data.train_y[:config.batch_size], config.amp)


def count_train_tflop(config: TrainConfig, net: nn.Module, head: nn.Module, data: ImageData,
                      normalize: Normalize) -> float:
    """The run's training compute in TFLOP: `first_batch_flops_per_image` times images per epoch times epochs."""
    return first_batch_flops_per_image(config, net, head, data, normalize) * len(data.train_y) * config.epochs / 1e12


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


def evaluates_at(config: TrainConfig, epoch: int) -> bool:
    """Whether the loop evaluates the test set after epoch `epoch` (0-based): every --eval-every-th, and the last.
    Evaluation draws no random number and leaves the weights and BatchNorm statistics alone (a triplet head's
    centres, refitted at each evaluation, do not enter its loss), so skipping it changes nothing in training."""
    return (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs


def format_epoch(epoch: int, epochs: int, loss: float, metrics: dict | None, seconds: float) -> str:
    tested = (f"test acc {metrics['accuracy']:.4f}  macro F1 {metrics['f1']:.4f}" if metrics is not None
              else "(not evaluated: --eval-every)")
    return f"epoch {epoch + 1}/{epochs}  loss {loss:.4f}  {tested}  {seconds:.1f}s"


def record_epoch(history: list[dict], epoch: int, epochs: int, losses: torch.Tensor, metrics: dict | None,
                 scheduler, train_seconds: float, epoch_seconds: float) -> None:
    """Append the epoch's summary to `history` and print its one-line report; the test columns are blank
    for an epoch that was not evaluated (metrics None)."""
    mean_loss = losses.mean().item()
    tested = metrics or {}
    history.append({"epoch": epoch + 1, "train_loss": mean_loss, "test_acc": tested.get("accuracy", ""), "test_top5": tested.get("top5", ""),
                    "test_f1": tested.get("f1", ""), "lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds,
                    "embedding_norm": tested.get("embedding_norm", ""), "target_angle": tested.get("target_angle", ""),
                    "centre_angle": tested.get("centre_angle", "")})
    print(format_epoch(epoch, epochs, mean_loss, metrics, epoch_seconds), flush=True)
