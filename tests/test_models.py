"""Models: shapes for any channel/class count, widths, torchvision variants, errors."""

from __future__ import annotations

import pytest
import torch

from medunlearn.errors import ConfigError
from medunlearn.models import build_model, resolve_arch


@pytest.mark.parametrize("channels,classes,size", [(1, 2, 28), (3, 7, 28), (3, 9, 64)])
def test_small_resnet_shapes(channels, classes, size):
    m = build_model("resnet18", in_channels=channels, num_classes=classes, size=size, width=8)
    x = torch.rand(4, channels, size, size)
    assert m(x).shape == (4, classes)
    assert m.features(x).shape == (4, 64)  # 8 * width


def test_width_scales_parameters():
    n = [sum(p.numel() for p in build_model("resnet18", in_channels=1, num_classes=2,
                                              width=w).parameters()) for w in (8, 16)]
    assert 3.5 < n[1] / n[0] < 4.1  # conv weights grow with width squared


def test_full_width_is_standard_resnet18_size():
    m = build_model("resnet18", in_channels=3, num_classes=10, width=64)
    n = sum(p.numel() for p in m.parameters())
    assert 11.0e6 < n < 11.3e6  # ResNet-18 (CIFAR variant) has ~11.2M parameters


def test_torchvision_variant_any_channels():
    m = build_model("tv-resnet18", in_channels=1, num_classes=3, size=64)
    assert m(torch.rand(2, 1, 64, 64)).shape == (2, 3)


def test_auto_arch_and_unknown_arch():
    assert resolve_arch("auto", 28) == "resnet18"
    assert resolve_arch("auto", 64) == "resnet18-s2"
    assert resolve_arch("auto", 224) == "tv-resnet18"
    with pytest.raises(ConfigError, match="Unknown architecture"):
        resolve_arch("vgg", 28)


def test_normalisation_is_inside_the_model():
    m = build_model("resnet18", in_channels=1, num_classes=2, width=4, mean=[0.3], std=[0.2])
    assert torch.allclose(m.mean.flatten(), torch.tensor([0.3]))
    assert "mean" in m.state_dict() and "std" in m.state_dict()
