"""Tables in Markdown files written from the committed CSVs, never by hand.

A table is a block between two comments: the first says where its numbers come from, the second ends it.

    <!-- table csv=results/a.csv;results/b.csv rows=dataset,loss columns=seed value=test_acc where=epochs:10 -->
    ...generated lines...
    <!-- /table -->

Each cell is the mean ± std (runs) of `value` in percent (several fields, comma-separated, are shown as
'a / b') over the rows that share the `rows` keys and the
`columns` key's value (one column per value; without `columns`, one value column; `columns=fields`, one column
per field of `value`); rows and columns in order (losses as LOSSES lists them, numbers by value; the pseudo-key
`csv`, each row's file name without `.csv`, and datasets in the order their files are listed), counting each run once (`rows.run_key`) and leaving out diverged runs. `where` keeps rows whose
keys have the given values (`where=loss:softmax|arcface`: either); `margins=default` keeps each loss at its default margins; `percent=no` shows the values as they are,
`percent=f1,f2` only those fields in percent; `kind=comparison` writes the table of `--grid claims` (each loss across
the four scenarios, `summary.comparison_table`) instead, and `kind=budget baseline=b.csv` the budget comparison
(`summary.budget_comparison`) of the rows against the baseline's, `kind=gains` each loss minus softmax per
data size (`summary.gains_over_softmax`; `value=acc,map_at_r` picks its fields, `columns=loss` puts one
loss in a column), `kind=arms` each arm of a tuned trial (one setting each, whatever else differs) minus its one
softmax arm (`comparisons.arms_against_softmax`); `also=train_tflop` adds a column with that
field's mean over the group's rows (3 significant digits).

    python -m common.tables README.md results/README.md            # rewrite every block from the CSVs
    python -m common.tables --check README.md results/README.md    # exit 1 naming each block that differs
"""
from __future__ import annotations

import argparse
import os
import re
import sys

from .heads import LOSSES
from .config import identity_keys
from .results import REPO_ROOT, CsvDamageError, atomic_write_text, read_rows
from .rows import accuracy_of, group_key, row_key, run_key, setting
from .comparisons import (GAIN_FIELDS, GAIN_NAMES, arms_against_softmax, arms_markdown, budget_comparison,
                          comparison_markdown, comparison_table, format_gain, gains_markdown, gains_over_softmax)
from .grouping import collapse_threshold, format_mean_std
from .stats import mean_std

BLOCK = re.compile(r"(<!-- table (?P<spec>[^>]*?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


class TableError(ValueError):
    """A table block that cannot be filled from its CSVs; the message says why in one line."""


SPEC_KEYS = ("csv", "rows", "columns", "value", "where", "margins", "percent", "kind", "baseline", "also")
KINDS = ("comparison", "budget", "gains", "arms")


def parse_spec(spec: str) -> dict[str, str]:
    """'csv=a.csv rows=loss value=test_acc' -> {'csv': 'a.csv', 'rows': 'loss', 'value': 'test_acc'}; TableError
    for a token without '=', an unknown key or kind, or a spec without what its kind needs."""
    options = {}
    for part in spec.split():
        key, sep, value = part.partition("=")
        if not sep:
            raise TableError(f"'{part}' is not key=value")
        if key not in SPEC_KEYS:
            raise TableError(f"unknown key '{key}' (known: {', '.join(SPEC_KEYS)})")
        options[key] = value
    kind = options.get("kind")
    if kind is not None and kind not in KINDS:
        raise TableError(f"unknown kind '{kind}' (known: {', '.join(KINDS)})")
    needed = ["csv"] + {None: ["rows", "value"], "budget": ["baseline"]}.get(kind, [])
    missing = [key for key in needed if key not in options]
    if missing:
        raise TableError(f"no {missing[0]}= in the spec")
    return options


def table_rows(paths: list[str], root: str) -> list[dict]:
    """The rows of these CSVs, each with the pseudo-key `csv` (its file name without .csv), read strictly: a
    missing file or a damaged line is a TableError naming it, never a number."""
    rows = []
    for path in paths:
        full = os.path.join(root, path)
        if not os.path.isfile(full):
            raise TableError(f"csv={path}: no such file")
        try:
            found = read_rows(full, strict=True)
        except CsvDamageError as exc:
            raise TableError(str(exc).replace(full, path)) from None
        rows += [dict(r, csv=os.path.basename(path).removesuffix(".csv")) for r in found]
    return rows


def check_columns(options: dict[str, str], rows: list[dict]) -> None:
    """TableError naming the first column that rows=, columns=, value=, where= or also= asks for and no row has."""
    present = {"csv"}.union(*(r.keys() for r in rows))
    named = {"rows": options.get("rows", "").split(","), "also": options.get("also", "").split(","),
             "where": [part.split(":", 1)[0] for part in options.get("where", "").split(",")]}
    if options.get("kind") is None:
        named["value"] = options["value"].split(",")
        named["columns"] = [] if options.get("columns") in (None, "fields") else [options["columns"]]
    for key, columns in named.items():
        for column in columns:
            if column and column not in present:
                raise TableError(f"{key}={options[key]}: no column '{column}' in {options['csv']}")


def one_setting(cell: str, members: list[dict]) -> None:
    """TableError unless the rows of one cell share every identity setting but the seed (`rows.group_key`):
    a cell averages the seeds of one setting, never rows of different settings."""
    groups = {group_key(r): r for r in members}
    if len(groups) > 1:
        keys = [k for k in identity_keys() if k != "seed"]
        differ = [k for i, k in enumerate(keys) if len({g[i] for g in groups}) > 1]
        values = "; ".join(f"{k}: {', '.join(sorted({str(r.get(k, '')) or '(empty)' for r in members}))}" for k in differ)
        raise TableError(f"cell {cell} would average rows of {len(groups)} settings ({values}); "
                         "tell them apart with rows=, columns= or where=")


def order(key: str, value: str, listed: dict[str, list[str]] | None = None) -> tuple:
    """Sort key of a cell: losses in LOSSES order (softmax first), CSV names and datasets in the order their
    files are listed (`listed`: key -> values in that order), numbers by value, other text as text."""
    if key == "loss" and value in LOSSES:
        return (0, LOSSES.index(value), "")
    if value in (listed or {}).get(key, ()):
        return (0, listed[key].index(value), "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def label(value: str, key: str) -> str:
    """A cell of a rows column: '-' for an empty one (softmax's margins)."""
    return value if value != "" else "-"


def render(spec: str, root: str = REPO_ROOT) -> str:
    """The Markdown lines of one table block (header, rule, a line per group), from its spec."""
    options = parse_spec(spec)
    rows = table_rows(options["csv"].split(";"), root)
    check_columns(options, rows)
    wanted = [part.split(":", 1) for part in options.get("where", "").split(",") if part]
    rows = [r for r in rows if all(str(r.get(k, "")) in v.split("|") for k, v in wanted) and accuracy_of(r) is not None]
    if options.get("margins") == "default":  # each loss at its own default margins only
        rows = [r for r in rows if row_key(r).setting == setting(r["loss"])]
    rows = list({run_key(r): r for r in rows}.values())  # each run once
    if not rows:
        raise TableError("no row matches" + (f" where={options['where']}" if "where" in options else "") +
                         " (a table is never rewritten from nothing)")
    if options.get("kind") == "comparison":  # --grid claims: the losses across the four scenarios
        return comparison_markdown(comparison_table(rows))
    if options.get("kind") == "budget":  # the same settings at two budgets: `summary.budget_comparison`
        baseline = table_rows(options["baseline"].split(";"), root)
        table, verdict = budget_comparison(rows, baseline, collapse_threshold(rows))
        return table + "".join(f"\n{line}\n" for line in verdict)
    if options.get("kind") == "arms":  # each arm of a tuned trial minus its softmax arm
        try:
            return arms_markdown(arms_against_softmax(rows))
        except ValueError as exc:
            raise TableError(str(exc)) from None
    if options.get("kind") == "gains":  # each loss minus softmax per data size: `summary.gains_over_softmax`
        names = tuple(options["value"].split(",")) if "value" in options else GAIN_NAMES
        gains = gains_over_softmax(rows)
        return gains_by_loss(gains, names) if options.get("columns") == "loss" else gains_markdown(gains, names)
    keys = options["rows"].split(",")
    column = options.get("columns")
    fields, percent = options["value"].split(","), options.get("percent", "yes")
    in_percent = fields if percent == "yes" else [] if percent == "no" else percent.split(",")
    listed = {k: list(dict.fromkeys(str(r.get(k, "")) for r in rows)) for k in ("csv", "dataset")}  # listed order
    if column == "fields":  # one column per field, each cell one field
        heads = fields
    elif column:
        heads = sorted({str(r.get(column, "")) for r in rows}, key=lambda v: order(column, v, listed))
    else:
        heads = ["/".join(fields)]
    groups: dict[tuple, dict[str, list[list[float]]]] = {}  # group -> column -> one list of values per field
    for r in rows:
        if any(str(r.get(f, "")) in ("", "nan") for f in fields):
            continue
        cells = groups.setdefault(tuple(str(r.get(k, "")) for k in keys), {})
        values = {f: float(r[f]) * (100 if f in in_percent else 1) for f in fields}
        if column == "fields":
            for f in fields:
                cells.setdefault(f, [[]])[0].append(values[f])
            continue
        kept = cells.setdefault(str(r.get(column, "")) if column else heads[0], [[] for _ in fields])
        for f, values_of_field in zip(fields, kept):
            values_of_field.append(values[f])
    also = [k for k in options.get("also", "").split(",") if k]
    lines = ["| " + " | ".join(keys + also + heads) + " |", "|---" * (len(keys) + len(also) + len(heads)) + "|"]
    for group, cells in sorted(groups.items(), key=lambda item: [order(k, v, listed) for k, v in zip(keys, item[0])]):
        members = [r for r in rows if tuple(str(r.get(k, "")) for k in keys) == group]
        for head in heads if column not in (None, "fields") else [None]:
            name = ", ".join(f"{k}={v}" for k, v in zip(keys, group)) + ("" if head is None else f", {column}={head}")
            one_setting(f"({name})", [r for r in members if head is None or str(r.get(column, "")) == head])
        found = {k: [float(r[k]) for r in members if str(r.get(k, "")) not in ("", "nan")] for k in also}
        extra = [f"{mean_std(found[k])[0]:.3g}" if found[k] else "—" for k in also]
        shown = [" / ".join(format_mean_std(*mean_std(v)) for v in cells[h]) + f" ({len(cells[h][0])})"
                 if h in cells else "—" for h in heads]
        lines.append("| " + " | ".join([label(v, k) for v, k in zip(group, keys)] + extra + shown) + " |")
    return "\n".join(lines) + "\n"


def gains_by_loss(gains: list[dict], names: tuple[str, ...]) -> str:
    """The gains with one line per data size and one column per loss, each cell the fields of `names` as
    'gain [95% interval]', joined by ' / ': the short form of `summary.gains_markdown`."""
    losses = list(dict.fromkeys(g["loss"] for g in sorted(gains, key=lambda g: order("loss", g["loss"].split()[0]))))
    shapes = list(dict.fromkeys((g["classes"], g["per_class"]) for g in gains))
    titles = " / ".join(title for name, _, title in GAIN_FIELDS if name in names)

    def cell(line: dict | None) -> str:
        if line is None:
            return "—"
        parts = " / ".join(format_gain(line, name, digits=1, with_p=False) for name in names)
        return f"{parts} ({line['runs']}, {line['softmax_runs']})"

    found = {(g["classes"], g["per_class"], g["loss"]): g for g in gains}
    lines = [f"| classes | images per class | {' | '.join(losses)} |", "|---" * (2 + len(losses)) + "|"]
    for classes, per_class in shapes:
        cells = [cell(found.get((classes, per_class, loss))) for loss in losses]
        lines.append(f"| {classes} | {per_class} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + (f"\n\n{titles} gain over softmax, points: difference of means [95% interval] "
                               "(runs, softmax's runs).\n")


def update(path: str, check: bool, root: str = REPO_ROOT) -> list[str]:
    """Rewrite (or, with `check`, only compare) every table block of the Markdown file at `path`; returns one
    line per block whose text differs from what its CSVs give."""
    with open(path) as handle:
        text = handle.read()
    stale = []

    def fill(match: re.Match) -> str:
        try:
            body = render(match["spec"], root)
        except TableError as exc:  # the whole file stays as it is
            raise TableError(f"{path} line {text.count(chr(10), 0, match.start()) + 1}: {exc}") from None
        if body != match["body"]:
            stale.append(f"{path}: table '{match['spec']}' differs from what its CSVs give")
        return match.group(1) + body + match.group(4)

    new = BLOCK.sub(fill, text)
    if not check and new != text:
        atomic_write_text(path, new)
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m common.tables", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    parser.add_argument("files", nargs="+", help="Markdown files with table blocks")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if any block differs")
    args = parser.parse_args(argv)
    try:
        stale = [line for path in args.files for line in update(path, args.check)]
    except TableError as exc:
        print(f"python -m common.tables: error: {exc}", file=sys.stderr)
        return 2
    for line in stale:
        print(line, file=sys.stderr if args.check else sys.stdout)
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
