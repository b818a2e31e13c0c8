"""Shared fixtures: a tiny generated image folder (no test reads ../shared or the network)."""
import os

import numpy as np
import pytest


def make_image_folder(root, size, mode, classes=3, train_per_class=24, test_per_class=4, seed=0):
    """Class k is a bright square in corner k of a noisy image: learnable by a tiny net in a few steps."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 1 if mode == "L" else 3
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for k in range(classes):
            folder = os.path.join(root, split, f"class{k}")
            os.makedirs(folder)
            for i in range(count):
                image = rng.integers(0, 60, (size, size, channels), dtype=np.uint8)
                r, c = divmod(k, 2)
                half = size // 2
                image[r * half:(r + 1) * half, c * half:(c + 1) * half] = 230
                Image.fromarray(image.squeeze(-1) if channels == 1 else image, mode).save(
                    os.path.join(folder, f"{i:03d}.png"))
    return str(root)


@pytest.fixture(scope="session")
def gray_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("gray"), 28, "L")


@pytest.fixture(scope="session")
def rgb_folder(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("rgb"), 32, "RGB")


@pytest.fixture(scope="session")
def four_class_folder(tmp_path_factory):
    """Four gray classes: enough to hold two out for open-set verification and still train on two."""
    return make_image_folder(tmp_path_factory.mktemp("gray4"), 28, "L", classes=4)
