"""Tests for cellrefine.model.unet: shape contract, validation, receptive field and halo."""

import pytest
import torch

from cellrefine.model.unet import NORMALIZATIONS, UNet


def tiny_unet(**kwargs):
    torch.manual_seed(0)
    arguments = {"in_channels": 1, "out_channels": 3, "depth": 2, "base_channels": 4, "norm": "batch"}
    arguments.update(kwargs)
    return UNet(**arguments).eval()


@pytest.mark.parametrize("size", [(5, 7), (37, 61), (16, 16), (1, 1), (2, 3), (4, 9)])
def test_output_shape_equals_input_shape(size):
    network = tiny_unet()
    with torch.inference_mode():
        out = network(torch.zeros((2, 1) + size))
    assert out.shape == (2, 3) + size


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_every_norm_keeps_the_shape(norm):
    network = tiny_unet(norm=norm, in_channels=2, out_channels=5)
    with torch.inference_mode():
        out = network(torch.zeros(1, 2, 13, 11))
    assert out.shape == (1, 5, 13, 11)


def test_odd_size_equals_cropped_reflect_padded_input():
    # forward pads to the grid with reflection and crops back
    network = tiny_unet()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 5, 7, generator=generator)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 3), mode="reflect")
    with torch.inference_mode():
        assert torch.allclose(network(x), network(padded)[..., :5, :7], atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 8, 8), (8, 8), (1, 1, 1, 8, 8)])
def test_wrong_number_of_dimensions(shape):
    network = tiny_unet()
    with pytest.raises(ValueError, match=r"4D tensor \(N, C, Y, X\), got shape " + repr(shape).replace("(", r"\(").replace(")", r"\)")):
        network(torch.zeros(shape))


def test_wrong_number_of_channels():
    network = tiny_unet()
    with pytest.raises(ValueError, match=r"1 input channel\(s\), got 3 \(input shape \(1, 3, 8, 8\)\)"):
        network(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0}, "in_channels must be an integer >= 1, got 0"),
        ({"out_channels": 0}, "out_channels must be an integer >= 1"),
        ({"depth": 0}, "depth must be an integer >= 1"),
        ({"depth": 7}, "depth must be at most 6, got 7"),
        ({"depth": 2.0}, "depth must be an integer"),
        ({"depth": True}, "depth must be an integer"),
        ({"base_channels": "16"}, "base_channels must be an integer"),
        ({"norm": "layer"}, "norm must be one of"),
    ],
)
def test_invalid_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5, 6])
def test_halo_covers_receptive_radius_on_grid(depth):
    network = UNet(depth=depth, base_channels=1)
    assert network.grid == 2**depth
    assert network.halo >= network.receptive_radius
    assert network.halo % network.grid == 0
    assert network.halo - network.receptive_radius < network.grid


def test_receptive_radius_known_values():
    # encoder + decoder: 6 * 2**l per level, bottleneck 2 * 2**depth
    assert UNet(depth=1, base_channels=1).receptive_radius == 6 + 4
    assert UNet(depth=2, base_channels=1).receptive_radius == 6 + 12 + 8
    assert UNet(depth=2, base_channels=1).halo == 28
    assert UNet(depth=3, base_channels=1).receptive_radius == 6 + 12 + 24 + 16


def test_pixels_beyond_receptive_radius_do_not_matter():
    network = tiny_unet()
    radius = network.receptive_radius
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(1, 1, 128, 128, generator=generator)
    centre = 64
    far = x.clone()
    far[..., centre, centre + radius + 1] += 5.0
    far[..., centre - radius - 1, centre] -= 5.0
    near = x.clone()
    near[..., centre, centre + 1] += 5.0
    with torch.inference_mode():
        base, out_far, out_near = (network(t)[..., centre, centre] for t in (x, far, near))
    assert torch.equal(base, out_far)
    assert not torch.allclose(base, out_near)


def test_config_rebuilds_the_same_architecture():
    network = tiny_unet(norm="group", base_channels=8, depth=3)
    assert network.config() == {"in_channels": 1, "out_channels": 3, "depth": 3, "base_channels": 8, "norm": "group"}
    rebuilt = UNet(**network.config())
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in network.state_dict().items()}
