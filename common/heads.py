"""Classification heads and their losses: combined angular margin (ArcNet), plain softmax, triplet.

Every head maps embeddings (B, D) to logits (B, C) with `forward(embeddings, labels=None)`
(argmax = predicted class) and gives its training loss with `loss(embeddings, labels)`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The one home of the margins (s, m1, m2, m3) that each named loss starts from; explicit flags override
# them, and every other place (ArcNet's and build_head's defaults, TrainConfig, the sweep) reads them here.
MARGIN_DEFAULTS = {
    "arcface": (30.0, 1.0, 0.5, 0.0),
    "cosface": (30.0, 1.0, 0.0, 0.35),
    "sphereface": (30.0, 1.35, 0.0, 0.0),
    "combined": (30.0, 1.0, 0.3, 0.2),
}
NO_MARGINS = (30.0, 1.0, 0.0, 0.0)  # what `margins_of` gives a loss without margins (softmax, triplet)
LOSSES = ("softmax", *MARGIN_DEFAULTS, "triplet")
_ARCFACE = MARGIN_DEFAULTS["arcface"]

# cos(theta) is clamped to [-1 + CLAMP_EPS, 1 - CLAMP_EPS] before acos, so that
# d(theta)/d(cos) = -1 / sin(theta) stays below 1 / sqrt(2 * CLAMP_EPS) ~ 224 in magnitude.
CLAMP_EPS = 1e-5


# What psi does beyond theta_b = (pi - m2) / m1, where m1*theta + m2 reaches pi (see `margin_target`).
TAILS = ("sphereface", "cosine")
# How the gradient passes through psi (see `ArcNet`): "exact" differentiates psi, "unit" holds the margin
# cos(theta) - psi(theta) constant in the backward pass, so d psi / d cos(theta) = 1 as for CosFace.
MARGIN_GRADS = ("exact", "unit")


def margins_of(loss: str, s: float | None = None, m1: float | None = None, m2: float | None = None,
               m3: float | None = None) -> tuple[float, float, float, float]:
    """(s, m1, m2, m3) of `loss`: its defaults (`MARGIN_DEFAULTS`; `NO_MARGINS` for softmax and triplet) with
    the values given (not None) overriding them. The one place where defaults and flags meet."""
    defaults = MARGIN_DEFAULTS.get(loss, NO_MARGINS)
    return tuple(float(d if v is None else v) for v, d in zip((s, m1, m2, m3), defaults))


def check_margin_options(tail: str, grad: str) -> None:
    """Raise ValueError, naming the flag, for a --margin-tail or --margin-grad that is not one of TAILS / MARGIN_GRADS."""
    if tail not in TAILS:
        raise ValueError(f"--margin-tail must be one of {', '.join(TAILS)}, got {tail!r}")
    if grad not in MARGIN_GRADS:
        raise ValueError(f"--margin-grad must be one of {', '.join(MARGIN_GRADS)}, got {grad!r}")


def margin_target(cos: torch.Tensor, m1: float, m2: float, m3: float, eps: float = CLAMP_EPS,
                  tail: str = "sphereface", grad: str = "exact") -> torch.Tensor:
    """Target-class cosine with the combined margin, psi(theta), elementwise on `cos`.

    Up to theta_b = (pi - m2) / m1 this is the combined margin cos(m1*theta + m2) - m3. There
    cos(m1*theta + m2) has its minimum, so its slope d psi / d cos(theta) falls to 0 as theta
    approaches theta_b: an embedding near theta_b gets almost no pull towards its class centre,
    while the other classes still push it away. Beyond theta_b, `tail` says what psi does:
      * "sphereface": psi = (-1)**k * cos(m1*theta + m2) - 2*k - m3, k = floor((m1*theta + m2) / pi),
        SphereFace's extension: continuous and decreasing, but its slope returns to 0 at every
        multiple of pi;
      * "cosine": psi = cos(theta) - m3 - (1 + cos(theta_b)), CosFace-like: continuous at theta_b
        (both sides equal -1 - m3) and of slope exactly 1 in cos(theta) from there on.
    Both keep psi non-increasing over the whole of theta in [0, pi], so no wrong prediction can earn a
    bonus (pytorch-metric-learning's ArcFace loss also has a rule of its own beyond pi - m). `grad` =
    "unit" returns the same values but holds the margin cos - psi constant in the backward pass, so
    d psi / d cos = 1 everywhere, as for CosFace ("exact" differentiates psi); insightface's
    arcface_torch does the same by computing its margin under torch.no_grad().
    Safeguards:
      * cos is clamped to [-1 + eps, 1 - eps] before acos with a straight-through clamp: the
        value is clamped, the gradient passes as identity, so inputs at, or a hair outside,
        +-1 (rounding of normalised dot products) give finite, bounded gradients;
      * the result is capped at cos - m3 <= cos, so the margin is never a bonus, even
        where the clamp moved theta (cos within eps of -1 with m2 < ~5e-3);
      * (m1, m2) == (1, 0) skips the acos round trip: plain CosFace, exactly cos - m3.
    Callers pass float32 (or float64) `cos`; ArcNet does so even under autocast. `tail` and `grad` are
    checked once, where the run's settings are (`check_margin_options`), not here on every step.
    """
    if m1 == 1.0 and m2 == 0.0:
        return cos - m3
    clamped = cos + (cos.clamp(-1.0 + eps, 1.0 - eps) - cos).detach()
    theta = torch.acos(clamped)  # radians in (0, pi)
    phi = m1 * theta + m2
    if tail == "cosine":
        theta_b = (math.pi - m2) / m1
        beyond = cos - m3 - (1.0 + math.cos(theta_b))  # used only where phi > pi, i.e. theta > theta_b
        psi = torch.where(phi > math.pi, beyond, torch.cos(phi) - m3)
    else:
        k = torch.floor(phi / math.pi).detach()  # branch index, piecewise constant
        sign = 1.0 - 2.0 * torch.remainder(k, 2.0)  # (-1)**k
        psi = sign * torch.cos(phi) - 2.0 * k - m3
    psi = torch.minimum(psi, cos - m3)
    return cos - (cos - psi).detach() if grad == "unit" else psi


class ArcNet(nn.Module):
    """Combined angular-margin head: logits s * cos(theta_j), target s * psi(theta_y).

    `weight` (num_classes, in_features) holds the class centres. Embeddings and centres are
    L2-normalised, so every logit lies in [-s, s]. With `labels` (training) the target entry
    becomes s * psi(theta_y), psi from `margin_target`: m1 is SphereFace's multiplicative
    angular margin, m2 ArcFace's additive angular margin, m3 CosFace's additive cosine
    margin; any m1 >= 1, 0 <= m2 < pi, m3 >= 0, s > 0 is allowed, in any combination.
    Without labels (inference) no margin is applied. The head always computes in float32,
    with autocast disabled, so bf16/fp16 backbones get the same margin math.
    """

    def __init__(self, in_features: int, num_classes: int, s: float = _ARCFACE[0], m1: float = _ARCFACE[1],
                 m2: float = _ARCFACE[2], m3: float = _ARCFACE[3], label_smoothing: float = 0.0,
                 tail: str = "sphereface", margin_grad: str = "exact"):
        super().__init__()
        self.tail, self.margin_grad = tail, margin_grad
        self.s, self.m1, self.m2, self.m3 = float(s), float(m1), float(m2), float(m3)
        self.label_smoothing = float(label_smoothing)
        self.ramp = 1.0  # margin warm-up: the fraction of the margins applied (set by the training loop)
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)

    def cosines(self, embeddings: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        with torch.autocast(embeddings.device.type, enabled=False):
            x = F.normalize(embeddings.to(dtype), dim=1)  # (B, D) unit vectors
            w = F.normalize(self.weight.to(dtype), dim=1)  # (C, D) unit class centres
            return x @ w.t()  # (B, C) cosines

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = self.cosines(embeddings)
        if labels is None:
            return self.s * cos
        target = labels.view(-1, 1)
        psi = margin_target(cos.gather(1, target), *self.current_margins(), tail=self.tail,
                            grad=self.margin_grad)  # (B, 1)
        return self.s * cos.scatter(1, target, psi)

    def current_margins(self) -> tuple[float, float, float]:
        """(m1, m2, m3) at the current margin warm-up fraction `ramp` (`ramped_margins`)."""
        return ramped_margins(self.m1, self.m2, self.m3, self.ramp)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(embeddings, labels), labels, label_smoothing=self.label_smoothing)

    def extra_repr(self) -> str:
        return f"s={self.s}, m1={self.m1}, m2={self.m2}, m3={self.m3}, tail={self.tail}, margin_grad={self.margin_grad}"


def ramped_margins(m1: float, m2: float, m3: float, ramp: float) -> tuple[float, float, float]:
    """(m1, m2, m3) scaled by `ramp` in [0, 1]: none at 0 (normalised softmax), all of them at 1."""
    return 1.0 + ramp * (m1 - 1.0), ramp * m2, ramp * m3


def check_margins(s: float, m1: float, m2: float, m3: float) -> None:
    """Raise ValueError, naming the flag, for margins outside the supported ranges."""
    if not s > 0:
        raise ValueError(f"--s must be > 0, got {s}")
    if not m1 >= 1:
        raise ValueError(f"--m1 must be >= 1, got {m1}")
    if not 0 <= m2 < math.pi:
        raise ValueError(f"--m2 must be in [0, pi), got {m2}")
    if not m3 >= 0:
        raise ValueError(f"--m3 must be >= 0, got {m3}")


class SoftmaxHead(nn.Module):
    """The 'traditional softmax' baseline: a linear layer with bias and cross-entropy."""

    def __init__(self, in_features: int, num_classes: int, label_smoothing: float = 0.0):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)
        self.label_smoothing = float(label_smoothing)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(embeddings)

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self(embeddings), labels, label_smoothing=self.label_smoothing)


def unit_distances(embeddings: torch.Tensor, labels: torch.Tensor):
    """Euclidean distances (B, B) between the L2-normalised embeddings (B, D), in [0, 2], and the masks of
    positives (same class, not itself) and negatives (other class). Squared distances are clamped at 1e-12
    before the square root, so identical embeddings give finite gradients."""
    x = F.normalize(embeddings.float(), dim=1)  # (B, D)
    dist = (2.0 - 2.0 * (x @ x.t())).clamp_min(1e-12).sqrt()  # (B, B)
    same = labels.view(-1, 1) == labels.view(1, -1)  # (B, B)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return dist, same & ~eye, ~same


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on L2-normalised embeddings (B, D).

    For each anchor: the farthest same-class sample and the nearest other-class sample in
    the batch; loss = mean over anchors having both of relu(d_pos - d_neg + margin), with
    Euclidean distances on the unit sphere (in [0, 2]). Safeguards: squared distances are
    clamped at 1e-12 before the square root so identical embeddings give finite gradients;
    anchors without a positive or a negative are masked out (a masked mean, with no data-
    dependent branch, so a GPU step needs no host synchronisation); a batch with no valid
    anchor gives 0 with a zero gradient.
    """
    dist, positive, negative = unit_distances(embeddings, labels)
    valid = positive.any(dim=1) & negative.any(dim=1)  # (B,) anchors with a positive and a negative
    # masked rows take 0 rather than -inf / inf, so no inf ever enters the arithmetic or its gradient
    hardest_pos = torch.where(positive, dist, torch.zeros_like(dist)).amax(dim=1)
    hardest_neg = torch.where(negative, dist, torch.full_like(dist, 4.0)).amin(dim=1)  # 4 > any distance (<= 2)
    per_anchor = F.relu(hardest_pos - hardest_neg + margin) * valid  # (B,) 0 for invalid anchors
    return per_anchor.sum() / valid.sum().clamp_min(1)


def semihard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Semi-hard triplet loss (FaceNet, Schroff et al. 2015, as TensorFlow Addons' triplet_semihard_loss) on
    L2-normalised embeddings (B, D).

    For every anchor-positive pair (a, p): the nearest other-class sample n farther from a than p is
    (d_an > d_ap), or, when no negative is, the farthest negative; loss = mean over the pairs of
    relu(d_ap - d_an + margin), Euclidean distances on the unit sphere. Unlike batch-hard mining, shrinking
    every distance alike raises the loss of every pair whose negative lies beyond its positive, so the
    embedding is not pulled to one point (batch-hard's loss falls to the margin there). Safeguards as
    `batch_hard_triplet_loss`: the clamped square root, masked pairs (anchors without a negative) instead
    of branches, 0 with a zero gradient when no pair is valid. Cost: a sort and a binary search per anchor, O(B^2 log B), no (B, B, B) tensor.
    """
    dist, positive, negative = unit_distances(embeddings, labels)
    count = negative.sum(dim=1, keepdim=True)  # (B, 1) negatives per anchor
    # each anchor's negative distances, ascending, padded with 4 (> any distance) to B: (B, B)
    ranked = torch.where(negative, dist, 4.0).sort(dim=1).values
    first_beyond = torch.searchsorted(ranked.detach(), dist.detach(), right=True)  # (B, B) [a, p]: first d_an > d_ap
    nearest_beyond = ranked.gather(1, first_beyond.clamp(max=len(labels) - 1))  # (B, B)
    farthest = ranked.gather(1, (count - 1).clamp(min=0))  # (B, 1) each anchor's farthest negative
    d_neg = torch.where(first_beyond < count, nearest_beyond, farthest)  # (B, B)
    valid = positive & (count > 0)  # (B, B) pairs whose anchor has a negative
    per_pair = F.relu(dist - d_neg + margin) * valid
    return per_pair.sum() / valid.sum().clamp_min(1)


TRIPLET_MININGS = {"hard": batch_hard_triplet_loss, "semihard": semihard_triplet_loss}
TRIPLET_MINING = "semihard"  # the default: batch-hard collapsed on CIFAR-10 and Tiny-ImageNet (results/README.md)


class CentroidHead(nn.Module):
    """Triplet-loss head: trains with batch-hard or semi-hard mining (`TRIPLET_MININGS`), classifies by the
    nearest class centre.

    `centres` (num_classes, D) are the normalised mean training embeddings of each class,
    set by `fit_centres`; logits are the cosines to them (nearest centre = largest cosine).
    """

    def __init__(self, in_features: int, num_classes: int, margin: float = 0.2, mining: str = TRIPLET_MINING):
        super().__init__()
        self.margin = float(margin)
        self.triplet_loss = TRIPLET_MININGS[mining]
        self.register_buffer("centres", torch.zeros(num_classes, in_features))

    @torch.no_grad()
    def fit_centres(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        x = F.normalize(embeddings.float(), dim=1)
        sums = torch.zeros_like(self.centres).index_add_(0, labels, x)
        self.centres.copy_(F.normalize(sums, dim=1))  # classes never seen stay zero

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return F.normalize(embeddings.float(), dim=1) @ self.centres.t()

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.triplet_loss(embeddings, labels, self.margin)


def build_head(loss: str, latent_dim: int, num_classes: int, margins: tuple[float, float, float, float] = NO_MARGINS,
               triplet_margin: float = 0.2, label_smoothing: float = 0.0, tail: str = "sphereface",
               margin_grad: str = "exact", triplet_mining: str = TRIPLET_MINING) -> nn.Module:
    """The head of a named loss; `margins` (s, m1, m2, m3) as `margins_of` gives them (used by the margin
    losses only); label smoothing applies to the cross-entropy heads (not triplet), the triplet margin and
    mining to triplet's."""
    if loss == "softmax":
        return SoftmaxHead(latent_dim, num_classes, label_smoothing)
    if loss == "triplet":
        return CentroidHead(latent_dim, num_classes, triplet_margin, triplet_mining)
    if loss in MARGIN_DEFAULTS:
        return ArcNet(latent_dim, num_classes, *margins, label_smoothing, tail, margin_grad)
    raise ValueError(f"--loss must be one of {', '.join(LOSSES)}, got {loss!r}")
