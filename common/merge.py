"""The rows `sweep_margins.py --summarize` reads from several CSVs and the merged CSV it writes: each file's
usable rows counted and named, each run once, and an input named as the output kept as it was."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil

from .results import parse_rows, read_rows, remove_stale_temps, write_csv
from .rows import row_key, run_key


def read_summary_rows(paths: list[str]) -> list[dict]:
    """The usable rows of these CSVs (a loss, a seed, and a test accuracy or a diverged mark), each file's
    count of rows read and skipped printed with the reasons; a last line cut mid-way is skipped."""
    rows = []
    for path in paths:
        with open(path, newline="") as handle:
            text = handle.read()
        found = parse_rows(text)  # the text already read: one read per file
        cut = bool(text and not text.endswith("\n") and found)
        kept = [r for r in (found[:-1] if cut else found) if usable(r)]
        skipped = len(found) - len(kept)
        why = ("the last line is cut mid-way" if cut else "") + (
            ", " if cut and skipped > 1 else "") + ("no loss, seed or result" if skipped > cut else "")
        print(f"{path}: {len(found)} rows read, {len(kept)} used" + (f", {skipped} skipped ({why})" if skipped else ""))
        rows += kept
    return rows


def usable(row: dict) -> bool:
    try:
        row_key(row)
    except (KeyError, ValueError, TypeError):
        return False
    return row.get("test_acc", "") != "" or row.get("diverged", "") not in ("", None)


def merge_into_out(out: str, inputs: list[str], rows: list[dict], write_to: str | None = None) -> list[dict]:
    """Write the inputs' usable rows, each run once (its first row, as the summary counts it), to `out` (at
    `write_to`, a stand-in path, when given). An input named as `out` keeps every row it had, as it was; only
    runs it lacks are added, and it is not rewritten when there are none. Returns the rows summarised: each
    run once."""
    target = write_to or out
    first: dict[tuple, dict] = {}
    for row in rows:
        first.setdefault(run_key(row), row)  # the first row of each run
    merged = list(first.values())
    if not any(os.path.realpath(path) == os.path.realpath(out) for path in inputs):
        write_csv(target, merged)
        return merged
    kept = read_rows(out)
    have = {run_key(r) for r in kept}
    added = [r for r in merged if run_key(r) not in have]
    if added:
        write_csv(target, kept + added)
    return merged


STAGING = ".summary.tmp-{pid}"  # beside the outputs, so that each move into place is a rename on one disk


@contextlib.contextmanager
def published_together(out: str):
    """Yield a stand-in path for `out` in a staging folder beside it; when the block ends, every file written
    there is moved into out's folder, the CSV itself last. A reader sees the old set of files or the new one,
    never a mix, except during the renames (milliseconds). A block left by an exception (Ctrl-C, a kill's
    SystemExit) moves nothing; the staging folders of killed processes are removed by the next call."""
    folder = os.path.dirname(os.path.abspath(out))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(glob.glob(os.path.join(folder, STAGING.format(pid="*"))))
    staging = os.path.join(folder, STAGING.format(pid=os.getpid()))
    os.makedirs(staging, exist_ok=True)
    try:
        yield os.path.join(staging, os.path.basename(out))
        for name in sorted(os.listdir(staging), key=lambda name: name == os.path.basename(out)):  # the CSV last
            os.replace(os.path.join(staging, name), os.path.join(folder, name))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
