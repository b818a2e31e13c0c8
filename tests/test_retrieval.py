"""Retrieval and verification metrics (common/retrieval.py), against hand-computed cases and brute force."""
import math

import pytest
import torch

from common.retrieval import (
    pair_scores,
    retrieval_metrics,
    roc_auc,
    tar_at_far,
    verification_metrics,
)


def on_circle(degrees):
    radians = torch.tensor(degrees, dtype=torch.float64) * math.pi / 180
    return torch.stack([radians.cos(), radians.sin()], 1)


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
