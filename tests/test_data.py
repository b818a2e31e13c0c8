"""Datasets and augmentation (common/data.py): stratified and long-tailed subsets, held-out classes,
batched crop / flip and normalisation."""

import pytest
import torch
import torch.nn.functional as F

from common import Normalize, augment, random_crop_flip
from common.data import ImageData, long_tailed_counts, stratified_counts


def fake_data(per_class, classes=10, test_per_class=3):
    labels = torch.arange(classes).repeat_interleave(torch.tensor(per_class))
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    test_y = torch.arange(classes).repeat_interleave(test_per_class)
    return ImageData(images.contiguous(), labels, torch.zeros(len(test_y), 1, 4, 4, dtype=torch.uint8), test_y,
                     [str(c) for c in range(classes)])


@pytest.fixture
def images():
    return torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_random_crop_flip_returns_shifted_windows_of_the_zero_padded_image():
    images = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)  # no zeros, so padding is recognisable
    out = random_crop_flip(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    flips, shifts = 0, set()
    for i in range(len(images)):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (False, True)
                   if torch.equal(out[i], (padded[i, :, dy:dy + 8, dx:dx + 8].flip(2) if f else padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"image {i} is not a crop of its padded original"
        flips += matches[0][2]
        shifts.add(matches[0][:2])
    assert 16 < flips < 48 and len(shifts) > 10  # both flips and many offsets occur


def test_random_crop_flip_is_seeded_and_identity_without_padding_or_flip():
    images = torch.randint(0, 256, (10, 1, 6, 6), dtype=torch.uint8)
    a = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    b = random_crop_flip(images, 4, torch.Generator().manual_seed(7))
    assert torch.equal(a, b)
    out = random_crop_flip(images, 0, torch.Generator().manual_seed(1))
    for i in range(10):
        assert torch.equal(out[i], images[i]) or torch.equal(out[i], images[i].flip(2))


def test_normalize_matches_the_reference_formula():
    images = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    mean, std = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = Normalize(mean, std, torch.device("cpu"))(images)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_stratified_counts_keep_each_class_share_and_sum_to_n():
    assert stratified_counts([5000] * 10, 2000) == [200] * 10
    assert stratified_counts([10, 20, 30], 30) == [5, 10, 15]
    # 7 * (4, 4, 2) / 10 = (2.8, 2.8, 1.4): floors (2, 2, 1), the largest remainders get the 2 left over
    assert stratified_counts([4, 4, 2], 7) == [3, 3, 1]
    assert stratified_counts([3, 3, 3], 4) == [2, 1, 1]  # equal remainders: lower class index first
    assert stratified_counts([3, 4], 100) == [3, 4] and sum(stratified_counts([977, 13, 10], 101)) == 101


def test_subset_train_is_stratified_random_and_fixed_by_the_seed():
    data = fake_data([30] * 10)  # class-sorted, as an image folder is read: the first N would be one class
    subset = data.subset_train(20, seed=1)
    assert subset.train_class_counts() == [2] * 10 and torch.equal(subset.test_y, data.test_y)
    again, other = data.subset_train(20, seed=1), data.subset_train(20, seed=2)
    assert torch.equal(again.train_x, subset.train_x) and not torch.equal(other.train_x, subset.train_x)
    ids = subset.train_x[:, 0, 0, 0].long()
    assert len(set(ids.tolist())) == 20 and not torch.equal(ids[:2], torch.tensor([0, 1]))  # not the first images
    assert data.subset_train(None, seed=0) is data and data.subset_train(300, seed=0) is data


def test_long_tailed_counts_fall_exponentially_from_the_smallest_available_class():
    # n = 100, ratio 10: round(100 * 10 ** (-c / 9)) for c = 0..9, worked out by hand
    assert long_tailed_counts([100] * 10, 10) == [100, 77, 60, 46, 36, 28, 22, 17, 13, 10]
    assert long_tailed_counts([120, 100, 150], 4) == [100, 50, 25]  # capped by the smallest class (100)
    assert long_tailed_counts([7, 9], 1000) == [7, 1]  # never below one image
    assert long_tailed_counts([5, 6, 7], 1) == [5, 5, 5]


def test_long_tailed_subsample_has_exact_class_counts_fixed_by_the_seed():
    data = fake_data([110, 100, 105, 120, 100, 130, 101, 100, 100, 140])
    tailed = data.long_tailed(10, seed=3)
    assert tailed.train_class_counts() == [100, 77, 60, 46, 36, 28, 22, 17, 13, 10]
    assert torch.equal(tailed.test_x, data.test_x) and torch.equal(tailed.test_y, data.test_y)  # test set untouched
    again, other = data.long_tailed(10, seed=3), data.long_tailed(10, seed=4)
    assert torch.equal(again.train_x, tailed.train_x) and not torch.equal(other.train_x, tailed.train_x)
    # kept images are real members of their class, in the original order, without repeats
    ids = tailed.train_x[:, 0, 0, 0].long()
    assert torch.equal(tailed.train_y, tailed.train_y.sort().values) and data.long_tailed(1, seed=0) is data
    for c in range(10):
        kept = ids[tailed.train_y == c]
        assert len(set(kept.tolist())) == len(kept)


def test_hold_out_classes_removes_them_from_training_and_classification():
    data = fake_data([5] * 4, classes=4)
    kept, open_x, open_y = data.hold_out_classes(2)
    assert kept.classes == ["0", "1"] and set(kept.train_y.tolist()) == {0, 1} and set(kept.test_y.tolist()) == {0, 1}
    assert open_y.tolist() == [2, 2, 2, 3, 3, 3] and len(open_x) == 6
    assert data.hold_out_classes(0)[0] is data
    with pytest.raises(ValueError, match="--holdout-classes 3 leaves 1"):
        data.hold_out_classes(3)


def test_augment_switches():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert augment(images, 0, False, generator) is images
    assert torch.equal(generator.get_state(), state)  # nothing drawn: the report's MNIST setting is unchanged
    flipped_only = augment(images, 0, True, torch.Generator().manual_seed(3))
    assert all(torch.equal(out, img) or torch.equal(out, img.flip(2)) for out, img in zip(flipped_only, images))
    shifted = augment(images, 2, False, torch.Generator().manual_seed(3))  # crops, never mirrored
    padded = F.pad(images, (2,) * 4)
    windows = [padded[i, :, r:r + 6, c:c + 6] for i in range(2) for r in range(5) for c in range(5)]
    assert all(any(torch.equal(out, w) for w in windows) for out in shifted)
