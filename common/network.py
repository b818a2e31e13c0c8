"""The convolutional backbone of the source report: conv-BN-ReLU stages, pooling, a linear embedding."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn


ACTIVATIONS = ("relu", "gelu")
GLOBAL_POOLS = ("avg", "max")


def activation_layer(name: str) -> nn.Module:
    return nn.GELU() if name == "gelu" else nn.ReLU(inplace=True)


def conv_bn_act(in_channels: int, out_channels: int, activation: str = "relu", pool: bool = False,
                pool_first: bool = False, bn_scale: bool = True) -> list[nn.Module]:
    """A 3x3 conv, BatchNorm and activation, with a 2x2 max-pool after them when `pool` (before the
    BatchNorm when also `pool_first`, as airbench: its statistics are then those of the pooled map).
    `bn_scale` False fixes the BatchNorm's scale at 1 (not trained), as airbench."""
    # bias=False: the BatchNorm that follows has its own shift.
    layers = [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False)]
    norm = nn.BatchNorm2d(out_channels)
    norm.weight.requires_grad_(bn_scale)
    after = [norm, activation_layer(activation)]
    if not pool:
        return layers + after
    pooling = [nn.MaxPool2d(2)]
    return layers + (pooling + after if pool_first else after + pooling)


class Network(nn.Module):
    """Backbone mapping images (B, in_channels, H, W) to embeddings (B, latent_dim).

    One stage per entry of `widths`: a 3x3 conv to that width, 2x2 max-pooling, then
    `convs_per_stage - 1` more 3x3 convs at the pooled resolution; every conv is followed by
    BatchNorm and ReLU (`activation` "gelu": GELU). After the last stage a global average pool
    (`global_pool` "max": a global max pool, as airbench), a flatten and a linear layer give the
    embedding. `pool_first` pools each stage's first conv before its BatchNorm (airbench's order);
    `bn_scale` False fixes every BatchNorm2d scale at 1 (airbench trains only their shifts). The
    default (64, 256, 64) with one conv per stage is the report's network; any image size of at least
    2**len(widths) pixels works. `embedding_bn` adds a BatchNorm1d after the linear layer (off in the
    report's network). `whiten` puts a fixed whitening stem before the first stage (`WhiteningStem`:
    2x2 patches, as airbench's first layer; the image shrinks by one pixel, so it needs
    2**len(widths) + 1); `init_whitening` sets its filters from training images before training
    starts. `dirac` starts every 3x3 conv as partly
    the identity (`dirac_init`).
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        widths: Sequence[int] = (64, 256, 64),
        convs_per_stage: int = 1,
        embedding_bn: bool = False,
        whiten: bool = False,
        dirac: bool = False,
        activation: str = "relu",
        pool_first: bool = False,
        global_pool: str = "avg",
        bn_scale: bool = True,
    ):
        super().__init__()
        if in_channels < 1 or latent_dim < 1 or not widths or convs_per_stage < 1:
            raise ValueError("Network needs in_channels, latent_dim, widths and convs_per_stage >= 1")
        if activation not in ACTIVATIONS or global_pool not in GLOBAL_POOLS:
            raise ValueError(f"Network: activation must be one of {ACTIVATIONS}, global_pool one of {GLOBAL_POOLS}")
        layers: list[nn.Module] = []
        channels = in_channels
        if whiten:
            layers.append(WhiteningStem(in_channels, activation))
            channels = layers[-1].out_channels
        for width in widths:
            layers += conv_bn_act(channels, width, activation, pool=True, pool_first=pool_first, bn_scale=bn_scale)
            for _ in range(convs_per_stage - 1):
                layers += conv_bn_act(width, width, activation, bn_scale=bn_scale)
            channels = width
        self.features = nn.Sequential(*layers)
        if dirac:
            dirac_init(self)
        self.pool = nn.AdaptiveMaxPool2d(1) if global_pool == "max" else nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(channels, latent_dim)
        # insightface's backbones end in a BatchNorm on the embedding (--embedding-bn); here it collapsed the
        # angular-margin losses on CIFAR-10 (results/README.md, "Why the margin losses trained worse"), so it is off.
        self.embed_bn = nn.BatchNorm1d(latent_dim) if embedding_bn else nn.Identity()
        self.latent_dim = latent_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(images))  # (B, widths[-1], 1, 1)
        return self.embed_bn(self.embed(torch.flatten(features, 1)))  # (B, latent_dim)


def autocast(device: torch.device, enabled: bool):
    """bfloat16 autocast for the backbone when `enabled`, otherwise a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def as_float(x: torch.Tensor) -> torch.Tensor:
    """bfloat16 / float16 (what the backbone returns under --amp) -> float32; float32 and float64 as they are."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x


def net_forward(net: nn.Module, images: torch.Tensor, amp: bool) -> torch.Tensor:
    """Embeddings (B, D) of normalised images (B, C, H, W): the backbone under bfloat16 autocast when `amp`
    (its output then bfloat16: `as_float` it for the heads, which compute in float32)."""
    with autocast(images.device, amp):
        return net(images)


class WhiteningStem(nn.Module):
    """A fixed 2x2 convolution (no padding) whose filters whiten image patches, then ReLU (or GELU).

    For P = 4 * in_channels pixel values per 2x2 patch, with patch covariance V diag(lambda) V^T,
    the filters are the rows of diag(lambda + eps)^(-1/2) V^T and their negatives (2P output
    channels: ReLU keeps both signs of every whitened coordinate). The filters never train (they
    are a buffer-like parameter with requires_grad off); the bias does. Until `init_whitening`
    runs, the filters are the identity on the patch's pixels (and their negatives).
    Safeguard: eps = 1e-2 (in units of the normalised images' variance) keeps the near-zero
    eigenvalues of flat patches from blowing their directions up.
    """

    EPS = 1e-2

    def __init__(self, in_channels: int, activation: str = "relu"):
        super().__init__()
        self.activation = activation_layer(activation)
        patch = 4 * in_channels
        self.out_channels = 2 * patch
        self.conv = nn.Conv2d(in_channels, self.out_channels, kernel_size=2, bias=True)
        self.conv.weight.requires_grad_(False)
        nn.init.zeros_(self.conv.bias)
        eye = torch.eye(patch).view(patch, in_channels, 2, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.cat([eye, -eye]))

    @torch.no_grad()
    def fit(self, images: torch.Tensor, chunk: int = 500) -> None:
        """Set the filters from normalised images (N, C, H, W) (float; any N >= 1). Patch products are
        summed in float32 on the images' device, `chunk` images at a time, and the covariance and its
        eigenvectors computed in float64 on the CPU (MPS has no float64)."""
        p = 4 * images.shape[1]
        products, sums, count = torch.zeros(p, p, dtype=torch.float64), torch.zeros(p, dtype=torch.float64), 0
        for part in images.split(chunk):
            patches = part.float().unfold(2, 2, 1).unfold(3, 2, 1)  # (n, C, H-1, W-1, 2, 2)
            patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, p)  # (M, P), in the weight's (C, 2, 2) order
            products += (patches.t() @ patches).double().cpu()
            sums += patches.sum(dim=0).double().cpu()
            count += len(patches)
        mean = sums / count
        covariance = products / count - torch.outer(mean, mean)  # (P, P)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors / (eigenvalues.clamp_min(0) + self.EPS).sqrt()).t()  # (P, P): rows whiten
        filters = filters.reshape(p, -1, 2, 2).to(self.conv.weight.device, self.conv.weight.dtype)
        self.conv.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.activation(self.conv(images))


def init_whitening(net: Network, images: torch.Tensor) -> None:
    """Fit the whitening stem of `net` (if it has one) to normalised training images (N, C, H, W)."""
    stem = net.features[0]
    if isinstance(stem, WhiteningStem):
        stem.fit(images)


@torch.no_grad()
def dirac_init(net: Network) -> None:
    """Airbench's identity initialisation: in every 3x3 conv of the stages (out, in, 3, 3), the first
    min(out, in) filters become the identity (output channel i copies input channel i), the others keep
    their random initialisation, so each conv starts as a near pass-through plus noise. Runs after the
    random initialisation, so the random draws, and with them the seeds, are the same as without it."""
    for module in net.features:
        if isinstance(module, nn.Conv2d):  # the whitening stem's conv sits inside WhiteningStem: left alone
            nn.init.dirac_(module.weight[:module.in_channels])
