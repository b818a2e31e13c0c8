"""The backbone (common/network.py): embedding BatchNorm, the whitening stem, dirac initialisation."""
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
