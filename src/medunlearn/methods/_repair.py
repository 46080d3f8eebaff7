"""Shared pieces of the "damage, then repair on retain data" methods (issue 28).

The NeurIPS 2023 unlearning challenge rewarded methods whose unlearned models spread across
runs the way retrained models do. Its strongest entries first *damage* the original in a
seeded, random way (re-initialise weights, add weight noise, transpose kernels) and then
*repair* it with a short, class-balanced training on a random retain subset. This module holds
what those methods share:

* :class:`RepairOptions` the optimisation options of the repair phase;
  :class:`LabelledRepairOptions` adds how strongly its cross-entropy is class-balanced, a
  weight average over its steps and a final operating-point match.
* :func:`repair` the repair phase itself, on top of the one loop
  (:func:`medunlearn.methods._common.train_on`, hence :func:`medunlearn.loop.sgd_steps`).
* :func:`match_operating_point` shifts the output bias so that the repaired model predicts
  each class on held-out images as often as the original does.
* :func:`conv_layers` the convolutions a damage step acts on, in a fixed order.
* :func:`kaiming_fan_out` fresh weights drawn from a seeded generator.
* :func:`check_range` one ConfigError wording for out-of-range options.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from medunlearn.errors import ConfigError
from medunlearn.evaluation.utility import softmax
from medunlearn.methods._common import SGDOptions, loss_weights, subsample, train_on
from medunlearn.methods.base import KEYED_WHEN_SET, UnlearnContext
from medunlearn.models import Classifier
from medunlearn.training import predict_logits


@dataclass(frozen=True)
class RepairOptions(SGDOptions):
    """Options of the repair phase: ``epochs`` passes over a fresh random subset of at most
    ``retain_budget`` retain images each (None: the whole retain set), class-balanced
    cross-entropy as in the original recipe, SGD with Nesterov momentum."""

    epochs: int = 1
    lr: float = 0.02
    retain_budget: int | None = 2048  # retain images per repair epoch (seeded), None: all


@dataclass(frozen=True)
class LabelledRepairOptions(RepairOptions):
    """Repair options of the methods that repair with labelled cross-entropy
    (:func:`repair`): ``balance`` is the exponent on the original recipe's class weights.

    1 weights classes as the original was trained (``balanced``: every class the same total
    weight); 0 trains on the natural class frequencies; values between temper the weights.
    A short repair from a damaged model does not converge the way training did, so full
    balancing moves its decision boundary towards the minority class: in an imbalanced task
    where the disease is the majority (PneumoniaMNIST) that costs sensitivity.

    ``average`` keeps an exponential moving average of the weights (and BatchNorm statistics)
    over the repair steps with that decay and returns it instead of the last iterate (0: off).
    ``match_original`` finally shifts the output bias so that the model predicts each class on
    the validation images as often as the original does (:func:`match_operating_point`): a
    short repair leaves the decision boundary wherever its few steps put it, and each run
    somewhere else, while the gate compares FNR, Global Risk and accuracy with the original's.
    """

    # added after release: at their defaults the repair is the released one (KEYED_WHEN_SET)
    balance: float = field(default=1.0, metadata=KEYED_WHEN_SET)  # exponent, in [0, 1]
    average: float = field(default=0.0, metadata=KEYED_WHEN_SET)  # EMA decay in [0, 1); 0: off
    # shift the output bias to the original's class prediction rates on validation images
    match_original: bool = field(default=False, metadata=KEYED_WHEN_SET)


def balanced_weights(ctx: UnlearnContext, indices: torch.Tensor, balance: float
                     ) -> torch.Tensor | None:
    """The recipe's class weights over ``indices``' labels raised to ``balance`` (None when
    the recipe does not weight classes, or ``balance`` is 0)."""
    w = loss_weights(ctx, indices)
    if w is None or balance == 0:
        return None
    return w if balance == 1 else w.pow(balance)


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


def repair(net: Classifier, ctx: UnlearnContext, cfg: LabelledRepairOptions, *,
           original: Classifier, generator: torch.Generator, desc: str,
           before_step: Callable[[], None] | None = None) -> tuple[int, dict]:
    """Train ``net`` in place on random retain subsets with class-weighted cross-entropy
    (the recipe's weights raised to ``cfg.balance``); with ``cfg.average``, ``net`` ends as
    the moving average of its iterates; with ``cfg.match_original``, its output bias is then
    shifted to the original's operating point (``original``: the untouched model).

    Returns:
        The number of optimiser steps taken, and details for the run record.
    """
    epochs = [subsample(ctx.retain, cfg.retain_budget, generator) for _ in range(cfg.epochs)]
    w = balanced_weights(ctx, ctx.retain, cfg.balance)
    ema = (AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.average), use_buffers=True)
           if cfg.average > 0 else None)
    steps = train_on(net, ctx, cfg, epoch_indices=epochs, generator=generator, desc=desc,
                     loss_fn=lambda logits, y, _b: F.cross_entropy(logits, y, weight=w),
                     before_step=before_step,
                     after_step=None if ema is None else lambda: ema.update_parameters(net))
    details: dict = {}
    if ema is not None:
        net.load_state_dict(ema.module.state_dict())
        details["averaged_steps"] = int(ema.n_averaged)
    if cfg.match_original:
        details["bias_shift"] = match_operating_point(net, original, ctx)
    return steps, details


def operating_point_shift(logits: np.ndarray, target: np.ndarray, *, iterations: int = 100
                          ) -> np.ndarray:
    """(K,) logit offsets that make ``logits`` (N, K) predict like ``target`` (N, K), the
    reference model's logits on the same images.

    Two classes: the one offset of the positive logit that makes the share of images
    predicted positive equal the reference's (a threshold at the matching quantile of the
    logit difference; none when the reference predicts a single class, which gives no
    operating point to match). More classes: prior matching (Saerens et al. 2002): offsets
    ``b`` with ``mean softmax(logits + b) = mean softmax(target)``, by fixed-point iteration.
    """
    z, t = logits.astype(np.float64), target.astype(np.float64)
    b = np.zeros(z.shape[1])
    if z.shape[1] == 2:
        m = int((t.argmax(1) == 1).sum())  # images the reference predicts positive
        d = np.sort(z[:, 1] - z[:, 0])[::-1]
        if 0 < m < len(d):  # the threshold halfway between the m-th and (m+1)-th difference
            b[1] = -(d[m - 1] + d[m]) / 2.0
        return b
    prior = softmax(t).mean(0)
    for _ in range(iterations):
        b += np.log(prior / softmax(z + b).mean(0))
    return b - b.mean()


def match_operating_point(net: Classifier, original: Classifier, ctx: UnlearnContext
                          ) -> list[float]:
    """Shift ``net.head``'s bias in place so that on the validation images (the repair's
    retain images when there are none) ``net`` predicts each class as often as ``original``
    (:func:`operating_point_shift`). Reads no forget image. Returns the (K,) shift.

    Raises:
        ConfigError: when ``net`` has no linear output layer with a bias (``head``).
    """
    head = getattr(net, "head", None)
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise ConfigError("Option match_original needs a model whose output layer is a linear "
                          "'head' with a bias (medunlearn's Classifier). Turn it off for this "
                          "model.")
    split, idx = ctx.dataset.val, None
    if len(split) == 0:
        split, idx = ctx.dataset.train, ctx.retain
        ctx.seen(idx)
    net.eval()
    shift = operating_point_shift(
        predict_logits(net, split, idx, runtime=ctx.runtime),
        predict_logits(original, split, idx, runtime=ctx.runtime))
    with torch.no_grad():
        head.bias.add_(torch.as_tensor(shift, dtype=head.bias.dtype, device=head.bias.device))
    return [float(v) for v in shift]


__all__ = ["LabelledRepairOptions", "RepairOptions", "balanced_weights", "check_range",
           "conv_layers", "kaiming_fan_out", "match_operating_point", "operating_point_shift",
           "repair"]
