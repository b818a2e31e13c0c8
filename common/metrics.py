"""Classification metrics from a confusion matrix, in plain torch."""
from __future__ import annotations

import torch


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    # A class never predicted (or absent) gets 0 rather than NaN, as scikit-learn's zero_division=0.
    return torch.where(denominator > 0, numerator / denominator.clamp_min(1), torch.zeros_like(numerator))


def classification_metrics(confusion: torch.Tensor) -> dict:
    """Accuracy, macro precision / recall / F1 and per-class recall, as fractions in [0, 1]."""
    confusion = confusion.double()
    true_positives = confusion.diag()
    precision = _safe_divide(true_positives, confusion.sum(dim=0))
    recall = _safe_divide(true_positives, confusion.sum(dim=1))
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    return {
        "accuracy": (true_positives.sum() / confusion.sum().clamp_min(1)).item(),
        "precision": precision.mean().item(),
        "recall": recall.mean().item(),
        "f1": f1.mean().item(),
        "per_class_recall": recall.tolist(),
    }
