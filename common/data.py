"""Datasets decoded once into uint8 tensors, and batched normalisation / augmentation on the device.

Sources: torchvision's MNIST and CIFAR-10 (downloaded on first use into the data root), or
an image folder `ROOT/train/<class>/*` and `ROOT/test/<class>/*` for a user's own data. Each dataset
is described once, by a `Dataset` (`MNIST`, `CIFAR10`, `DATASETS`): its channels, normalisation,
image size and loader.
"""
from __future__ import annotations

import contextlib
import glob
import hashlib
import math
import os
import shutil
import sys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .results import remove_stale_temps

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
CLASS_ORDER_SEED = 0  # fixes which classes --num-classes keeps (`class_order`), the same for every run and seed
VALIDATION_SEED = 0  # fixes which training images --val-per-class holds out, the same for every run and seed
CACHE_NAME = ".decoded-{mode}-{size}px.pt"  # an image folder's decoded tensors, beside train/ and test/


class DataError(RuntimeError):
    """The dataset is missing, incomplete or unreadable; the message names the file or folder."""


class DataNotFoundError(DataError):
    """The dataset is not under the data root and could not be downloaded."""


@dataclass
class ImageData:
    train_x: torch.Tensor  # (N, C, H, W) uint8
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor  # (M, C, H, W) uint8
    test_y: torch.Tensor  # (M,) int64
    classes: list[str]
    source: dict = field(default_factory=dict)  # `data_identity` of what a run trains on (`load_training_data`)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def to(self, device: torch.device) -> "ImageData":
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return ImageData(move(self.train_x), move(self.train_y), move(self.test_x), move(self.test_y), self.classes)

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
        return ImageData(self.train_x[index], self.train_y[index], self.test_x, self.test_y, self.classes)

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
                         [self.classes[c] for c in kept])

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
        return ImageData(self.train_x[~held], labels[~held], self.train_x[held], labels[held], self.classes)

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
        kept = ImageData(self.train_x[train], self.train_y[train], self.test_x[test], self.test_y[test], self.classes[:seen])
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


def is_image_folder(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test"))


def folder_name(root: str) -> str:
    """The name an image folder's rows carry as their dataset: the folder's own name (data/tiny-imagenet-200/
    -> tiny-imagenet-200)."""
    return os.path.basename(os.path.normpath(os.path.abspath(root)))


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
    return ImageData(*tensors[0], *tensors[1], [str(i) for i in range(10)])


def load_cifar10(root: str, download: bool = True) -> ImageData:
    how = (f"put cifar-10-batches-py in {os.path.abspath(root)}, or unpack an image-folder copy "
           "(train/<class>/*, test/<class>/*) and pass --data-root to it")
    from torchvision.datasets import CIFAR10

    splits = [_torchvision_split(CIFAR10, root, train, download, "CIFAR-10", how) for train in (True, False)]
    tensors = [(torch.from_numpy(s.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(s.targets)) for s in splits]
    return ImageData(*tensors[0], *tensors[1], list(splits[0].classes))


def _list_images(class_dir: str) -> list[str]:
    return [os.path.join(class_dir, f) for f in sorted(os.listdir(class_dir)) if f.lower().endswith(IMAGE_EXTENSIONS)]


def nested_images(class_dir: str) -> int:
    """How many images lie in subfolders of a class folder (never read: a class is the files directly in it)."""
    return sum(f.lower().endswith(IMAGE_EXTENSIONS) for folder, _, files in os.walk(class_dir)
               if folder != class_dir for f in files)


def list_image_folder(root: str) -> tuple[list[str], dict[str, tuple[list[str], list[int]]]]:
    """Class names and, per split ("train", "test"), the image paths and labels of ROOT/<split>/<class>/*.

    Reads no image. Raises DataError naming the folder when there is no class, when a class has no
    image in train/ or in test/ (a missing or empty folder), or when test/ has a class that train/ lacks.
    """
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    classes = sorted(d for d in os.listdir(train_dir) if os.path.isdir(os.path.join(train_dir, d)))
    if len(classes) < 2:
        found = f"only {classes[0]!r}" if classes else "none"
        raise DataError(f"{os.path.abspath(train_dir)} needs at least 2 class folders (found {found}); "
                        "expected train/<class>/<image>")
    unknown = sorted(set(d for d in os.listdir(test_dir) if os.path.isdir(os.path.join(test_dir, d))) - set(classes))
    if unknown:
        raise DataError(f"test classes {unknown} have no folder under {os.path.abspath(train_dir)}; "
                        "every test class needs training images")
    splits = {}
    for split, split_dir in (("train", train_dir), ("test", test_dir)):
        paths, labels = [], []
        for label, name in enumerate(classes):
            class_dir = os.path.join(split_dir, name)
            found = _list_images(class_dir) if os.path.isdir(class_dir) else []
            if not found:
                what = "has no images" if os.path.isdir(class_dir) else "is missing"
                raise DataError(f"class {name!r}: {os.path.abspath(class_dir)} {what} ({', '.join(IMAGE_EXTENSIONS)}); "
                                f"every class needs images in both train/ and test/")
            paths += found
            labels += [label] * len(found)
            skipped = nested_images(class_dir) if os.path.isdir(class_dir) else 0
            if skipped:
                print(f"note: {skipped} images in subfolders of {os.path.abspath(class_dir)} are not read (a class is "
                      "the images directly in its folder)", file=sys.stderr)
        splits[split] = (paths, labels)
    return classes, splits


def to_mode(image, mode: str):
    """A PIL image as 8-bit `mode` ('L' or 'RGB'). Safeguards: 16-bit greyscale (I;16, or I within 0-65535) is
    scaled to 8 bits (v / 257, rounded: 65535 -> 255) instead of clipped at 255; transparency (RGBA, LA, a
    palette's transparent colour) is laid over black, so a hidden colour never shows; CMYK and palettes go
    through Pillow's conversion. ValueError for pixels it cannot map: 32-bit integers beyond 16 bits, floats."""
    from PIL import Image

    if image.mode.startswith("I;16") or image.mode == "I":
        pixels = np.asarray(image, dtype=np.int64)
        if pixels.size and (pixels.min() < 0 or pixels.max() > 65535):
            raise ValueError(f"{image.mode} pixels beyond 16 bits ({pixels.min()}..{pixels.max()}): save as 8 or 16 bits")
        image = Image.fromarray(((pixels + 128) // 257).astype(np.uint8), "L")
    elif image.mode == "F":
        raise ValueError("floating-point pixels (mode F): save the image as 8 or 16 bits")
    if image.mode == "P" and "transparency" in image.info or image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return image.convert(mode)


def _decode(paths: list[str], mode: str, size: int) -> torch.Tensor:
    """Decode images to (N, C, size, size) uint8; DataError naming the first file that cannot be read."""
    from PIL import Image

    images = np.empty((len(paths), size, size, len(mode)), dtype=np.uint8)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                image = to_mode(image, mode)  # decodes the pixels: a truncated file fails here
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                images[i] = np.asarray(image).reshape(size, size, len(mode))
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise DataError(f"cannot read image {os.path.abspath(path)} ({type(exc).__name__}: {exc}); "
                            "replace or delete the file") from None
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, C, size, size)


def data_identity(root: str, name: str, classes: list[str]) -> dict:
    """What a model was trained on, as a checkpoint records it: the classes it learnt, in label order, and a
    fingerprint of the source: an image folder's `folder_fingerprint`, or a torchvision dataset's name."""
    if is_image_folder(root):
        return {"classes": list(classes), "fingerprint": folder_fingerprint(root, list_image_folder(root)[1])}
    return {"classes": list(classes), "fingerprint": name}


def check_same_data(saved: dict, here: dict, flag: str, path: str, root: str) -> None:
    """ValueError naming `flag` and `path` when the data at `root` is not what the checkpoint was trained on:
    other classes, or the same classes from other files (an image added, removed or edited). A checkpoint
    that records no data (written before this check) passes."""
    if not saved:
        return
    if saved["classes"] != here["classes"]:
        gone = [c for c in saved["classes"] if c not in here["classes"]][:3]
        new = [c for c in here["classes"] if c not in saved["classes"]][:3]
        raise ValueError(f"{flag} {path} was trained on {len(saved['classes'])} other classes than the "
                         f"{len(here['classes'])} of {root}" + (f" (missing here: {', '.join(gone)})" if gone else "")
                         + (f" (new here: {', '.join(new)})" if new else "") + "; give the data it was trained on")
    if saved["fingerprint"] != here["fingerprint"]:
        raise ValueError(f"{flag} {path} was trained on other files than {root} holds now (same classes; an image "
                         "was added, removed or edited); give the data it was trained on")


def folder_fingerprint(root: str, splits: dict[str, tuple[list[str], list[int]]]) -> str:
    """A hash of every image's path (relative to root), label, size in bytes and modification time: it
    changes when an image is added, removed, relabelled, replaced or edited."""
    digest = hashlib.sha256()
    for paths, labels in splits.values():
        for path, label in zip(paths, labels):
            stat = os.stat(path)
            digest.update(f"{os.path.relpath(path, root)}\t{label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def load_image_folder(root: str, channels: int, size: int) -> ImageData:
    """Decode ROOT/{train,test}/<class>/* as `channels` (1 or 3) x size x size uint8 (greyscale images in an
    RGB folder are converted, and any size resized), and cache the tensors in ROOT/CACHE_NAME.

    The cache is used only while its fingerprint (`folder_fingerprint`) matches the folder; a stale,
    unreadable or damaged cache is decoded anew and replaced. A folder that cannot be written is decoded
    every time (nothing fails)."""
    classes, splits = list_image_folder(root)
    mode = "L" if channels == 1 else "RGB"
    cache = os.path.join(root, CACHE_NAME.format(mode=mode, size=size))
    fingerprint = folder_fingerprint(root, splits)
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        return ImageData(*cached, classes)
    tensors = []
    for paths, labels in splits.values():
        tensors += [_decode(paths, mode, size), torch.tensor(labels, dtype=torch.long)]
    _write_cache(cache, fingerprint, tensors)
    return ImageData(*tensors, classes)


def _read_cache(path: str, fingerprint: str) -> list[torch.Tensor] | None:
    """The cached (train_x, train_y, test_x, test_y) if `path` holds them for this fingerprint, else None."""
    if not os.path.isfile(path):
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state["fingerprint"] == fingerprint:
            return [state[k] for k in ("train_x", "train_y", "test_x", "test_y")]
    except Exception:  # noqa: BLE001 - a damaged cache is only a slower start: decode again
        pass
    return None


def _write_cache(path: str, fingerprint: str, tensors: list[torch.Tensor]) -> None:
    """Save the decoded tensors atomically (temporary file, then rename); skip quietly where that fails
    (a read-only folder, a full disk): the cache only saves time. Temporary files of writers that were killed
    (their process gone) are removed first."""
    remove_stale_temps(glob.glob(glob.escape(path) + ".tmp-*"))  # left by a writer killed mid-save
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save({"fingerprint": fingerprint, **dict(zip(("train_x", "train_y", "test_x", "test_y"), tensors))}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError):
        with contextlib.suppress(OSError):
            os.unlink(tmp)


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
