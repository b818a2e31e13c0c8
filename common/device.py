"""Device choice (CUDA, then Apple MPS, then CPU) and the autocast context for --amp."""
from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(requested: str = "auto") -> torch.device:
    """The requested device, or the best available one for 'auto'; ValueError if unavailable."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    kind = requested.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available on this machine (try --device cpu)")
    if kind == "mps" and not mps_available():
        raise ValueError(f"--device {requested}: Apple MPS is not available on this machine (try --device cpu)")
    if kind not in DEVICE_CHOICES[1:]:
        raise ValueError(f"--device must be one of {', '.join(DEVICE_CHOICES)}, got {requested!r}")
    return torch.device(requested)


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    capability = torch.backends.cpu.get_cpu_capability()
    return "AVX512" in capability and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast for the backbone when `enabled`, otherwise a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads)"
    return device.type
