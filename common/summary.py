"""What a sweep's rows say, written beside its CSV: per-setting summaries (mean ± std over seeds, collapsed
and diverged runs) with the verdict lines of `table1` and `comparisons`, the plots (common/plots.py), and
the comparison, budget and gains tables where the rows hold them. `sweep_margins.py --summarize` runs it on
any merged CSVs. Rows of several sweeps' settings in one CSV are summarised apart, each part labelled with
the settings that tell it from the others (`grouping.partitions`)."""
from __future__ import annotations

import math
import os

from .comparisons import (against_softmax, budget_comparison, comparison_markdown, comparison_table, gains_markdown,
                          gains_over_softmax)
from .grouping import COLLAPSE_BELOW, format_mean_std, partitions, slug, unique_runs
from .heads import LOSSES
from .plots import plot_gains, plot_summary
from .results import atomic_write_text, write_csv
from .rows import (SETTING_KEYS, accuracy_of, base_key, group_key, is_plain, plain_training_set, row_key, settings_labels,
                   source_value)
from .stats import mean_std
from .table1 import recommend, table1_checks


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


def analyses(rows: list[dict], collapse_below: float) -> list[str]:
    """The verdict lines of one sweep's rows: the fitted margins, the Table 1 checks, each loss against softmax."""
    lines = [line for line in (recommend(rows, loss, collapse_below)
                               for loss in ("arcface", "combined", "cosface", "sphereface")) if line]
    return lines + table1_checks(rows, collapse_below) + against_softmax(rows, collapse_below)


def write_summary(rows: list[dict], out_csv: str, collapse_below: float = COLLAPSE_BELOW,
                  baseline: list[dict] = ()) -> list[str]:
    """<stem>_summary.{csv,md} and plots; the regression and plots use plain-training-set runs only.
    With runs of --grid claims, also <stem>_comparison.{csv,md}; with `baseline` rows (the same settings
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
