"""Shared pieces of arcface-classify. Each module holds one subject:

- config.py: TrainConfig (every setting of a run) and its validation; cli.py: the scripts' command line
- data.py: datasets (MNIST, CIFAR10, image folders) as uint8 tensors, normalisation and augmentation
- network.py: the conv-BN-ReLU backbone and its forward pass under --amp; heads.py: the losses
- training.py: the steps a script's run() takes around its loop
- evaluation.py: test metrics, embeddings, retrieval, verification, corruptions (with retrieval.py,
  corruptions.py, geometry.py); checkpoints.py: --checkpoint / --resume; results.py: the result files
- device.py: device choice and what it runs fast
- rows.py: what identifies a results row; summary.py: what a sweep's rows say; plots.py: their figures
"""
from .config import TrainConfig
from .data import CIFAR10, DATASETS, MNIST, DataNotFoundError, ImageData, Normalize, augment, random_crop_flip
from .heads import (LOSSES, MARGIN_DEFAULTS, ArcNet, CentroidHead, SoftmaxHead, batch_hard_triplet_loss,
                    build_head, margin_target)
from .network import Network

__all__ = [
    "TrainConfig", "CIFAR10", "DATASETS", "MNIST", "DataNotFoundError", "ImageData", "Normalize", "augment",
    "random_crop_flip", "LOSSES", "MARGIN_DEFAULTS", "ArcNet", "CentroidHead", "SoftmaxHead",
    "batch_hard_triplet_loss", "build_head", "margin_target", "Network",
]
