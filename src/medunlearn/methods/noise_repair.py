"""``noise-repair``: Gaussian noise on every weight tensor, then a few class-balanced retain
epochs (one of the NeurIPS 2023 unlearning challenge's winning ideas).

Each convolution and linear weight tensor ``W`` becomes ``W + noise * rms(W) * e`` with ``e``
standard normal, drawn from the run's seed (``rms(W)``: the tensor's root mean square, so one
``noise`` suits layers of any scale; BatchNorm parameters and biases are left as they are).
The noise moves every run to another point around the original, and scrambles what the
weights store about single images; the repair phase
(:func:`medunlearn.methods._repair.repair`) then restores the retain task from random retain
subsets with the original recipe's class weights. ``noise=0`` is plain retain fine-tuning.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medunlearn.methods._common import clone_model, need_retain, outcome
from medunlearn.methods._repair import LabelledRepairOptions, check_range, repair
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


def noisy_tensors(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The weight tensors the noise acts on: every parameter with two or more dimensions
    (convolution kernels, linear weights), in module order."""
    return [(n, p) for n, p in model.named_parameters() if p.dim() >= 2]


@torch.no_grad()
def add_relative_noise(model: torch.nn.Module, noise: float, generator: torch.Generator
                       ) -> float:
    """Add ``noise * rms(W)`` Gaussian noise to every weight tensor ``W`` of
    :func:`noisy_tensors` in place; return the overall noise-to-weight norm ratio."""
    noise_sq = weight_sq = 0.0
    for _, p in noisy_tensors(model):  # fixed order: the same seed gives the same noise
        rms = p.pow(2).mean().sqrt()
        e = torch.randn(p.shape, generator=generator)  # cpu: seeded draw, moved below
        e = e.to(device=p.device, dtype=p.dtype)
        d = noise * rms * e
        noise_sq += float(d.pow(2).sum())
        weight_sq += float(p.pow(2).sum())
        p.add_(d)
    return (noise_sq / max(weight_sq, 1e-30)) ** 0.5


@register_method("noise-repair")
class NoiseRepair(Method):
    """Gaussian weight noise (relative to each tensor's scale), then class-balanced retain
    training."""

    summary = "Gaussian noise on the weights (seeded), then class-balanced retain training"

    @dataclass(frozen=True)
    class Config(LabelledRepairOptions):
        """Defaults (the best safe point of the PneumoniaMNIST per-example sweep,
        docs/results/damage_repair.md): noise 0.5 x each weight tensor's RMS; repair 2 epochs
        on 2048 random retain images each, lr 0.05 (cosine), batch 128, momentum 0.9, weight
        decay 5e-4, augmentation on."""

        epochs: int = 2
        lr: float = 0.05
        noise: float = 0.5  # noise standard deviation relative to each tensor's RMS, >= 0

    def validate(self) -> None:
        super().validate()
        c = self.config
        check_range(self.name, "noise", c.noise, c.noise >= 0, "non-negative (>= 0)")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        need_retain(ctx, self.name)
        net = clone_model(model)
        ratio = add_relative_noise(net, c.noise, ctx.generator(43))
        steps, details = repair(net, ctx, c, original=model, generator=ctx.generator(44),
                                desc=self.name)
        return outcome(net, steps, noise_to_weight=ratio, **details)
