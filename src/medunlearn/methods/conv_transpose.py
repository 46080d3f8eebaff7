"""``conv-transpose``: transpose the spatial axes of convolution kernels, then retrain briefly
on retain data (a NeurIPS 2023 unlearning challenge idea; among DeepUnlearn's best methods).

Every ``k x k`` kernel (``k > 1``; a 1 x 1 kernel is its own transpose) of a randomly chosen
``fraction`` of the convolutions becomes its transpose: ``W[o, i, a, b] -> W[o, i, b, a]``.
The filters keep their norms, statistics and channel wiring, so BatchNorm and the rest of the
network still fit them roughly, but every learned spatial pattern is mirrored along the
diagonal: what the features encoded about single images is scrambled, while the repair phase
(:func:`medunlearn.methods._repair.repair`, class-balanced retain training) only has to
re-learn orientation. The layers chosen (when ``fraction < 1``), the retain subsets, batch
order and augmentation come from the run's seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from medunlearn.methods._common import Stopwatch, clone_model, need_retain, outcome
from medunlearn.methods._repair import RepairOptions, check_range, conv_layers, repair
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


def transposable(model: torch.nn.Module) -> list[tuple[str, torch.nn.Conv2d]]:
    """Convolutions with square kernels larger than 1 x 1, in module order."""
    return [(n, m) for n, m in conv_layers(model)
            if m.kernel_size[0] == m.kernel_size[1] and m.kernel_size[0] > 1]


@torch.no_grad()
def transpose_kernels(model: torch.nn.Module, fraction: float, generator: torch.Generator
                      ) -> list[str]:
    """Transpose the kernels of ``round(fraction * L)`` (at least one) of the ``L``
    :func:`transposable` convolutions, chosen at random; return their names."""
    convs = transposable(model)
    if not convs:
        return []
    k = min(len(convs), max(1, round(fraction * len(convs))))
    pick = sorted(torch.randperm(len(convs), generator=generator)[:k].tolist())
    for i in pick:
        w = convs[i][1].weight
        w.copy_(w.transpose(2, 3).clone())  # (O, I, kh, kw) -> (O, I, kw, kh)
    return [convs[i][0] for i in pick]


@register_method("conv-transpose")
class ConvTranspose(Method):
    """Transpose convolution kernels, then class-balanced retain training."""

    summary = "transpose conv kernels, then brief class-balanced retain training"

    @dataclass(frozen=True)
    class Config(RepairOptions):
        """Defaults: every k x k convolution (fraction 1.0) transposed; repair 1 epoch on 2048
        random retain images, lr 0.02 (cosine), batch 128, momentum 0.9, weight decay 5e-4,
        augmentation on."""

        fraction: float = 1.0  # share of the k x k convolutions transposed, in (0, 1]

    def validate(self) -> None:
        super().validate()
        c = self.config
        check_range(self.name, "fraction", c.fraction, 0.0 < c.fraction <= 1.0, "in (0, 1]")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        need_retain(ctx, self.name)
        watch = Stopwatch()
        net = clone_model(model)
        g = ctx.generator(45)
        names = transpose_kernels(net, c.fraction, g)
        steps = repair(net, ctx, c, generator=g, desc=self.name)
        return outcome(net, steps, watch, transposed_layers=len(names),
                       transposable_layers=len(transposable(net)))
