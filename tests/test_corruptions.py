"""The test-set corruptions (common/corruptions.py): shapes, ranges, hand-computed cases, bad input."""
import pytest
import torch

from common.corruptions import CORRUPTIONS, SEVERITIES, corrupt


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
