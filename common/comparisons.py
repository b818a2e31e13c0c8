"""Losses set against each other: the comparison table of --grid claims (each loss across the four
scenarios), each loss against softmax (with Holm's adjustment over the losses), the budget comparison (does
training longer change the ranking?), the gains over softmax per data size with their 95% intervals, and the
arms of a tuned trial against its softmax arm (`arms_against_softmax`)."""
from __future__ import annotations

import math

from .arms import arm_of
from .grouping import COLLAPSE_BELOW, described, format_mean_std, format_p, kept_cells, kept_runs, partitions
from .heads import LOSSES
from .config import cell, identity_keys
from .rows import (CLAIM_SCENARIOS, SETTING_KEYS, accuracy_of, group_key, is_plain, percent_values, row_key, setting,
                   setting_label, sides)
from .stats import (difference, difference_interval, holm, mean_std, permutation_method, permutation_p, ranks, spearman,
                    standard_error)


# The comparison table of --grid claims: (column, heading, which runs, result field, x100 for percent).
COMPARISON = [
    ("clean_acc", "clean acc %", "clean", "test_acc", True),
    ("clean_f1", "macro F1 %", "clean", "test_f1", True),
    ("imb10_acc", "acc, imbalance 10 %", "imbalance10", "test_acc", True),
    ("imb100_acc", "acc, imbalance 100 %", "imbalance100", "test_acc", True),
    ("imb100_tail", "rarest-30% recall, imbalance 100 %", "imbalance100", "tail_recall", True),
    ("corrupted_acc", "mean corrupted acc %", "clean", "corrupted_acc", True),
    ("map_at_r", "MAP@R %", "clean", "map_at_r", True),
    ("verify_tar", "open-set TAR@FAR=1e-3 %", "open_set", "verify_tar", True),
    ("verify_auc", "open-set ROC AUC %", "open_set", "verify_auc", True),
    ("seconds_per_epoch", "s / epoch", "clean", "seconds_per_epoch", False),
]


def comparison_table(rows: list[dict]) -> list[dict]:
    """One row per setting (loss and margins): mean, std and count over seeds of each COMPARISON column."""
    by_setting: dict[tuple, dict[str, list[dict]]] = {}
    names = {scenario: name for name, scenario in CLAIM_SCENARIOS.items()}
    for row in rows:
        key, scenario, _ = row_key(row)
        if scenario in names and accuracy_of(row) is not None:
            by_setting.setdefault(key, {}).setdefault(names[scenario], []).append(row)
    table = []
    for key, runs in by_setting.items():
        line = dict(zip(SETTING_KEYS, key))
        for column, _, scenario, field, percent in COMPARISON:
            values = [float(r[field]) * (100 if percent else 1) for r in runs.get(scenario, [])
                      if str(r.get(field, "")) not in ("", "nan")]
            line[f"{column}_mean"], line[f"{column}_std"] = mean_std(values)
            line[f"{column}_runs"] = len(values)
        table.append(line)
    return table


def comparison_markdown(table: list[dict]) -> str:
    def cell(line, column):
        runs = line[f"{column}_runs"]
        return f"{format_mean_std(line[f'{column}_mean'], line[f'{column}_std'])} ({runs})" if runs else "—"

    header = "| loss | " + " | ".join(heading for _, heading, *_ in COMPARISON) + " |"
    lines = [header, "|---" * (len(COMPARISON) + 1) + "|"]
    for line in table:
        margins = "" if line["s"] is None else f" (s={line['s']:g}, m1={line['m1']:g}, m2={line['m2']:g}, m3={line['m3']:g})"
        lines.append(f"| {line['loss']}{margins} | " + " | ".join(cell(line, c) for c, *_ in COMPARISON) + " |")
    return "\n".join(lines) + "\n\nmean ± std (number of seeds) over finished runs.\n"


def against_softmax(rows: list[dict], collapse_below: float = COLLAPSE_BELOW) -> list[str]:
    """Each other loss at its default margins (`setting(loss)`) against softmax, on the plain training set:
    the differences of mean test accuracy and of mean MAP@R, each ± its standard error and with its
    permutation p and Holm's adjustment over the losses compared (the family: one per field), over the runs
    that did not collapse (the collapsed counted). No lines without softmax runs."""
    cells = kept_runs(rows, collapse_below)
    base, base_low = cells.get(setting("softmax"), ([], 0))
    if not base:
        return []
    compared = [(loss, *cells[setting(loss)]) for loss in LOSSES[1:] if cells.get(setting(loss), ([], 0))[0]]
    fields = (("test acc", "test_acc"), ("MAP@R", "map_at_r"))
    tests = {}  # (loss, field) -> (gain, standard error, p)
    for loss, runs, _ in compared:
        for _, field in fields:
            a, b = percent_values(runs, field), percent_values(base, field)
            if a and b:
                tests[loss, field] = (*difference(a, b), standard_error(a, b))
    adjusted = {}
    for _, field in fields:
        family = [key for key in tests if key[1] == field]
        adjusted.update(zip(family, holm([tests[key][1] for key in family])))
    lines = []
    for loss, runs, low in compared:
        parts = [f"{name} {tests[loss, field][0]:+.2f} ± {tests[loss, field][2]:.2f} points (p = "
                 f"{format_p(tests[loss, field][1])}, Holm {format_p(adjusted[loss, field])})"
                 for name, field in fields if (loss, field) in tests]
        lines.append(f"{setting_label(setting(loss))} ({len(runs)} runs, {low} collapsed) against softmax ({len(base)} "
                     f"runs, {base_low} collapsed): {'; '.join(parts)}; difference of means ± its standard error, "
                     f"{permutation_method([len(runs), len(base)])} permutation p, Holm over the {len(compared)} losses")
    return lines


def budget_comparison(rows: list[dict], baseline: list[dict],
                      collapse_below: float = COLLAPSE_BELOW) -> tuple[str, list[str]]:
    """Does the training budget (or any other setting the two share across their margins: `rows.sides` names
    it) change the ranking? For every setting that both `rows` and `baseline` (the same settings at another
    budget) have runs of: mean ± std at each budget, its rank among these settings
    at each, the change and its permutation p. Then one line: the mean change, the rank correlation, and
    whether the settings differ beyond their seeds at each budget (a reordering of settings that do not
    differ is noise, not a change of ranking). Means over the runs that did not collapse, collapsed runs
    counted beside them, as in `table1_checks`; a setting with no such run at either budget is left out.
    Returns (markdown table, lines); ("", []) without shared settings."""
    new, old = kept_cells(rows, collapse_below), kept_cells(baseline, collapse_below)
    shared = [k for k in old if k in new and old[k][0] and new[k][0]]
    if not shared:
        return "", []
    at_new, at_old = sides(rows, baseline)
    means_new, means_old = [mean_std(new[k][0])[0] for k in shared], [mean_std(old[k][0])[0] for k in shared]
    rank_new, rank_old = ranks(means_new), ranks(means_old)
    lines = [f"| setting | {at_old}: test acc % | rank | collapsed | {at_new}: test acc % | rank | collapsed | "
             "change, points | p | Holm p |", "|---|---|---|---|---|---|---|---|---|---|"]
    changes = [difference(new[k][0], old[k][0]) for k in shared]
    for i, (k, (change, p), adjusted) in enumerate(zip(shared, changes, holm([p for _, p in changes]))):
        lines.append(f"| {setting_label(k)} | {described(old[k][0])} ({len(old[k][0])}) | {rank_old[i]:g} | {old[k][1]} | "
                     f"{described(new[k][0])} ({len(new[k][0])}) | {rank_new[i]:g} | {new[k][1]} | {change:+.2f} | "
                     f"{format_p(p)} | {format_p(adjusted)} |")
    change = sum(means_new) / len(shared) - sum(means_old) / len(shared)
    verdict = (f"{at_new} against {at_old}, {len(shared)} settings: mean change {change:+.2f} points; rank correlation "
               f"(Spearman) {spearman(means_old, means_new):.2f}; settings differ beyond their seeds: permutation "
               f"p = {format_p(permutation_p([old[k][0] for k in shared]))} at {at_old}, "
               f"p = {format_p(permutation_p([new[k][0] for k in shared]))} at {at_new}")
    note = (f"\nmean ± std (runs) over the runs that did not collapse (< {collapse_below:g}%); rank 1 = best mean; p: "
            f"permutation test of the change ({permutation_method([len(old[shared[0]][0]), len(new[shared[0]][0])])} "
            f"for the first setting); Holm p: adjusted over the table's {len(shared)} changes.\n")
    return "\n".join(lines) + "\n" + note, [verdict]


GAIN_FIELDS = (("acc", "test_acc", "top-1"), ("top5", "test_top5", "top-5"), ("map_at_r", "map_at_r", "MAP@R"))


GAIN_NAMES = tuple(name for name, _, _ in GAIN_FIELDS)


def format_gain(line: dict, name: str, digits: int = 2, with_p: bool = True) -> str:
    """One field of a `gains_over_softmax` line: 'gain [low, high] (p = ..., Holm ...)', the interval's ends to `digits`
    decimals (no interval where it does not exist: one run a side); '—' where the field was not measured."""
    if f"gain_{name}" not in line:
        return "—"
    low, high = line[f"low_{name}"], line[f"high_{name}"]
    interval = "" if math.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    p = f" (p = {format_p(line[f'p_{name}'])}, Holm {format_p(line[f'holm_{name}'])})" if with_p else ""
    return f"{line[f'gain_{name}']:+.2f}{interval}{p}"


def data_shape(row: dict) -> tuple[int, int]:
    """(classes, training images per class) of a row: the classes it trained on and their mean size, rounded,
    from its `train_class_counts`."""
    counts = [int(c) for c in str(row["train_class_counts"]).split(";") if c != ""]
    return len(counts), round(sum(counts) / len(counts))


def run_gains(values: list[float], base: list[float]) -> str:
    """Each value minus the mean of `base`, in the values' units, ';'-joined (a figure's dots, kept in a line)."""
    return ";".join(f"{v - sum(base) / len(base):.3f}" for v in values)


def add_differences(line: dict, runs: list[dict], base: list[dict], fields: list[tuple[str, str]]) -> None:
    """Into `line`, for each (name, field) both sides measured: the difference of means in points (gain_), its 95%
    interval (low_, high_: `difference_interval`), its permutation p (p_) and how it was computed (method_), and
    each run's own gain over the base's mean (run_gains_, for the figures)."""
    for name, field in fields:
        a, b = percent_values(runs, field), percent_values(base, field)
        if a and b:
            gain, low, high = difference_interval(a, b)
            line.update({f"gain_{name}": gain, f"low_{name}": low, f"high_{name}": high, f"p_{name}": difference(a, b)[1],
                         f"method_{name}": permutation_method([len(a), len(b)]),
                         f"run_gains_{name}": run_gains(a, b)})


def add_holm(lines: list[dict], names) -> None:
    """Holm's adjustment (holm_) of each field's p over the lines that have one: one family per field."""
    for name in names:
        family = [line for line in lines if f"p_{name}" in line]
        for line, adjusted in zip(family, holm([line[f"p_{name}"] for line in family])):
            line[f"holm_{name}"] = adjusted


def gains_over_softmax(rows: list[dict]) -> list[dict]:
    """Within each sweep's rows (`partitions`) on the plain training set, each loss at its margins against that
    sweep's softmax runs: the data's shape (`data_shape`), the runs on each side, and per field of GAIN_FIELDS
    the difference of means in points with its 95% interval (`difference_interval`), its permutation p, and
    each run's own gain (its value minus softmax's mean), for the figure. Diverged runs have no value and
    are left out (their count is in the summary table)."""
    lines = []
    for label, part in partitions(rows):
        by_setting: dict[tuple, list[dict]] = {}
        for row in part:
            if is_plain(row) and accuracy_of(row) is not None:
                by_setting.setdefault(row_key(row).setting, []).append(row)
        base = by_setting.pop(setting("softmax"), [])
        if not base or not base[0].get("train_class_counts"):  # no softmax runs, or rows that do not say their data
            continue
        classes, per_class = data_shape(base[0])
        for key, runs in by_setting.items():
            line = {"settings": label, "classes": classes, "per_class": per_class, "loss": setting_label(key),
                    "runs": len(runs), "softmax_runs": len(base)}
            add_differences(line, runs, base, [(name, field) for name, field, _ in GAIN_FIELDS])
            lines.append(line)
    add_holm(lines, GAIN_NAMES)
    return sorted(lines, key=lambda line: (-line["classes"], line["per_class"], line["loss"]))


def gains_markdown(lines: list[dict], names: tuple[str, ...] = GAIN_NAMES) -> str:
    """The gains as a table: one line per (data shape, loss), each field of `names` (GAIN_FIELDS' short names)
    as gain [95% interval] (p), `format_gain`."""
    fields = [(name, title) for name, _, title in GAIN_FIELDS if name in names]
    heads = " | ".join(f"{title} gain, points" for _, title in fields)
    out = [f"| classes | images per class | loss | runs (softmax) | {heads} |", "|---" * (4 + len(fields)) + "|"]
    for line in lines:
        out.append(f"| {line['classes']} | {line['per_class']} | {line['loss']} | {line['runs']} ({line['softmax_runs']}) | "
                   + " | ".join(format_gain(line, name) for name, _ in fields) + " |")
    methods = sorted({line[f"method_{name}"] for line in lines for name, _ in fields if f"method_{name}" in line})
    families = ", ".join(f"{sum(f'p_{name}' in line for line in lines)} {title}" for name, title in fields)
    return "\n".join(out) + ("\n\nEach loss at its margins minus softmax, same settings and seeds: difference of means, "
                              "its 95% interval (t with df = min(runs) - 1) and two-sided permutation p "
                              f"({'; '.join(methods)}); Holm: p adjusted over the table's comparisons of each field "
                              f"(the families: {families}).\n")


ARM_FIELDS = (("test_acc", "top-1"), ("test_top5", "top-5"), ("test_f1", "macro F1"), ("map_at_r", "MAP@R"))


def arm_label(row: dict, baseline: dict) -> str:
    """An arm by its name in the search (`arms.arm_of`, when it is one: "normsoftmax: ..."), its loss and margins
    and each other identity setting in which it differs from `baseline`."""
    differ = [k for k in identity_keys() if k not in SETTING_KEYS and k != "seed" and cell(row.get(k)) != cell(baseline.get(k))]
    label = ", ".join([setting_label(row_key(row).setting), *(f"{k} {row.get(k)}" for k in differ)])
    name = arm_of(row)
    return f"{name}: {label}" if name else label


def arms_against_softmax(rows: list[dict]) -> list[dict]:
    """Each arm (the rows of one setting, `rows.group_key`) minus the one softmax arm, whatever else differs (a
    tuned trial's arms differ in their learning rates): per field of ARM_FIELDS, the difference of means in
    points, its 95% interval, its permutation p and Holm's adjustment over the arms (one family per field).
    ValueError when the rows hold no softmax arm or more than one, or no other arm."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        if accuracy_of(row) is not None:
            groups.setdefault(group_key(row), []).append(row)
    softmax = [runs for runs in groups.values() if runs[0]["loss"] == "softmax"]
    if len(softmax) != 1:
        raise ValueError(f"the rows hold {len(softmax)} softmax arms; the arms are compared with exactly one")
    base = softmax[0]
    if len(groups) == 1:
        raise ValueError("the rows hold only the softmax arm; there is no arm to compare with it")
    lines = []
    for runs in groups.values():
        if runs is not base:
            lines.append({"arm": arm_label(runs[0], base[0]), "runs": len(runs), "softmax_runs": len(base)})
            add_differences(lines[-1], runs, base, [(field, field) for field, _ in ARM_FIELDS])
            for field, _ in ARM_FIELDS:  # softmax's own runs about their mean, the spread a gain is set against
                values = percent_values(base, field)
                if values:
                    lines[-1][f"softmax_run_gains_{field}"] = run_gains(values, values)
    add_holm(lines, [field for field, _ in ARM_FIELDS])
    return lines


def arms_markdown(lines: list[dict]) -> str:
    """`arms_against_softmax` as a table: gain [95% interval] (p, Holm) per field, the families named below."""
    out = ["| arm | runs (softmax) | " + " | ".join(f"{title} gain, points" for _, title in ARM_FIELDS) + " |",
           "|---" * (2 + len(ARM_FIELDS)) + "|"]
    for line in lines:
        cells = [format_gain(line, field) for field, _ in ARM_FIELDS]
        out.append(f"| {line['arm']} | {line['runs']} ({line['softmax_runs']}) | " + " | ".join(cells) + " |")
    methods = sorted({line[k] for line in lines for k in line if k.startswith("method_")})
    return "\n".join(out) + ("\n\nEach arm minus the softmax arm: difference of means, its 95% interval (t with df = "
                              f"min(runs) - 1), two-sided permutation p ({'; '.join(methods)}); Holm: adjusted over the "
                              f"{len(lines)} arm{'s' * (len(lines) != 1)} of each field (one family per field).\n")
