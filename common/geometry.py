"""Angles between embeddings and class centres, and PCA to 3-D, in plain torch."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def angles_to_centres(embeddings: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """(N, C) angles in degrees between each embedding (N, D) and each class centre (C, D)."""
    cos = F.normalize(embeddings.double(), dim=1) @ F.normalize(centres.double(), dim=1).t()
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def target_and_nearest_other(angles: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angle to the own class centre (N,) and to the nearest other centre (N,), in degrees."""
    target = angles.gather(1, labels.view(-1, 1)).squeeze(1)
    others = angles.scatter(1, labels.view(-1, 1), math.inf)
    return target, others.min(dim=1).values


def angular_statistics(embeddings: torch.Tensor, labels: torch.Tensor, centres: torch.Tensor) -> dict:
    """Intra-class and inter-class angles (degrees) and the share of embeddings nearer a wrong centre.

    intra_mean / intra_std: mean and standard deviation of the angle between each embedding and
    its own class centre; inter_min / inter_mean: smallest and mean angle between two distinct
    centres; wrong_nearer: fraction of embeddings whose nearest centre is another class's.
    """
    angles = angles_to_centres(embeddings, centres)
    target, nearest_other = target_and_nearest_other(angles, labels)
    between = angles_to_centres(centres, centres)
    off_diagonal = between[~torch.eye(len(centres), dtype=torch.bool)]
    return {
        "intra_mean_deg": target.mean().item(),
        "intra_std_deg": target.std(unbiased=False).item(),
        "inter_min_deg": off_diagonal.min().item(),
        "inter_mean_deg": off_diagonal.mean().item(),
        "wrong_nearer": (nearest_other < target).double().mean().item(),
    }


def pca_basis(points: torch.Tensor, dims: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and top-`dims` principal directions (D, dims) of points (N, D)."""
    mean = points.mean(dim=0)
    _, _, vh = torch.linalg.svd(points - mean, full_matrices=False)
    return mean, vh[:dims].t()


def to_sphere_3d(embeddings: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Unit 3-D points for drawing: the normalised vectors themselves when D == 3, otherwise their
    PCA projection (fitted on the normalised embeddings) renormalised. Returns (points, centres, projected)."""
    x, c = F.normalize(embeddings.double(), dim=1), F.normalize(centres.double(), dim=1)
    if x.shape[1] == 3:
        return x, c, False
    if x.shape[1] < 3:
        pad = lambda t: F.pad(t, (0, 3 - t.shape[1]))  # noqa: E731  a 2-D circle drawn on the equator
        return pad(x), pad(c), False
    mean, basis = pca_basis(x)
    return F.normalize((x - mean) @ basis, dim=1), F.normalize((c - mean) @ basis, dim=1), True
