"""The training steps' pieces (common/training.py): optimiser groups and weight decay, the margin ramp,
the divergence guard, and a step that needs no host synchronisation."""
import pytest
import torch

from common import (
    ArcNet,
    Network,
    batch_hard_triplet_loss,
    random_crop_flip,
)
from common.config import TrainConfig
from common.training import (
    DivergedError,
    check_finite,
    make_optimizer,
    margin_ramp,
)


def test_training_step_pieces_need_no_host_synchronisation():
    """Under FakeTensorMode every tensor is shapes only: a data-dependent branch (`if t.any()`, `.item()`)
    or boolean indexing raises. The losses and the batched augmentation must run there, so that a GPU
    training step never waits on the host."""
    from torch._subclasses.fake_tensor import (
        DataDependentOutputException,
        FakeTensorMode,
    )

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


def test_check_finite_names_epoch_and_step():
    losses = torch.tensor([1.0, 0.5, float("nan"), 0.2])
    check_finite(losses, 0, 2, epoch=0)
    with pytest.raises(DivergedError, match="epoch 3, step 3"):
        check_finite(losses, 0, 4, epoch=2)


def test_margin_ramp_grows_linearly_to_one_over_the_warmup_fraction():
    config = TrainConfig(margin_warmup=0.25)
    ramp = [margin_ramp(config, step, 100) for step in range(100)]
    assert ramp[0] == pytest.approx(1 / 25) and ramp[12] == pytest.approx(13 / 25)
    assert ramp[24] == 1.0 and all(r == 1.0 for r in ramp[24:])
    assert all(b > a for a, b in zip(ramp[:24], ramp[1:25]))
    assert all(margin_ramp(TrainConfig(margin_warmup=0.0), step, 100) == 1.0 for step in (0, 50, 99))
    # a warm-up shorter than one step is no warm-up
    assert margin_ramp(TrainConfig(margin_warmup=0.001), 0, 100) == 1.0


def test_the_head_takes_its_own_weight_decay():
    net, head = Network(1, 4, widths=(4,)), ArcNet(4, 3)
    optimizer, _ = make_optimizer(TrainConfig(weight_decay=5e-4, head_weight_decay=0.0), net, head, 10)
    decays = [(group["weight_decay"], len(group["params"])) for group in optimizer.param_groups]
    assert decays == [(5e-4, len(list(net.parameters()))), (0.0, 1)]
    optimizer, _ = make_optimizer(TrainConfig(weight_decay=1e-3), net, head, 10)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [1e-3, 1e-3]  # default: --weight-decay
    with torch.no_grad():  # zero gradients: only the decay moves weights, and the head has none
        head.weight.grad = torch.zeros_like(head.weight)
        before = head.weight.clone()
    optimizer, _ = make_optimizer(TrainConfig(head_weight_decay=0.0, momentum=0.0), net, head, 10)
    optimizer.step()
    assert torch.equal(head.weight, before)


def _toy():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)), torch.nn.Linear(4, 2)


def _perturb(*modules):  # stands in for an optimiser step and a BatchNorm update: every float tensor moves
    with torch.no_grad():
        for m in modules:
            for t in m.state_dict().values():
                if t.is_floating_point():
                    t.add_(torch.randn_like(t))