"""What identifies a results row: its setting (loss and margins), scenario (training set and evaluation) and
seed (`row_key`, the sweep's jobs as `Job`), the settings it shares with the rows it may be averaged with
(`group_key`, from TrainConfig's roles), and the source paper's Table 1 (results/table1_paper.csv)."""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

from .config import identity, identity_keys
from .heads import MARGIN_DEFAULTS, margins_of
from .results import REPO_ROOT, read_rows

SETTING_KEYS = ("loss", "s", "m1", "m2", "m3")
# What a run trains on and reports besides the margins: (imbalance, holdout_classes, corruptions).
SCENARIO_KEYS = ("imbalance", "holdout_classes", "corruptions")
CLAIM_SCENARIOS = {"clean": (1.0, 0, True), "imbalance10": (10.0, 0, False), "imbalance100": (100.0, 0, False),
                   "open_set": (1.0, 2, False)}
PLAIN = (1.0, 0, False)  # the whole balanced training set, no extra evaluation: Table 1's scenario


class Job(NamedTuple):
    """One run of a sweep: a setting (`setting`), a scenario (imbalance, holdout_classes, corruptions), a seed."""

    setting: tuple
    scenario: tuple
    seed: int


def setting(loss: str, s=None, m1=None, m2=None, m3=None) -> tuple:
    """(loss, s, m1, m2, m3) with the loss's defaults filled in (`heads.margins_of`), rounded to 6 decimals so
    that a CSV's text and a flag's float compare equal; margins are None for softmax and triplet."""
    if loss not in MARGIN_DEFAULTS:
        return (loss, None, None, None, None)
    return (loss, *(round(v, 6) for v in margins_of(loss, s, m1, m2, m3)))


TABLE1_CSV = os.path.join(REPO_ROOT, "results", "table1_paper.csv")  # the source paper's Table 1, as printed


@functools.cache
def table1() -> dict[tuple, float]:
    """The source paper's Table 1 (MNIST test accuracy %, 20 epochs, one run per setting): {setting: accuracy}
    in the table's order, read from results/table1_paper.csv."""
    return {setting(r["loss"], *(float(r[k]) for k in SETTING_KEYS[1:])): float(r["test_acc_percent"])
            for r in read_rows(TABLE1_CSV)}


def table1_grid() -> list[tuple]:
    """The 40 settings of Table 1: ArcFace m2 = 0.40 ... 0.59, then the combined margin's (m2, m3) grid."""
    return list(table1())


def source_value(row_setting: tuple) -> float | None:
    """The source table's accuracy (%) for a setting, if it has one, whatever its s (the table's is 30).
    ArcFace's m2 cells also answer for the combined loss at m3 = 0 (the same margin)."""
    loss, _, m1, m2, m3 = row_setting
    if loss == "combined" and m3 == 0.0:
        loss = "arcface"
    return table1().get(setting(loss, 30.0, m1, m2, m3))


def is_true(value) -> bool:
    """A CSV cell (or a Python value) that says yes: 1 / True / true."""
    return str(value).strip() in ("1", "True", "true")


def scenario_of(row: dict) -> tuple:
    """(imbalance, holdout_classes, corruptions) of a results row or a config's row."""
    return (float(row["imbalance"]), int(row["holdout_classes"]), is_true(row["corruptions"]))


def plain_training_set(imbalance: float, holdout: int) -> bool:
    """The whole (balanced) training set, all classes: the setting of Table 1."""
    return imbalance == 1.0 and holdout == 0


def row_key(row: dict) -> Job:
    """The `Job` (setting, scenario, seed) a results row ran."""
    loss = row["loss"]
    margins = setting(loss) if loss not in MARGIN_DEFAULTS else setting(loss, *(float(row[k]) for k in SETTING_KEYS[1:]))
    return Job(margins, scenario_of(row), int(row["seed"]))


def accuracy_of(row: dict) -> float | None:
    return None if is_true(row.get("diverged", "")) or row.get("test_acc", "") == "" else float(row["test_acc"])


def is_plain(row: dict) -> bool:
    return plain_training_set(*scenario_of(row)[:2])


# What rows of one sweep may differ in: the job (setting, scenario, seed). Every other identity setting
# (`config.identity_keys`) they share; rows that differ in one are never summarised together.
JOB_KEYS = (*SETTING_KEYS, *SCENARIO_KEYS, "seed")


def run_key(row: dict) -> tuple:
    """Everything that identifies a row's result (`config.identity`): two rows with one run_key are the same run."""
    return identity(row)


def group_key(row: dict) -> tuple:
    """The identity of a row without its seed: the rows a summary line averages."""
    return identity(row, tuple(k for k in identity_keys() if k != "seed"))


def base_key(row: dict) -> tuple:
    """The identity of a row without its job (`JOB_KEYS`): the settings a whole sweep shares."""
    return identity(row, base_keys())


def base_keys() -> tuple[str, ...]:
    return tuple(k for k in identity_keys() if k not in JOB_KEYS)


def differing_settings(rows: list[dict]) -> list[str]:
    """The base settings (`base_keys`) whose values differ between the rows."""
    bases = {base_key(r) for r in rows}
    return [k for i, k in enumerate(base_keys()) if len({b[i] for b in bases}) > 1]


def settings_labels(rows: list[dict]) -> dict[tuple, str]:
    """{base_key: 'epochs 2, lr 0.1'}: for rows of several sweeps' settings, the base settings that differ
    between them, as a label per base key ('' for every key when all rows share their settings). A setting
    left unset (--num-classes, --max-train-samples: all) is left out of the label; a part whose differing
    settings are all unset is 'defaults'. Labels stay distinct: two parts differ in a set setting."""
    keys = base_keys()
    values = {base_key(r): r for r in rows}
    differing = [keys.index(k) for k in differing_settings(rows)]
    unset = lambda v: v in ("", None)  # noqa: E731 - a setting left at its default (all classes, all images)
    labels = {b: ", ".join(f"{keys[i]} {values[b].get(keys[i])}" for i in differing
                           if not unset(values[b].get(keys[i]))) for b in values}
    return {b: label or ("defaults" if differing else "") for b, label in labels.items()}


def percent_values(runs: list[dict], field: str) -> list[float]:
    return [100 * float(r[field]) for r in runs if str(r.get(field, "")) not in ("", "nan")]


def setting_label(key: tuple) -> str:
    """'softmax', 'arcface m2 = 0.5', 'cosface m3 = 0.35', 'combined m2 = 0.41, m3 = 0.2': the margins the
    loss applies by default (m1 other than 1, m2 or m3 other than 0), and any that differ from its default."""
    loss, *margins = key
    if loss not in MARGIN_DEFAULTS:
        return loss
    applied = lambda n, d: d != (1 if n == "m1" else 0) and n != "s"  # noqa: E731
    named = [f"{n} = {v:g}" for n, v, d in zip(SETTING_KEYS[1:], margins, MARGIN_DEFAULTS[loss])
             if v != d or applied(n, d)]
    return f"{loss} {', '.join(named)}"


def sides(rows: list[dict], baseline: list[dict]) -> tuple[str, str]:
    """A label for each of two sets of rows that says what tells them apart: '20 epochs' and '4 epochs' when
    only the epochs differ (`budget_of`), else the base settings that differ ('margin_grad exact, ...')."""
    if differing_settings(rows + baseline) in ([], ["epochs"]):
        return budget_of(rows), budget_of(baseline)
    labels = settings_labels(rows + baseline)
    side = lambda part: "; ".join(dict.fromkeys(labels[base_key(r)] for r in part))  # noqa: E731
    return side(rows), side(baseline)


def budget_of(rows: list[dict]) -> str:
    """'20 epochs', '1 epoch', or '4, 20 epochs' for rows of mixed budgets."""
    values = sorted({str(r.get("epochs", "?")) for r in rows}, key=lambda e: (len(e), e))
    return ", ".join(values) + (" epoch" if values == ["1"] else " epochs")
