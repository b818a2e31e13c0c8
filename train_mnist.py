"""Train a network on MNIST (the recipe of results/README.md by default; --preset report: the source report's)
with softmax, ArcFace, CosFace, SphereFace, the combined margin, or triplet loss; append the test metrics
to a results CSV (default runs/train_mnist.csv).

    python train_mnist.py                  # ArcFace (s=30, m2=0.5)
    python train_mnist.py --loss softmax   # the plain softmax baseline
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from common.batches import epoch_batches, steps_per_epoch
from common.checkpoints import resume_run, save_run
from common.cli import cli_main
from common.config import TrainConfig
from common.data import MNIST, augment
from common.evaluation import evaluate, evaluate_extras
from common.network import as_float, net_forward
from common.results import write_results
from common.training import (build_model, check_checkpoint_space, check_finite, count_train_tflop, evaluates_at, fit_whitening,
                             load_training_data, make_optimizer, record_epoch, set_margin_ramp, start)

# The recipe of results/README.md "The training recipe on MNIST" (its compute and accuracy are there): a
# narrower, deeper network than the report's, the margins' unit gradient and warm-up, bfloat16 where native.
DEFAULTS = TrainConfig(dataset=MNIST.name, widths=(32, 64, 128), convs_per_stage=2, epochs=4, lr=0.05,
                       margin_grad="unit", margin_warmup=0.3, amp=None, image_size=MNIST.image_size,
                       out="runs/train_mnist.csv")
# --preset report: the source report's network (64-256-64, one conv per stage), batch 100, no augmentation,
# trained as this script's defaults did before the recipe (5 epochs, exact margin gradient, float32).
REPORT = TrainConfig(dataset=MNIST.name, preset="report", widths=(64, 256, 64), convs_per_stage=1, epochs=5,
                     batch_size=100, lr=0.05, image_size=MNIST.image_size, out="runs/train_mnist.csv")
PRESETS = {"report": REPORT}  # --preset names besides "default"; sweep_margins.py --preset too
CHECK_EVERY = 50  # steps between checks for a non-finite loss (one host sync each)


def train_step(config: TrainConfig, net, head, optimizer, scheduler, normalize, generator: torch.Generator,
               images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One optimiser step on a batch of uint8 images (B, C, H, W) and labels (B,): augment, normalise, forward,
    backward, SGD and schedule. Returns the loss, detached, on the device (no host sync)."""
    x = normalize(augment(images, config.crop_padding, config.flip, generator))  # (B, C, H, W) float, channels-last
    embeddings = net_forward(net, x, config.amp)  # (B, D), bfloat16 under --amp
    loss = head.loss(as_float(embeddings), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    scheduler.step()
    return loss.detach()


def run(config: TrainConfig) -> dict:
    """Train one model as `config` says and return its results row (also appended to config.out)."""
    config = config.resolved()  # --amp auto: decided for the device
    device, resumed = start(config)  # validate, device, files, --resume read once, threads, seed
    data, open_set = load_training_data(config, MNIST, device, resumed)  # uint8 images on the device; checked
    normalize = MNIST.normalizer(device)
    net, head = build_model(config, MNIST.channels, data.num_classes, device)
    check_checkpoint_space(config, net, head)  # room for a checkpoint of this model, before training
    fit_whitening(config, net, data, normalize)  # --whiten
    steps = steps_per_epoch(len(data.train_y), config.batch_size, config.per_class())
    optimizer, scheduler = make_optimizer(config, net, head, steps * config.epochs)
    generator = torch.Generator(device).manual_seed(config.seed)  # shuffling and augmentation
    record = resume_run(config, resumed, net, head, optimizer, scheduler, generator)  # or a new record
    record.data = data.identity()  # saved with every checkpoint: a resume on other data is refused
    record.train_tflop = count_train_tflop(config, net, head, data, normalize)
    metrics = None

    for epoch in range(record.first_epoch, config.epochs):
        started = time.perf_counter()
        net.train()
        head.train()
        losses = torch.zeros(steps, device=device)  # per-step losses, kept on the device
        batches = tqdm(epoch_batches(data.train_y, config.batch_size, config.per_class(), generator), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not config.progress, leave=False)
        for step, batch in enumerate(batches):
            set_margin_ramp(head, config, epoch * steps + step, config.epochs * steps)  # --margin-warmup
            losses[step] = train_step(config, net, head, optimizer, scheduler, normalize, generator,
                                      data.train_x[batch], data.train_y[batch])
            if (step + 1) % CHECK_EVERY == 0:
                check_finite(losses, step + 1 - CHECK_EVERY, step + 1, epoch)
                batches.set_postfix(loss=f"{losses[step].item():.4f}")
        check_finite(losses, steps - steps % CHECK_EVERY, steps, epoch)  # the steps after the last full window
        record.train_seconds += time.perf_counter() - started

        metrics = None
        if evaluates_at(config, epoch):  # --eval-every; always after the last epoch
            metrics, confusion = evaluate(net, head, data, normalize, config)
        record_epoch(record.history, epoch, config.epochs, losses, metrics, scheduler, record.train_seconds,
                     time.perf_counter() - started)
        save_run(config, record, net, head, optimizer, scheduler, generator, device, epoch + 1)  # --checkpoint

    if metrics is None:  # resumed from a checkpoint of the last epoch: nothing was trained
        metrics, confusion = evaluate(net, head, data, normalize, config)
    # retrieval; with --holdout-classes verification, with --corruptions corrupted accuracy
    extras = evaluate_extras(config, net, head, data, normalize, open_set, metrics)
    return write_results(config, record, metrics, confusion, extras, device, data.classes)


def main(argv: list[str] | None = None) -> dict:
    return cli_main(run, DEFAULTS, "train_mnist.py", __doc__, argv, PRESETS)


if __name__ == "__main__":
    main()
