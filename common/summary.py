"""What a sweep's rows say: per-setting summaries (mean ± std over seeds, collapsed and diverged runs), the
comparison table of --preset claims, the quadratic fit that recommends margins, the checks of the source
paper's Table 1 claims, and the budget comparison; `write_summary` writes them with the plots
(common/plots.py). `sweep_margins.py --summarize` runs it on any merged CSVs.

Rows are averaged only with rows that share every setting but the seed (`rows.group_key`), and a run
(`rows.run_key`) is counted once however often its row appears. Rows of several sweeps' settings in one
CSV are summarised apart, each part labelled with the settings that tell it from the others."""
from __future__ import annotations

import hashlib
import math
import os
import re
import statistics

import torch

from .heads import LOSSES, MARGIN_DEFAULTS
from .plots import plot_gains, plot_summary
from .results import atomic_write_text, write_csv
from .rows import (CLAIM_SCENARIOS, SETTING_KEYS, accuracy_of, base_key, group_key, is_plain, sides,
                   percent_values, plain_training_set, row_key, run_key, setting, setting_label, settings_labels,
                   source_value, table1)
from .stats import (difference, difference_interval, holm, mean_std, permutation_method, permutation_p, ranks, spearman,
                    standard_error)


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


def summarize(rows: list[dict], collapse_below: float = COLLAPSE_BELOW) -> list[dict]:
    """Per group of rows that differ in the seed alone (`group_key`), in `summary_order`: mean, std and count
    of test accuracy (%) over the finished runs, how many of those collapsed (finished below `collapse_below`
    %; counted in the mean, apart from diverged runs, which stopped on a non-finite loss and have no
    accuracy), mean and std of macro F1 and MAP@R (%) over the finished runs that report them, the source
    table's value (MNIST on the plain training set only), and `settings`, the settings that tell the group's
    sweep from the other sweeps among the rows (empty when the rows are of one sweep)."""
    rows = unique_runs(rows)
    labels = settings_labels(rows)
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(group_key(row), []).append(row)
    summary = []
    for members in groups.values():
        key, (imbalance, holdout, _), _ = row_key(members[0])
        dataset = members[0].get("dataset", "")
        finished = [r for r in members if accuracy_of(r) is not None]
        accs = [100 * accuracy_of(r) for r in finished]
        mean, std = mean_std(accs)
        plain = plain_training_set(imbalance, holdout)
        f1, map_r = (mean_std([100 * float(r[c]) for r in finished if str(r.get(c, "")) != ""])
                     for c in ("test_f1", "map_at_r"))
        summary.append({**dict(zip(SETTING_KEYS, key)), "dataset": dataset, "imbalance": imbalance,
                        "holdout_classes": holdout, "settings": labels[base_key(members[0])], "mean_acc": mean,
                        "std_acc": std, "runs": len(accs),
                        "collapsed": sum(a < collapse_below for a in accs), "collapse_below": collapse_below,
                        "diverged": len(members) - len(accs), "mean_f1": f1[0], "std_f1": f1[1],
                        "mean_map_at_r": map_r[0], "std_map_at_r": map_r[1],
                        "source_acc": source_value(key) if plain and dataset == "mnist" else None})
    return sorted(summary, key=summary_order)


def summary_order(line: dict) -> tuple:
    """Table 1's reading order: dataset, training set, then the losses in LOSSES order (softmax first, the
    reference), each by s, m1, m3, then m2 (ArcFace up m2; the combined grid row by row, m3 = 0.20 first)."""
    margins = tuple(-math.inf if line[k] is None else line[k] for k in ("s", "m1", "m3", "m2"))
    loss = LOSSES.index(line["loss"]) if line["loss"] in LOSSES else len(LOSSES)
    return (str(line["dataset"]), line.get("settings", ""), line["imbalance"], line["holdout_classes"], loss,
            str(line["loss"]), *margins)


def markdown_table(summary: list[dict]) -> str:
    """One line per summary row; a "training set" column appears only when some row is not the plain one, a
    "settings" column only when the rows are of several sweeps' settings."""
    special = not all(plain_training_set(r["imbalance"], r["holdout_classes"]) for r in summary)
    mixed = any(r.get("settings") for r in summary)
    below = summary[0]["collapse_below"] if summary else COLLAPSE_BELOW
    lines = ["| loss | s | m1 | m2 | m3 |" + (" settings |" if mixed else "") + (" training set |" if special else "") +
             f" test acc % (mean ± std) | runs | collapsed (< {below:g}%) | diverged | macro F1 % | MAP@R % |"
             " source paper % |",
             "|---|---|---|---|---|" + ("---|" if mixed else "") + ("---|" if special else "") + "---|---|---|---|---|---|---|"]
    fmt = lambda v: "" if v is None else f"{v:g}"  # noqa: E731
    for r in summary:
        acc = format_mean_std(r["mean_acc"], r["std_acc"])
        source = "" if r["source_acc"] is None else f"{r['source_acc']:.2f}"
        settings = f" {r['settings']} |" if mixed else ""
        trained = f" imbalance {r['imbalance']:g}, {r['holdout_classes']} classes held out |" if special else ""
        lines.append(f"| {r['loss']} | {fmt(r['s'])} | {fmt(r['m1'])} | {fmt(r['m2'])} | {fmt(r['m3'])} |{settings}{trained} "
                     f"{acc} | {r['runs']} | {r['collapsed']} | {r['diverged']} | "
                     f"{format_mean_std(r['mean_f1'], r['std_f1'])} | "
                     f"{format_mean_std(r['mean_map_at_r'], r['std_map_at_r'])} | {source} |")
    return "\n".join(lines) + "\n"


# The comparison table of --preset claims: (column, heading, which runs, result field, x100 for percent).
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


def quadratic_features(v: torch.Tensor, curved: tuple[bool, ...] | None = None) -> torch.Tensor:
    """(N, k) margins -> (N, features): constant, linear, cross terms, and the square of each margin whose
    `curved` entry is True (default: all). A margin swept at only two values has no square term: there
    its square is a linear function of it, and a fit with both is underdetermined."""
    k = v.shape[1]
    curved = curved if curved is not None else (True,) * k
    cols = [torch.ones(len(v), dtype=torch.float64), *v.t()]
    cols += [v[:, a] * v[:, b] for a in range(k) for b in range(a, k) if a != b or curved[a]]
    return torch.stack(cols, 1)


def varying_margins(points: list[tuple[tuple[float, ...], float]]) -> list[int]:
    """Indices of the margins that take more than one value among `points` ((margins, accuracy) pairs)."""
    return [i for i in range(len(points[0][0])) if len({p[0][i] for p in points}) > 1] if points else []


def fit_quadratic(points: list[tuple[tuple[float, ...], float]], bootstrap: int = 200, seed: int = 0,
                  at: tuple[float, ...] | None = None) -> dict | None:
    """Least-squares quadratic (with cross terms) of accuracy over the margins that vary, its maximiser on
    a grid spanning the sweep, and the bootstrap (over runs) standard deviation of that maximiser. With
    `at` (all margins of a point, for example the loss's default) also the predicted gain of the maximum
    over the fit's value there, that gain's bootstrap standard deviation (a gain within about one of those
    is not a recommendation the runs support). Also the fit's R^2 and `surface_p`, the share of fits to the
    runs with their accuracies shuffled across margins (`bootstrap` of them, seeded) that explain as much:
    a fitted maximum lies above its surface's other points even on pure noise, so a gain means nothing
    where the surface is no better than noise. Only margins swept at three or more values get a
    square term (`quadratic_features`); None with fewer than 3k + 1 runs for k varying margins."""
    names = varying_margins(points)
    curved = tuple(len({p[0][i] for p in points}) >= 3 for i in names)
    if not names or len(points) < 3 * len(names) + 1:
        return None
    x = torch.tensor([[p[0][i] for i in names] for p in points], dtype=torch.float64)
    y = torch.tensor([p[1] for p in points], dtype=torch.float64)
    axes = [torch.linspace(x[:, j].min().item(), x[:, j].max().item(), 41, dtype=torch.float64) for j in range(len(names))]
    grid = torch.cartesian_prod(*axes).view(-1, len(names))

    point = None if at is None else quadratic_features(torch.tensor([[at[i] for i in names]], dtype=torch.float64), curved)

    def best(xs, ys):
        coef = torch.linalg.lstsq(quadratic_features(xs, curved), ys.view(-1, 1)).solution
        predicted = (quadratic_features(grid, curved) @ coef).squeeze(1)
        gain = math.nan if point is None else predicted.max().item() - (point @ coef).item()
        return grid[predicted.argmax()], predicted.max().item(), coef, gain

    where, value, coef, gain = best(x, y)
    generator = torch.Generator().manual_seed(seed)
    draws = [best(x[i], y[i]) for i in (torch.randint(0, len(y), (len(y),), generator=generator) for _ in range(bootstrap))]
    spread = torch.stack([d[0] for d in draws]).std(dim=0)
    gain_std = torch.tensor([d[3] for d in draws], dtype=torch.float64).std().item()
    # A fitted maximum lies above the surface's other points even when the margins do nothing, so the surface
    # itself is tested: does it explain more of the runs' variance (R^2) than fits to shuffled runs do?
    features = quadratic_features(x, curved)

    def explained(ys):  # R^2; 0 where the runs do not vary at all
        residual = ys.view(-1, 1) - features @ torch.linalg.lstsq(features, ys.view(-1, 1)).solution
        total = ((ys - ys.mean()) ** 2).sum().item()
        return 1 - (residual ** 2).sum().item() / total if total > 0 else 0.0

    r2 = explained(y)
    null = [explained(y[torch.randperm(len(y), generator=generator)]) for _ in range(bootstrap)]
    return {"varying": names, "curved": curved, "best": where.tolist(), "best_std": spread.tolist(),
            "predicted_acc": value, "coefficients": coef.squeeze(1).tolist(), "gain": gain, "gain_std": gain_std,
            "r2": r2, "surface_p": (1 + sum(n >= r2 - 1e-12 for n in null)) / (1 + len(null))}


def reference_margins(default: tuple, points: list[tuple[tuple[float, ...], float]], varying: list[int]) -> tuple:
    """Where the regression's gain is measured from: the loss's default margins when the sweep spans them,
    else the swept setting nearest to them (a quadratic's value outside its data is extrapolation, and
    Table 1's combined grid, m2 0.40-0.44, does not reach the combined default m2 = 0.3)."""
    inside = all(min(p[0][i] for p in points) <= default[i] <= max(p[0][i] for p in points) for i in varying)
    if inside:
        return default
    return min({p[0] for p in points}, key=lambda m: sum((m[i] - default[i]) ** 2 for i in varying))


def recommend(rows: list[dict], loss: str, collapse_below: float = COLLAPSE_BELOW) -> str | None:
    """One line: the fitted best margins for `loss`, their bootstrap spread and the predicted gain over the
    loss's default (or the swept setting nearest to it, `reference_margins`), weighed against the gain's own
    bootstrap spread, and the fitted surface against fits to shuffled runs (`fit_quadratic`'s surface_p).
    Collapsed runs (below `collapse_below` %) are left out of the fit and counted: one run at 50% would
    bend a quadratic fitted to 0.1-point differences, as it does the means."""
    runs = [(tuple(float(r[k]) for k in SETTING_KEYS[1:]), 100 * a) for r in rows
            if r["loss"] == loss and is_plain(r) and (a := accuracy_of(r)) is not None]
    points = [p for p in runs if p[1] >= collapse_below]
    default = setting(loss)[1:]
    varying = varying_margins(points)
    if not varying:
        return None
    at = reference_margins(default, points, varying)
    fit = fit_quadratic(points, at=at)
    if fit is None:
        return None
    names = [SETTING_KEYS[1 + i] for i in varying]
    at_reference = fit["predicted_acc"] - fit["gain"]  # the fit's value at the reference margins
    best = ", ".join(f"{n} = {b:.3f} ± {e:.3f}" for n, b, e in zip(names, fit["best"], fit["best_std"]))
    margins = lambda m: ", ".join(f"{n} = {m[i]:g}" for n, i in zip(names, varying))  # noqa: E731
    where = (f"at the default {margins(default)}" if at == default else
             f"the default {margins(default)} lies outside the swept range; at the nearest swept setting {margins(at)}")
    left_out = len(runs) - len(points)
    return (f"{loss}: quadratic fit over {len(points)} runs{f' ({left_out} collapsed left out)' if left_out else ''} "
            f"recommends {best} (predicted {fit['predicted_acc']:.2f}%"
            f"{', above 100%: the quadratic does not fit' if fit['predicted_acc'] > 100 else ''}); "
            f"{where} it predicts {at_reference:.2f}% (gain {fit['gain']:+.2f} ± {fit['gain_std']:.2f} points, bootstrap std"
            f"{'' if fit['gain'] > fit['gain_std'] else ': within it, no evidence for the recommendation'}); "
            f"the fit explains R^2 = {fit['r2']:.2f} of the runs' variance, fits to the runs shuffled across margins "
            f"as much: p = {fit['surface_p']:.3f}{'' if fit['surface_p'] < 0.05 else ', no evidence that the margins matter'}")


def table1_cells(rows: list[dict], loss: str) -> dict[tuple, list[float]]:
    """{(m2, m3): test accuracies in %} of the finished MNIST runs of `loss` on the plain training set at
    Table 1's s = 30 and m1 = 1, one entry per run (seed)."""
    cells: dict[tuple, list[float]] = {}
    for row in rows:
        if (row["loss"] == loss and row.get("dataset", "mnist") == "mnist" and is_plain(row)
                and float(row["s"]) == 30 and float(row["m1"]) == 1 and (a := accuracy_of(row)) is not None):
            cells.setdefault((float(row["m2"]), float(row["m3"])), []).append(100 * a)
    return cells


def pooled(cells: dict[tuple, list[float]]) -> list[float]:
    return [a for runs in cells.values() for a in runs]


def described(values: list[float]) -> str:
    return format_mean_std(*mean_std(values))


def arcface_margin_lines(arc: dict[tuple, list[float]], runs: int, collapsed: int) -> list[str]:
    """Do the ArcFace m2 cells differ, and is m2 = 0.5 better than its neighbours; `arc` holds the runs that
    did not collapse, `runs` and `collapsed` count all of them."""
    ranked = sorted((k for k in arc if arc[k]), key=lambda k: -mean_std(arc[k])[0])
    if len(ranked) < 2:
        return []
    head = (f"ArcFace, {len(arc)} m2 cells, {runs} runs ({collapsed} collapsed, left out below): best mean at "
            f"m2 = {ranked[0][0]:g} ({described(arc[ranked[0]])})")
    if (0.5, 0.0) in ranked:
        head += f"; m2 = 0.5 {described(arc[(0.5, 0.0)])}, rank {ranked.index((0.5, 0.0)) + 1} of {len(ranked)}"
    lines = [f"{head}; cells differ beyond their seeds: permutation p = {format_p(permutation_p(list(arc.values())))}"]
    if (0.5, 0.0) in ranked:
        order = sorted(ranked)
        at = order.index((0.5, 0.0))
        near = [k for k in order[max(0, at - 1):at + 2] if k != (0.5, 0.0)]
        gain, p = difference(arc[(0.5, 0.0)], pooled({k: arc[k] for k in near}))
        lines.append(f"ArcFace m2 = 0.5 against its neighbours m2 = {', '.join(f'{k[0]:g}' for k in near)} "
                     f"(runs pooled): {gain:+.2f} points, p = {format_p(p)}")
    return lines


def low_cell_line(loss: str, cell: tuple, source: float, median: float, runs: list[float],
                  others: list[float], collapse_below: float) -> str:
    """Is one of the paper's low cells low here: its runs that did not collapse against `others` (those of
    the loss's other cells), and its collapsed runs counted."""
    kept = [a for a in runs if a >= collapse_below]
    gain, p = difference(kept, others)
    low = len(runs) - len(kept)
    verdict = ("reproduced: every run collapsed" if not kept else "reproduced" if gain < 0 and p < 0.05
               else f"not reproduced, but {low} of {len(runs)} runs collapsed" if low else "not reproduced")
    name = f"m2 = {cell[0]:g}" + (f", m3 = {cell[1]:g}" if loss == "combined" else "")
    return (f"paper's low cell {loss} {name} (paper {source:.2f}, its median {median:.2f}): {described(runs)} "
            f"over {len(runs)} runs, lowest {min(runs):.2f}, {low} collapsed; without those {gain:+.2f} points "
            f"against the other {loss} cells, p = {format_p(p)}: {verdict}")


def table1_checks(rows: list[dict], collapse_below: float = COLLAPSE_BELOW) -> list[str]:
    """The source paper's claims about its Table 1, tested on a sweep's runs (`table1_cells`): do the ArcFace
    m2 cells differ beyond their seeds, is m2 = 0.5 better than its neighbours, is the combined margin
    (m3 > 0) better than ArcFace, and are the paper's low cells (more than 1 point below the median of its
    table) low here too, or low only through collapsed runs. Means are compared over the runs that did not
    collapse (one collapse would outweigh every other difference), and the collapsed runs are counted
    beside them. Permutation p-values (common/significance.py), each uncorrected for the number of tests
    made; a question the runs do not cover (fewer than two cells, no runs at m2 = 0.5) has no line."""
    cells = {"arcface": {k: v for k, v in table1_cells(rows, "arcface").items() if k[1] == 0},
             "combined": {k: v for k, v in table1_cells(rows, "combined").items() if k[1] > 0}}
    kept = {loss: {k: [a for a in v if a >= collapse_below] for k, v in c.items()} for loss, c in cells.items()}
    runs = {loss: len(pooled(cells[loss])) for loss in cells}
    collapsed = {loss: runs[loss] - len(pooled(kept[loss])) for loss in cells}
    lines = arcface_margin_lines(kept["arcface"], runs["arcface"], collapsed["arcface"])
    if pooled(kept["arcface"]) and pooled(kept["combined"]):
        gain, p = difference(pooled(kept["combined"]), pooled(kept["arcface"]))
        count = len(cells["combined"])
        lines.append(f"combined margin ({count} cell{'s' * (count != 1)} with m3 > 0, {runs['combined']} runs, "
                     f"{collapsed['combined']} collapsed) against ArcFace ({len(cells['arcface'])} cells, "
                     f"{runs['arcface']} runs, {collapsed['arcface']} collapsed), over the runs that did not "
                     f"collapse: {gain:+.2f} points, p = {format_p(p)}")
    median = statistics.median(table1().values())
    for (loss, _, _, m2, m3), source in table1().items():
        if source < median - 1 and (m2, m3) in cells[loss] and len(cells[loss]) >= 2:
            others = pooled({k: v for k, v in kept[loss].items() if k != (m2, m3)})
            lines.append(low_cell_line(loss, (m2, m3), source, median, cells[loss][(m2, m3)], others, collapse_below))
    return lines


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
            for name, field, _ in GAIN_FIELDS:
                a, b = percent_values(runs, field), percent_values(base, field)
                if a and b:
                    gain, low, high = difference_interval(a, b)
                    line.update({f"gain_{name}": gain, f"low_{name}": low, f"high_{name}": high,
                                 f"p_{name}": difference(a, b)[1], f"method_{name}": permutation_method([len(a), len(b)]),
                                 f"run_gains_{name}": ";".join(f"{v - sum(b) / len(b):.3f}" for v in a)})
            lines.append(line)
    for name in GAIN_NAMES:  # the family: every comparison of this field in these rows
        family = [line for line in lines if f"p_{name}" in line]
        for line, adjusted in zip(family, holm([line[f"p_{name}"] for line in family])):
            line[f"holm_{name}"] = adjusted
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


def analyses(rows: list[dict], collapse_below: float) -> list[str]:
    """The verdict lines of one sweep's rows: the fitted margins, the Table 1 checks, each loss against softmax."""
    lines = [line for line in (recommend(rows, loss, collapse_below)
                               for loss in ("arcface", "combined", "cosface", "sphereface")) if line]
    return lines + table1_checks(rows, collapse_below) + against_softmax(rows, collapse_below)


def write_summary(rows: list[dict], out_csv: str, collapse_below: float = COLLAPSE_BELOW,
                  baseline: list[dict] = ()) -> list[str]:
    """<stem>_summary.{csv,md} and plots; the regression and plots use plain-training-set runs only.
    With runs of --preset claims, also <stem>_comparison.{csv,md}; with `baseline` rows (the same settings
    at another budget), also <stem>_budget.md (`budget_comparison`). Rows of several sweeps' settings are
    analysed and plotted apart (`partitions`): each verdict line starts with its part's label, and each
    part's files carry the label in their names."""
    stem = os.path.splitext(out_csv)[0]
    summary = summarize(rows, collapse_below)
    parts = partitions(rows)
    if len(parts) > 1:
        print(f"note: these rows are of {len(parts)} sweeps' settings ({'; '.join(label for label, _ in parts)}); "
              "each is summarised apart")
    lines, written, markdown_parts = [], [f"{stem}_summary.csv", f"{stem}_summary.md"], []
    for label, part in parts:
        prefix, part_stem = (f"[{label}] ", f"{stem}_{slug(label)}") if label else ("", stem)
        lines += [prefix + line for line in analyses(part, collapse_below)]
        plain = [r for r in summarize(part, collapse_below) if plain_training_set(r["imbalance"], r["holdout_classes"])]
        written += plot_summary(plain, part_stem, [r for r in part if is_plain(r)])
        table = comparison_table(part)
        if table:
            write_csv(f"{part_stem}_comparison.csv", table)
            markdown = comparison_markdown(table)
            atomic_write_text(f"{part_stem}_comparison.md", markdown)
            markdown_parts.append(prefix + "\n" + markdown if prefix else markdown)
            written += [f"{part_stem}_comparison.csv", f"{part_stem}_comparison.md"]
    write_csv(f"{stem}_summary.csv", summary)
    atomic_write_text(f"{stem}_summary.md", markdown_table(summary) + "".join(f"\n{line}\n" for line in lines))
    for line in lines:
        print(line)
    for markdown in markdown_parts:
        print(markdown)
    gains = gains_over_softmax(rows)
    if len({(g["classes"], g["per_class"]) for g in gains}) > 1:  # several data sizes: the gain against them
        write_csv(f"{stem}_gains.csv", gains)
        atomic_write_text(f"{stem}_gains.md", gains_markdown(gains))
        written += [f"{stem}_gains.csv", f"{stem}_gains.md", plot_gains(gains, f"{stem}_gains.png")]
    budget, verdict = budget_comparison(rows, list(baseline), collapse_below)
    if budget:
        atomic_write_text(f"{stem}_budget.md", budget + "".join(f"\n{line}\n" for line in verdict))
        print(budget + "\n".join(verdict))
        written.append(f"{stem}_budget.md")
    return written
