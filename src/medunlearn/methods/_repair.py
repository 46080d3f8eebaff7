"""Shared pieces of the "damage, then repair on retain data" methods (issue 28).

The NeurIPS 2023 unlearning challenge rewarded methods whose unlearned models spread across
runs the way retrained models do. Its strongest entries first *damage* the original in a
seeded, random way (re-initialise weights, add weight noise, transpose kernels) and then
*repair* it with a short, class-balanced training on a random retain subset. This module holds
what those methods share:

* :class:`RepairOptions` the optimisation options of the repair phase.
* :func:`repair` the repair phase itself, on top of the one loop
  (:func:`medunlearn.methods._common.train_on`, hence :func:`medunlearn.loop.sgd_steps`).
* :func:`conv_layers` the convolutions a damage step acts on, in a fixed order.
* :func:`kaiming_fan_out` fresh weights drawn from a seeded generator.
* :func:`check_range` one ConfigError wording for out-of-range options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medunlearn.errors import ConfigError
from medunlearn.methods._common import SGDOptions, loss_weights, subsample, train_on
from medunlearn.methods.base import UnlearnContext
from medunlearn.models import Classifier


@dataclass(frozen=True)
class RepairOptions(SGDOptions):
    """Options of the repair phase: ``epochs`` passes over a fresh random subset of at most
    ``retain_budget`` retain images each (None: the whole retain set), class-balanced
    cross-entropy as in the original recipe, SGD with Nesterov momentum."""

    epochs: int = 1
    lr: float = 0.02
    retain_budget: int | None = 2048  # retain images per repair epoch (seeded), None: all


def check_range(method: str, name: str, value, ok: bool, what: str) -> None:
    """Raise the ConfigError every option check of these methods uses.

    Raises:
        ConfigError: when ``ok`` is false, naming the option, the valid range and the value.
    """
    if not ok:
        raise ConfigError(f"Option {name} of method {method!r} must be {what}, got {value!r}.")


def conv_layers(model: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every ``nn.Conv2d`` of ``model`` by name, in module order (a fixed order, so the same
    seed draws the same random numbers for the same layers)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


def kaiming_fan_out(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """He-normal weights for a ReLU network in fan-out mode (torchvision's ResNet
    initialisation of convolutions), drawn on the CPU from ``generator``."""
    fan_out = shape[0] * math.prod(shape[2:]) if len(shape) > 2 else shape[0]
    std = math.sqrt(2.0 / max(fan_out, 1))
    return torch.randn(shape, generator=generator) * std  # cpu: seeded draw


def repair(net: Classifier, ctx: UnlearnContext, cfg: RepairOptions, *,
           generator: torch.Generator, desc: str,
           before_step: Callable[[], None] | None = None) -> int:
    """Train ``net`` in place on random retain subsets with class-balanced cross-entropy.

    Returns:
        The number of optimiser steps taken.
    """
    epochs = [subsample(ctx.retain, cfg.retain_budget, generator) for _ in range(cfg.epochs)]
    w = loss_weights(ctx, ctx.retain)
    return train_on(net, ctx, cfg, epoch_indices=epochs, generator=generator, desc=desc,
                    loss_fn=lambda logits, y, _b: F.cross_entropy(logits, y, weight=w),
                    before_step=before_step)


__all__ = ["RepairOptions", "check_range", "conv_layers", "kaiming_fan_out", "repair"]
