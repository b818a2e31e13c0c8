"""Everything that scores a trained model: embeddings of a test set (`embed`), the per-epoch test metrics
and geometry diagnostics (`evaluate`), top-k accuracy, the classification metrics from a confusion matrix, and the
evaluations run once after training (`evaluate_extras`): rare-class recall, embedding retrieval, open-set
verification on held-out classes, and accuracy on corrupted test images."""
from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig
from .corruptions import CORRUPTIONS, SEVERITIES, corrupt
from .data import ImageData, Normalize
from .heads import ArcNet, CentroidHead
from .network import as_float, net_forward
from .retrieval import retrieval_metrics, verification_metrics

EVAL_BATCH = 1000  # images per forward pass when embedding a test set
TAIL_FRACTION = 0.3  # "rarest classes": the last 30% of classes, the ones --imbalance makes smallest
VERIFY_FAR = 1e-3  # false-accept rate at which the true-accept rate is reported
VERIFY_MAX_IMAGES = 4000  # held-out test images scored all-pairs: (N, N) similarities, N^2 / 2 pairs
EVAL_SEED = 0  # fixes the corrupted subset and the noise, identical for every run and loss


TOP_K = 5  # top-5 accuracy: recorded only for data of more classes than this


@torch.no_grad()
def embed(net: nn.Module, images: torch.Tensor, normalize, amp: bool, flip_tta: bool = False,
          translate_tta: bool = False) -> torch.Tensor:
    """Embeddings (N, D), float32 (float64 for a float64 model), of uint8 images (N, C, H, W), in eval mode, in
    batches. Test-time augmentation (every head and metric then sees the averaged embedding): flip_tta, the
    mean of the embeddings of each image and its mirror image; translate_tta, 1/2 x that of the image plus
    1/4 x each of its copies shifted one pixel up-left and one down-right (reflect padding, so no zero
    border appears), as airbench's level-2 test-time augmentation."""
    net.eval()

    def view(x: torch.Tensor) -> torch.Tensor:  # (B, C, H, W) normalised -> (B, D), with its mirror if flip_tta
        out = as_float(net_forward(net, x, amp))
        return (out + as_float(net_forward(net, x.flip(3), amp))) / 2 if flip_tta else out

    def one(chunk: torch.Tensor) -> torch.Tensor:
        x = normalize(chunk)
        if not translate_tta:
            return view(x)
        height, width = x.shape[2:]
        padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")  # (B, C, H + 2, W + 2)
        shifted = view(padded[:, :, :height, :width]) + view(padded[:, :, 2:, 2:])
        return view(x) / 2 + shifted / 4

    return torch.cat([one(chunk) for chunk in images.split(EVAL_BATCH)])


def embed_as(config: TrainConfig, net: nn.Module, images: torch.Tensor, normalize) -> torch.Tensor:
    """`embed` with the run's --amp, --flip-tta and --translate-tta."""
    return embed(net, images, normalize, config.amp, config.flip_tta, config.translate_tta)


@torch.no_grad()
def evaluate(net: nn.Module, head: nn.Module, data: ImageData, normalize: Normalize,
             config: TrainConfig) -> tuple[dict, torch.Tensor]:
    """Test-set metrics and (C, C) confusion matrix (with config's --amp, --flip-tta and --translate-tta). A
    triplet head's centres are refitted first. Two diagnostics of the geometry go with the metrics: `embedding_norm`,
    the mean length of the test embeddings before any normalisation, and, for a margin head or a triplet
    head (its centres: the class means), `target_angle`, the mean angle in degrees between a test embedding
    and its own class centre, and `centre_angle`, the mean angle between two class centres
    (`mean_pairwise_angle`; near 0 when the embedding has collapsed to one point)."""
    head.eval()
    if isinstance(head, CentroidHead):
        head.fit_centres(embed_as(config, net, data.train_x, normalize), data.train_y)
    embeddings = embed_as(config, net, data.test_x, normalize)  # (N, D)
    logits = head(embeddings)  # (N, C); s * cos for a margin head (no labels: no margin)
    confusion = confusion_matrix(data.test_y, logits.argmax(dim=1), data.num_classes)
    metrics = {**classification_metrics(confusion), "embedding_norm": embeddings.norm(dim=1).mean().item()}
    if data.num_classes > TOP_K:  # with TOP_K classes or fewer every image is in its top TOP_K: no measurement
        metrics["top5"] = top_k_accuracy(logits, data.test_y, TOP_K)
    if isinstance(head, (ArcNet, CentroidHead)):  # heads with class centres: logits are s * cos (s = 1: triplet)
        centres, s = (head.weight, head.s) if isinstance(head, ArcNet) else (head.centres, 1.0)
        cos = (logits.gather(1, data.test_y.view(-1, 1)) / s).clamp(-1.0, 1.0)  # (N, 1)
        metrics["target_angle"] = torch.rad2deg(torch.acos(cos)).mean().item()
        metrics["centre_angle"] = mean_pairwise_angle(centres.detach().float())
    return metrics, confusion


def top_k_accuracy(logits: torch.Tensor, targets: torch.Tensor, k: int) -> float:
    """Fraction of rows of `logits` (N, C) whose target class (N,) is among its k largest (all C when C <= k,
    so the value is then 1). Ties at the k-th place are broken by torch.topk's order, as in every top-k
    accuracy; NaN for no rows."""
    if len(targets) == 0:
        return float("nan")
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices  # (N, k)
    return (top == targets.view(-1, 1)).any(dim=1).double().mean().item()


def mean_pairwise_angle(vectors: torch.Tensor) -> float:
    """Mean angle in degrees over all pairs of rows of `vectors` (C, D), C >= 2: about 90 for random
    directions, 96.4 for 10 classes spread as far apart as they can be, near 0 when they collapse."""
    unit = torch.nn.functional.normalize(vectors, dim=1)
    cos = (unit @ unit.t()).clamp(-1.0, 1.0)  # (C, C)
    pairs = torch.triu_indices(len(unit), len(unit), offset=1, device=unit.device)
    return torch.rad2deg(torch.acos(cos[pairs[0], pairs[1]])).mean().item()


@torch.no_grad()
def evaluate_extras(config: TrainConfig, net: nn.Module, head: nn.Module, data: ImageData, normalize: Normalize,
                    open_set: tuple[torch.Tensor, torch.Tensor], metrics: dict) -> tuple[dict, list[dict]]:
    """Result columns beyond clean accuracy: training class counts, rare-class recall, retrieval on the
    test embeddings; with --holdout-classes, open-set verification on `open_set` (the held-out classes'
    test images and labels); with --corruptions, corrupted accuracy (also returned per corruption and
    severity). Call after the final `evaluate`, which fits a triplet head's class centres."""
    head.eval()
    columns = {"train_class_counts": ";".join(map(str, data.train_class_counts())),
               "tail_recall": tail_recall(metrics["per_class_recall"]),
               **retrieval_metrics(embed_as(config, net, data.test_x, normalize), data.test_y)}
    if config.holdout_classes:
        open_x, open_y = subsample(*open_set, VERIFY_MAX_IMAGES)
        columns.update(open_set_metrics(embed_as(config, net, open_x, normalize), open_y))
    corrupted = []
    if config.corruptions:
        def classify(images: torch.Tensor) -> torch.Tensor:
            return head(embed_as(config, net, images, normalize)).argmax(dim=1)
        corrupted = corruption_accuracy(classify, data.test_x, data.test_y, config.corruption_samples)
        columns.update(corruption_columns(corrupted))
    return columns, corrupted


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
