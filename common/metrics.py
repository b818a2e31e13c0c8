"""Classification metrics from a confusion matrix, in plain torch."""
from __future__ import annotations

import torch


def confusion_matrix(targets: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(C, C) int64 counts; row = true class, column = predicted class."""
    flat = targets.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes).cpu()


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """numerator / denominator elementwise, 0 where the denominator is 0 (scikit-learn's zero_division=0).

    The denominator is replaced by 1 only where it is 0, so fractional denominators (precision +
    recall in F1) divide as they are.
    """
    positive = denominator > 0
    return torch.where(positive, numerator / torch.where(positive, denominator, torch.ones_like(denominator)),
                       torch.zeros_like(numerator))


def classification_metrics(confusion: torch.Tensor) -> dict:
    """Accuracy, macro precision / recall / F1 and per-class recall, as fractions in [0, 1].

    Macro averages run over the classes present in the test set (row sum > 0) only: a class with no
    test image has no recall, so it is left out of every average, and its `per_class_recall` entry is
    NaN. Predictions of such a class still count as errors of the true class (accuracy, recall). A
    present class that is never predicted has precision 0 and F1 0, as scikit-learn's zero_division=0.
    """
    confusion = confusion.double()
    true_positives = confusion.diag()
    support = confusion.sum(dim=1)  # (C,) test images per true class
    present = support > 0
    precision = _safe_divide(true_positives, confusion.sum(dim=0))
    recall = _safe_divide(true_positives, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    macro = lambda values: values[present].mean().item() if present.any() else float("nan")  # noqa: E731
    return {
        "accuracy": (true_positives.sum() / confusion.sum().clamp_min(1)).item(),
        "precision": macro(precision),
        "recall": macro(recall),
        "f1": macro(f1),
        "per_class_recall": torch.where(present, recall, torch.full_like(recall, float("nan"))).tolist(),
    }
