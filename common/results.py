"""Results files: the row, history and confusion matrix a run writes (`write_results`), what a run records
as it goes (`RunRecord`), atomic CSV appends, and the provenance every row carries."""
from __future__ import annotations

import contextlib
import csv
import io
import os
import platform
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

import torch

from .device import device_name

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def git_commit() -> str:
    """Commit of this checkout, with '-dirty' when tracked code differs from it; 'unknown' outside git.

    Changes under results/ and to Markdown files do not count as dirty: a sweep appending its own
    rows, or a README being edited, leaves the code that runs unchanged.
    """
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        code_changes = git("status", "--porcelain", "--untracked-files=no", "--", ":(top)",
                           ":(top,exclude)results", ":(top,exclude,glob)**/*.md")
        return head.stdout.strip() + ("-dirty" if code_changes.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_info() -> dict:
    import torchvision

    return {"torch_version": torch.__version__, "torchvision_version": torchvision.__version__,
            "python_version": platform.python_version(), "git_commit": git_commit()}


def check_writable(path: str, flag: str, folder: bool = False) -> None:
    """ValueError naming `flag` unless a file (or, with folder=True, a folder) can be created at `path`.

    Creates nothing that stays: walks up to the nearest existing ancestor, which must be a folder,
    and creates and deletes one temporary file in it. Run before any data is read, so that a run
    never trains to the end and then fails to write its result.
    """
    target = os.path.abspath(path)
    if folder:
        if os.path.exists(target) and not os.path.isdir(target):
            raise ValueError(f"{flag} {path} is a file; give a folder")
        existing = target
    else:
        if os.path.isdir(target):
            raise ValueError(f"{flag} {path} is a folder; give a file path")
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise ValueError(f"{flag} {path} cannot be written: no permission to write that file")
        existing = os.path.dirname(target)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path} cannot be written: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".tmp-probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ValueError(f"{flag} {path} cannot be written: creating a file in {existing} failed "
                         f"({exc.strerror or exc}); choose another location") from None


def _new_file_mode(path: str) -> int:
    """The mode a file at `path` should have: the existing file's, else 0o666 less the umask (as open())."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file beside `path`, then rename: readers never see half a file.

    The file gets the usual permissions (an existing file keeps its mode; a new one 0666 less the
    umask), not mkstemp's private 0600.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str):
    """Exclusive advisory lock on PATH.lock (POSIX), so parallel runs can share one CSV; the lock
    file is removed again when the lock is released.

    Removing a lock file is safe only if every locker checks, once it holds the lock, that the
    name still points at the file it locked (another process may have removed it meanwhile and a
    third created a new one); if not, it locks again.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no locking, single writer assumed
        yield
        return
    lock_path = path + ".lock"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    while True:
        handle = open(lock_path, "a")
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            same = os.stat(lock_path).st_ino == os.fstat(handle.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        handle.close()  # releases the stale lock; try again on the current file
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock_path)  # while still locked: the next locker sees the name gone and retries
        handle.close()


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


def append_row(path: str, row: dict, unique: str | None = None) -> bool:
    """Append one row to the CSV at `path` atomically; new columns widen the header.

    With `unique` (a column name), a row whose value in that column is already in the file is not
    appended again; returns whether the row was appended.
    """
    with file_lock(path):
        rows = read_rows(path)
        if unique is not None and any(r.get(unique) == str(row[unique]) for r in rows):
            return False
        atomic_write_text(path, rows_to_csv(rows + [row]))
        return True


def write_csv(path: str, rows: list[dict], columns: list[str] | None = None) -> None:
    atomic_write_text(path, rows_to_csv(rows, columns))



def new_run_id(config) -> str:
    """Names a run's row and its folder: dataset, loss, seed, time, and a random suffix that keeps apart
    runs of one process finished in the same second (a grouped sweep)."""
    return f"{config.dataset}-{config.loss}-seed{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass
class RunRecord:
    """What a run records as it trains, and carries across --resume: its id, the epoch it starts from, the
    per-epoch history, the training seconds so far, the environment read when it started, and its
    training compute."""

    run_id: str
    first_epoch: int = 0
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    environment: dict = field(default_factory=dict)
    train_tflop: float = 0.0  # training FLOPs of the whole run (forward + backward), in units of 10^12


def write_results(config, record: RunRecord, metrics: dict, confusion: torch.Tensor, extras: tuple[dict, list[dict]],
                  device: torch.device, classes: list[str]) -> dict:
    """Append the run's row to config.out; history.csv, confusion.csv (and corruptions.csv) go to a folder
    beside it. `extras` is what `evaluation.evaluate_extras` returns. A run whose row (same run_id, as a
    resumed finished checkpoint has) is already in config.out is not appended twice."""
    columns, corrupted = extras
    row = {**config.as_row(), "test_acc": metrics["accuracy"], "test_top5": metrics["top5"],
           "test_precision": metrics["precision"],
           "test_recall": metrics["recall"], "test_f1": metrics["f1"],
           "per_class_recall": ";".join(f"{r:.4f}" for r in metrics["per_class_recall"]), **columns,
           "train_tflop": record.train_tflop, "train_seconds": round(record.train_seconds, 2),
           "seconds_per_epoch": round(record.train_seconds / config.epochs, 2),
           "device": device.type, "device_name": device_name(device), **record.environment, "run_id": record.run_id,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for key in ("out", "checkpoint", "resume", "progress"):
        row.pop(key)
    run_dir = os.path.join(os.path.splitext(config.out)[0], record.run_id)
    write_csv(os.path.join(run_dir, "history.csv"), record.history)
    write_csv(os.path.join(run_dir, "confusion.csv"),
              [{"true": name, **{p: int(n) for p, n in zip(classes, counts)}} for name, counts in zip(classes, confusion.tolist())])
    if corrupted:
        write_csv(os.path.join(run_dir, "corruptions.csv"), corrupted)
    if append_row(config.out, row, unique="run_id"):
        print(f"{config.dataset} {config.loss}: {'validation' if config.val_per_class else 'test'} acc "
              f"{metrics['accuracy']:.4f}, top-5 {metrics['top5']:.4f}, macro F1 {metrics['f1']:.4f}, "
              f"{record.train_tflop:.3g} TFLOP and {record.train_seconds:.0f} s to train; row appended to {config.out}",
              flush=True)
    else:
        print(f"run {record.run_id} already has its row in {config.out}: not appended again")
    return row
