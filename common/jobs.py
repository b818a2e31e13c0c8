"""One job of a sweep (a setting, a scenario, a seed): its training config and checkpoint name, its claim (so
that two sweeps on one --out never run it twice), and what a diverged run or an unreadable checkpoint leaves."""
from __future__ import annotations

import contextlib
import hashlib
import os
import time
from dataclasses import replace

from .heads import MARGIN_DEFAULTS
from .results import append_row, environment_info, process_alive
from .rows import Job, run_key
from .training import DivergedError


def config_for(job: Job, base, threads: int = 0, checkpoint_dir: str | None = None):
    """The training config of one job; with `checkpoint_dir` it saves there after every epoch and resumes
    from there when an earlier sweep left the file (an interrupted run goes on from its last epoch)."""
    (loss, s, m1, m2, m3), (imbalance, holdout, corruptions), seed = job
    config = replace(base, loss=loss, s=s, m1=m1, m2=m2, m3=m3, seed=seed, threads=threads, progress=False,
                     imbalance=imbalance, holdout_classes=holdout, corruptions=corruptions)
    if checkpoint_dir is None:
        return config
    path = os.path.join(checkpoint_dir, job_name(config) + ".pt")
    return replace(config, checkpoint=path, resume=path if os.path.isfile(path) else None)


def job_name(config) -> str:
    """A file name for one run: its setting, scenario and seed, and a hash of everything else that identifies
    its result (`rows.run_key`), so runs of other settings never share a checkpoint or a claim."""
    digest = hashlib.sha1(repr(run_key(config.as_row())).encode()).hexdigest()[:10]
    margins = "" if config.loss not in MARGIN_DEFAULTS else "-s{:g}-m1{:g}-m2{:g}-m3{:g}".format(*config.margins())
    return (f"{config.loss}{margins}-imb{config.imbalance:g}-held{config.holdout_classes}"
            f"{'-corr' if config.corruptions else ''}-seed{config.seed}-{digest}")


def record_diverged(config, exc: DivergedError) -> dict:
    """A diverged run's row: diverged=1 and no accuracy."""
    row = {**config.as_row(), "diverged": 1, "error": str(exc), **environment_info()}
    for key in ("out", "checkpoint", "resume", "progress"):
        row.pop(key)
    append_row(config.out, row)
    return row


@contextlib.contextmanager
def claimed(config):
    """Hold the claim on one job (a file beside --out with the claimant's process id, created exclusively),
    so that a second sweep on the same --out skips a job in progress instead of running it twice. Yields
    False when a running process holds it; a claim whose process is gone is taken over."""
    folder = os.path.splitext(os.path.realpath(config.out))[0] + ".claims"
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, job_name(config))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            with contextlib.suppress(OSError, ValueError):
                with open(path) as handle:
                    owner = int(handle.read().strip() or 0)
                if owner and process_alive(owner):
                    yield False
                    return
                os.unlink(path)  # its sweep was killed: take the job over
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        try:
            yield True
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # the last claim gone: no empty folder left
        return
    yield False


def set_aside(config, exc: ValueError):
    """A --checkpoint-dir file that cannot be resumed (truncated, damaged, not a checkpoint) is renamed
    '<name>.bad-<time>' and named in one line, and the job starts afresh: one bad file never stops a sweep.
    Returns the job's config without the resume."""
    aside = f"{config.resume}.bad-{time.strftime('%Y%m%d-%H%M%S')}"
    os.replace(config.resume, aside)
    print(f"{exc}: set aside as {aside}; the run starts again", flush=True)
    return replace(config, resume=None)
