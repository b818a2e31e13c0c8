"""The convolutional backbone of the source report: conv-BN-ReLU stages, pooling, a linear embedding."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    # bias=False: the BatchNorm that follows has its own shift.
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


class Network(nn.Module):
    """Backbone mapping images (B, in_channels, H, W) to embeddings (B, latent_dim).

    One stage per entry of `widths`: a 3x3 conv to that width, 2x2 max-pooling, then
    `convs_per_stage - 1` more 3x3 convs at the pooled resolution; every conv is followed by
    BatchNorm and ReLU. After the last stage a global average pool, a flatten and a linear
    layer give the embedding. The default (64, 256, 64) with one conv per stage is the
    report's network; any image size of at least 2**len(widths) pixels works. `embedding_bn` adds
    a BatchNorm1d after the linear layer (off in the report's network).
    """

    def __init__(
        self,
        in_channels: int,
        latent_dim: int,
        widths: Sequence[int] = (64, 256, 64),
        convs_per_stage: int = 1,
        embedding_bn: bool = False,
    ):
        super().__init__()
        if in_channels < 1 or latent_dim < 1 or not widths or convs_per_stage < 1:
            raise ValueError("Network needs in_channels, latent_dim, widths and convs_per_stage >= 1")
        layers: list[nn.Module] = []
        channels = in_channels
        for width in widths:
            layers += conv_bn_relu(channels, width)
            layers.append(nn.MaxPool2d(2))
            for _ in range(convs_per_stage - 1):
                layers += conv_bn_relu(width, width)
            channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.embed = nn.Linear(channels, latent_dim)
        # insightface's backbones end in a BatchNorm on the embedding (--embedding-bn); here it collapsed the
        # angular-margin losses on CIFAR-10 (README, "Why the margin losses trained worse"), so it is off.
        self.embed_bn = nn.BatchNorm1d(latent_dim) if embedding_bn else nn.Identity()
        self.latent_dim = latent_dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.features(images))  # (B, widths[-1], 1, 1)
        return self.embed_bn(self.embed(torch.flatten(features, 1)))  # (B, latent_dim)
