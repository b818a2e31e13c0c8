"""common/batches.py: shuffled and class-balanced batches, and which loss gets which by default."""
import pytest
import torch

import train_cifar10
from common.batches import balanced_batches, epoch_batches, steps_per_epoch
from common.config import TrainConfig
from helpers import TINY


def labels_of(counts):
    return torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))


def test_balanced_batches_hold_p_distinct_classes_with_k_images_each():
    labels = labels_of([30] * 10)  # 300 images of 10 classes
    batches = balanced_batches(labels, 20, 4, torch.Generator().manual_seed(0))
    assert len(batches) == steps_per_epoch(300, 20, 4) == 15
    for batch in batches:
        groups = labels[batch].view(5, 4)  # 5 classes x 4 images
        assert (groups == groups[:, :1]).all() and len(set(groups[:, 0].tolist())) == 5
        assert len(set(batch.tolist())) == 20  # no image twice in a batch


def test_a_class_uses_all_its_images_before_any_again_and_small_classes_still_fill_groups():
    labels = labels_of([40, 3, 40, 40])
    batches = balanced_batches(labels, 8, 4, torch.Generator().manual_seed(1))
    used = torch.cat(batches)
    for c, size in ((0, 40), (2, 40)):
        picked = used[labels[used] == c].tolist()
        first = picked[:size]
        assert len(set(first)) == len(first)  # no repeat within a pass over the class
    small = used[labels[used] == 1]
    assert len(small) % 4 == 0 and set(small.tolist()) <= {40, 41, 42}  # 3 images fill groups of 4 by repeating


def test_balanced_batches_are_seeded():
    labels = labels_of([12] * 6)
    one = balanced_batches(labels, 12, 3, torch.Generator().manual_seed(5))
    two = balanced_batches(labels, 12, 3, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(one, two))


def test_with_fewer_classes_than_groups_every_class_is_in_every_batch_in_whole_groups():
    labels = labels_of([500] * 10)  # CIFAR-10's shape: 10 classes, batch 100 = 25 groups of 4
    batches = balanced_batches(labels, 100, 4, torch.Generator().manual_seed(2))
    assert len(batches) == 50
    for batch in batches:
        groups = labels[batch].view(25, 4)
        assert (groups == groups[:, :1]).all()  # each group one class
        counts = torch.bincount(groups[:, 0], minlength=10)
        assert sorted(counts.tolist()) == [2] * 5 + [3] * 5  # every class, 2 or 3 groups (8 or 12 images)
        assert all(len(set(g.tolist())) == 4 for g in batch.view(25, 4))  # no image twice in a group


def test_shuffled_batches_are_the_plain_permutation():
    generator, again = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    batches = epoch_batches(labels_of([5, 5]), 4, 0, generator)
    assert torch.equal(torch.cat(batches), torch.randperm(10, generator=again))  # what the loops drew before


def test_triplet_gets_balanced_batches_by_default_and_every_loss_can_choose():
    assert TrainConfig(loss="triplet").per_class() == 4 and TrainConfig(loss="triplet").as_row()["batch_per_class"] == 4
    assert TrainConfig(loss="arcface").per_class() == 0 and TrainConfig(loss="arcface").as_row()["batch_per_class"] == ""
    assert TrainConfig(loss="triplet", batch_per_class=0).as_row()["batch_per_class"] == ""  # as the rows before it
    assert TrainConfig(loss="softmax", batch_per_class=5).per_class() == 5
    with pytest.raises(ValueError, match="--batch-per-class 4 needs a --batch-size that is a multiple of it"):
        TrainConfig(loss="triplet", batch_size=10).validate()


def test_a_triplet_run_trains_on_balanced_batches(rgb_folder, tmp_path):
    row = train_cifar10.main([*TINY, "--image-size", "16", "--loss", "triplet", "--batch-size", "8",
                              "--data-root", rgb_folder, "--out", str(tmp_path / "r.csv")])
    assert row["batch_per_class"] == 4 and 0 <= row["test_acc"] <= 1
