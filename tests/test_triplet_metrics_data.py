"""Triplet miner, metrics and batched augmentation on small hand-made cases."""
import math

import pytest
import torch

from common import (CentroidHead, Normalize, batch_hard_triplet_loss, classification_metrics, confusion_matrix,
                    random_crop_flip)
from common.evaluation import tail_recall
from common.training import DivergedError, check_finite


def unit(angle_deg):
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


def test_batch_hard_triplet_picks_hardest_pairs():
    # class 0 at 0 and 60 degrees, class 1 at 90 and 180 degrees
    x = torch.tensor([unit(0), unit(60), unit(90), unit(180)])
    y = torch.tensor([0, 0, 1, 1])
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731  distance on the unit circle
    # anchor: hardest positive, hardest negative
    expected = [(chord(60), chord(90)), (chord(60), chord(30)), (chord(90), chord(30)), (chord(90), chord(120))]
    margin = 0.3
    want = sum(max(0.0, p - n + margin) for p, n in expected) / 4
    assert batch_hard_triplet_loss(x, y, margin).item() == pytest.approx(want, abs=1e-6)


def test_batch_hard_triplet_skips_anchors_without_positive_and_has_gradients():
    x = torch.tensor([unit(0), unit(10), unit(100)], requires_grad=True)
    y = torch.tensor([0, 0, 1])  # the class-1 sample has no positive
    loss = batch_hard_triplet_loss(x, y, 2.0)
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    # anchors 0 and 1 only; their negative (100 degrees) is 100 and 90 degrees away
    expected = ((chord(10) - chord(100) + 2.0) + (chord(10) - chord(90) + 2.0)) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()
    identical = torch.ones(4, 3, requires_grad=True)  # zero distances: the sqrt clamp keeps gradients finite
    batch_hard_triplet_loss(identical, torch.tensor([0, 0, 1, 1]), 0.2).backward()
    assert torch.isfinite(identical.grad).all()


def test_centroid_head_classifies_by_nearest_normalised_class_mean():
    head = CentroidHead(2, 3)
    train = torch.tensor([unit(0), unit(20), unit(120), unit(140), unit(250)]) * torch.tensor([[1.0], [5.0], [2.0], [1.0], [3.0]])
    head.fit_centres(train, torch.tensor([0, 0, 1, 1, 2]))
    torch.testing.assert_close(head.centres[0], torch.tensor(unit(10)), atol=1e-6, rtol=0)
    predicted = head(torch.tensor([unit(5), unit(130), unit(260), unit(70)])).argmax(1)
    assert predicted.tolist() == [0, 1, 2, 0]  # 70 degrees: 60 from class 0's 10, 60.0001+ from class 1's 130


def test_batch_hard_triplet_without_any_valid_anchor_is_zero_with_zero_gradient():
    x = torch.randn(4, 3, requires_grad=True)
    loss = batch_hard_triplet_loss(x, torch.tensor([0, 1, 2, 3]), 0.2)  # no anchor has a positive
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros(4, 3))


def test_training_step_pieces_need_no_host_synchronisation():
    """Under FakeTensorMode every tensor is shapes only: a data-dependent branch (`if t.any()`, `.item()`)
    or boolean indexing raises. The losses and the batched augmentation must run there, so that a GPU
    training step never waits on the host."""
    from torch._subclasses.fake_tensor import DataDependentOutputException, FakeTensorMode

    from common import ArcNet

    heads = [ArcNet(4, 3, 30.0, m1, m2, m3) for m1, m2, m3 in ((1.0, 0.5, 0.0), (1.35, 0.0, 0.0), (1.0, 0.0, 0.35))]
    with FakeTensorMode(allow_non_fake_inputs=True):
        x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
        with pytest.raises(DataDependentOutputException):
            bool(x.sum() > 0)  # the mode does catch a synchronisation
        assert batch_hard_triplet_loss(x, y, 0.2).shape == ()
        assert all(head.loss(x, y).shape == () for head in heads)
        images = torch.randint(0, 256, (8, 3, 12, 12), dtype=torch.uint8)
        assert random_crop_flip(images, 4, torch.Generator().manual_seed(0)).shape == (8, 3, 12, 12)


def test_metrics_against_hand_computed_values():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    cm = confusion_matrix(targets, predictions, 4)
    assert cm.tolist() == [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]]
    m = classification_metrics(cm)
    precision = [1.0, 0.5, 0.5]  # class 3 has no test image: left out of every macro average
    recall = [2 / 3, 0.5, 1.0]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall)]
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(sum(precision) / 3)
    assert m["recall"] == pytest.approx(sum(recall) / 3)
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    assert m["per_class_recall"][:3] == pytest.approx(recall) and math.isnan(m["per_class_recall"][3])


def test_macro_f1_divides_by_fractional_precision_plus_recall():
    # The case: P = R = 0.25 for both classes, so P + R = 0.5 < 1; scikit-learn's macro F1 is 0.25.
    cm = confusion_matrix(torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), torch.tensor([0, 1, 1, 1, 0, 0, 0, 1]), 2)
    m = classification_metrics(cm)
    assert m["precision"] == pytest.approx(0.25) and m["recall"] == pytest.approx(0.25)
    assert m["f1"] == pytest.approx(0.25)


def test_macro_f1_of_a_weak_predictor_matches_the_per_class_formula():
    # 4 classes, predictions mostly wrong: every class has P + R < 1; class 3 is present but never predicted.
    targets = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3])
    predictions = torch.tensor([0, 1, 1, 2, 2, 1, 0, 0, 2, 2, 0, 1, 1, 0, 1, 2])
    cm = confusion_matrix(targets, predictions, 4).double()
    m = classification_metrics(cm.long())
    tp, predicted, support = cm.diag(), cm.sum(0), cm.sum(1)
    expected = []
    for c in range(4):
        p = (tp[c] / predicted[c]).item() if predicted[c] else 0.0
        r = (tp[c] / support[c]).item()
        expected.append(2 * p * r / (p + r) if p + r else 0.0)
    assert all(0 < x < 1 for x in expected[:3]) and expected[3] == 0.0
    assert m["f1"] == pytest.approx(sum(expected) / 4)
    # by hand: F1 = 2PR / (P + R) = 0.2 (P = R = 1/5), 0.2 (P = 1/6, R = 1/4), 2/9 (P = 1/5, R = 1/4), 0
    assert m["f1"] == pytest.approx((0.2 + 0.2 + 2 / 9 + 0.0) / 4)


def test_a_class_absent_from_the_test_set_is_left_out_of_macro_averages_and_tail_recall():
    targets = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])  # classes 4..9 have no test image
    m = classification_metrics(confusion_matrix(targets, targets, 10))  # a perfect predictor
    assert m["accuracy"] == 1.0 and m["precision"] == 1.0 and m["recall"] == 1.0 and m["f1"] == 1.0
    assert m["per_class_recall"][:4] == [1.0] * 4 and all(math.isnan(r) for r in m["per_class_recall"][4:])
    assert math.isnan(tail_recall(m["per_class_recall"]))  # the tail (classes 7-9) has no test image
    m = classification_metrics(confusion_matrix(torch.tensor([0, 8, 9, 9]), torch.tensor([0, 8, 9, 0]), 10))
    assert tail_recall(m["per_class_recall"]) == pytest.approx((1.0 + 0.5) / 2)  # class 7 absent: left out
    assert math.isnan(classification_metrics(torch.zeros(3, 3, dtype=torch.long))["f1"])


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


def test_check_finite_names_epoch_and_step():
    losses = torch.tensor([1.0, 0.5, float("nan"), 0.2])
    check_finite(losses, 0, 2, epoch=0)
    with pytest.raises(DivergedError, match="epoch 3, step 3"):
        check_finite(losses, 0, 4, epoch=2)
