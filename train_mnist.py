"""Train the source report's network on MNIST with softmax, ArcFace, CosFace, SphereFace,
the combined margin, or triplet loss; append the test metrics to a results CSV.

    python train_mnist.py                  # ArcFace (s=30, m2=0.5)
    python train_mnist.py --loss softmax   # the plain softmax baseline
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from common import MNIST_MEAN, MNIST_STD, TrainConfig, augment, is_image_folder, load_image_folder, load_mnist
from common.training import (as_float, check_finite, cli_main, evaluate, evaluate_extras, net_forward, prepare_run,
                             record_epoch, save_training_state, set_margin_ramp, write_results)

# The recipe of README "The training recipe": a narrower, deeper network than the report's (17.8 TFLOP of
# training against its 66), the margins' unit gradient and warm-up, bfloat16 where it is native.
DEFAULTS = TrainConfig(dataset="mnist", widths=(32, 64, 128), convs_per_stage=2, epochs=4, lr=0.05,
                       margin_grad="unit", margin_warmup=0.3, amp=None, image_size=28, out="results/train_mnist.csv")
# --preset report: the source report's network (64-256-64, one conv per stage), batch 100, no augmentation,
# trained as this script's defaults did before the recipe (5 epochs, exact margin gradient, float32).
REPORT = TrainConfig(dataset="mnist", preset="report", widths=(64, 256, 64), convs_per_stage=1, epochs=5,
                     batch_size=100, lr=0.05, image_size=28, out="results/train_mnist.csv")
IN_CHANNELS, MEAN, STD = 1, MNIST_MEAN, MNIST_STD  # read by plot_embeddings.py too
CHECK_EVERY = 50  # steps between checks for a non-finite loss (one host sync each)


def load_data(config: TrainConfig):
    if is_image_folder(config.data_root):
        return load_image_folder(config.data_root, channels=1, size=config.image_size)
    return load_mnist(config.data_root, download=config.download)


def run(config: TrainConfig) -> dict:
    """Train one model as `config` says and return its results row (also appended to config.out)."""
    config = config.resolved()  # --amp auto: decided for the device
    setup = prepare_run(config, load_data, IN_CHANNELS, MEAN, STD)
    device, data, normalize, net, head = setup.device, setup.data, setup.normalize, setup.net, setup.head
    optimizer, scheduler, generator, steps = setup.optimizer, setup.scheduler, setup.generator, setup.steps
    history = setup.history  # per-epoch summaries, restored by --resume
    metrics = None

    for epoch in range(setup.first_epoch, config.epochs):
        started = time.perf_counter()
        net.train()
        head.train()
        order = torch.randperm(len(data.train_y), generator=generator, device=device)
        losses = torch.zeros(steps, device=device)  # per-step losses, kept on the device
        batches = tqdm(order.split(config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not config.progress, leave=False)
        for step, batch in enumerate(batches):
            set_margin_ramp(head, config, epoch * steps + step, config.epochs * steps)  # --margin-warmup
            images = normalize(augment(data.train_x[batch], config.crop_padding, config.flip, generator))  # uint8 in
            labels = data.train_y[batch]
            embeddings = net_forward(net, images, config.amp)  # (B, D), bf16 under --amp
            loss = head.loss(as_float(embeddings), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses[step] = loss.detach()
            if (step + 1) % CHECK_EVERY == 0:
                check_finite(losses, step + 1 - CHECK_EVERY, step + 1, epoch)
                batches.set_postfix(loss=f"{losses[step].item():.4f}")
        check_finite(losses, steps - steps % CHECK_EVERY, steps, epoch)  # the steps after the last full window
        setup.train_seconds += time.perf_counter() - started

        metrics, confusion = evaluate(net, head, data, normalize, config)
        record_epoch(history, epoch, config.epochs, losses, metrics, scheduler, setup.train_seconds,
                     time.perf_counter() - started)
        save_training_state(config, setup, epoch + 1)

    if metrics is None:  # resumed from a checkpoint of the last epoch: nothing was trained
        metrics, confusion = evaluate(net, head, data, normalize, config)
    extras = evaluate_extras(config, setup, metrics)  # retrieval; verification, corruptions when asked
    return write_results(config, setup, metrics, confusion, extras)


def main(argv: list[str] | None = None) -> dict:
    return cli_main(run, DEFAULTS, "train_mnist.py", __doc__, argv, {"report": REPORT})


if __name__ == "__main__":
    main()
