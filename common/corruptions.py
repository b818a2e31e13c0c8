"""Corrupted copies of test images, for measuring robustness to input distortions.

Every corruption takes uint8 images (B, C, H, W) on any device and returns uint8 images of the same
shape, computed in float32 on that device and rounded back to [0, 255]. Severity 0 is the identity;
severities 1..5 grow roughly evenly, in the spirit of ImageNet-C (Hendrycks & Dietterich, 2019).
Random corruptions draw from the `generator` passed in, so a seed fixes them.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SEVERITIES = (1, 2, 3, 4, 5)
NOISE_STD = (0.04, 0.08, 0.12, 0.18, 0.26)  # Gaussian noise std, as a fraction of the 0..255 range
BLUR_SIGMA = (0.5, 0.75, 1.0, 1.5, 2.0)  # Gaussian blur std in pixels
CONTRAST_KEPT = (0.6, 0.45, 0.3, 0.2, 0.1)  # fraction of each image's contrast around its mean kept
ROTATION_DEGREES = (6, 12, 18, 24, 30)  # even-indexed images turn anticlockwise, odd ones clockwise
SHIFT_PIXELS = (1, 2, 3, 4, 5)  # even-indexed images move down-right, odd ones up-left; zeros fill in


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.round().clamp(0, 255).to(torch.uint8)


def gaussian_noise(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    std = 255.0 * NOISE_STD[severity - 1]
    noise = torch.randn(images.shape, generator=generator, device=images.device)
    return _to_uint8(images.float() + std * noise)


def gaussian_blur(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Separable Gaussian blur, kernel radius ceil(3 sigma), reflected borders (clamped to the image size)."""
    sigma = BLUR_SIGMA[severity - 1]
    channels, height, width = images.shape[1:]
    radius = min(math.ceil(3 * sigma), height - 1, width - 1)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32, device=images.device)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = kernel / kernel.sum()  # (K,) sums to 1, so flat regions keep their value
    x = F.pad(images.float(), (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)  # along width
    x = F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)  # along height
    return _to_uint8(x)


def contrast(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    x = images.float()
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1) per-image mean brightness
    return _to_uint8(mean + CONTRAST_KEPT[severity - 1] * (x - mean))


def _alternating_sign(batch: int, device: torch.device) -> torch.Tensor:
    return 1.0 - 2.0 * (torch.arange(batch, device=device) % 2).float()  # (B,) +1, -1, +1, ...


def rotate(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Rotation about the image centre, bilinear, zero fill outside the original image."""
    batch = images.shape[0]
    angle = math.radians(ROTATION_DEGREES[severity - 1]) * _alternating_sign(batch, images.device)  # (B,)
    cos, sin = torch.cos(angle), torch.sin(angle)
    zero = torch.zeros_like(angle)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return _to_uint8(F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False))


def shift(images: torch.Tensor, severity: int, generator: torch.Generator) -> torch.Tensor:
    """Translation by SHIFT_PIXELS in both axes (exact integer pixels, no interpolation), zero fill."""
    d = SHIFT_PIXELS[severity - 1]
    height, width = images.shape[2:]
    out = torch.zeros_like(images)
    out[0::2, :, d:, d:] = images[0::2, :, :height - d, :width - d]  # down-right
    out[1::2, :, :height - d, :width - d] = images[1::2, :, d:, d:]  # up-left
    return out


CORRUPTIONS = {"gaussian_noise": gaussian_noise, "gaussian_blur": gaussian_blur, "contrast": contrast,
               "rotate": rotate, "shift": shift}


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator) -> torch.Tensor:
    """images (B, C, H, W) uint8 -> corrupted copy, same shape and dtype; severity 0 returns a copy unchanged."""
    if images.dtype != torch.uint8:
        raise TypeError(f"corrupt expects uint8 images, got {images.dtype}")
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {', '.join(CORRUPTIONS)}")
    if not 0 <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must be in 0..{len(SEVERITIES)}, got {severity}")
    if severity == 0:
        return images.clone()
    return CORRUPTIONS[name](images, severity, generator)
