"""The training recipe's pieces: margin warm-up, label smoothing, embedding BatchNorm, the head's own
weight decay, augmentation switches, flip test-time augmentation and --preset."""
import math

import pytest
import torch
import torch.nn.functional as F

import train_cifar10
import train_mnist
from common import ArcNet, Network, SoftmaxHead, augment, parse_config
from common.config import TrainConfig
from common.training import embed, make_optimizer, margin_ramp, set_margin_ramp


def test_margin_ramp_grows_linearly_to_one_over_the_warmup_fraction():
    config = TrainConfig(margin_warmup=0.25)
    ramp = [margin_ramp(config, step, 100) for step in range(100)]
    assert ramp[0] == pytest.approx(1 / 25) and ramp[12] == pytest.approx(13 / 25)
    assert ramp[24] == 1.0 and all(r == 1.0 for r in ramp[24:])
    assert all(b > a for a, b in zip(ramp[:24], ramp[1:25]))
    assert all(margin_ramp(TrainConfig(margin_warmup=0.0), step, 100) == 1.0 for step in (0, 50, 99))
    # a warm-up shorter than one step is no warm-up
    assert margin_ramp(TrainConfig(margin_warmup=0.001), 0, 100) == 1.0


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


def test_embedding_batchnorm_standardises_each_embedding_dimension_in_training():
    torch.manual_seed(0)
    net = Network(1, 5, widths=(4, 8), embedding_bn=True).train()
    out = net(torch.randn(64, 1, 16, 16))
    assert torch.allclose(out.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(out.var(0, unbiased=False), torch.ones(5), atol=1e-2)  # eps = 1e-5 in the denominator
    assert isinstance(Network(1, 5, widths=(4, 8)).embed_bn, torch.nn.Identity)  # the report's network has none


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


def test_augment_switches():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.uint8).view(2, 3, 6, 6)
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert augment(images, 0, False, generator) is images
    assert torch.equal(generator.get_state(), state)  # nothing drawn: the report's MNIST setting is unchanged
    flipped_only = augment(images, 0, True, torch.Generator().manual_seed(3))
    assert all(torch.equal(out, img) or torch.equal(out, img.flip(2)) for out, img in zip(flipped_only, images))
    shifted = augment(images, 2, False, torch.Generator().manual_seed(3))  # crops, never mirrored
    padded = F.pad(images, (2,) * 4)
    windows = [padded[i, :, r:r + 6, c:c + 6] for i in range(2) for r in range(5) for c in range(5)]
    assert all(any(torch.equal(out, w) for w in windows) for out in shifted)


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


@pytest.mark.parametrize("script", [train_mnist, train_cifar10])
def test_preset_report_is_the_report_setting_and_flags_override_it(script):
    prog, doc = "x.py", ""
    report = parse_config(["--preset", "report"], script.DEFAULTS, prog, doc, {"report": script.REPORT})
    assert (report.preset, report.widths, report.convs_per_stage, report.batch_size) == ("report", (64, 256, 64), 1, 100)
    assert report.as_row()["preset"] == "report"
    changed = parse_config(["--preset", "report", "--widths", "8-16"], script.DEFAULTS, prog, doc, {"report": script.REPORT})
    assert changed.widths == (8, 16) and changed.batch_size == 100
    assert parse_config([], script.DEFAULTS, prog, doc, {"report": script.REPORT}) == script.DEFAULTS.resolved()
    # the report preset trains as the defaults did before the recipe: exact margin gradient, no warm-up, float32
    assert (report.margin_grad, report.margin_warmup, report.amp) == ("exact", 0.0, False)
    assert (script.DEFAULTS.margin_grad, script.DEFAULTS.amp) == ("unit", None)
    # the report's augmentation: none on MNIST; crop 4 and flip on CIFAR-10
    assert (report.crop_padding, report.flip) == ((0, False) if script is train_mnist else (4, True))


def test_recipe_flags_reach_the_model_and_the_row(gray_folder, tmp_path):
    out = tmp_path / "r.csv"
    row = train_mnist.main(["--data-root", gray_folder, "--widths", "8-16-8", "--latent-dim", "8", "--epochs", "2",
                            "--batch-size", "12", "--device", "cpu", "--no-amp", "--no-progress", "--out", str(out),
                            "--embedding-bn", "--margin-warmup", "0.5", "--label-smoothing", "0.1",
                            "--head-weight-decay", "0", "--crop-padding", "2", "--flip-tta"])
    assert (row["embedding_bn"], row["margin_warmup"], row["label_smoothing"], row["head_weight_decay"],
            row["crop_padding"], row["flip"], row["flip_tta"]) == (True, 0.5, 0.1, 0.0, 2, False, True)
    assert math.isfinite(row["test_acc"])


def test_evaluation_reports_embedding_length_and_angle_to_the_own_class_centre():
    from torch import nn

    from common.data import ImageData
    from common.training import evaluate

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


def test_mean_pairwise_angle():
    from common.training import mean_pairwise_angle

    assert mean_pairwise_angle(torch.eye(3)) == pytest.approx(90)
    assert mean_pairwise_angle(torch.tensor([[1.0, 0.0], [2.0, 0.0], [-1.0, 0.0]])) == pytest.approx((0 + 180 + 180) / 3)
    simplex = torch.eye(10) - 0.1  # 10 centred unit-simplex vertices: pairwise cosine -1/9
    assert mean_pairwise_angle(simplex) == pytest.approx(math.degrees(math.acos(-1 / 9)), abs=1e-4)


@pytest.mark.parametrize("native", [True, False])
def test_amp_auto_is_on_exactly_where_bfloat16_is_native(monkeypatch, native):
    import common.config
    monkeypatch.setattr(common.config, "has_native_bf16", lambda device: native)
    auto = TrainConfig(amp=None, device="cpu")
    assert auto.resolved().amp is native
    assert TrainConfig(amp=True).resolved().amp is True and TrainConfig(amp=False).resolved().amp is False
    defaults = TrainConfig(amp=None, out="x.csv")
    assert parse_config(["--device", "cpu"], defaults, "x.py", "").amp is native  # the command line resolves it
    assert parse_config(["--device", "cpu", "--no-amp"], defaults, "x.py", "").amp is False
    assert parse_config(["--device", "cpu", "--amp"], defaults, "x.py", "").amp is True


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


def test_whiten_trains_end_to_end_and_needs_one_more_pixel(rgb_folder, tmp_path, capsys):
    flags = ["--data-root", rgb_folder, "--widths", "8-16", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12",
             "--device", "cpu", "--no-amp", "--no-progress", "--out", str(tmp_path / "r.csv"), "--whiten"]
    row = train_cifar10.main(flags)
    assert row["whiten"] is True and math.isfinite(row["test_acc"])
    with pytest.raises(SystemExit) as exit_info:
        train_cifar10.main(flags + ["--image-size", "4"])  # 2**2 pixels are enough without the stem, not with it
    assert exit_info.value.code == 2 and "--image-size must be >= 5" in capsys.readouterr().err


def test_checkpoints_from_before_a_recipe_setting_resume_with_its_old_value(gray_folder, tmp_path):
    from common.checkpoints import check_resume
    path, out = str(tmp_path / "old.pt"), str(tmp_path / "r.csv")
    old = ["--data-root", gray_folder, "--widths", "8-16-8", "--latent-dim", "8", "--epochs", "1", "--batch-size", "12",
           "--device", "cpu", "--no-amp", "--no-progress", "--out", out, "--margin-grad", "exact", "--margin-warmup", "0"]
    train_mnist.main(old + ["--checkpoint", path])
    state = torch.load(path, weights_only=True)
    for key in ("whiten", "margin_grad", "margin_warmup", "margin_tail", "embedding_bn", "label_smoothing"):
        del state["config"][key]  # as a checkpoint written before these settings existed
    torch.save(state, path)
    as_then = parse_config(old, train_mnist.DEFAULTS, "t", "")
    assert check_resume(path, as_then.as_row(), torch.device("cpu"))["epoch"] == 1
    with pytest.raises(ValueError, match="margin_grad exact \\(here unit\\)"):
        check_resume(path, parse_config(old[:-4], train_mnist.DEFAULTS, "t", "").as_row(), torch.device("cpu"))


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


def test_bn_bias_lr_gives_batchnorm_biases_their_own_lr_and_decay_and_is_one_group_when_1():
    net, head = Network(1, 4, widths=(4, 8)), SoftmaxHead(4, 3)
    optimizer, _ = make_optimizer(TrainConfig(bn_bias_lr=64.0, lr=0.1, weight_decay=6.4e-3), net, head, 10)
    biases = {id(m.bias) for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)}
    group = optimizer.param_groups[1]
    assert {id(p) for p in group["params"]} == biases and len(biases) == 2
    assert group["initial_lr"] == pytest.approx(6.4) and group["weight_decay"] == pytest.approx(1e-4)
    assert not biases & {id(p) for p in optimizer.param_groups[0]["params"]}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(net.parameters())) + len(list(head.parameters()))
    optimizer, _ = make_optimizer(TrainConfig(), net, head, 10)
    assert len(optimizer.param_groups) == 2  # as before the flag: checkpoints' optimiser state still loads
