"""Rows grouped into what a summary counts: each run once, the runs of a setting that did not collapse, the
parts of rows of several sweeps' settings, and the formatting of a mean, a spread and a p-value.

Rows are averaged only with rows that share every setting but the seed (`rows.group_key`), and a run
(`rows.run_key`) is counted once however often its row appears."""
from __future__ import annotations

import hashlib
import math
import re

from .rows import accuracy_of, base_key, is_plain, row_key, run_key, settings_labels
from .stats import mean_std


def format_mean_std(mean: float, std: float) -> str:
    """'99.13 ± 0.04', '99.13' for a single run, '—' for none."""
    if math.isnan(mean):
        return "—"
    return f"{mean:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")


COLLAPSE_BELOW = 95.0  # % test accuracy: a finished MNIST run below it has collapsed (sweep_margins.py --collapse-below)


# Each dataset's default threshold: far below every finished run of every loss at its recipe (results/README.md
# has the ranges) and far above chance. CIFAR-10 is read from its JPEG copy, an image folder named cifar10-jpg.
# Tiny-ImageNet-200's chance is 0.5%, and its healthy runs end far above 10%. A dataset not listed here has no
# threshold (0): no run counts as collapsed unless --collapse-below says where.
DATASET_COLLAPSE_BELOW = {"mnist": COLLAPSE_BELOW, "cifar10": 50.0, "cifar10-jpg": 50.0, "tiny-imagenet-200": 10.0}


def format_p(p: float) -> str:
    """'0.012', or 'n/a' where no p exists (one run per group, or nothing to compare)."""
    return "n/a" if math.isnan(p) else f"{p:.3f}"


def collapse_threshold(rows: list[dict]) -> float:
    """The default --collapse-below for these rows: their dataset's threshold (the lowest of them if the rows
    mix datasets, so that no dataset's healthy runs count as collapsed); 0 for a dataset without one, and for
    rows that train on a subset of its images or classes (--max-train-samples, --num-classes), whose healthy
    accuracy the full dataset's threshold does not describe (10 images per class: about 10% on Tiny-ImageNet)."""
    subset = lambda r: any(str(r.get(k, "")) not in ("", "None") for k in ("max_train_samples", "num_classes"))  # noqa: E731
    found = {0.0 if subset(r) else DATASET_COLLAPSE_BELOW.get(str(r.get("dataset", "")), 0.0) for r in rows}
    return min(found, default=COLLAPSE_BELOW)


def unique_runs(rows: list[dict]) -> list[dict]:
    """The rows with each run (`run_key`: every setting and the seed) once, the first of its rows kept: two
    sweeps that ran one job twice, or one row in two merged files, count as one run."""
    seen: dict[tuple, dict] = {}
    for row in rows:
        seen.setdefault(run_key(row), row)
    return list(seen.values())


def described(values: list[float]) -> str:
    return format_mean_std(*mean_std(values))


def kept_runs(rows: list[dict], collapse_below: float) -> dict[tuple, tuple[list[dict], int]]:
    """{setting: (its finished runs on the plain training set that did not collapse, how many collapsed)}."""
    cells: dict[tuple, tuple[list[dict], int]] = {}
    for row in rows:
        if is_plain(row) and (a := accuracy_of(row)) is not None:
            kept, low = cells.get(row_key(row)[0], ([], 0))
            cells[row_key(row)[0]] = (kept + [row], low) if 100 * a >= collapse_below else (kept, low + 1)
    return cells


def kept_cells(rows: list[dict], collapse_below: float) -> dict[tuple, tuple[list[float], int]]:
    """`kept_runs` with each run's test accuracy in % in place of its row."""
    return {k: ([100 * accuracy_of(r) for r in kept], low) for k, (kept, low) in kept_runs(rows, collapse_below).items()}


def partitions(rows: list[dict]) -> list[tuple[str, list[dict]]]:
    """The rows split by the settings their sweep shares (`rows.base_key`): [(label, rows)], one part with an
    empty label when all rows are of one sweep's settings."""
    rows = unique_runs(rows)
    labels = settings_labels(rows)
    parts: dict[str, list[dict]] = {}
    for row in rows:
        parts.setdefault(labels[base_key(row)], []).append(row)
    return sorted(parts.items())


SLUG_CHARACTERS = 80  # a file-name suffix longer than this is cut and made unique by a hash of the whole label


def slug(label: str) -> str:
    """A file-name suffix for a partition's label: 'epochs 2, lr 0.1' -> 'epochs2_lr0.1'; a long one is cut
    and ends in a hash of the whole label, so two labels never share a name."""
    text = re.sub(r"[^A-Za-z0-9.\-]+", "_", label.replace(" ", "")).strip("_")
    if len(text) <= SLUG_CHARACTERS:
        return text
    return f"{text[:SLUG_CHARACTERS - 11]}-{hashlib.sha1(label.encode()).hexdigest()[:10]}"
