"""A user's image folder, ROOT/train/<class>/* and ROOT/test/<class>/*: listed and checked without decoding
(`list_image_folder`), decoded once into uint8 tensors with odd image modes mapped sanely (`to_mode`) and
cached beside it (`load_image_folder`), and fingerprinted, so that a checkpoint can tell whether it is
resumed or plotted on the data it was trained on (`check_same_data`)."""
from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import sys

import numpy as np
import torch

from .results import remove_stale_temps


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


CACHE_NAME = ".decoded-{mode}-{size}px.pt"  # an image folder's decoded tensors, beside train/ and test/


class DataError(RuntimeError):
    """The dataset is missing, incomplete or unreadable; the message names the file or folder."""


def is_image_folder(root: str) -> bool:
    return os.path.isdir(os.path.join(root, "train")) and os.path.isdir(os.path.join(root, "test"))


def folder_name(root: str) -> str:
    """The name an image folder's rows carry as their dataset: the folder's own name (data/tiny-imagenet-200/
    -> tiny-imagenet-200)."""
    return os.path.basename(os.path.normpath(os.path.abspath(root)))


def _list_images(class_dir: str) -> list[str]:
    return [os.path.join(class_dir, f) for f in sorted(os.listdir(class_dir)) if f.lower().endswith(IMAGE_EXTENSIONS)]


_NOTED: set[str] = set()  # class folders whose nested images this process has already named


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
            if skipped and class_dir not in _NOTED:  # said once per folder and process, however often listed
                _NOTED.add(class_dir)
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


def decode_image_folder(root: str, channels: int, size: int) -> tuple[list[torch.Tensor], list[str], str]:
    """Decode ROOT/{train,test}/<class>/* as `channels` (1 or 3) x size x size uint8 (greyscale images in an
    RGB folder are converted, and any size resized), and cache the tensors in ROOT/CACHE_NAME. Returns
    ([train_x (N, C, H, W), train_y (N,), test_x, test_y], class names, the folder's fingerprint).

    The cache is used only while its fingerprint (`folder_fingerprint`) matches the folder; a stale,
    unreadable or damaged cache is decoded anew and replaced. A folder that cannot be written is decoded
    every time (nothing fails). Temporary cache files of writers that were killed are removed first."""
    classes, splits = list_image_folder(root)
    mode = "L" if channels == 1 else "RGB"
    cache = os.path.join(root, CACHE_NAME.format(mode=mode, size=size))
    remove_stale_temps(glob.glob(glob.escape(cache) + ".tmp-*"))  # left by a writer killed mid-save
    fingerprint = folder_fingerprint(root, splits)
    cached = _read_cache(cache, fingerprint)
    if cached is not None:
        return cached, classes, fingerprint
    tensors = []
    for paths, labels in splits.values():
        tensors += [_decode(paths, mode, size), torch.tensor(labels, dtype=torch.long)]
    _write_cache(cache, fingerprint, tensors)
    return tensors, classes, fingerprint


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
    (a read-only folder, a full disk): the cache only saves time."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        torch.save({"fingerprint": fingerprint, **dict(zip(("train_x", "train_y", "test_x", "test_y"), tensors))}, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError):
        with contextlib.suppress(OSError):
            os.unlink(tmp)
