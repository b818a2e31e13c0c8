"""Results files: the row, history and confusion matrix a run writes (`write_results`), what a run records
as it goes (`RunRecord`), atomic CSV appends, and the provenance every row carries."""
from __future__ import annotations

import contextlib
import csv
import glob
import io
import json
import os
import platform
import re
import shutil
import subprocess
import sys
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


MIN_FREE_BYTES = 1 << 20  # free space a run's result files need at least: the row, history and confusion matrix


class CsvDamageError(ValueError):
    """A results CSV that is not as this code writes it (a cut line, a row with too many or too few fields);
    the message names the file and the line."""


def temp_name(path: str) -> str:
    """The temporary file that `atomic_write_text` writes before renaming it onto `path`: beside it, hidden,
    named with the writer's process id so that a later writer can tell a killed writer's file."""
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".tmp-{os.getpid()}-{uuid.uuid4().hex[:6]}-{name}")


def process_alive(pid: int) -> bool:
    """Whether a process with this id is running (another user's counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(paths: list[str]) -> None:
    """Delete the temporary files (or staging folders) among `paths` (named '...tmp-<pid>...') whose writer is
    no longer running: a killed run's half-written result or checkpoint, which would otherwise hold its disk
    space for good."""
    for path in paths:
        match = re.search(r"\.tmp-(\d+)", os.path.basename(path))
        if match and int(match.group(1)) != os.getpid() and not process_alive(int(match.group(1))):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
                continue
            with contextlib.suppress(OSError):
                os.unlink(path)


def _existing_folder(target: str, flag: str, path: str) -> str:
    """The nearest existing ancestor of `target`; ValueError naming `flag` if it is a file."""
    existing = target
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{flag} {path} cannot be written: {existing} is a file, not a folder")
    return existing


def check_writable(path: str, flag: str, folder: bool = False, companions: tuple[str, ...] = (),
                   need_bytes: int = MIN_FREE_BYTES) -> None:
    """ValueError naming `flag` unless a file (or, with folder=True, a folder) can be created at `path`, with
    `need_bytes` free on its disk.

    Creates nothing that stays. For a file it creates and deletes, where they will be, exactly the names the
    writer will create beside it: its temporary file (`temp_name`, the longest) and `companions` (the
    lock file, for example), so a name too long for the file system or a folder without write permission
    fails here, before any data is read, never after training. A symlinked `path` is checked at its target.
A companion that another writer creates meanwhile (a parallel run's lock file) passes: its name works.
    """
    target = os.path.realpath(path)
    if folder:
        if os.path.exists(target) and not os.path.isdir(target):
            raise ValueError(f"{flag} {path} is a file; give a folder")
        probes, existing = [os.path.join(_existing_folder(target, flag, path), f".tmp-{os.getpid()}-probe")], target
    else:
        if os.path.isdir(target):
            raise ValueError(f"{flag} {path} is a folder; give a file path")
        if os.path.exists(target) and not os.access(target, os.W_OK):
            raise ValueError(f"{flag} {path} cannot be written: no permission to write that file")
        existing = _existing_folder(os.path.dirname(target), flag, path)
        probes = [os.path.join(existing, os.path.basename(temp_name(target)))]
        probes += [os.path.join(existing, os.path.basename(target) + suffix) for suffix in companions
                   if not os.path.exists(target + suffix)]
    for probe in probes:
        try:
            os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
            os.unlink(probe)
        except FileExistsError:
            continue  # another writer made it since `exists` (a parallel run's lock): the name works there
        except OSError as exc:
            raise ValueError(f"{flag} {path} cannot be written: creating {os.path.basename(probe)} in "
                             f"{os.path.dirname(probe)} failed ({exc.strerror or exc}); choose another location") from None
    free = shutil.disk_usage(_existing_folder(existing, flag, path)).free
    if free < need_bytes:
        raise ValueError(f"{flag} {path} cannot be written: {free / 2**20:.1f} MiB free on its disk, "
                         f"{need_bytes / 2**20:.1f} MiB needed")


def _new_file_mode(path: str) -> int:
    """The mode a file at `path` should have: the existing file's, else 0o666 less the umask (as open())."""
    if os.path.exists(path):
        return os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write_text(path: str, text: str) -> None:
    """Write to a temporary file beside `path` (`temp_name`), then rename: readers never see half a file. A
    symlinked `path` is written through to its target (the link stays). Temporary files of killed writers
    of the same file are removed first; a failed write (a full disk) removes its own and raises OSError.

    The file gets the usual permissions (an existing file keeps its mode; a new one 0666 less the
    umask), not a temporary file's private 0600.
    """
    path = os.path.realpath(path)
    folder, name = os.path.split(path)
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(glob.glob(os.path.join(glob.escape(folder), f".tmp-*-{glob.escape(name)}")))
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, _new_file_mode(path))
        with os.fdopen(fd, "w", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def file_lock(path: str):
    """Exclusive advisory lock on PATH.lock (POSIX; PATH resolved through symlinks), so parallel runs can share
    one CSV; the lock file is removed again when the lock is released.

    Removing a lock file is safe only if every locker checks, once it holds the lock, that the
    name still points at the file it locked (another process may have removed it meanwhile and a
    third created a new one); if not, it locks again.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no locking, single writer assumed
        yield
        return
    lock_path = os.path.realpath(path) + ".lock"
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
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


def parse_rows(text: str) -> list[dict]:
    """The rows of a results CSV's text, leniently (a cut last line is kept as far as it goes)."""
    return list(csv.DictReader(io.StringIO(text)))


def read_rows(path: str, strict: bool = False) -> list[dict]:
    """The rows of a results CSV (none if it does not exist). With `strict`, CsvDamageError naming the file
    and line when the file is not as `rows_to_csv` writes it: a header with an empty or repeated column, a
    last line cut before its end (no final newline), or a row whose field count differs from the header's."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        text = handle.read()
    if not strict:
        return parse_rows(text)
    damaged = lambda line, why: CsvDamageError(f"{path} line {line}: {why}; fix or move the file, it was left as it is")  # noqa: E731
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None:
        return []
    if "" in header or len(set(header)) != len(header):
        raise damaged(1, "the header has an empty or repeated column name")
    if not text.endswith("\n"):
        raise damaged(text.count("\n") + 1, "the last line is cut before its end (no final newline)")
    rows = []
    for record in reader:
        if len(record) != len(header):
            raise damaged(reader.line_num, f"{len(record)} fields where the header has {len(header)}")
        rows.append(dict(zip(header, record)))
    return rows


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
    """Append one row to the CSV at `path` atomically; new columns widen the header. A damaged file
    (`read_rows` strict) is refused with CsvDamageError and left as it is: appending must never launder
    a cut or shifted row into a valid-looking one.

    With `unique` (a column name), a row whose value in that column is already in the file is not
    appended again; returns whether the row was appended.
    """
    with file_lock(path):
        rows = read_rows(path, strict=True)
        if unique is not None and any(r.get(unique) == str(row[unique]) for r in rows):
            return False
        atomic_write_text(path, rows_to_csv(rows + [row]))
        return True


def write_csv(path: str, rows: list[dict], columns: list[str] | None = None) -> None:
    atomic_write_text(path, rows_to_csv(rows, columns))


def new_run_id(config) -> str:
    """Names a run's row and its folder: dataset, loss, seed, time, and a random suffix that keeps apart
    runs of one process that finish in the same second."""
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
    data: dict = field(default_factory=dict)  # what it trains on: saved in its checkpoints (`ImageData.identity`)


def write_results(config, record: RunRecord, metrics: dict, confusion: torch.Tensor, extras: tuple[dict, list[dict]],
                  device: torch.device, classes: list[str]) -> dict:
    """Append the run's row to config.out; history.csv, confusion.csv (and corruptions.csv) go to a folder
    beside it. `extras` is what `evaluation.evaluate_extras` returns. A run whose row (same run_id, as a
    resumed finished checkpoint has) is already in config.out is not appended twice."""
    columns, corrupted = extras
    row = {**config.as_row(), "test_acc": metrics["accuracy"], "test_top5": metrics.get("top5", ""),
           "test_precision": metrics["precision"],
           "test_recall": metrics["recall"], "test_f1": metrics["f1"],
           "per_class_recall": ";".join(f"{r:.4f}" for r in metrics["per_class_recall"]),
           "class_names": ";".join(classes), **columns,  # per_class_recall's classes, in its order
           "train_tflop": record.train_tflop, "train_seconds": round(record.train_seconds, 2),
           "seconds_per_epoch": round(record.train_seconds / config.epochs, 2),
           "device": device.type, "device_name": device_name(device), **record.environment, "run_id": record.run_id,
           "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    for key in ("out", "checkpoint", "resume", "progress"):
        row.pop(key)
    try:
        appended = append_row(config.out, row, unique="run_id")
        run_dir = os.path.join(os.path.splitext(config.out)[0], record.run_id)
        write_csv(os.path.join(run_dir, "history.csv"), record.history)
        write_csv(os.path.join(run_dir, "confusion.csv"), [{"true": name, **{p: int(n) for p, n in zip(classes, counts)}}
                                                          for name, counts in zip(classes, confusion.tolist())])
        if corrupted:
            write_csv(os.path.join(run_dir, "corruptions.csv"), corrupted)
    except (OSError, CsvDamageError) as exc:
        print(f"the finished run's row, as one JSON line:\n{json.dumps(row)}", flush=True)
        reason = str(exc) if isinstance(exc, CsvDamageError) else f"{exc.strerror or exc}"
        raise RowNotWrittenError(f"cannot write the results of run {record.run_id} to {config.out} ({reason}); its row "
                                 f"is printed above: once fixed, pipe that line to `python -m common.results append "
                                 f"{config.out}`") from None
    if appended:
        print(f"{config.dataset} {config.loss}: {'validation' if config.val_per_class else 'test'} acc "
              f"{metrics['accuracy']:.4f}, " + (f"top-5 {metrics['top5']:.4f}, " if "top5" in metrics else "") +
              f"macro F1 {metrics['f1']:.4f}, "
              f"{record.train_tflop:.3g} TFLOP and {record.train_seconds:.0f} s to train; row appended to {config.out}",
              flush=True)
    else:
        print(f"run {record.run_id} already has its row in {config.out}: not appended again")
    return row


class RowNotWrittenError(RuntimeError):
    """A finished run's results could not be written (a full disk, a damaged CSV); its row was printed."""


def main(argv: list[str] | None = None) -> None:
    """`python -m common.results append OUT`: append the JSON rows on standard input (one a line, as a run
    prints them when it cannot write its row) to the results CSV OUT, each once (by its run_id)."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "append":
        sys.exit("usage: python -m common.results append OUT < rows.jsonl")
    for line in sys.stdin:
        if line.strip().startswith("{"):
            row = json.loads(line)
            print(("appended " if append_row(argv[1], row, unique="run_id") else "already there: ") + row["run_id"])


if __name__ == "__main__":
    main()
