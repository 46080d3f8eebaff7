"""``reinit-small-grad``: re-initialise the smallest-gradient convolution weights, then repair
on retain data (the NeurIPS 2023 unlearning challenge's second-placed idea; DeepUnlearn's
"masked small gradients").

1. A gradient is taken once on the original model (eval mode: BatchNorm statistics untouched):
   ``gradient="difference"`` (the challenge entry's choice) is the mean retain cross-entropy
   gradient over a random retain subset as large as the forget set *minus* the mean forget
   cross-entropy gradient; ``"forget"`` and ``"retain"`` use one term alone.
2. In every convolution, the ``fraction`` of its entries with the smallest gradient magnitude
   are re-initialised with fresh He-normal (fan-out) weights drawn from the run's seed.
   Weights the loss barely depends on are re-drawn, so each run lands in another basin while
   the weights that carry the retain task stay.
3. Repair (:func:`medunlearn.methods._repair.repair`): class-balanced cross-entropy on random
   retain subsets; the gradient of every entry that was *not* re-initialised is multiplied by
   ``keep_grad_scale`` (0.1 in the challenge entry), so the new weights learn and the kept ones
   move little.

Randomness per run: the retain subsets (gradient and repair), the fresh weights, batch order
and augmentation all come from the run's seed, so N runs differ as retrained models do.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.methods._common import (
    Forward,
    clone_model,
    need_retain,
    outcome,
    read_batches,
    subsample,
)
from medunlearn.methods._repair import (
    LabelledRepairOptions,
    check_range,
    conv_layers,
    kaiming_fan_out,
    repair,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier

GRADIENTS = ("difference", "forget", "retain")


def mean_gradients(model: Classifier, ctx: UnlearnContext, indices: torch.Tensor,
                   names: list[str], *, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Gradients of the mean cross-entropy over training samples ``indices`` with respect to
    the parameters ``names``, in eval mode (running statistics unchanged), in the context's
    arithmetic."""
    was = model.training
    model.eval()
    params = dict(model.named_parameters())
    wanted = [params[n] for n in names]
    grads = [torch.zeros_like(p) for p in wanted]
    forward = Forward(ctx)
    forward.prepare(model)
    for x, y, _b in read_batches(ctx, indices, batch_size=batch_size):
        loss = F.cross_entropy(forward(model, x), y, reduction="sum") / max(len(indices), 1)
        for acc, g in zip(grads, torch.autograd.grad(loss, wanted), strict=True):
            acc += g
    model.train(was)
    return dict(zip(names, grads, strict=True))


def smallest_masks(scores: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """Per tensor, a boolean mask of its ``round(fraction * numel)`` entries (at least 1) with
    the smallest scores."""
    masks = {}
    for n, s in scores.items():
        k = min(s.numel(), max(1, round(fraction * s.numel())))
        flat = torch.zeros(s.numel(), dtype=torch.bool, device=s.device)
        flat[torch.topk(s.flatten(), k, largest=False, sorted=False).indices] = True
        masks[n] = flat.view_as(s)
    return masks


@torch.no_grad()
def _reinit(params: dict[str, torch.nn.Parameter], masks: dict[str, torch.Tensor],
            generator: torch.Generator) -> None:
    for n, m in masks.items():  # module order: the same seed draws the same weights
        p = params[n]
        fresh = kaiming_fan_out(p.shape, generator).to(device=p.device, dtype=p.dtype)
        p.copy_(torch.where(m, fresh, p))


def reinit_smallest(net: Classifier, ctx: UnlearnContext, *, fraction: float, gradient: str,
                    generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Re-initialise in place, in every convolution of ``net``, the ``fraction`` of entries
    with the smallest ``gradient`` magnitude (see the module docstring); return the masks of
    re-initialised entries by parameter name."""
    names = [f"{n}.weight" for n, _ in conv_layers(net)]
    params = dict(net.named_parameters())
    scores = {n: torch.zeros_like(params[n]) for n in names}
    if gradient in ("difference", "retain"):
        probe = subsample(ctx.retain, max(len(ctx.forget), 1), generator)
        for n, gr in mean_gradients(net, ctx, probe, names).items():
            scores[n] += gr
    if gradient in ("difference", "forget") and len(ctx.forget):
        for n, gr in mean_gradients(net, ctx, ctx.forget, names).items():
            scores[n] -= gr
    masks = smallest_masks({n: s.abs() for n, s in scores.items()}, fraction)
    _reinit(params, masks, generator)
    return masks


@register_method("reinit-small-grad")
class ReinitSmallGrad(Method):
    """Re-initialise the smallest-gradient convolution weights, then repair on retain data."""

    summary = ("re-initialise the smallest-gradient conv weights (seeded), then class-balanced "
               "retain training")

    @dataclass(frozen=True)
    class Config(LabelledRepairOptions):
        """Defaults (the best safe point of the PneumoniaMNIST per-example sweep,
        docs/results/damage_repair.md): fraction 0.15 of each convolution's entries
        re-initialised, ranked by the retain-minus-forget gradient; repair 2 epochs on 2048
        random retain images each, lr 0.05 (cosine), batch 128, momentum 0.9, weight decay
        5e-4, augmentation on, kept weights' gradients scaled by 0.1."""

        epochs: int = 2
        lr: float = 0.05
        fraction: float = 0.15  # share of each convolution's entries re-initialised, in (0, 1]
        gradient: str = "difference"  # ranking gradient: difference, forget or retain
        keep_grad_scale: float = 0.1  # gradient factor of entries not re-initialised, [0, 1]

    def validate(self) -> None:
        super().validate()
        c = self.config
        check_range(self.name, "fraction", c.fraction, 0.0 < c.fraction <= 1.0, "in (0, 1]")
        check_range(self.name, "gradient", c.gradient, c.gradient in GRADIENTS,
                    " or ".join(GRADIENTS))
        check_range(self.name, "keep_grad_scale", c.keep_grad_scale,
                    0.0 <= c.keep_grad_scale <= 1.0, "in [0, 1]")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        need_retain(ctx, self.name)
        net = clone_model(model)
        g = ctx.generator(41)
        masks = reinit_smallest(net, ctx, fraction=c.fraction, gradient=c.gradient,
                                generator=g)
        params = dict(net.named_parameters())
        scale = {n: torch.where(m, 1.0, c.keep_grad_scale).to(params[n].dtype)
                 for n, m in masks.items()}

        def scale_grads() -> None:
            for n, s in scale.items():
                p = params[n]
                if p.grad is not None:
                    p.grad.mul_(s.to(p.grad.device))

        steps, details = repair(net, ctx, c, original=model, generator=g, desc=self.name,
                                before_step=None if c.keep_grad_scale == 1.0 else scale_grads)
        reinit = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        return outcome(net, steps, reinitialised_entries=reinit, conv_entries=total,
                       reinitialised_fraction=reinit / max(total, 1), gradient=c.gradient,
                       **details)
