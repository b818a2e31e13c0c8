"""Scoring a model (common/evaluation.py): classification metrics by hand, rare-class recall, corrupted
accuracy, flip test-time augmentation and the geometry diagnostics."""
import math

import pytest
import torch

from common import (
    ArcNet,
    CentroidHead,
    Network,
    SoftmaxHead,
)
from common.config import TrainConfig
from common.corruptions import CORRUPTIONS, SEVERITIES
from common.evaluation import (
    classification_metrics,
    confusion_matrix,
    corruption_accuracy,
    embed,
    tail_recall,
)


@pytest.fixture
def images():
    return torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


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


def test_tail_recall_is_the_mean_over_the_last_30_percent_of_classes():
    assert tail_recall([1.0] * 7 + [0.5, 0.2, 0.2]) == pytest.approx(0.3)
    assert tail_recall([1.0, 0.0]) == 0.0  # ceil(0.3 * 2) = 1 class


def test_corruption_accuracy_of_a_classifier_that_reads_the_mean_brightness():
    labels = torch.tensor([0, 1] * 50)
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 200, 20).to(torch.uint8).expand(-1, 1, 8, 8).contiguous()
    classify = lambda x: (x.float().mean(dim=(1, 2, 3)) > 110).long()  # noqa: E731
    rows = corruption_accuracy(classify, images, labels, samples=40)
    assert len(rows) == len(CORRUPTIONS) * len(SEVERITIES)
    by_name = {(r["corruption"], r["severity"]): r["accuracy"] for r in rows}
    assert by_name[("contrast", 5)] == 1.0 and by_name[("gaussian_blur", 3)] == 1.0  # brightness survives both
    assert all(0.0 <= a <= 1.0 for a in by_name.values())


def test_flip_tta_embeds_the_mean_of_an_image_and_its_mirror():
    torch.manual_seed(0)
    net = Network(3, 4, widths=(4, 8)).eval()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    normalize = lambda x: x.float() / 255  # noqa: E731
    plain = embed(net, images, normalize, amp=False)
    mirrored = embed(net, images.flip(3), normalize, amp=False)
    assert torch.allclose(embed(net, images, normalize, amp=False, flip_tta=True), (plain + mirrored) / 2, atol=1e-6)
    symmetric = torch.cat([images[..., :4], images[..., :4].flip(3)], dim=3)  # its own mirror image
    assert torch.allclose(embed(net, symmetric, normalize, False, True), embed(net, symmetric, normalize, False), atol=1e-6)


def test_translate_tta_weights_the_image_one_half_and_its_one_pixel_shifts_one_quarter_each():
    torch.manual_seed(0)
    net = Network(3, 4, widths=(4, 8)).eval()
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    normalize = lambda x: x.float() / 255  # noqa: E731
    # reflect padding by hand: the row (column) before the first is the second, the one after the last the
    # second-to-last
    up_left = [1] + list(range(7))  # pixel i of the shifted image is pixel i - 1 of the image
    down_right = list(range(1, 8)) + [6]  # pixel i is pixel i + 1
    shifted = [images[:, :, rows][..., rows] for rows in (up_left, down_right)]
    for flip in (False, True):
        expected = (embed(net, images, normalize, False, flip) / 2
                    + sum(embed(net, s, normalize, False, flip) for s in shifted) / 4)
        got = embed(net, images, normalize, False, flip, translate_tta=True)
        assert torch.allclose(got, expected, atol=1e-6)
    flat = torch.full((2, 3, 8, 8), 77, dtype=torch.uint8)  # every shift of a flat image is itself
    assert torch.allclose(embed(net, flat, normalize, False, translate_tta=True), embed(net, flat, normalize, False),
                          atol=1e-6)


def test_evaluation_reports_embedding_length_and_angle_to_the_own_class_centre():
    from torch import nn

    from common.data import ImageData
    from common.evaluation import evaluate

    # the "network" flattens (N, 1, 1, 2) images into 2-D embeddings: (3, 0), (0, 4), (3, 0) labelled 0, 1, 1
    images = torch.tensor([[3, 0], [0, 4], [3, 0]], dtype=torch.uint8).view(3, 1, 1, 2)
    labels = torch.tensor([0, 1, 1])
    data = ImageData(images, labels, images, labels, ["a", "b"])
    head = ArcNet(2, 2)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 0.5]]))  # centres along the axes
    metrics, confusion = evaluate(nn.Flatten(), head, data, lambda x: x.float(), TrainConfig())
    assert metrics["accuracy"] == pytest.approx(2 / 3) and confusion.tolist() == [[1, 0], [1, 1]]
    assert metrics["embedding_norm"] == pytest.approx((3 + 4 + 3) / 3)
    assert metrics["target_angle"] == pytest.approx((0 + 0 + 90) / 3)
    assert metrics["centre_angle"] == pytest.approx(90)
    metrics, _ = evaluate(nn.Flatten(), SoftmaxHead(2, 2), data, lambda x: x.float(), TrainConfig())
    assert "target_angle" not in metrics and metrics["embedding_norm"] == pytest.approx(10 / 3)
    # a triplet head's centres are the class means of the training embeddings: (1, 0) and (1, 1) / sqrt 2
    metrics, _ = evaluate(nn.Flatten(), CentroidHead(2, 2), data, lambda x: x.float(), TrainConfig(loss="triplet"))
    assert metrics["target_angle"] == pytest.approx((0 + 45 + 45) / 3, abs=1e-3)
    assert metrics["centre_angle"] == pytest.approx(45, abs=1e-3)
    same = torch.full((4, 1, 1, 2), 5, dtype=torch.uint8)  # a collapsed embedding: every image at one point
    collapsed = ImageData(same, torch.tensor([0, 0, 1, 1]), same, torch.tensor([0, 1, 0, 1]), ["a", "b"])
    metrics, _ = evaluate(nn.Flatten(), CentroidHead(2, 2), collapsed, lambda x: x.float(), TrainConfig(loss="triplet"))
    assert metrics["centre_angle"] == pytest.approx(0, abs=0.1) and metrics["target_angle"] == pytest.approx(0, abs=0.1)


def test_mean_pairwise_angle():
    from common.evaluation import mean_pairwise_angle

    assert mean_pairwise_angle(torch.eye(3)) == pytest.approx(90)
    assert mean_pairwise_angle(torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])) == pytest.approx((0 + 180 + 180) / 3)
    simplex = torch.eye(10) - 0.1  # 10 centred unit-simplex vertices: pairwise cosine -1/9
    assert mean_pairwise_angle(simplex) == pytest.approx(math.degrees(math.acos(-1 / 9)), abs=1e-4)
