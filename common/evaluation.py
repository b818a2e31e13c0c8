"""Evaluations beyond clean accuracy, run once after training: rare-class recall, embedding retrieval,
open-set verification on held-out classes, and accuracy on corrupted test images."""
from __future__ import annotations

import math

import torch

from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .retrieval import retrieval_metrics, verification_metrics

TAIL_FRACTION = 0.3  # "rarest classes": the last 30% of classes, the ones --imbalance makes smallest
VERIFY_FAR = 1e-3  # false-accept rate at which the true-accept rate is reported
VERIFY_MAX_IMAGES = 4000  # held-out test images scored all-pairs: (N, N) similarities, N^2 / 2 pairs
EVAL_SEED = 0  # fixes the corrupted subset and the noise, identical for every run and loss


def tail_recall(per_class_recall: list[float]) -> float:
    """Mean recall over the last ceil(TAIL_FRACTION * C) classes that are present in the test set.

    A class absent from the test set has recall NaN (`classification_metrics`) and is left out of
    the mean; NaN when no tail class is present.
    """
    tail = [r for r in per_class_recall[-math.ceil(TAIL_FRACTION * len(per_class_recall)):] if not math.isnan(r)]
    return sum(tail) / len(tail) if tail else float("nan")


def subsample(images: torch.Tensor, labels: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """At most `count` (image, label) pairs, a uniform random subset fixed by EVAL_SEED (all when fewer)."""
    if len(labels) <= count:
        return images, labels
    generator = torch.Generator(labels.device).manual_seed(EVAL_SEED)
    keep = torch.randperm(len(labels), generator=generator, device=labels.device)[:count]
    return images[keep], labels[keep]


@torch.no_grad()
def corruption_accuracy(classify, images: torch.Tensor, labels: torch.Tensor, samples: int) -> list[dict]:
    """Accuracy on `samples` test images (a random subset fixed by EVAL_SEED) under every corruption and
    severity: rows {"corruption", "severity", "accuracy"}. classify: uint8 (B, C, H, W) -> (B,) classes."""
    images, labels = subsample(images, labels, samples)
    generator = torch.Generator(images.device).manual_seed(EVAL_SEED)  # the noise, identical across runs
    rows = []
    for name in CORRUPTIONS:
        for severity in SEVERITIES:
            predictions = classify(corrupt(images, name, severity, generator))
            rows.append({"corruption": name, "severity": severity,
                         "accuracy": (predictions == labels).double().mean().item()})
    return rows


def corruption_columns(rows: list[dict]) -> dict:
    """Mean accuracy per corruption over its severities, and over everything ("corrupted_acc")."""
    columns = {}
    for name in CORRUPTIONS:
        accs = [r["accuracy"] for r in rows if r["corruption"] == name]
        columns[f"acc_{name}"] = sum(accs) / len(accs)
    columns["corrupted_acc"] = sum(r["accuracy"] for r in rows) / len(rows)
    return columns


def open_set_metrics(embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
    """Verification (ROC AUC, TAR at FAR = VERIFY_FAR) and MAP@R among embeddings of never-trained classes."""
    return {**verification_metrics(embeddings, labels, VERIFY_FAR),
            "open_map_at_r": retrieval_metrics(embeddings, labels)["map_at_r"]}
