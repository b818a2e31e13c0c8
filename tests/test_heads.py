"""The losses' heads (common/heads.py): ArcNet's combined margin at the edges (closed forms, monotonicity,
gradients, autocast), margin warm-up and label smoothing, the batch-hard triplet loss and the centroid head."""
import math

import pytest
import torch
import torch.nn.functional as F

from common import (
    ArcNet,
    CentroidHead,
    SoftmaxHead,
    batch_hard_triplet_loss,
    margin_target,
)
from common.heads import semihard_triplet_loss
from common.config import TrainConfig
from common.training import (
    set_margin_ramp,
)


def unit(angle_deg):
    a = math.radians(angle_deg)
    return [math.cos(a), math.sin(a)]


MARGINS = [(1.0, 0.5, 0.0), (1.35, 0.0, 0.0), (1.2, 0.4, 0.0), (2.0, 0.3, 0.2), (4.0, 0.0, 0.0),
           (1.0, 0.0, 0.35), (1.0, 3.0, 0.5), (3.7, 1.1, 0.4)]


def head_at_angles(thetas, s=30.0, margins=(1.0, 0.5, 0.0), dtype=torch.float32):
    """ArcNet with 2 classes, centres e0 and e1, and embeddings at angle theta from e0 in the e0-e1 plane."""
    head = ArcNet(2, 2, s, *margins)
    with torch.no_grad():
        head.weight.copy_(torch.eye(2) * 3.0)  # norm 3: normalisation must remove it
    thetas = torch.as_tensor(thetas, dtype=dtype)
    embeddings = torch.stack([torch.cos(thetas), torch.sin(thetas)], dim=1) * 0.5
    return head.to(dtype), embeddings


def _logits_with_weight(head, embeddings, weight, labels):
    cos = F.normalize(embeddings) @ F.normalize(weight).t()
    target = labels.view(-1, 1)
    return head.s * cos.scatter(1, target, margin_target(cos.gather(1, target), head.m1, head.m2, head.m3))


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


def semihard_by_enumeration(x, y, margin):
    """FaceNet's semi-hard loss written as loops over (anchor, positive) pairs and their negatives, in float64,
    differentiable in x."""
    x = F.normalize(x.double(), dim=1)
    terms = []
    for a in range(len(y)):
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        for p in range(len(y)):
            if p == a or y[p] != y[a] or not negatives:
                continue
            d_ap = (x[a] - x[p]).norm()
            d_an = [(x[a] - x[n]).norm() for n in negatives]
            beyond = [d for d in d_an if d > d_ap]
            chosen = min(beyond) if beyond else max(d_an)
            terms.append(torch.relu(d_ap - chosen + margin))
    return torch.stack(terms).mean() if terms else torch.zeros((), dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_semihard_triplet_matches_an_enumeration_of_its_pairs_with_its_gradient(seed):
    g = torch.Generator().manual_seed(seed)
    fixed = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 4])  # class 3 has no positive; its image is a negative
    for y in (fixed, torch.randint(0, 6, (30,), generator=g)):
        x = torch.randn(len(y), 3, generator=g)
        for margin in (0.05, 0.2, 1.0):
            ours, theirs = x.clone().requires_grad_(), x.clone().double().requires_grad_()
            loss, want = semihard_triplet_loss(ours, y, margin), semihard_by_enumeration(theirs, y, margin)
            assert loss.item() == pytest.approx(want.item(), abs=1e-5)
            loss.backward(), want.backward()
            torch.testing.assert_close(ours.grad, theirs.grad.float(), atol=1e-4, rtol=1e-3)


def test_semihard_triplet_worked_example():
    # class 0 at 0 and 60 degrees, class 1 at 90 and 180 degrees: anchor 0's positive (60) is nearer than both
    # negatives (90 at chord 90 degrees, 180); each other pair has a negative beyond its positive, or only inside
    x = torch.tensor([unit(0), unit(60), unit(90), unit(180)])
    y = torch.tensor([0, 0, 1, 1])
    chord = lambda deg: 2 * math.sin(math.radians(deg) / 2)  # noqa: E731
    # (a, p): d_ap, and the negative: the nearest beyond d_ap, else the farthest
    pairs = [(chord(60), chord(90)),    # 0->1: negatives at 90, 180 degrees; nearest beyond 60 is 90
             (chord(60), chord(120)),   # 1->0: negatives at 30, 120 degrees; nearest beyond 60 is 120
             (chord(90), chord(90)),    # 2->3: negatives at 90, 30 degrees; none beyond 90: farthest, 90
             (chord(90), chord(120))]   # 3->2: negatives at 180, 120 degrees; nearest beyond 90 is 120
    margin = 0.3
    want = sum(max(0.0, p - n + margin) for p, n in pairs) / 4
    assert semihard_triplet_loss(x, y, margin).item() == pytest.approx(want, abs=1e-6)


def test_semihard_triplet_resists_a_collapse_that_batch_hard_rewards():
    # two classes interleaved on a circle: every anchor's farthest positive is beyond its nearest negative.
    # Shrinking the whole picture towards one point lowers batch-hard's loss towards the margin, and raises the
    # semi-hard loss towards it from below: only batch-hard is pulled to the collapsed embedding.
    angles = torch.tensor([0.0, 40.0, 80.0, 120.0, 160.0, 200.0])
    y = torch.tensor([0, 1, 0, 1, 0, 1])

    def shrunk(factor):  # points on a cap around (1, 0, 0), spread `factor` times as wide
        r = math.radians(30) * factor
        return torch.stack([torch.full_like(angles, math.cos(r)), math.sin(r) * torch.cos(torch.deg2rad(angles)),
                            math.sin(r) * torch.sin(torch.deg2rad(angles))], dim=1)
    hard = [batch_hard_triplet_loss(shrunk(f), y, 0.2).item() for f in (1.0, 0.5, 0.01)]
    semi = [semihard_triplet_loss(shrunk(f), y, 0.2).item() for f in (1.0, 0.5, 0.01)]
    assert hard[0] > hard[1] > hard[2] == pytest.approx(0.2, abs=0.01)
    assert semi[0] < semi[1] < semi[2] == pytest.approx(0.2, abs=0.01)


def test_semihard_triplet_edges_have_finite_or_zero_gradients():
    identical = torch.ones(4, 3, requires_grad=True)  # zero distances: the sqrt clamp keeps gradients finite
    loss = semihard_triplet_loss(identical, torch.tensor([0, 0, 1, 1]), 0.2)
    loss.backward()
    assert loss.item() == pytest.approx(0.2, abs=1e-5) and torch.isfinite(identical.grad).all()
    x = torch.randn(4, 3, requires_grad=True)
    none = semihard_triplet_loss(x, torch.tensor([0, 1, 2, 3]), 0.2)  # no anchor has a positive
    none.backward()
    assert none.item() == 0.0 and torch.equal(x.grad, torch.zeros(4, 3))
    one_class = torch.randn(4, 3, requires_grad=True)
    alone = semihard_triplet_loss(one_class, torch.zeros(4, dtype=torch.long), 0.2)  # no negative anywhere
    alone.backward()
    assert alone.item() == 0.0 and torch.equal(one_class.grad, torch.zeros(4, 3))


def test_centroid_head_trains_with_the_mining_it_is_given():
    x, y = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    assert CentroidHead(4, 4, 0.2, "hard").loss(x, y) == batch_hard_triplet_loss(x, y, 0.2)
    assert CentroidHead(4, 4, 0.2).loss(x, y) == semihard_triplet_loss(x, y, 0.2)  # the default, as --triplet-mining's


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


def test_ramped_margin_head_is_normalised_softmax_at_zero_and_the_full_margin_at_one():
    torch.manual_seed(0)
    head = ArcNet(6, 4, s=10.0, m1=1.35, m2=0.3, m3=0.2)
    x, y = torch.randn(8, 6), torch.randint(0, 4, (8,))
    full = head(x, y)
    head.ramp = 0.0
    assert torch.allclose(head(x, y), head(x), atol=1e-6)  # no margin: s * cos everywhere
    head.ramp = 0.5
    assert head.current_margins() == pytest.approx((1.175, 0.15, 0.1))
    head.ramp = 1.0
    assert torch.equal(head(x, y), full)
    set_margin_ramp(head, TrainConfig(margin_warmup=0.5), 0, 10)
    assert head.ramp == pytest.approx(0.2)
    set_margin_ramp(SoftmaxHead(6, 4), TrainConfig(margin_warmup=0.5), 0, 10)  # no margins: nothing to do


@pytest.mark.parametrize("make", [lambda: ArcNet(6, 4, s=8.0, m2=0.4, label_smoothing=0.1),
                                  lambda: SoftmaxHead(6, 4, label_smoothing=0.1)])
def test_label_smoothing_mixes_the_target_with_the_uniform_distribution(make):
    torch.manual_seed(1)
    head = make()
    x, y = torch.randn(5, 6), torch.tensor([0, 1, 2, 3, 0])
    logits = head(x, y) if isinstance(head, ArcNet) else head(x)
    log_p = F.log_softmax(logits, dim=1)
    target = torch.full((5, 4), 0.1 / 4).scatter(1, y.view(-1, 1), 0.9 + 0.1 / 4)
    assert head.loss(x, y).item() == pytest.approx(-(target * log_p).sum(1).mean().item(), rel=1e-6)


@pytest.mark.parametrize("tail", ["sphereface", "cosine"])
@pytest.mark.parametrize("margins", MARGINS)
def test_target_logit_monotone_continuous_and_never_a_bonus(margins, tail):
    theta = torch.linspace(0, math.pi, 100_001, dtype=torch.float64)
    psi = margin_target(torch.cos(theta), *margins, tail=tail)
    steps = psi.diff()
    assert steps.max() <= 1e-12, "psi must be non-increasing in theta"
    slope_bound = max(margins[0], 1.0) * (theta[1] - theta[0]).item() * 1.01
    assert steps.abs().max() <= slope_bound, "psi must be continuous (no jump between grid points)"
    assert (psi <= torch.cos(theta) + 1e-12).all(), "the margin must never make the target logit larger"


@pytest.mark.parametrize("m1,m2,m3", [(1.0, 0.5, 0.0), (1.35, 0.0, 0.0), (1.0, 0.3, 0.2), (1.2, 0.4, 0.1)])
def test_cosine_tail_keeps_the_pull_where_the_sphereface_extension_loses_it(m1, m2, m3):
    """d psi / d cos(theta) at theta_b = (pi - m2) / m1, where cos(m1*theta + m2) bottoms out: 0 for the
    SphereFace extension (no pull towards the class centre), exactly 1 beyond theta_b for the cosine tail,
    which equals cos(theta) - m3 - (1 + cos(theta_b)) there and meets the margin curve at theta_b."""
    theta_b = (math.pi - m2) / m1
    theta = torch.tensor([theta_b - 1e-3, theta_b + 1e-3, theta_b + 0.1, (theta_b + math.pi) / 2], dtype=torch.float64)
    slopes = {}
    for tail in ("sphereface", "cosine"):
        cos = torch.cos(theta).requires_grad_()
        psi = margin_target(cos, m1, m2, m3, tail=tail)
        psi.sum().backward()
        slopes[tail] = cos.grad
        if tail == "cosine":
            expected = torch.cos(theta[1:]) - m3 - (1 + math.cos(theta_b))
            assert torch.allclose(psi[1:].detach(), expected, atol=1e-12)
    assert slopes["sphereface"][:2].abs().max() < 0.02  # the dead zone around theta_b
    assert torch.allclose(slopes["cosine"][1:], torch.ones(3, dtype=torch.float64), atol=1e-12)
    at_b = margin_target(torch.tensor([math.cos(theta_b)], dtype=torch.float64), m1, m2, m3, tail="cosine")
    assert at_b.item() == pytest.approx(-1 - m3, abs=1e-9)


def test_unit_margin_gradient_keeps_the_logits_and_treats_the_margin_as_a_constant_offset():
    torch.manual_seed(0)
    unit = ArcNet(4, 3, s=10.0, m1=1.2, m2=0.4, m3=0.1, margin_grad="unit").double()
    exact = ArcNet(4, 3, s=10.0, m1=1.2, m2=0.4, m3=0.1).double()
    exact.load_state_dict(unit.state_dict())
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(unit(x, y), exact(x, y))  # same logits, so the same loss value
    with torch.no_grad():  # the margin each sample gets, cos(theta_y) - psi(theta_y), as fixed numbers
        cos_y = unit.cosines(x).gather(1, y.view(-1, 1))
        offset = cos_y - margin_target(cos_y, 1.2, 0.4, 0.1)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    unit.loss(x1, y).backward()
    cos = unit.cosines(x2)
    F.cross_entropy(unit.s * (cos - F.one_hot(y, 3) * offset), y).backward()  # CosFace with per-sample margins
    assert torch.allclose(x1.grad, x2.grad, atol=1e-12)


def test_unknown_tail_and_gradient_are_refused_where_the_settings_are_validated():
    with pytest.raises(ValueError, match="--margin-tail"):
        TrainConfig(margin_tail="linear").validate()
    with pytest.raises(ValueError, match="--margin-grad"):
        TrainConfig(margin_grad="approximate").validate()


def test_closed_form_values_at_chosen_angles():
    thetas = [0.3, 1.0, math.pi / 2, 2.5]
    s, (m1, m2, m3) = 16.0, (1.5, 0.2, 0.1)
    head, x = head_at_angles(thetas, s, (m1, m2, m3), torch.float64)
    logits = head(x, torch.zeros(4, dtype=torch.long))
    for i, theta in enumerate(thetas):
        phi = m1 * theta + m2
        k = math.floor(phi / math.pi)
        expected_target = s * ((-1) ** k * math.cos(phi) - 2 * k - m3)
        assert logits[i, 0].item() == pytest.approx(expected_target, abs=1e-9)
        assert logits[i, 1].item() == pytest.approx(s * math.cos(math.pi / 2 - theta), abs=1e-9)
    # theta = 2.5 with m1 = 1.5 lies beyond pi: the extension branch k = 1 was exercised
    assert math.floor((m1 * 2.5 + m2) / math.pi) == 1


def test_pure_cases_softmax_cosface_arcface():
    torch.manual_seed(0)
    x, y = torch.randn(16, 8, dtype=torch.float64), torch.randint(0, 5, (16,))
    base = ArcNet(8, 5, s=10.0, m1=1.0, m2=0.0, m3=0.0).double()
    cos = F.normalize(x) @ F.normalize(base.weight).t()
    assert torch.equal(base(x, y), 10.0 * cos), "(1, 0, 0) must be exactly the normalised-softmax logits"

    onehot = F.one_hot(y, 5).bool()
    for m1, m2, m3, target in [(1.0, 0.0, 0.35, cos - 0.35), (1.0, 0.5, 0.0, torch.cos(torch.acos(cos) + 0.5))]:
        head = ArcNet(8, 5, 10.0, m1, m2, m3).double()
        head.load_state_dict(base.state_dict())
        expected = 10.0 * torch.where(onehot, target, cos)
        torch.testing.assert_close(head(x, y), expected, atol=1e-9, rtol=0)


def test_combined_margin_keeps_every_term():
    """A well-known implementation drops m2 when m3 > 0 and refuses m1 != 1; this one uses all three."""
    theta = torch.tensor([0.7], dtype=torch.float64)
    full = margin_target(torch.cos(theta), 1.3, 0.4, 0.2)
    assert full.item() == pytest.approx(math.cos(1.3 * 0.7 + 0.4) - 0.2, abs=1e-12)
    assert full.item() < margin_target(torch.cos(theta), 1.3, 0.0, 0.2).item()
    assert full.item() < margin_target(torch.cos(theta), 1.0, 0.4, 0.2).item()


def test_no_labels_means_no_margin():
    head, x = head_at_angles([0.2, 1.4])
    torch.testing.assert_close(head(x), 30.0 * F.normalize(x) @ torch.eye(2))


def test_margin_gradient_flows_to_embeddings_and_centres():
    torch.manual_seed(1)
    head = ArcNet(6, 4, 30.0, 1.2, 0.3, 0.1)
    x = torch.randn(8, 6, requires_grad=True)
    head.loss(x, torch.randint(0, 4, (8,))).backward()
    assert x.grad.abs().sum() > 0 and head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("margins", MARGINS)
@pytest.mark.parametrize("edge", [1.0, -1.0, 1.0 + 1e-7, -1.0 - 1e-7, 1.0 - 1e-9, -1.0 + 1e-9])
def test_gradients_finite_and_bounded_at_cos_plus_minus_one(margins, edge):
    cos = torch.tensor([edge], requires_grad=True)
    psi = margin_target(cos, *margins)
    psi.backward()
    assert torch.isfinite(psi).all() and torch.isfinite(cos.grad).all()
    assert cos.grad.abs().item() < 250.0 * margins[0]  # 1 / sin(acos(1 - 1e-5)) ~ 224


def test_embedding_equal_and_opposite_to_its_centre():
    head = ArcNet(3, 2, 30.0, 1.0, 0.5, 0.0)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    x = torch.tensor([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]], requires_grad=True)
    head.loss(x, torch.tensor([0, 0])).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(head.weight.grad).all()


@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.2, 0.4, 0.1), (2.0, 0.3, 0.2), (1.35, 0.0, 0.0)])
def test_gradcheck_float64(margins):
    torch.manual_seed(2)
    head = ArcNet(5, 3, 8.0, *margins).double()
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    assert torch.autograd.gradcheck(lambda e, w: _logits_with_weight(head, e, w, y),
                                    (x, head.weight.detach().clone().requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_computes_margin_in_float32(dtype):
    torch.manual_seed(3)
    head = ArcNet(16, 10, 30.0, 1.2, 0.4, 0.1)
    x, y = torch.randn(32, 16).to(dtype), torch.randint(0, 10, (32,))
    reference = head(x.float(), y)
    with torch.autocast("cpu", dtype=dtype):
        logits = head(x, y)
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, reference, atol=0, rtol=0)


@pytest.mark.parametrize("bad", [dict(s=0.0), dict(s=-1.0), dict(m1=0.9), dict(m2=-0.1), dict(m2=math.pi),
                                 dict(m3=-0.01)])
def test_out_of_range_margins_are_refused(bad):
    args = dict(s=30.0, m1=1.0, m2=0.5, m3=0.0) | bad
    with pytest.raises(ValueError, match="--" + next(iter(bad))):
        TrainConfig(loss="combined", **args).validate()


def test_triplet_mining_is_recorded_empty_for_batch_hard_as_before_the_setting_and_read_back():
    from plot_embeddings import config_from_row
    from common.config import identity

    semi, hard = TrainConfig(loss="triplet"), TrainConfig(loss="triplet", triplet_mining="hard")
    assert semi.triplet_mining == "semihard"  # the default, since batch-hard collapsed
    assert hard.as_row()["triplet_mining"] == "" and semi.as_row()["triplet_mining"] == "semihard"
    before = {k: v for k, v in hard.as_row().items() if k != "triplet_mining"}  # a row from before the setting
    assert identity(before) == identity(hard.as_row()) != identity(semi.as_row())
    assert config_from_row(hard.as_row()).triplet_mining == "hard"
    assert config_from_row(semi.as_row()).triplet_mining == "semihard"
