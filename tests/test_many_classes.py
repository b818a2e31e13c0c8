"""What a many-class image folder needs (Tiny-ImageNet-200 and any user's): top-5 accuracy, nested class subsets
(--num-classes), a validation split that never reads the test set (--val-per-class), a decode cache that is
never stale, and greyscale images inside an RGB folder. All on tiny generated folders."""
import os

import pytest
import torch
from PIL import Image

import train_cifar10
from common import image_folder as data_module
from common.data import ImageData, class_order, load_image_folder
from common.evaluation import top_k_accuracy
from common.results import read_rows
from conftest import make_image_folder
from helpers import TINY, one_line_exit_2


@pytest.fixture(scope="module")
def seven_classes(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("seven"), 16, "RGB", classes=7, train_per_class=6, test_per_class=2)


def test_top_k_accuracy_at_its_edges():
    logits = torch.tensor([[5.0, 4, 3, 2, 1, 0], [0, 1, 2, 3, 4, 5]])
    assert top_k_accuracy(logits, torch.tensor([4, 0]), 5) == 0.5  # 5th largest counts, 6th does not
    assert top_k_accuracy(logits, torch.tensor([5, 5]), 1) == 0.5
    assert top_k_accuracy(logits[:, :3], torch.tensor([2, 0]), 5) == 1.0  # k above the classes: every class
    assert torch.isnan(torch.tensor(top_k_accuracy(logits[:0], torch.tensor([], dtype=torch.long), 5)))


def test_every_row_has_top5_at_least_top1(seven_classes, tmp_path):
    row = train_cifar10.main([*TINY, "--data-root", seven_classes, "--out", str(tmp_path / "r.csv")])
    assert row["test_acc"] <= row["test_top5"] <= 1.0
    (saved,) = read_rows(str(tmp_path / "r.csv"))
    assert float(saved["test_top5"]) == row["test_top5"]


def test_class_subsets_are_nested_fixed_and_recorded(seven_classes, tmp_path):
    names = [f"class{k}" for k in range(7)]
    order = class_order(names)
    assert sorted(order) == list(range(7)) and order == class_order(list(names))  # a fixed shuffle of all
    full = load_image_folder(seven_classes, 3, 16)
    subsets = {c: set(full.keep_classes(c).classes) for c in (2, 4, 7)}
    assert subsets[2] < subsets[4] < subsets[7] and len(subsets[4]) == 4
    four = full.keep_classes(4)
    assert four.train_class_counts() == [6] * 4 and sorted(four.test_y.unique().tolist()) == [0, 1, 2, 3]
    kept = [full.classes.index(n) for n in four.classes]  # the same images, relabelled
    assert torch.equal(four.train_x, full.train_x[torch.isin(full.train_y, torch.tensor(kept))])
    row = train_cifar10.main([*TINY, "--data-root", seven_classes, "--num-classes", "4", "--out", str(tmp_path / "r.csv")])
    assert row["num_classes"] == 4 and len(row["train_class_counts"].split(";")) == 4


@pytest.mark.parametrize("count,message", [("1", "--num-classes must be >= 2"), ("8", "between 2 and the data's 7")])
def test_impossible_class_counts_are_refused(count, message, seven_classes, tmp_path, capsys):
    err = one_line_exit_2(train_cifar10.main, [*TINY, "--data-root", seven_classes, "--num-classes", count,
                                               "--out", str(tmp_path / "r.csv")], capsys)
    assert message in err


def test_the_validation_split_holds_out_the_same_training_images_and_never_reads_the_test_set(seven_classes):
    full = load_image_folder(seven_classes, 3, 16)
    poisoned = ImageData(full.train_x, full.train_y, torch.full_like(full.test_x, 255), full.test_y, full.classes)
    split = poisoned.validation_split(2)
    assert split.train_class_counts() == [4] * 7 and len(split.test_y) == 14
    assert not (split.test_x == 255).all(dim=(1, 2, 3)).any()  # validation images are training images
    assert torch.equal(split.test_x, full.validation_split(2).test_x)  # the same held-out images every time
    with pytest.raises(ValueError, match="--val-per-class 6 leaves no training image"):
        full.validation_split(6)


def test_the_decode_cache_is_used_refreshed_and_optional(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "f", 16, "RGB", classes=2, train_per_class=3, test_per_class=1)
    first = load_image_folder(root, 3, 16)
    cache = os.path.join(root, data_module.CACHE_NAME.format(mode="RGB", size=16))
    assert os.path.isfile(cache)
    real_decode = data_module._decode
    monkeypatch.setattr(data_module, "_decode", lambda *a: pytest.fail("decoded although the cache is fresh"))
    assert torch.equal(load_image_folder(root, 3, 16).train_x, first.train_x)
    image = os.path.join(root, "train", "class0", "000.png")  # one image replaced: the cache is stale
    Image.new("RGB", (16, 16), (9, 9, 9)).save(image)
    monkeypatch.setattr(data_module, "_decode", real_decode)
    changed = load_image_folder(root, 3, 16)
    assert (changed.train_x[0] == 9).all() and not torch.equal(changed.train_x, first.train_x)
    with open(cache, "wb") as handle:
        handle.write(b"damaged")  # a damaged cache is decoded anew, never an error
    assert torch.equal(load_image_folder(root, 3, 16).train_x, changed.train_x)
    monkeypatch.setattr(data_module, "_write_cache", lambda *a: None)
    os.remove(cache)
    assert torch.equal(load_image_folder(root, 3, 16).train_x, changed.train_x)  # without a cache it still loads


def test_a_read_only_folder_is_decoded_without_a_cache(tmp_path, monkeypatch):
    root = make_image_folder(tmp_path / "ro", 16, "RGB", classes=2, train_per_class=2, test_per_class=1)
    real_save = torch.save

    def refuse(obj, path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(torch, "save", refuse)
    data = load_image_folder(root, 3, 16)
    monkeypatch.setattr(torch, "save", real_save)
    assert len(data.train_y) == 4 and not [n for n in os.listdir(root) if n.startswith(".decoded")]


def test_a_greyscale_image_in_an_rgb_folder_becomes_three_equal_channels(tmp_path, capsys):
    root = make_image_folder(tmp_path / "mixed", 16, "RGB", classes=2, train_per_class=3, test_per_class=1)
    Image.new("L", (16, 16), 77).save(os.path.join(root, "train", "class1", "grey.png"))
    data = load_image_folder(root, 3, 16)
    grey = data.train_x[-1]  # class1's last file by name
    assert grey.shape == (3, 16, 16) and (grey == 77).all()
    train_cifar10.main([*TINY, "--data-root", root, "--out", str(tmp_path / "r.csv")])  # and trains
