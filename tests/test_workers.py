"""common.workers and the sweep's --workers: every sweep ends, a dead worker fails only its job, and no worker
outlives its sweep. Each try runs in a child process with a time limit, so a hang fails the test instead of
hanging the suite. SWEEP_STRESS_TRIES=20 runs them 20 times (the sweep 10) as a stress test; CI runs 2 (the sweep 1)."""
import os
import signal
import subprocess
import sys
import time

import pytest

from common.results import check_writable, read_rows

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRIES = int(os.environ.get("SWEEP_STRESS_TRIES", "2"))
LIMIT = 120  # seconds a try may take before it counts as a hang

SCRIPT = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from common.workers import WorkerDied, run_in_processes

def job(i, action):
    print("worker", os.getpid(), flush=True)
    if action == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    if action == "raise":
        raise ValueError(f"job {{i}} is bad")
    time.sleep(float(action))
    return i

if __name__ == "__main__":
    actions = sys.argv[2:]
    def done(task, result):
        print("done", task[0], "died" if isinstance(result, WorkerDied) else result, flush=True)
    try:
        run_in_processes(job, list(enumerate(actions)), int(sys.argv[1]), done)
    except ValueError as exc:
        print("raised", exc, flush=True)
"""


def run_script(tmp_path, workers: int, actions: list[str]) -> list[str]:
    """Run SCRIPT with these job actions (seconds to sleep, 'die' or 'raise'); its output lines. Fails the test
    if it takes longer than LIMIT or leaves a worker alive."""
    path = tmp_path / "jobs.py"
    path.write_text(SCRIPT.format(repo=REPO))
    try:
        result = subprocess.run([sys.executable, str(path), str(workers), *actions], capture_output=True, text=True,
                                timeout=LIMIT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{len(actions)} jobs on {workers} workers did not end within {LIMIT} s")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for pid in (int(line.split()[1]) for line in lines if line.startswith("worker")):
        assert not alive(pid), f"worker {pid} outlived its sweep"
    return lines


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as handle:  # a zombie not yet reaped by init counts as gone
        return handle.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("jobs, workers", [(3, 2), (5, 3)])
def test_more_jobs_than_workers_always_end_with_every_result(jobs, workers, tmp_path):
    for _ in range(TRIES):
        lines = run_script(tmp_path, workers, ["0.05"] * jobs)
        assert sorted(line for line in lines if line.startswith("done")) == [f"done {i} {i}" for i in range(jobs)]


def test_a_worker_killed_mid_run_fails_its_job_and_the_others_finish(tmp_path):
    lines = run_script(tmp_path, 2, ["0.1", "die", "0.1", "0.1"])
    assert sorted(line for line in lines if line.startswith("done")) == ["done 0 0", "done 1 died", "done 2 2",
                                                                         "done 3 3"]


def test_an_exception_in_a_worker_is_raised_in_the_parent_and_the_others_are_ended(tmp_path):
    lines = run_script(tmp_path, 2, ["30", "raise", "30"])  # the sleepers are killed, not awaited (LIMIT)
    assert "raised job 1 is bad" in lines and not any(line.startswith("done") for line in lines)


def test_workers_end_when_the_sweep_is_killed(tmp_path):
    path = tmp_path / "jobs.py"
    path.write_text(SCRIPT.format(repo=REPO))
    parent = subprocess.Popen([sys.executable, str(path), "1", "60"], stdout=subprocess.PIPE, text=True)
    worker = int(parent.stdout.readline().split()[1])
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    for _ in range(50):
        if not alive(worker):
            return
        time.sleep(0.1)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived its killed sweep")


def test_a_lock_file_another_run_creates_during_the_check_passes(tmp_path, monkeypatch):
    """Two workers of one sweep: one appends its row (holding OUT.lock) while the other checks --out."""
    out = tmp_path / "sweep.csv"
    real_exists = os.path.exists

    def exists_then_locked(path):
        found = real_exists(path)
        if str(path).endswith(".lock") and not found:
            (tmp_path / "sweep.csv.lock").touch()  # the other run takes its lock right after the look
        return found

    monkeypatch.setattr(os.path, "exists", exists_then_locked)
    check_writable(str(out), "--out", companions=(".lock",))


@pytest.mark.parametrize("jobs, workers", [(3, 2)])
def test_a_sweep_with_more_jobs_than_workers_exits_with_every_row(jobs, workers, rgb_folder, tmp_path):
    losses = ["softmax", "arcface", "cosface", "sphereface", "combined"][:jobs]
    for attempt in range(max(1, TRIES // 2)):
        out = tmp_path / f"sweep{attempt}.csv"
        command = [sys.executable, os.path.join(REPO, "sweep_margins.py"), "--dataset", "cifar10", "--data-root",
                   rgb_folder, "--epochs", "1", "--widths", "8-16-8", "--latent-dim", "16", "--no-progress",
                   "--device", "cpu", "--no-amp", "--losses", *losses, "--seeds", "0", "--workers", str(workers),
                   "--out", str(out)]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=LIMIT, cwd=REPO)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep of {jobs} jobs on {workers} workers did not end within {LIMIT} s")
        assert result.returncode == 0, result.stderr[-2000:]
        assert sorted(r["loss"] for r in read_rows(str(out))) == sorted(losses)
