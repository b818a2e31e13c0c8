"""Shared pieces of arcface-classify: backbone, heads, data, metrics, training helpers."""
from .config import TrainConfig, parse_config
from .data import (CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, DataNotFoundError, ImageData, Normalize, augment,
                   is_image_folder, load_cifar10, load_image_folder, load_mnist, random_crop_flip)
from .device import autocast, cpu_has_fast_bf16, pick_device
from .heads import (LOSSES, MARGIN_DEFAULTS, ArcNet, CentroidHead, SoftmaxHead, batch_hard_triplet_loss,
                    build_head, margin_target)
from .metrics import classification_metrics, confusion_matrix
from .network import Network

__all__ = [
    "TrainConfig", "parse_config", "CIFAR10_MEAN", "CIFAR10_STD", "MNIST_MEAN", "MNIST_STD", "DataNotFoundError",
    "ImageData", "Normalize", "is_image_folder", "load_cifar10", "load_image_folder", "load_mnist",
    "random_crop_flip", "augment", "autocast", "cpu_has_fast_bf16", "pick_device", "LOSSES", "MARGIN_DEFAULTS", "ArcNet",
    "CentroidHead", "SoftmaxHead", "batch_hard_triplet_loss", "build_head", "margin_target",
    "classification_metrics", "confusion_matrix", "Network",
]
