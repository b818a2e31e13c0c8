"""Embedding quality as metric-learning work measures it, in plain torch.

Retrieval (Musgrave et al., "A Metric Learning Reality Check", 2020): every embedding queries all
the others by cosine similarity; for a query whose class has R other members,
- precision@1: the nearest other embedding has the query's class;
- R-precision: the fraction of the R nearest that have the query's class;
- MAP@R: mean over k <= R of precision@k, counted only at ranks k holding a same-class item, over R.
Queries with R = 0 are skipped. Ties in similarity are broken by torch.topk's order.

Verification (face-recognition style, on classes never trained on): every pair of embeddings is
scored by cosine similarity, same class = positive; ROC AUC and the true-accept rate at a fixed
false-accept rate.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

QUERY_CHUNK = 1024  # queries per similarity block: (chunk, N) float32 at a time


def retrieval_metrics(embeddings: torch.Tensor, labels: torch.Tensor) -> dict:
    """embeddings (N, D), labels (N,) -> {"precision_at_1", "r_precision", "map_at_r"} as fractions."""
    x = F.normalize(embeddings.float(), dim=1)  # (N, D) unit vectors
    labels = labels.to(x.device)
    class_sizes = torch.bincount(labels)
    r = class_sizes[labels] - 1  # (N,) other members of each query's class
    r_max = int(r.max()) if len(r) else 0
    totals = torch.zeros(3, dtype=torch.float64)
    queries = 0
    if r_max == 0:
        return {"precision_at_1": float("nan"), "r_precision": float("nan"), "map_at_r": float("nan")}
    ranks = torch.arange(1, r_max + 1, device=x.device)  # (R_max,) 1-based ranks
    for start in range(0, len(x), QUERY_CHUNK):
        stop = min(start + QUERY_CHUNK, len(x))
        sims = x[start:stop] @ x.t()  # (Q, N) cosine similarities
        sims[torch.arange(stop - start), torch.arange(start, stop)] = -float("inf")  # a query never retrieves itself
        nearest = sims.topk(r_max, dim=1).indices  # (Q, R_max), most similar first
        relevant = (labels[nearest] == labels[start:stop, None]).double()  # (Q, R_max)
        r_q = r[start:stop]
        within_r = (ranks[None, :] <= r_q[:, None]).double()  # (Q, R_max) ranks 1..R of each query
        precision_at_k = relevant.cumsum(1) / ranks[None, :]
        valid = r_q > 0
        denominator = r_q.clamp_min(1).double()
        totals[0] += relevant[valid, 0].sum().cpu()
        totals[1] += ((relevant * within_r).sum(1) / denominator)[valid].sum().cpu()
        totals[2] += ((precision_at_k * relevant * within_r).sum(1) / denominator)[valid].sum().cpu()
        queries += int(valid.sum())
    mean = (totals / max(queries, 1)).tolist()
    return {"precision_at_1": mean[0], "r_precision": mean[1], "map_at_r": mean[2]}


def roc_auc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(positive score > negative score) + 0.5 P(equal), by the rank-sum (Mann-Whitney) formula
    with average ranks for ties; float64."""
    scores = torch.cat([positive, negative]).double()
    ordered = scores.sort().values
    low = torch.searchsorted(ordered, scores, right=False)  # values below
    high = torch.searchsorted(ordered, scores, right=True)  # values at or below
    ranks = (low + high + 1).double() / 2  # 1-based average rank among ties
    n_pos, n_neg = len(positive), len(negative)
    return ((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)).item()


def tar_at_far(positive: torch.Tensor, negative: torch.Tensor, far: float) -> float:
    """True-accept rate at the threshold that accepts at most `far` of the negatives (score > threshold).

    The threshold is the k-th largest negative score, k = floor(far * #negatives), so the realised
    false-accept rate is <= far (ties can only lower it).
    """
    k = int(far * len(negative))
    threshold = negative.double().sort(descending=True).values[min(k, len(negative) - 1)]
    return (positive.double() > threshold).double().mean().item()


def pair_scores(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarity of every unordered pair i < j: (same-class scores, different-class scores)."""
    x = F.normalize(embeddings.float(), dim=1)
    i, j = torch.triu_indices(len(x), len(x), offset=1, device=x.device)
    scores = (x @ x.t())[i, j]  # (N (N - 1) / 2,) from one (N, N) matrix, not N^2 gathered D-vectors
    same = labels[i] == labels[j]
    return scores[same], scores[~same]


def verification_metrics(embeddings: torch.Tensor, labels: torch.Tensor, far: float = 1e-3) -> dict:
    """All-pairs verification: {"verify_auc", "verify_tar"} (TAR at the given FAR) as fractions.

    NaN when there are no positive or no negative pairs (fewer than two classes, or singletons).
    """
    positive, negative = pair_scores(embeddings, labels)
    if len(positive) == 0 or len(negative) == 0:
        return {"verify_auc": float("nan"), "verify_tar": float("nan")}
    return {"verify_auc": roc_auc(positive, negative), "verify_tar": tar_at_far(positive, negative, far)}
