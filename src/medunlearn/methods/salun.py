"""``salun``: saliency-masked random labelling (Fan et al., ICLR 2024).

Only the weights most salient for the forget set may change. The mask holds the top
``mask_fraction`` of all parameter entries (one global ranking over the whole network) by the
magnitude of the gradient of the forget set's cross-entropy, computed once on the original model
in eval mode.

Mask correctness holds by construction (:class:`~medunlearn.methods._common.MaskGuard`):
gradients outside the mask are zeroed before each step and, after each step, the entries
outside the mask are overwritten with their saved original values. Whatever weight decay or
momentum do (the public SalUn code let weight decay move "frozen" weights), every parameter
entry outside the mask is bit-identical to the original after unlearning.

BatchNorm running statistics are buffers, not weights: by default they keep updating in
training mode as in the public SalUn code (``freeze_bn=false``); ``freeze_bn=true`` keeps them
exactly as they were, so that the only change to the model is in masked parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.errors import ConfigError
from medunlearn.methods._common import (
    MaskGuard,
    RelabelOptions,
    clone_model,
    outcome,
    read_batches,
    relabel_epochs,
    relabel_weights,
    train_on,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.methods.random_label import relabelled_targets
from medunlearn.models import Classifier


def saliency_masks(model: Classifier, ctx: UnlearnContext, indices: torch.Tensor, *,
                   fraction: float, batch_size: int = 256) -> dict[str, torch.Tensor]:
    """Boolean masks (one per parameter) of the top ``fraction`` entries by |grad| of the
    summed forget cross-entropy, ranked globally over all parameters (exactly
    ``round(fraction * total)`` entries, at least 1)."""
    was = model.training
    model.eval()
    params = dict(model.named_parameters())
    grads = {n: torch.zeros_like(p) for n, p in params.items()}
    for x, y, _b in read_batches(ctx, indices, batch_size=batch_size):
        loss = F.cross_entropy(model(x), y, reduction="sum") / max(len(indices), 1)
        gs = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
        for n, gr in zip(params, gs, strict=True):
            if gr is not None:
                grads[n] += gr
    model.train(was)
    flat = torch.cat([g.abs().flatten() for g in grads.values()])  # (P,)
    k = min(len(flat), max(1, round(fraction * len(flat))))
    chosen = torch.zeros(len(flat), dtype=torch.bool, device=flat.device)
    chosen[torch.topk(flat, k, sorted=False).indices] = True
    masks, start = {}, 0
    for n, p in params.items():
        masks[n] = chosen[start:start + p.numel()].view_as(p)
        start += p.numel()
    return masks


@register_method("salun")
class SalUn(Method):
    """SalUn: random labelling of the forget set, with updates restricted to salient weights."""

    summary = "saliency-masked random labelling: only the top-gradient weights change"

    @dataclass(frozen=True)
    class Config(RelabelOptions):
        """Defaults: mask_fraction 0.5, 2 epochs, lr 0.01 (cosine), batch 128, momentum 0.9,
        weight decay 5e-4, augmentation on, whole retain set per epoch, class weights balanced
        over the trained labels, BN statistics updated."""

        mask_fraction: float = 0.5  # fraction of parameter entries allowed to change
        freeze_bn: bool = False  # keep BatchNorm running statistics unchanged

    def forget_targets(self, ctx: UnlearnContext, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """Training-split targets with the forget samples' random wrong labels, no entropy
        mask, no details."""
        return relabelled_targets(ctx, generator), None, {}

    def forget_loss(self, targets: torch.Tensor, entropy: torch.Tensor | None,
                    weight: torch.Tensor | None
                    ) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
        """The loss over mixed forget/retain batches (``targets`` on the device)."""
        return lambda logits, y, b: F.cross_entropy(logits, targets[b], weight=weight)

    def validate(self) -> None:
        super().validate()
        cfg = self.config
        if not 0.0 < cfg.mask_fraction <= 1.0:
            raise ConfigError(f"mask_fraction must lie in (0, 1], got {cfg.mask_fraction}.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        cfg = self.config
        net = clone_model(model)
        g = ctx.generator(8)
        masks = saliency_masks(net, ctx, ctx.forget, fraction=cfg.mask_fraction)
        guard = MaskGuard(net, masks)
        targets, entropy, details = self.forget_targets(ctx, g)
        epochs = relabel_epochs(ctx, cfg, g)
        weight = relabel_weights(ctx, cfg.weight_by, targets, epochs[0])
        loss_fn = self.forget_loss(targets.to(ctx.device),
                                   None if entropy is None else entropy.to(ctx.device), weight)
        steps = train_on(net, ctx, cfg, epoch_indices=epochs, generator=g, desc=self.name,
                         loss_fn=loss_fn, before_step=guard.mask_grads, after_step=guard.restore,
                         freeze_bn=cfg.freeze_bn)
        masked = sum(int(m.sum()) for m in masks.values())
        total = sum(m.numel() for m in masks.values())
        return outcome(net, steps, masked_entries=masked, total_entries=total,
                       mask_fraction_actual=masked / max(total, 1), **details)


