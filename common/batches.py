"""How an epoch is cut into batches: shuffled (every loss by default), or class-balanced (P classes x K images a
batch, as pytorch-metric-learning's MPerClassSampler), which triplet loss needs: a batch-hard triplet needs a
same-class partner for its anchor, and a shuffled batch of 100 images of 200 classes gives 2 anchors in 5 one."""
from __future__ import annotations

import math

import torch


def steps_per_epoch(num_train: int, batch_size: int, per_class: int = 0) -> int:
    """Optimiser steps per epoch: the batches of `epoch_batches`."""
    if per_class:
        return max(1, num_train // batch_size)
    return math.ceil(num_train / batch_size) - (num_train % batch_size == 1 and num_train > 1)


def epoch_batches(labels: torch.Tensor, batch_size: int, per_class: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """One epoch's batches of training indices, drawn from `generator` (on the labels' device). Shuffled: a random
    order cut into batches of `batch_size`, the last one shorter, a last batch of a single image dropped
    (BatchNorm cannot normalise one value per channel). With `per_class` = K: `balanced_batches`."""
    if per_class:
        return balanced_batches(labels, batch_size, per_class, generator)
    order = torch.randperm(len(labels), generator=generator, device=labels.device)
    batches = order.split(batch_size)
    return batches[:-1] if len(batches) > 1 and len(batches[-1]) == 1 else batches


def balanced_batches(labels: torch.Tensor, batch_size: int, per_class: int,
                     generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """`steps_per_epoch` batches of P = batch_size / K groups of K images of one class each. With at least P
    classes the groups' classes are distinct (a random choice per batch); with fewer (CIFAR-10: 10 classes,
    P = 25 at batch 100 and K = 4) every class is in every batch and some fill one group more than others
    (here 2 or 3 groups, 8 or 12 images), instead of refusing as MPerClassSampler does. A class's images are
    used in a random order, as many whole groups of K as it holds before any is used again, so no image
    appears twice in a group (a class with fewer than K images must repeat some).
    labels: (N,) -> batches of (batch_size,) indices."""
    present = torch.unique(labels)  # (C,) classes with training images
    classes = batch_size // per_class  # P groups a batch
    steps = steps_per_epoch(len(labels), batch_size, per_class)
    device = labels.device
    scores = torch.rand(steps, len(present), generator=generator, device=device)
    order = scores.argsort(dim=1)  # (steps, C) a random order of the classes per batch
    laps = -(-classes // len(present))  # > 1 only with fewer classes than groups: the order repeats
    chosen = order.repeat(1, laps)[:, :classes]  # (steps, P) positions in `present`, distinct within a lap
    picks = torch.empty(steps, classes, per_class, dtype=torch.long, device=device)
    for c in range(len(present)):
        where = chosen == c  # (steps, P): the groups of this class
        need = int(where.sum()) * per_class
        if need == 0:
            continue
        members = torch.nonzero(labels == present[c]).flatten()
        per_round = len(members) // per_class * per_class if len(members) >= per_class else len(members)
        rounds = -(-need // per_round)  # each round a fresh order, cut to whole groups: no image twice in a group
        pool = torch.cat([members[torch.randperm(len(members), generator=generator, device=device)][:per_round]
                          for _ in range(rounds)])[:need]
        picks[where] = pool.view(-1, per_class)
    return picks.view(steps, batch_size).unbind(0)
