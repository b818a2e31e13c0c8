"""Run jobs in worker processes that always end: each job in a fresh spawned interpreter, started by the
thread that waits for it, with a private pipe for its result.

Why this cannot hang (the multiprocessing.Pool it replaces could, after its last row): the parent takes no
lock that a worker holds (no shared task queue; each worker has its own one-way pipe), and it waits only
on those pipes, which report EOF as soon as their worker exits by any means, a SIGKILL included (the parent
closes its copy of the writing end). Workers end with their parent (`end_with_parent`, Linux's
PR_SET_PDEATHSIG): the kernel sends that signal when the *thread* that started the worker exits, and here
that thread is the one that waits for every worker before it returns, so it fires only when the sweep
itself is gone.
"""
from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.connection import wait

JOIN_SECONDS = 60  # a worker that sent its result and has not exited after this long is killed


class WorkerDied(RuntimeError):
    """A worker ended without a result (killed, out of memory, os._exit)."""


def end_with_parent(parent: int) -> None:
    """Make this worker process end when the process that started it does, even by SIGKILL: on Linux the
    kernel sends it SIGKILL (prctl PR_SET_PDEATHSIG); elsewhere a thread watches the parent. A worker
    killed mid-run loses only its unfinished run (rows and checkpoints are written atomically)."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        def watch():
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)
        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was set up
        os._exit(1)


def _child(conn, parent: int, target, args: tuple) -> None:
    """A worker's body: end with the parent, leave Ctrl-C to the parent, run one job, send its outcome."""
    end_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the sweep and ends its workers
    try:
        outcome = ("ok", target(*args))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which decides
        outcome = ("error", exc)
    try:
        conn.send(outcome)
    except Exception:  # noqa: BLE001 - an exception that does not pickle: keep its type's name and message
        conn.send(("error", RuntimeError(f"{type(outcome[1]).__name__}: {outcome[1]}")))
    conn.close()


def exit_code_text(code: int | None) -> str:
    """'killed by SIGKILL' for a negative exit code, 'exit code 3' otherwise."""
    if code is not None and code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def run_in_processes(target, tasks: list[tuple], workers: int, done) -> None:
    """Call target(*task) for every task, each in its own spawned process, at most `workers` at a time, and
    done(task, result) in this thread as each finishes; a worker that ends without a result gives
    done(task, WorkerDied(...)) and the others go on. An exception the target raises is raised here once
    the other workers are ended. Leaving by any exception (Ctrl-C, SystemExit) kills the running workers
    and waits for them: no process outlives this call."""
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked torch thread pools
    pending = list(reversed(tasks))
    running = {}  # reading end of the pipe -> (process, task)
    try:
        while pending or running:
            while pending and len(running) < workers:
                task = pending.pop()
                reader, writer = context.Pipe(duplex=False)
                process = context.Process(target=_child, args=(writer, os.getpid(), target, task), daemon=True)
                process.start()
                writer.close()  # only the worker holds the writing end: its exit is EOF here
                running[reader] = (process, task)
            for reader in wait(list(running)):
                process, task = running.pop(reader)
                try:
                    status, result = reader.recv()
                except EOFError:
                    process.join()
                    status, result = "died", WorkerDied(f"its worker ended without a result ({exit_code_text(process.exitcode)})")
                reader.close()
                process.join(JOIN_SECONDS)
                if process.is_alive():
                    process.kill()
                    process.join()
                if status == "error":
                    raise result
                done(task, result)
    finally:
        for process, _ in running.values():
            process.kill()
        for process, _ in running.values():
            process.join()
        for reader in running:
            reader.close()


def _exit_on_signal(signum, frame):
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def exit_on_sigterm():
    """Within this block SIGTERM (`kill`, a scheduler's time limit) raises SystemExit instead of ending the
    process at once, so `run_in_processes` ends its workers (its `finally`) rather than leaving them to run
    on. Outside the main thread (where no handler can be set) it does nothing. The previous handler comes
    back on leaving."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
