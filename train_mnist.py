"""Train the source report's network on MNIST with softmax, ArcFace, CosFace, SphereFace,
the combined margin, or triplet loss; append the test metrics to a results CSV.

    python train_mnist.py                  # ArcFace (s=30, m2=0.5)
    python train_mnist.py --loss softmax   # the plain softmax baseline
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from common import (MNIST_MEAN, MNIST_STD, Network, Normalize, TrainConfig, build_head, is_image_folder,
                    load_image_folder, load_mnist, pick_device)
from common.training import (check_finite, cli_main, evaluate, format_epoch, load_resume_state, make_optimizer,
                             net_forward, save_checkpoint, seed_everything, steps_per_epoch, warn_if_slow_amp,
                             write_results)

DEFAULTS = TrainConfig(dataset="mnist", widths=(64, 256, 64), convs_per_stage=1, epochs=5, lr=0.05,
                       image_size=28, out="results/train_mnist.csv")
CHECK_EVERY = 50  # steps between checks for a non-finite loss (one host sync each)


def load_data(config: TrainConfig):
    if is_image_folder(config.data_root):
        return load_image_folder(config.data_root, channels=1, size=config.image_size)
    return load_mnist(config.data_root, download=config.download)


def run(config: TrainConfig) -> dict:
    """Train one model as `config` says and return its results row (also appended to config.out)."""
    config.validate()
    device = pick_device(config.device)
    warn_if_slow_amp(config, device)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    data = load_data(config).first_train(config.max_train_samples).to(device)
    normalize = Normalize(MNIST_MEAN, MNIST_STD, device)

    s, m1, m2, m3 = config.margins()
    net = Network(1, config.latent_dim, config.widths, config.convs_per_stage)
    net = net.to(device, memory_format=torch.channels_last)
    head = build_head(config.loss, config.latent_dim, data.num_classes, s, m1, m2, m3, config.triplet_margin).to(device)
    steps = steps_per_epoch(len(data.train_y), config.batch_size)
    optimizer, scheduler = make_optimizer(config, [net, head], steps * config.epochs)
    generator = torch.Generator(device).manual_seed(config.seed)
    first_epoch, history, train_seconds = load_resume_state(config, net, head, optimizer, scheduler, generator)
    metrics = None

    for epoch in range(first_epoch, config.epochs):
        started = time.perf_counter()
        net.train()
        head.train()
        order = torch.randperm(len(data.train_y), generator=generator, device=device)
        losses = torch.zeros(steps, device=device)  # per-step losses, kept on the device
        batches = tqdm(order.split(config.batch_size), desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=not config.progress, leave=False)
        for step, batch in enumerate(batches):
            images, labels = normalize(data.train_x[batch]), data.train_y[batch]
            embeddings = net_forward(net, images, config.amp)  # (B, D), bf16 under --amp
            loss = head.loss(embeddings.float(), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses[step] = loss.detach()
            if (step + 1) % CHECK_EVERY == 0:
                check_finite(losses, step + 1 - CHECK_EVERY, step + 1, epoch)
                batches.set_postfix(loss=f"{losses[step].item():.4f}")
        check_finite(losses, 0, steps, epoch)
        train_seconds += time.perf_counter() - started

        metrics, confusion = evaluate(net, head, data, normalize, config.amp)
        mean_loss = losses.mean().item()
        history.append({"epoch": epoch + 1, "train_loss": mean_loss, "test_acc": metrics["accuracy"],
                        "test_f1": metrics["f1"], "lr": scheduler.get_last_lr()[0], "train_seconds": train_seconds})
        print(format_epoch(epoch, config.epochs, mean_loss, metrics, time.perf_counter() - started), flush=True)
        if config.checkpoint:
            save_checkpoint(config.checkpoint, net=net.state_dict(), head=head.state_dict(),
                            optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                            generator=generator.get_state(), epoch=epoch + 1, history=history,
                            train_seconds=train_seconds, config=config.as_row())

    if metrics is None:  # resumed from a checkpoint of the last epoch: nothing was trained
        metrics, confusion = evaluate(net, head, data, normalize, config.amp)
    return write_results(config, metrics, confusion, history, train_seconds, device, data.classes)


def main(argv: list[str] | None = None) -> dict:
    return cli_main(run, DEFAULTS, "train_mnist.py", __doc__, argv)


if __name__ == "__main__":
    main()
