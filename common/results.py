"""Results files: atomic CSV appends and the provenance every row carries."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import platform
import subprocess
import tempfile

import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """Commit of this checkout, with '-dirty' for uncommitted changes; 'unknown' outside git."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_info() -> dict:
    import torchvision

    return {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "python_version": platform.python_version(), "git_commit": git_commit()}


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str):
    """Exclusive advisory lock on PATH.lock (POSIX), so parallel runs can share one CSV."""
    try:
        import fcntl
    except ImportError:  # Windows: no locking, single writer assumed
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_rows(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def rows_to_csv(rows: list[dict], columns: list[str] | None = None) -> str:
    if columns is None:
        columns = []
        for row in rows:
            columns += [key for key in row if key not in columns]
    sink = io.StringIO()
    writer = csv.DictWriter(sink, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return sink.getvalue()


def append_row(path: str, row: dict) -> None:
    """Append one row to the CSV at `path` atomically; new columns widen the header."""
    with file_lock(path):
        rows = read_rows(path) + [row]
        atomic_write_text(path, rows_to_csv(rows))


def write_csv(path: str, rows: list[dict], columns: list[str] | None = None) -> None:
    atomic_write_text(path, rows_to_csv(rows, columns))

