"""Training checkpoints: a run's state saved atomically after every epoch (`save_run`), and read back for
--resume with every check up front (`check_resume`, `resume_run`).

A checkpoint is a dict of tensors, state dicts and plain values (the run's config as a row, its
history, the run id, the device type), so it loads with torch.load(weights_only=True): no pickled
code runs when a file is opened.
"""
from __future__ import annotations

import os

import torch

from .device import pick_device
from .results import RunRecord, environment_info, new_run_id

# Settings that must match for a checkpoint to be resumed under a config.
RESUME_KEYS = ("dataset", "loss", "s", "m1", "m2", "m3", "triplet_margin", "latent_dim", "widths",
               "convs_per_stage", "epochs", "batch_size", "lr", "momentum", "weight_decay", "warmup",
               "head_weight_decay", "label_smoothing", "embedding_bn", "whiten", "dirac_init", "activation",
               "pool_first", "global_pool", "bn_scale", "bn_bias_lr",
               "lookahead", "margin_warmup", "margin_tail", "margin_grad", "crop_padding", "flip",
               "seed", "image_size", "num_classes", "val_per_class", "max_train_samples", "train_subset", "imbalance", "holdout_classes")
# The value a setting had before it became a config field: what result rows and checkpoints written then,
# which lack the column, ran with. Read by check_resume and by sweep_margins.py's run signature.
FORMER_VALUES = {"train_subset": "", "num_classes": None, "val_per_class": 0, "momentum": 0.9, "weight_decay": 0.0005, "warmup": 0.2, "triplet_margin": 0.2,
                 "amp": False, "corruption_samples": 2000, "head_weight_decay": 0.0005, "label_smoothing": 0.0,
                 "embedding_bn": False, "whiten": False, "dirac_init": False, "bn_bias_lr": 1.0,
                 "lookahead": False, "activation": "relu", "pool_first": False, "global_pool": "avg", "bn_scale": True,
                 "margin_warmup": 0.0,
                 "flip_tta": False, "translate_tta": False, "margin_tail": "sphereface", "margin_grad": "exact"}
REQUIRED = ("net", "head", "optimizer", "scheduler", "generator", "epoch", "history", "train_seconds", "config")


def save_checkpoint(path: str, **state) -> None:
    """torch.save to a temporary file, then rename, so a crash never leaves half a checkpoint."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: str) -> dict:
    """The checkpoint at `path`, on the CPU; ValueError naming the flag if it is not one of ours."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any file torch cannot read back (text, truncated, foreign pickle)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = type(exc).__name__ + (f": {first_line}" if first_line and len(first_line) <= 80 else "")
        raise ValueError(f"--resume {path} is not a checkpoint written by --checkpoint ({reason})") from None
    missing = [k for k in REQUIRED if not isinstance(state, dict) or k not in state]
    if missing:
        raise ValueError(f"--resume {path} is not a checkpoint written by --checkpoint (no {missing[0]!r} entry)")
    return state


def _shown(value) -> str:
    return "none" if value in ("", None) else str(value)


def check_resume(path: str, config_row: dict, device: torch.device) -> dict:
    """Read the checkpoint and check that `config_row` (TrainConfig.as_row()) can continue it on `device`.

    ValueError naming --resume when the settings differ (each difference as 'key saved (here now)') or
    when the checkpoint was made on another kind of device: its shuffling generator's state (CPU:
    Mersenne twister, CUDA: Philox seed and offset) cannot be restored there, so the run could not
    continue bit for bit.
    """
    state = read_checkpoint(path)
    saved = {**FORMER_VALUES, **state["config"]}
    mismatched = [k for k in RESUME_KEYS if str(saved.get(k, "")) != str(config_row.get(k, ""))]
    if mismatched:
        details = ", ".join(f"{k} {_shown(saved.get(k))} (here {_shown(config_row.get(k))})" for k in mismatched)
        raise ValueError(f"--resume {path} was trained with other settings: {details}; "
                         "pass the checkpoint's settings or start without --resume")
    saved_device = state.get("device") or _generator_device(state["generator"])
    fresh = torch.Generator(device).get_state()
    if saved_device != device.type or state["generator"].numel() != fresh.numel():
        raise ValueError(f"--resume {path} was saved on {saved_device}, this run is on {device.type}: the shuffling "
                         f"generator cannot be moved between them; resume with --device {saved_device}")
    return state


def _generator_device(generator_state: torch.Tensor) -> str:
    """Checkpoints without a 'device' entry: a CPU generator's state is far larger than a CUDA one's."""
    return "cpu" if generator_state.numel() == torch.Generator().get_state().numel() else "cuda"


def save_run(config, record: RunRecord, net, head, optimizer, scheduler, generator: torch.Generator,
             device: torch.device, epochs_done: int) -> None:
    """Everything --resume needs to continue bit for bit, saved to config.checkpoint (if set)."""
    if config.checkpoint:
        save_checkpoint(config.checkpoint, net=net.state_dict(), head=head.state_dict(),
                        optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                        generator=generator.get_state(), epoch=epochs_done, history=record.history,
                        train_seconds=record.train_seconds, config=config.as_row(), run_id=record.run_id,
                        device=device.type)


def resume_run(config, net, head, optimizer, scheduler, generator: torch.Generator) -> RunRecord:
    """Restore config.resume's checkpoint into the given objects and return its record (epochs done,
    history, seconds, run id); without --resume, a new record. The config's validation has already
    checked that the checkpoint can be resumed (`check_resume`). The record's environment (versions, git
    commit) is this process's."""
    if config.resume is None:
        return RunRecord(new_run_id(config), environment=environment_info())
    state = read_checkpoint(config.resume)
    net.load_state_dict(state["net"])
    head.load_state_dict(state["head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    generator.set_state(state["generator"])
    print(f"resumed from {config.resume} after epoch {state['epoch']}")
    # checkpoints from before run ids were saved get a new one
    return RunRecord(state.get("run_id") or new_run_id(config), state["epoch"], state["history"], state["train_seconds"],
                     environment_info())


def load_checkpoint(path: str, config) -> dict:
    """The checkpoint at `path` if `config` can resume it on its device; ValueError saying why not."""
    return check_resume(path, config.as_row(), pick_device(config.device))
