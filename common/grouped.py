"""Train K margin settings of one architecture at once, as one model K times wide.

A sweep's settings often differ only in the margins (s, m1, m2, m3) of the ArcNet head. Trained
alone with the same seed, each would start from the same weights and see the same batches in
the same order. `GroupedNetwork` holds the K backbones side by side: every conv is a grouped
conv (groups = K, so model k only ever reads its own channels), every BatchNorm spans the K x
width channels (so each model keeps its own batch statistics and running averages), and the
embedding is a per-model linear map. `GroupedArcHead` holds the K class-centre matrices and
applies each model's own margins. The loss is the sum of the K models' losses: the parameters
are disjoint, so each model receives exactly the gradient it would get alone, and SGD's
momentum and weight decay are elementwise. What differs from K separate runs is only
floating-point summation order: `tests/test_grouped.py` trains tiny MNIST- and CIFAR-shaped models
in float64, where that order no longer shows, and checks each model's per-epoch training loss against
its run alone to 1e-9 and its test accuracy exactly, and one step's gradients to 1e-12.

Small models should leave a GPU mostly idle and K of them in one set of kernels fill it; that is an
expectation, not yet measured, so grouping is opt-in (`sweep_margins.py --group-size`).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Dataset, augment
from .evaluation import evaluate, evaluate_extras
from .heads import ArcNet, margin_target, ramped_margins
from .network import Network, as_float, net_forward
from .results import RunRecord, environment_info, new_run_id, write_results
from .training import (DivergedError, Lookahead, build_model, check_finite, count_train_tflop, evaluates_at,
                       load_training_data, make_optimizer, record_epoch, seed_everything, set_margin_ramp, start,
                       steps_per_epoch)

CHECK_EVERY = 50  # steps between checks for a non-finite loss (one host sync each)


class GroupedNetwork(nn.Module):
    """K `Network`s of one architecture side by side: images (B, C, H, W) -> embeddings (B, K, D)."""

    def __init__(self, nets: list[Network]):
        super().__init__()
        k = self.k = len(nets)
        self.in_channels = nets[0].features[0].in_channels
        layers = []
        for modules in zip(*(net.features for net in nets)):  # the same layer of every model
            first = modules[0]
            if isinstance(first, nn.Conv2d):
                layer = nn.Conv2d(k * first.in_channels, k * first.out_channels, first.kernel_size,
                                  padding=first.padding, bias=False, groups=k)
                layer.weight = nn.Parameter(torch.cat([m.weight.detach() for m in modules]))  # (K*out, in, 3, 3)
            elif isinstance(first, nn.BatchNorm2d):
                layer = nn.BatchNorm2d(k * first.num_features, eps=first.eps, momentum=first.momentum)
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(layer, name).data.copy_(torch.cat([getattr(m, name).detach() for m in modules]))
                layer.num_batches_tracked.copy_(first.num_batches_tracked)
            else:  # ReLU, MaxPool2d: no parameters, act per channel
                layer = first
            layers.append(layer)
        self.features = nn.Sequential(*layers)
        self.embed_weight = nn.Parameter(torch.stack([net.embed.weight.detach() for net in nets]))  # (K, D, W)
        self.embed_bias = nn.Parameter(torch.stack([net.embed.bias.detach() for net in nets]))  # (K, D)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.repeat(1, self.k, 1, 1)  # (B, K*C, H, W): model k reads channels k*C .. (k+1)*C - 1
        pooled = self.features(x).mean(dim=(2, 3)).view(len(images), self.k, -1)  # (B, K, W)
        return torch.einsum("bkw,kdw->bkd", pooled, self.embed_weight) + self.embed_bias  # (B, K, D)

    @torch.no_grad()
    def network(self, index: int, template: Network) -> Network:
        """Model `index` as a plain Network (weights and BatchNorm state copied into `template`)."""
        for grouped, plain in zip(self.features, template.features):
            if isinstance(plain, nn.Conv2d):
                size = plain.out_channels
                plain.weight.copy_(grouped.weight[index * size:(index + 1) * size])
            elif isinstance(plain, nn.BatchNorm2d):
                size = plain.num_features
                for name in ("weight", "bias", "running_mean", "running_var"):
                    getattr(plain, name).copy_(getattr(grouped, name)[index * size:(index + 1) * size])
                plain.num_batches_tracked.copy_(grouped.num_batches_tracked)
        template.embed.weight.copy_(self.embed_weight[index])
        template.embed.bias.copy_(self.embed_bias[index])
        return template


class GroupedArcHead(nn.Module):
    """K ArcNet heads with their own margins: embeddings (B, K, D) -> per-model losses (K,)."""

    def __init__(self, heads: list[ArcNet]):
        super().__init__()
        self.margins = [(h.s, h.m1, h.m2, h.m3) for h in heads]
        # one setting for the group: groupable() checks that the configs agree
        self.tail, self.margin_grad = heads[0].tail, heads[0].margin_grad
        self.label_smoothing = heads[0].label_smoothing
        self.ramp = 1.0  # margin warm-up, as ArcNet.ramp (set by the training loop)
        self.weight = nn.Parameter(torch.stack([h.weight.detach() for h in heads]))  # (K, C, D)

    def losses(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of each model on its own margin logits, float32 (float64 for float64 embeddings)
        with autocast off, as ArcNet."""
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        with torch.autocast(embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.to(dtype), dim=2)  # (B, K, D) unit vectors
            w = F.normalize(self.weight.to(dtype), dim=2)  # (K, C, D) unit class centres
            cos = torch.einsum("bkd,kcd->kbc", x, w)  # (K, B, C)
            target = labels.view(-1, 1)
            out = []
            for k, (s, m1, m2, m3) in enumerate(self.margins):
                m1, m2, m3 = ramped_margins(m1, m2, m3, self.ramp)
                psi = margin_target(cos[k].gather(1, target), m1, m2, m3, tail=self.tail, grad=self.margin_grad)
                out.append(F.cross_entropy(s * cos[k].scatter(1, target, psi), labels,
                                           label_smoothing=self.label_smoothing))
            return torch.stack(out)

    @torch.no_grad()
    def head(self, index: int, template: ArcNet) -> ArcNet:
        template.weight.copy_(self.weight[index])
        return template


# Settings the grouped model does not implement; configs that change them from TrainConfig's defaults train alone.
UNGROUPED = ("embedding_bn", "whiten", "activation", "pool_first", "global_pool", "bn_scale")


def ungrouped_settings(config: TrainConfig) -> list[str]:
    """The UNGROUPED settings that `config` changes from TrainConfig's defaults."""
    return [name for name in UNGROUPED if getattr(config, name) != getattr(TrainConfig, name)]


def groupable(configs: list[TrainConfig]) -> bool:
    """True when the configs differ only in ArcNet margins (and the loss's name): one architecture,
    data, schedule and seed, no checkpoint or resume, and none of the UNGROUPED settings changed."""
    first = configs[0]
    if ungrouped_settings(first):
        return False
    same = [replace(c, loss="arcface", s=None, m1=None, m2=None, m3=None, out=first.out) for c in configs]
    return (all(c.loss not in ("softmax", "triplet") for c in configs) and all(c == same[0] for c in same)
            and first.checkpoint is None and first.resume is None)


def run_group(configs: list[TrainConfig], dataset: Dataset) -> list[dict | DivergedError]:
    """Train the configs together on `dataset` and write each one's results row as its script's `run` would.

    Returns, per config, its row, or the DivergedError that stopped it (the other models go on:
    their parameters and BatchNorm channels are disjoint, so a NaN in one never reaches another).
    `train_seconds` in the rows is the group's time divided by K, with `group_size` = K beside it.
    """
    configs = [config.resolved() for config in configs]  # --amp auto: decided for the device
    if not groupable(configs):
        raise ValueError("run_group: configs must differ only in their margin-loss settings")
    base = configs[0]
    device = start(base)  # validate, device, threads, seed
    data, open_set = load_training_data(base, dataset, device)
    normalize = dataset.normalizer(device)
    nets, heads = [], []
    for config in configs:  # each model starts where it would alone: same seed, same draws
        seed_everything(config.seed)
        net, head = build_model(config, dataset.channels, data.num_classes, device)
        nets.append(net)
        heads.append(head)
    group_net = GroupedNetwork(nets).to(device, memory_format=torch.channels_last)
    group_head = GroupedArcHead(heads).to(device)
    steps = steps_per_epoch(len(data.train_y), base.batch_size)
    optimizer, scheduler = make_optimizer(base, group_net, group_head, steps * base.epochs)
    generator = torch.Generator(device).manual_seed(base.seed)
    lookahead = Lookahead(base, steps * base.epochs)  # --lookahead; per element, so each model its own average
    k = len(configs)
    histories, failed = [[] for _ in configs], [None] * k
    train_seconds, metrics, confusions = 0.0, [None] * k, [None] * k

    for epoch in range(base.epochs):
        started = time.perf_counter()
        group_net.train()
        order = torch.randperm(len(data.train_y), generator=generator, device=device)
        losses = torch.zeros(steps, k, device=device)  # (steps, K) per-step losses, on the device
        for step, batch in enumerate(order.split(base.batch_size)):
            set_margin_ramp(group_head, base, epoch * steps + step, base.epochs * steps)  # --margin-warmup
            images = normalize(augment(data.train_x[batch], base.crop_padding, base.flip, generator))
            per_model = group_head.losses(as_float(net_forward(group_net, images, base.amp)), data.train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            per_model.sum().backward()  # disjoint parameters: each model gets its own gradient
            optimizer.step()
            scheduler.step()
            lookahead.step(group_net, group_head, epoch * steps + step + 1)
            losses[step] = per_model.detach()
            if (step + 1) % CHECK_EVERY == 0 or step + 1 == steps:
                note_divergence(losses, step, epoch, failed)
        lookahead.end_epoch(group_net, group_head)
        train_seconds += time.perf_counter() - started
        evaluated = evaluates_at(base, epoch)  # --eval-every; always after the last epoch
        for i, config in enumerate(configs):
            if failed[i] is None:
                if evaluated:
                    net, head = unstack(group_net, group_head, i, nets[i], heads[i])
                    metrics[i], confusions[i] = evaluate(net, head, data, normalize, base)
                record_epoch(histories[i], epoch, base.epochs, losses[:, i], metrics[i] if evaluated else None,
                             scheduler, train_seconds / k, time.perf_counter() - started)

    results = []
    environment = environment_info()
    tflop = count_train_tflop(base, nets[0], heads[0], data, normalize)  # each model's own, as if alone
    for i, config in enumerate(configs):
        if failed[i] is not None:
            results.append(failed[i])
            continue
        net, head = unstack(group_net, group_head, i, nets[i], heads[i])
        record = RunRecord(new_run_id(config), base.epochs, histories[i], train_seconds / k, environment, tflop)
        extras = evaluate_extras(config, net, head, data, normalize, open_set, metrics[i])
        extras[0]["group_size"] = k
        results.append(write_results(config, record, metrics[i], confusions[i], extras, device, data.classes))
    return results


def unstack(group_net: GroupedNetwork, group_head: GroupedArcHead, index: int, net: Network, head: ArcNet):
    return group_net.network(index, net), group_head.head(index, head)


def note_divergence(losses: torch.Tensor, step: int, epoch: int, failed: list) -> None:
    """Mark models whose loss turned non-finite in steps up to `step`, with check_finite's error
    (one host sync when all are finite)."""
    bad = ~torch.isfinite(losses[:step + 1]).all(dim=0)  # (K,)
    for i in bad.nonzero().flatten().tolist():
        if failed[i] is None:
            try:
                check_finite(losses[:, i], 0, step + 1, epoch)
            except DivergedError as exc:
                failed[i] = exc
