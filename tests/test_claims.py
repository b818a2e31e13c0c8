"""The pieces behind the report's other claims: long-tailed sampling, corruptions, retrieval and
verification metrics (checked against hand-computed cases and brute force), and the scripts' flags."""
import math
import os

import pytest
import torch

import train_mnist
from common.corruptions import CORRUPTIONS, SEVERITIES, corrupt
from common.data import ImageData, long_tailed_counts, stratified_counts
from common.evaluation import corruption_accuracy, tail_recall
from common.results import read_rows
from common.retrieval import pair_scores, retrieval_metrics, roc_auc, tar_at_far, verification_metrics

TINY = ["--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12", "--device", "cpu", "--no-amp",
        "--no-progress", "--no-download"]


def fake_data(per_class, classes=10, test_per_class=3):
    labels = torch.arange(classes).repeat_interleave(torch.tensor(per_class))
    images = torch.arange(len(labels), dtype=torch.int64).remainder(256).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4)
    test_y = torch.arange(classes).repeat_interleave(test_per_class)
    return ImageData(images.contiguous(), labels, torch.zeros(len(test_y), 1, 4, 4, dtype=torch.uint8), test_y,
                     [str(c) for c in range(classes)])


# --- shortened training sets ------------------------------------------------------------------------

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


@pytest.mark.parametrize("script_name", ["train_mnist", "train_cifar10"])
def test_max_train_samples_on_a_class_sorted_folder_trains_on_every_class(script_name, gray_folder, rgb_folder, tmp_path):
    import train_cifar10

    script, folder = (train_mnist, gray_folder) if script_name == "train_mnist" else (train_cifar10, rgb_folder)
    row = script.main([*TINY, "--data-root", folder, "--out", str(tmp_path / "r.csv"), "--max-train-samples", "30"])
    assert row["train_class_counts"] == "10;10;10" and row["train_subset"] == "stratified"


# --- class imbalance -------------------------------------------------------------------------------

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


def test_tail_recall_is_the_mean_over_the_last_30_percent_of_classes():
    assert tail_recall([1.0] * 7 + [0.5, 0.2, 0.2]) == pytest.approx(0.3)
    assert tail_recall([1.0, 0.0]) == 0.0  # ceil(0.3 * 2) = 1 class


# --- corruptions -----------------------------------------------------------------------------------

@pytest.fixture
def images():
    return torch.randint(0, 256, (6, 3, 16, 16), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_keeps_shape_and_range_and_severity_zero_is_identity(name, images):
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(corrupt(images, name, 0, generator), images)
    changes = []
    for severity in SEVERITIES:
        out = corrupt(images, name, severity, generator)
        assert out.shape == images.shape and out.dtype == torch.uint8
        changes.append((out.float() - images.float()).abs().mean().item())
    assert changes[0] > 0 and changes[-1] > changes[0]  # a real change, and stronger at severity 5 than 1


def test_corruptions_by_hand():
    generator = torch.Generator().manual_seed(0)
    flat = torch.full((2, 1, 9, 9), 77, dtype=torch.uint8)
    assert torch.equal(corrupt(flat, "gaussian_blur", 5, generator), flat)  # a flat image stays flat
    assert torch.equal(corrupt(flat, "contrast", 5, generator), flat)  # nothing to reduce
    dot = torch.zeros(2, 1, 9, 9, dtype=torch.uint8)
    dot[:, :, 4, 4] = 200
    shifted = corrupt(dot, "shift", 2, generator)
    assert shifted[0, 0, 6, 6] == 200 and shifted[1, 0, 2, 2] == 200 and shifted.sum() == 400  # down-right, up-left
    half = torch.zeros(1, 1, 4, 4, dtype=torch.uint8)
    half[..., 2:] = 200  # mean 100; contrast kept 0.6 at severity 1: 100 +- 0.6 * 100
    assert set(corrupt(half, "contrast", 1, generator).unique().tolist()) == {40, 160}
    rotated = corrupt(dot, "rotate", 5, generator)
    assert rotated[0, 0, 4, 4] == 200  # the centre pixel stays where it is
    first = corrupt(dot, "gaussian_noise", 3, torch.Generator().manual_seed(1))
    assert torch.equal(first, corrupt(dot, "gaussian_noise", 3, torch.Generator().manual_seed(1)))  # the seed fixes it


def test_corrupt_rejects_bad_input(images):
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(images, "fog", 1, torch.Generator())
    with pytest.raises(ValueError, match="severity"):
        corrupt(images, "shift", 6, torch.Generator())
    with pytest.raises(TypeError, match="uint8"):
        corrupt(images.float(), "shift", 1, torch.Generator())


def test_corruption_accuracy_of_a_classifier_that_reads_the_mean_brightness():
    labels = torch.tensor([0, 1] * 50)
    images = torch.where(labels.view(-1, 1, 1, 1) == 1, 200, 20).to(torch.uint8).expand(-1, 1, 8, 8).contiguous()
    classify = lambda x: (x.float().mean(dim=(1, 2, 3)) > 110).long()  # noqa: E731
    rows = corruption_accuracy(classify, images, labels, samples=40)
    assert len(rows) == len(CORRUPTIONS) * len(SEVERITIES)
    by_name = {(r["corruption"], r["severity"]): r["accuracy"] for r in rows}
    assert by_name[("contrast", 5)] == 1.0 and by_name[("gaussian_blur", 3)] == 1.0  # brightness survives both
    assert all(0.0 <= a <= 1.0 for a in by_name.values())


# --- retrieval and verification --------------------------------------------------------------------

def on_circle(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], 1)


def test_retrieval_metrics_by_hand():
    # Points on a circle at 0, 10, 32, 42, 90 degrees, classes A A B A B. Ranked neighbours by angle:
    #   0 (A, R=2): A B ...  P@1 1, R-precision 1/2, MAP@R (1/2)(1)       = 1/2
    #  10 (A, R=2): A B ...  1, 1/2, 1/2
    #  32 (B, R=1): A ...    0, 0, 0
    #  42 (A, R=2): B A ...  0, 1/2, (1/2)(0 + 1/2)                       = 1/4
    #  90 (B, R=1): A ...    0, 0, 0
    metrics = retrieval_metrics(on_circle([0, 10, 32, 42, 90]), torch.tensor([0, 0, 1, 0, 1]))
    assert metrics["precision_at_1"] == pytest.approx(2 / 5)
    assert metrics["r_precision"] == pytest.approx(1.5 / 5)
    assert metrics["map_at_r"] == pytest.approx(1.25 / 5)


def brute_force_retrieval(x, y):
    x = torch.nn.functional.normalize(x.double(), dim=1)
    p1, rp, mapr, n = 0.0, 0.0, 0.0, 0
    for q in range(len(x)):
        r = int((y == y[q]).sum()) - 1
        if r == 0:
            continue
        others = [i for i in range(len(x)) if i != q]
        ranked = sorted(others, key=lambda i: -float(x[q] @ x[i]))[:r]
        hits = [int(y[i] == y[q]) for i in ranked]
        p1 += hits[0]
        rp += sum(hits) / r
        mapr += sum(sum(hits[:k + 1]) / (k + 1) * hits[k] for k in range(r)) / r
        n += 1
    return p1 / n, rp / n, mapr / n


def test_retrieval_metrics_match_brute_force_across_query_chunks(monkeypatch):
    import common.retrieval

    monkeypatch.setattr(common.retrieval, "QUERY_CHUNK", 7)  # several chunks, the last one partial
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 5, generator=generator), torch.randint(0, 4, (40,), generator=generator)
    y[0] = 9  # a class with one member: skipped as a query, still retrievable
    got = retrieval_metrics(x, y)
    assert (got["precision_at_1"], got["r_precision"], got["map_at_r"]) == pytest.approx(brute_force_retrieval(x, y))


def test_roc_auc_and_tar_by_hand():
    positive, negative = torch.tensor([0.9, 0.4]), torch.tensor([0.5, 0.1, 0.4])
    # pairs won: 0.9 beats all 3; 0.4 beats 0.1, ties 0.4 (half), loses to 0.5 -> (3 + 1.5) / 6
    assert roc_auc(positive, negative) == pytest.approx(0.75)
    assert tar_at_far(positive, negative, 0.0) == 0.5  # threshold 0.5 (no negative accepted): only 0.9
    assert tar_at_far(positive, negative, 0.34) == 0.5  # one negative may pass: threshold 0.4, strict
    assert tar_at_far(positive, negative, 0.67) == 1.0  # threshold 0.1


def test_roc_auc_matches_pair_counting_with_ties():
    generator = torch.Generator().manual_seed(1)
    positive = torch.randint(0, 6, (30,), generator=generator).float()
    negative = torch.randint(0, 6, (25,), generator=generator).float()
    wins = (positive[:, None] > negative[None, :]).double() + 0.5 * (positive[:, None] == negative[None, :]).double()
    assert roc_auc(positive, negative) == pytest.approx(wins.mean().item())


def test_verification_metrics_on_embeddings():
    x = on_circle([0, 5, 90, 95, 180])
    y = torch.tensor([0, 0, 1, 1, 2])
    positive, negative = pair_scores(x, y)
    assert positive.tolist() == pytest.approx([math.cos(math.radians(5))] * 2)
    assert len(negative) == 8
    assert verification_metrics(x, y) == {"verify_auc": 1.0, "verify_tar": 1.0}  # separated classes
    swapped = verification_metrics(x, torch.tensor([0, 1, 0, 1, 2]))  # same-class pairs now far apart
    assert swapped["verify_auc"] < 0.5 and swapped["verify_tar"] == 0.0
    assert math.isnan(verification_metrics(x, torch.zeros(5, dtype=torch.long))["verify_auc"])  # no negatives


# --- the training scripts' flags --------------------------------------------------------------------

def test_script_reports_imbalance_verification_and_corruptions(four_class_folder, tmp_path):
    out = tmp_path / "r.csv"
    row = train_mnist.main([*TINY, "--data-root", four_class_folder, "--out", str(out), "--imbalance", "3",
                            "--holdout-classes", "2", "--corruptions", "--corruption-samples", "5"])
    saved = read_rows(str(out))[0]
    assert saved["train_class_counts"] == "24;8" and saved["imbalance"] == "3.0" and saved["holdout_classes"] == "2"
    for column in ("tail_recall", "precision_at_1", "r_precision", "map_at_r", "verify_auc", "verify_tar",
                   "open_map_at_r", "corrupted_acc", *(f"acc_{name}" for name in CORRUPTIONS)):
        assert 0.0 <= float(saved[column]) <= 1.0, column
    details = read_rows(os.path.join(tmp_path, "r", row["run_id"], "corruptions.csv"))
    assert len(details) == len(CORRUPTIONS) * len(SEVERITIES)


def test_plain_run_has_retrieval_but_no_verification_or_corruption_columns(four_class_folder, tmp_path):
    row = train_mnist.main([*TINY, "--data-root", four_class_folder, "--out", str(tmp_path / "r.csv")])
    assert "map_at_r" in row and row["train_class_counts"] == "24;24;24;24"
    assert "verify_tar" not in row and "corrupted_acc" not in row


@pytest.mark.parametrize("flags, message", [
    (["--imbalance", "0.5"], "--imbalance must be >= 1"),
    (["--holdout-classes", "1"], "--holdout-classes must be 0 (off) or >= 2"),
    (["--corruption-samples", "0"], "--corruption-samples must be >= 1"),
    (["--holdout-classes", "3"], "--holdout-classes 3 leaves 1 of 4 classes"),
])
def test_bad_claim_flags_exit_2_with_one_line(flags, message, four_class_folder, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_mnist.main([*TINY, "--data-root", four_class_folder, "--out", str(tmp_path / "r.csv"), *flags])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
