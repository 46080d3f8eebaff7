"""Classifiers: a feature extractor, a linear head, and input normalisation built in.

Every model medunlearn builds is a :class:`Classifier`: ``features(x)`` gives the penultimate
representation (used by representation-level verification), ``head`` maps it to logits. The model
takes images in [0, 1] and normalises them with the training set's channel statistics, which are
stored as buffers, so a saved model is self-contained.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medunlearn.errors import ConfigError
from medunlearn.models.resnet import SmallResNet18

ARCHS = ("auto", "resnet18", "resnet18-s2", "tv-resnet18", "tv-resnet50")


class Classifier(nn.Module):
    def __init__(self, backbone: nn.Module, num_features: int, num_classes: int,
                 mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(num_features, num_classes)
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features (N, D) of images ``x`` (N, C, H, W) in [0, 1]."""
        return self.backbone((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def resolve_arch(arch: str, size: int) -> str:
    """``auto`` picks the small-image ResNet-18 with a stride-1 stem up to 32 px, with a stride-2
    stem up to 96 px (64 px images get the 32x32 feature maps of 28 px ones, at ~1/4 of the
    stride-1 cost), and torchvision's ResNet-18 above."""
    if arch not in ARCHS:
        raise ConfigError(f"Unknown architecture {arch!r}; choose one of {', '.join(ARCHS)}.")
    if arch == "auto":
        return "resnet18" if size <= 32 else "resnet18-s2" if size <= 96 else "tv-resnet18"
    return arch


def build_model(arch: str, *, in_channels: int, num_classes: int, size: int = 28,
                width: int = 16, mean: Sequence[float] | None = None,
                std: Sequence[float] | None = None) -> Classifier:
    """Build a classifier for ``in_channels``-channel images and ``num_classes`` classes."""
    arch = resolve_arch(arch, size)
    if width < 1:
        raise ConfigError(f"Model width must be positive, got {width}.")
    mean = mean if mean is not None else [0.5] * in_channels
    std = std if std is not None else [0.5] * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ConfigError("Normalisation statistics must have one value per input channel.")
    if arch in ("resnet18", "resnet18-s2"):
        backbone = SmallResNet18(in_channels, width, stem_stride=2 if arch == "resnet18-s2" else 1)
        n_feat = backbone.out_features
    else:
        from torchvision import models as tvm

        net = tvm.resnet18(weights=None) if arch == "tv-resnet18" else tvm.resnet50(weights=None)
        if in_channels != 3:
            net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
        n_feat = net.fc.in_features
        net.fc = nn.Identity()
        backbone = net
    return Classifier(backbone, n_feat, num_classes, mean, std)


__all__ = ["ARCHS", "Classifier", "as_classifier", "build_model", "resolve_arch"]
from medunlearn.models.adapter import as_classifier  # noqa: E402
