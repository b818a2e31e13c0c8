"""Datasets decoded once into uint8 tensors, and batched normalisation / augmentation on the device.

Sources: torchvision's MNIST and CIFAR-10 (downloaded on first use into the data root), or
an image folder `ROOT/train/<class>/*` and `ROOT/test/<class>/*` for a user's own data (common/image_folder.py). Each dataset
is described once, by a `Dataset` (`MNIST`, `CIFAR10`, `DATASETS`): its channels, normalisation,
image size and loader.
"""
from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass
from typing import Callable

import torch

from .image_folder import DataError, decode_image_folder, is_image_folder

CLASS_ORDER_SEED = 0  # fixes which classes --num-classes keeps (`class_order`), the same for every run and seed
VALIDATION_SEED = 0  # fixes which training images --val-per-class holds out, the same for every run and seed


class DataNotFoundError(DataError):
    """The dataset is not under the data root and could not be downloaded."""


@dataclass
class ImageData:
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    classes: list[str]
    fingerprint: str = ""  # of the files it came from: an image folder's `folder_fingerprint`, else the dataset's name

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> "ImageData":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return ImageData(move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y), self.classes,
                         self.fingerprint)

    def identity(self) -> dict:
        """What a model trained on this data learnt from, as its checkpoints record it (`check_same_data`): its
        classes in label order and the fingerprint of its files."""
        return {"classes": list(self.classes), "fingerprint": self.fingerprint}

    def subset_train(self, n: int | None, seed: int) -> "ImageData":
        """A seeded random subset of n training images that keeps every class's share (stratified, see
        `stratified_counts`); all of them when n is None or >= the training set. The test set is unchanged."""
        if n is None or n >= len(self.train_y):
            return self
        if n < self.num_classes:
            raise ValueError(f"--max-train-samples {n} is fewer than the {self.num_classes} classes: some classes would "
                             f"get no training image; give at least {self.num_classes}")
        return self._keep_per_class(stratified_counts(self.train_class_counts(), n), seed)

    def train_class_counts(self) -> list[int]:
        return torch.bincount(self.train_y.cpu(), minlength=self.num_classes).tolist()

    def long_tailed(self, ratio: float, seed: int) -> "ImageData":
        """A long-tailed subsample of the training set (see `long_tailed_counts`); the test set is unchanged.

        Which images each class keeps is a uniform random choice fixed by `seed`; the kept images stay
        in their original order. ratio = 1 returns the data unchanged.
        """
        if ratio == 1:
            return self
        return self._keep_per_class(long_tailed_counts(self.train_class_counts(), ratio), seed)

    def _keep_per_class(self, counts: list[int], seed: int) -> "ImageData":
        """Keep counts[c] training images of class c, a uniform random choice fixed by `seed`, in their
        original order; the test set is unchanged."""
        generator = torch.Generator().manual_seed(seed)
        labels = self.train_y.cpu()
        members = (torch.nonzero(labels == c).flatten() for c in range(self.num_classes))
        keep = [m[torch.randperm(len(m), generator=generator)[:n]] for m, n in zip(members, counts)]
        index = torch.cat(keep).sort().values.to(self.train_y.device)
        return ImageData(self.train_x[index], self.train_y[index], self.test_x, self.test_y, self.classes,
                         self.fingerprint)

    def keep_classes(self, count: int | None) -> "ImageData":
        """The first `count` classes of `class_order(self.classes)` (a fixed shuffle, so the subsets are
        nested: 10 within 50 within 200), in train and test, relabelled 0..count-1 in their old order; all of
        them when count is None or the number of classes."""
        if count is None or count == self.num_classes:
            return self
        if not 2 <= count <= self.num_classes:
            raise ValueError(f"--num-classes must be between 2 and the data's {self.num_classes} classes, got {count}")
        kept = sorted(class_order(self.classes)[:count])  # (count,) old labels, ascending
        relabel = torch.full((self.num_classes,), -1, dtype=torch.long)
        relabel[torch.tensor(kept)] = torch.arange(count)
        train_y, test_y = relabel[self.train_y.cpu()], relabel[self.test_y.cpu()]
        train, test = train_y >= 0, test_y >= 0
        return ImageData(self.train_x[train], train_y[train], self.test_x[test], test_y[test],
                         [self.classes[c] for c in kept], self.fingerprint)

    def validation_split(self, per_class: int) -> "ImageData":
        """Hold out `per_class` training images of every class (a choice fixed by VALIDATION_SEED, the
        same for every run) and evaluate on them instead of the test set, which is then never read.
        0 returns the data unchanged. ValueError when a class has no more than `per_class` images."""
        if per_class == 0:
            return self
        counts = self.train_class_counts()
        if min(counts) <= per_class:
            raise ValueError(f"--val-per-class {per_class} leaves no training image in class "
                             f"{self.classes[counts.index(min(counts))]!r} ({min(counts)} images)")
        generator = torch.Generator().manual_seed(VALIDATION_SEED)
        labels = self.train_y.cpu()
        held = torch.zeros(len(labels), dtype=torch.bool)
        for c in range(self.num_classes):
            members = torch.nonzero(labels == c).flatten()
            held[members[torch.randperm(len(members), generator=generator)[:per_class]]] = True
        return ImageData(self.train_x[~held], labels[~held], self.train_x[held], labels[held], self.classes,
                         self.fingerprint)

    def hold_out_classes(self, count: int) -> tuple["ImageData", torch.Tensor, torch.Tensor]:
        """Split off the last `count` classes for open-set evaluation.

        Returns (data of the first C - count classes only, in train and test; held-out test images
        (N, C, H, W) uint8; their labels (N,)). Nothing of a held-out class is ever trained on.
        """
        if count == 0:
            return self, self.test_x[:0], self.test_y[:0]
        seen = self.num_classes - count
        if seen < 2:
            raise ValueError(f"--holdout-classes {count} leaves {seen} of {self.num_classes} classes to train on; need >= 2")
        train, test = self.train_y < seen, self.test_y < seen
        kept = ImageData(self.train_x[train], self.train_y[train], self.test_x[test], self.test_y[test], self.classes[:seen],
                         self.fingerprint)
        return kept, self.test_x[~test], self.test_y[~test]


def class_order(classes: list[str]) -> list[int]:
    """Class indices in a fixed pseudo-random order (CLASS_ORDER_SEED over the sorted names): the first C
    are the classes that --num-classes C keeps, so a smaller C always keeps a subset of a larger one."""
    generator = torch.Generator().manual_seed(CLASS_ORDER_SEED)
    by_name = sorted(range(len(classes)), key=lambda c: classes[c])
    return [by_name[i] for i in torch.randperm(len(classes), generator=generator).tolist()]


def long_tailed_counts(available: list[int], ratio: float) -> list[int]:
    """Class sizes falling exponentially from class 0 to class C-1, largest / smallest = ratio.

    Class c keeps round(n * ratio ** (-c / (C - 1))) images (at least 1), n = the size of the
    smallest available class, so that every class can supply its count. Rounding makes the
    realised ratio differ from `ratio` by at most one image at the small end.
    """
    n, classes = min(available), len(available)
    if classes < 2:
        return list(available)
    return [max(1, round(n * ratio ** (-c / (classes - 1)))) for c in range(classes)]


def stratified_counts(available: list[int], n: int) -> list[int]:
    """Per-class sizes proportional to `available` that sum to min(n, total), by largest remainder.

    Class c gets floor(n * a_c / total), and the images still missing go one each to the classes with
    the largest fractional parts (ties to the lower class index). So every class's share of the
    subset is within one image of its share of the whole set, and no class gets more than it has.
    """
    total = sum(available)
    if n >= total:
        return list(available)
    quotas = [n * a / total for a in available]
    counts = [math.floor(q) for q in quotas]
    by_remainder = sorted(range(len(available)), key=lambda c: (counts[c] - quotas[c], c))
    for c in by_remainder[:n - sum(counts)]:
        counts[c] += 1
    return counts


# What torchvision's MNIST and CIFAR-10 downloads put in a data root: a folder holding only these may get more.
TORCHVISION_NAMES = {"MNIST", "cifar-10-python.tar.gz", "cifar-10-batches-py"}


def _torchvision_split(dataset_class, root: str, train: bool, download: bool, name: str, how: str):
    try:
        return dataset_class(root, train=train, download=False)
    except RuntimeError:
        pass
    others = sorted(n for n in set(os.listdir(root)) - TORCHVISION_NAMES if not n.startswith(".")) if os.path.isdir(root) else []
    if others:  # a user's folder (a parent of image folders, say): never download into it
        raise DataNotFoundError(
            f"--data-root {root} is neither an image folder (train/<class>/*, test/<class>/*) nor torchvision's "
            f"{name} layout, and holds other things ({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}): "
            f"nothing is downloaded into it; pass the image folder itself, or an empty or new folder to download {name}")
    if not download:
        raise DataNotFoundError(f"{name} not found under {os.path.abspath(root)} and --no-download is set; {how}")
    created = _missing_paths(root, [os.path.join(root, dataset_class.__name__, "raw"),  # MNIST's folders
                                    os.path.join(root, "cifar-10-python.tar.gz"), os.path.join(root, "cifar-10-batches-py")])
    try:
        return dataset_class(root, train=train, download=True)
    except Exception as exc:  # no network, proxy, checksum: all mean the same to the user
        _remove(created)  # a failed download leaves no empty folders or partial archives behind
        raise DataNotFoundError(
            f"{name} not found under {os.path.abspath(root)} and the download failed "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); {how}"
        ) from None


def _missing_paths(root: str, inside: list[str]) -> list[str]:
    """The paths a download may create that do not exist yet: `root` and its missing parents, and
    each path in `inside` with its missing parents; outermost first."""
    missing = []
    for path in [root, *inside]:
        path = os.path.abspath(path)
        chain = []
        while not os.path.lexists(path):
            chain.append(path)
            path = os.path.dirname(path)
        missing += [p for p in reversed(chain) if p not in missing]
    return missing


def _remove(paths: list[str]) -> None:
    """Delete what exists of `paths` (files, or folders with everything in them)."""
    for path in paths:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.unlink(path)


def load_mnist(root: str, download: bool = True) -> ImageData:
    how = (f"put the four MNIST IDX files (train-images-idx3-ubyte, ...) in {os.path.join(os.path.abspath(root), 'MNIST', 'raw')}, "
           "or pass --data-root to a folder that has them")
    from torchvision.datasets import MNIST

    splits = [_torchvision_split(MNIST, root, train, download, "MNIST", how) for train in (True, False)]
    tensors = [(s.data.unsqueeze(1).contiguous(), s.targets.long()) for s in splits]  # (N, 1, 28, 28)
    return ImageData(*tensors[0], *tensors[1], [str(i) for i in range(10)], "mnist")


def load_cifar10(root: str, download: bool = True) -> ImageData:
    how = (f"put cifar-10-batches-py in {os.path.abspath(root)}, or unpack an image-folder copy "
           "(train/<class>/*, test/<class>/*) and pass --data-root to it")
    from torchvision.datasets import CIFAR10

    splits = [_torchvision_split(CIFAR10, root, train, download, "CIFAR-10", how) for train in (True, False)]
    tensors = [(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in splits]
    return ImageData(*tensors[0], *tensors[1], list(splits[0].classes), "cifar10")


class Normalize:
    """uint8 images (B, C, H, W) -> float32 (x / 255 - mean) / std, in channels-last memory."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        std_t = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -torch.tensor(mean, device=device).view(1, -1, 1, 1) / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.contiguous(memory_format=torch.channels_last).float()
        return torch.addcmul(self.shift, x, self.scale)


def augment(images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """Training augmentation (--crop-padding, --flip) of a uint8 batch (B, C, H, W) on its device; with
    neither, the images come back as they are and no random number is drawn."""
    if padding == 0 and not flip:
        return images
    return random_crop_flip(images, padding, generator, flip)


def random_crop_flip(images: torch.Tensor, padding: int, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """Per-image random crop (zero padding, as torchvision's RandomCrop) and, if `flip`, horizontal flip.

    images: (B, C, H, W) of any dtype; returns the same shape. All on the images' device.
    """
    batch, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)  # (B, C, H + 2p, W + 2p)
    offsets = torch.randint(0, 2 * padding + 1, (2, batch), generator=generator, device=images.device)
    rows = offsets[0].view(-1, 1) + torch.arange(height, device=images.device)  # (B, H)
    cols = offsets[1].view(-1, 1) + torch.arange(width, device=images.device)  # (B, W)
    if flip:
        flipped = torch.rand(batch, generator=generator, device=images.device) < 0.5
        cols = torch.where(flipped.view(-1, 1), cols.flip(1), cols)
    index = torch.arange(batch, device=images.device).view(-1, 1, 1)
    cropped = padded.permute(0, 2, 3, 1)[index, rows.view(batch, -1, 1), cols.view(batch, 1, -1)]  # (B, H, W, C)
    return cropped.permute(0, 3, 1, 2)


def load_image_folder(root: str, channels: int, size: int) -> ImageData:
    """An image folder decoded (and cached) by `image_folder.decode_image_folder`, as ImageData."""
    tensors, classes, fingerprint = decode_image_folder(root, channels, size)
    return ImageData(*tensors, classes, fingerprint)


@dataclass(frozen=True)
class Dataset:
    """One dataset, described once: input channels, the per-channel mean and std that `Normalize` uses,
    its native image size (the scripts' --image-size default), and the loader of its torchvision copy.
    The training augmentation is a flag of the run (--crop-padding, --flip), its default in each script."""

    name: str
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    load_torchvision: Callable[[str, bool], ImageData]

    def load(self, config) -> ImageData:
        """An image folder at config.data_root (decoded at config.image_size) if there is one, otherwise the
        torchvision copy there (downloaded when config.download allows). DataError for a --data-root that is
        a file."""
        if os.path.isfile(config.data_root):
            raise DataError(f"--data-root {config.data_root} is a file, not a folder")
        if is_image_folder(config.data_root):
            return load_image_folder(config.data_root, channels=self.channels, size=config.image_size)
        return self.load_torchvision(config.data_root, config.download)

    def normalizer(self, device: torch.device) -> Normalize:
        return Normalize(self.mean, self.std, device)


MNIST = Dataset("mnist", 1, (0.1307,), (0.3081,), 28, load_mnist)
CIFAR10 = Dataset("cifar10", 3, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010), 32, load_cifar10)
DATASETS = {dataset.name: dataset for dataset in (MNIST, CIFAR10)}


def dataset_for(name: str, channels: int) -> Dataset:
    """The `Dataset` that reads rows named `name`: MNIST or CIFAR10 by name; an image folder (named after
    itself) through the script that trains its channels, train_mnist.py for 1 and train_cifar10.py for 3."""
    return DATASETS.get(name) or (MNIST if channels == 1 else CIFAR10)
