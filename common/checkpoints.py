"""Training checkpoints: a run's state saved atomically after every epoch (`save_run`), checked and read back
once for --resume (`check_resume`), and restored into the run (`resume_run`).

A checkpoint is a dict of tensors, state dicts and plain values (the run's config as a row, its history,
the run id, the device type, the CPU threads it trained with, and a checksum of all of it), so it loads
with torch.load(weights_only=True): no pickled code runs when a file is opened.
"""
from __future__ import annotations

import glob
import hashlib
import os

import torch

from .config import resume_keys, identity
from .results import RunRecord, environment_info, new_run_id, remove_stale_temps

REQUIRED = ("net", "head", "optimizer", "scheduler", "generator", "epoch", "history", "train_seconds", "config",
            "device", "threads", "checksum")


def state_digest(value, digest=None) -> str:
    """SHA-256 over a checkpoint's contents: every tensor's dtype, shape and bytes, and every other value's
    repr, walked in a fixed order (dict keys sorted). Any flipped byte of a weight changes it."""
    digest = digest or hashlib.sha256()
    if isinstance(value, torch.Tensor):
        flat = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    elif isinstance(value, dict):
        for key in sorted(value, key=repr):
            digest.update(repr(key).encode())
            state_digest(value[key], digest)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__}{len(value)}".encode())
        for item in value:
            state_digest(item, digest)
    else:
        digest.update(repr(value).encode())
    return digest.hexdigest()


def save_checkpoint(path: str, **state) -> None:
    """torch.save (with a `checksum` of the state) to a temporary file, then rename, so a crash never leaves
    half a checkpoint. Temporary files that killed writers left beside `path` are removed first; a failed
    write (a full disk) removes its own and raises OSError naming `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_temps(glob.glob(glob.escape(path) + ".tmp-*"))
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save({**state, "checksum": state_digest(state)}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # torch reports a full disk as RuntimeError (inline_container.cc)
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise OSError(f"cannot write checkpoint {path} ({str(exc).strip().splitlines()[0][:120]})") from None


def read_checkpoint(path: str, flag: str = "--resume") -> dict:
    """The checkpoint at `path`, on the CPU; ValueError naming `flag` if it is not one of ours, or if its
    contents do not match the checksum saved with them (a damaged file)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any file torch cannot read back (text, truncated, foreign pickle)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = type(exc).__name__ + (f": {first_line}" if first_line and len(first_line) <= 80 else "")
        raise ValueError(f"{flag} {path} is not a checkpoint written by --checkpoint ({reason})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"{flag} {path} is not a checkpoint written by --checkpoint (no {missing[0]!r} entry)")
    saved = state.pop("checksum")
    if state_digest(state) != saved:
        raise ValueError(f"{flag} {path} is damaged: its contents do not match the checksum saved with them")
    return state


def _shown(value) -> str:
    return "none" if value in ("", None) else str(value)


def check_resume(path: str, config_row: dict, device: torch.device) -> dict:
    """Read the checkpoint once and check that `config_row` (TrainConfig.as_row()) can continue it on `device`;
    returns the checkpoint for `resume_run`.

    ValueError naming --resume when it was made on another kind of device (its shuffling generator's state,
    CPU Mersenne twister or CUDA Philox, cannot be restored there, so the run could not continue bit for
    bit), or when a training setting differs (`resume_keys`, each difference as 'key saved (here now)').
    """
    state = read_checkpoint(path)
    if state["device"] != device.type:
        raise ValueError(f"--resume {path} was saved on {state['device']}, this run is on {device.type}: the shuffling "
                         f"generator cannot be moved between them; resume with --device {state['device']}")
    keys = tuple(k for k in resume_keys() if k != "device")
    saved, here = identity(state["config"], keys), identity(config_row, keys)
    mismatched = [k for k, a, b in zip(keys, saved, here) if a != b]
    if mismatched:
        details = ", ".join(f"{k} {_shown(state['config'].get(k))} (here {_shown(config_row.get(k))})" for k in mismatched)
        raise ValueError(f"--resume {path} was trained with other settings: {details}; "
                         "pass the checkpoint's settings or start without --resume")
    return state


def save_run(config, record: RunRecord, net, head, optimizer, scheduler, generator: torch.Generator,
             device: torch.device, epochs_done: int) -> None:
    """Everything --resume needs to continue bit for bit, saved to config.checkpoint (if set). A checkpoint that
    cannot be written (a full disk) is said in one line and training goes on: the checkpoint only saves a
    restart, and the run's result is still to come."""
    if not config.checkpoint:
        return
    try:
        save_checkpoint(config.checkpoint, net=net.state_dict(), head=head.state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        generator=generator.get_state(), epoch=epochs_done, history=record.history,
                        train_seconds=record.train_seconds, config=config.as_row(), run_id=record.run_id,
                        device=device.type, threads=torch.get_num_threads(), data=record.data)
    except OSError as exc:
        kept = "the last one written stays" if os.path.isfile(config.checkpoint) else "none was written"
        print(f"warning: {exc}; training goes on ({kept})", flush=True)


def resume_run(config, state: dict | None, net, head, optimizer, scheduler, generator: torch.Generator) -> RunRecord:
    """Restore a checkpoint that `check_resume` read and checked into the given objects and return its record
    (epochs done, history, seconds, run id); without one (state None), a new record. The record's environment
    (versions, git commit) is this process's. On the CPU, a thread count other than the checkpoint's is said in
    one line: reductions are ordered by thread count, so the result will not match an uninterrupted run bit for
    bit (it is as valid a run)."""
    if state is None:
        return RunRecord(new_run_id(config), environment=environment_info())
    net.load_state_dict(state["net"])
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    print(f"resumed from {config.resume} after epoch {state['epoch']}")
    if state["device"] == "cpu" and state["threads"] != torch.get_num_threads():
        print(f"note: {config.resume} trained with {state['threads']} CPU threads and resumes with "
              f"{torch.get_num_threads()}: the result will not match an uninterrupted run bit for bit")
    return RunRecord(state["run_id"], state["epoch"], state["history"], state["train_seconds"], environment_info())


def load_checkpoint(path: str, config) -> dict:
    """The checkpoint at `path` if `config` can resume it on its device; ValueError saying why not."""
    from .device import pick_device

    return check_resume(path, config.as_row(), pick_device(config.device))
