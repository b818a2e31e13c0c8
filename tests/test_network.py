"""The backbone (common/network.py): embedding BatchNorm, the whitening stem, dirac initialisation, and
airbench's stage order, GELU, global max pool and fixed BatchNorm scales."""
import torch
import torch.nn.functional as F

from common import Network


def test_embedding_batchnorm_standardises_each_embedding_dimension_in_training():
    torch.manual_seed(0)
    net = Network(1, 5, widths=(4, 8), embedding_bn=True).train()
    out = net(torch.randn(64, 1, 16, 16))
    assert torch.allclose(out.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(5), atol=1e-2)  # eps = 1e-5 in the denominator
    assert isinstance(Network(1, 5, widths=(4, 8)).embed_bn, torch.nn.Identity)  # the report's network has none


def test_whitening_stem_whitens_correlated_patches_and_keeps_its_filters_fixed():
    from common.network import WhiteningStem, init_whitening
    torch.manual_seed(0)
    mix = torch.randn(12, 12) * torch.linspace(0.1, 5.0, 12)  # strongly correlated, unequal scales
    latent = torch.randn(4000, 12) @ mix.t()  # (N, P) patches of 3 channels x 2 x 2
    images = latent.view(4000, 3, 2, 2)  # one 2x2 patch per image
    stem = WhiteningStem(3)
    stem.fit(images)
    out = F.conv2d(images, stem.conv.weight).flatten(1)  # (N, 24): the whitened patch and its negative
    assert torch.allclose(out[:, 12:], -out[:, :12])
    covariance = torch.cov(out[:, :12].t().double())
    eigenvalues = torch.linalg.eigvalsh(torch.cov(latent.t().double()))
    expected = torch.diag(eigenvalues / (eigenvalues + WhiteningStem.EPS))  # 1 up to eps, in the eigenbasis
    assert torch.allclose(torch.linalg.eigvalsh(covariance), torch.diagonal(expected).sort().values, atol=1e-3)
    net = Network(3, 8, widths=(4, 8), whiten=True)
    init_whitening(net, torch.randn(10, 3, 9, 9))
    before = net.features[0].conv.weight.clone()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, weight_decay=0.1)
    net(torch.randn(6, 3, 9, 9)).square().sum().backward()
    opt.step()
    assert torch.equal(net.features[0].conv.weight, before) and net.features[0].conv.bias.grad is not None
    assert net(torch.randn(2, 3, 9, 9)).shape == (2, 8)


def test_dirac_init_starts_each_conv_as_a_pass_through_of_its_first_channels():
    torch.manual_seed(0)
    plain = Network(3, 8, widths=(4, 8, 2), convs_per_stage=2)
    torch.manual_seed(0)
    dirac = Network(3, 8, widths=(4, 8, 2), convs_per_stage=2, dirac=True)
    convs = [(a, b) for a, b in zip(plain.features, dirac.features) if isinstance(a, torch.nn.Conv2d)]
    for a, b in convs:
        n = min(a.in_channels, a.out_channels)
        identity = torch.zeros(n, a.in_channels, 3, 3)
        identity[range(n), range(n), 1, 1] = 1.0
        assert torch.equal(b.weight[:n], identity)
        assert torch.equal(b.weight[n:], a.weight[n:])  # the rest: the same random draws as without it
    x = torch.randn(2, 4, 5, 5)
    assert torch.equal(torch.nn.functional.conv2d(x, convs[2][1].weight, padding=1)[:, :4], x)  # 4 -> 8: a copy


def test_default_stage_order_is_conv_bn_relu_pool_and_pool_first_pools_before_the_batchnorm():
    from torch import nn
    kinds = lambda net: [type(m) for m in net.features][:7]  # noqa: E731 - the first stage and one more conv
    assert kinds(Network(3, 4, widths=(4, 8), convs_per_stage=2)) == [
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    net = Network(3, 4, widths=(4, 8), convs_per_stage=2, pool_first=True, activation="gelu").train()
    assert kinds(net) == [nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.GELU, nn.Conv2d, nn.BatchNorm2d, nn.GELU]
    seen = {}
    net.features[2].register_forward_hook(lambda m, i, o: seen.update(bn=o.detach()))
    net(torch.randn(16, 3, 8, 8))
    bn = seen["bn"]  # (16, 4, 4, 4): normalised over the pooled 4x4 map, so mean 0 and variance 1 there
    assert bn.shape[-1] == 4 and torch.allclose(bn.mean((0, 2, 3)), torch.zeros(4), atol=1e-5)
    assert torch.allclose(bn.var((0, 2, 3), unbiased=False), torch.ones(4), atol=1e-3)
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())


def test_gelu_reaches_the_whitening_stem_and_a_bad_name_is_refused():
    import pytest
    from torch import nn
    net = Network(3, 4, widths=(4, 8), whiten=True, activation="gelu")
    assert isinstance(net.features[0].activation, nn.GELU)
    x = torch.randn(2, 3, 9, 9)
    stem = net.features[0]
    assert torch.allclose(stem(x), F.gelu(F.conv2d(x, stem.conv.weight, stem.conv.bias)))
    with pytest.raises(ValueError, match="activation"):
        Network(3, 4, widths=(4,), activation="tanh")
    with pytest.raises(ValueError, match="global_pool"):
        Network(3, 4, widths=(4,), global_pool="median")


def test_global_max_pool_feeds_the_spatial_maximum_to_the_embedding_layer():
    torch.manual_seed(0)
    for pool, reduce in (("max", lambda f: f.amax((2, 3))), ("avg", lambda f: f.mean((2, 3)))):
        net = Network(3, 4, widths=(4, 8), global_pool=pool).eval()
        seen = {}
        net.embed.register_forward_hook(lambda m, i, o: seen.update(x=i[0].detach()))
        x = torch.randn(5, 3, 16, 16)
        net(x)
        assert torch.allclose(seen["x"], reduce(net.features(x)), atol=1e-6)


def test_no_bn_scale_keeps_every_conv_batchnorm_scale_at_one_while_the_shifts_train():
    from torch import nn

    from common.config import TrainConfig
    from common.heads import SoftmaxHead
    from common.training import make_optimizer
    torch.manual_seed(0)
    net, head = Network(3, 4, widths=(4, 8), convs_per_stage=2, bn_scale=False), SoftmaxHead(4, 3)
    config = TrainConfig(weight_decay=0.1, lr=0.5)
    optimizer, _ = make_optimizer(config, net, head, 10)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for _ in range(3):
        optimizer.zero_grad()
        head.loss(net(torch.randn(8, 3, 8, 8)), torch.randint(0, 3, (8,))).backward()
        optimizer.step()
    assert all(torch.equal(m.weight, torch.ones_like(m.weight)) and not m.weight.requires_grad for m in norms)
    assert all(m.bias.abs().sum() > 0 for m in norms)
    trained = Network(3, 4, widths=(4, 8))
    assert all(m.weight.requires_grad for m in trained.modules() if isinstance(m, nn.BatchNorm2d))
