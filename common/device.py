"""Device choice (CUDA, then Apple MPS, then CPU), what it runs fast (bfloat16), and its backend settings."""
from __future__ import annotations

import argparse

import torch

DEVICE_CHOICES = ("auto", "cpu", "cuda", "mps")


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def device_flag(text: str) -> str:
    """argparse type of --device: auto, cpu, mps, cuda or cuda:N (availability is checked by pick_device)."""
    kind, _, index = text.partition(":")
    if kind not in DEVICE_CHOICES or (index and (kind != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def pick_device(requested: str = "auto") -> torch.device:
    """The requested device, or the best available one for 'auto'; ValueError if unavailable."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    try:
        device_flag(requested)
    except argparse.ArgumentTypeError:
        raise ValueError(f"--device must be auto, cpu, cuda, cuda:N or mps, got {requested!r}") from None
    kind, _, index = requested.partition(":")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested}: CUDA is not available on this machine (try --device cpu)")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ValueError(f"--device {requested}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                         f"numbered from 0")
    if kind == "mps" and not mps_available():
        raise ValueError(f"--device {requested}: Apple MPS is not available on this machine (try --device cpu)")
    return torch.device(requested)


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN has native bf16 kernels (AVX512-BF16 or AMX); elsewhere bf16 is emulated."""
    capability = torch.backends.cpu.get_cpu_capability()
    return "AVX512" in capability and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def has_native_bf16(device: torch.device) -> bool:
    """bfloat16 runs in hardware: CUDA GPUs from Ampere on (not emulated, as it is on older GPUs), and CPUs
    with AVX512-BF16 or AMX."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu" and cpu_has_fast_bf16()


def configure_backends(device: torch.device) -> None:
    """On CUDA: cuDNN autotuning (the batch shapes repeat every step, so the fastest convolution is
    picked once and reused; runs are then not bit-reproducible on a GPU) and TF32 tensor cores for
    float32 matrix products (10-bit mantissa inputs, float32 accumulation; Ampere and later, ignored
    before). cuDNN convolutions use TF32 by default already. Nothing changes on other devices."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.set_float32_matmul_precision("high")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of hardware bfloat16; --amp speed differs by them


def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """The BF16_CPU_FLAGS this CPU lists in `cpuinfo` (Linux); [] where the file is missing or unreadable."""
    try:
        with open(cpuinfo) as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []
    return [flag for flag in BF16_CPU_FLAGS if flag in flags]


def device_name(device: torch.device) -> str:
    """What a result row records of the hardware: the GPU's name, or for a CPU its vector capability, its
    hardware bfloat16 (the speed of --amp runs differs by CPU kind: 'cpu (AVX512 avx512_bf16 amx_bf16, 1 threads)')
    and the threads used."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        features = " ".join([torch.backends.cpu.get_cpu_capability(), *cpu_bf16_flags()])
        return f"cpu ({features}, {torch.get_num_threads()} threads)"
    return device.type
