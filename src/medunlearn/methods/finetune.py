"""``finetune``: continue training on the retain set only (catastrophic forgetting)."""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F

from medunlearn.methods._common import (
    SGDOptions,
    clone_model,
    loss_weights,
    need_retain,
    outcome,
    subsample,
    train_on,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


@register_method("finetune")
class Finetune(Method):
    """Fine-tune on retain data only; the forget set is never read."""

    summary = "fine-tune on the retain set only"

    @dataclass(frozen=True)
    class Config(SGDOptions):
        """Defaults: 2 epochs, lr 0.01 (cosine), batch 128, momentum 0.9, weight decay 5e-4,
        augmentation on, the whole retain set each epoch (``retain_budget`` None)."""

        retain_budget: int | None = None  # max retain samples per epoch (seeded), None: all

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        cfg = self.config
        need_retain(ctx, self.name)
        net = clone_model(model)
        g = ctx.generator(1)
        epochs = [subsample(ctx.retain, cfg.retain_budget, g) for _ in range(cfg.epochs)]
        w = loss_weights(ctx, ctx.retain)
        steps = train_on(net, ctx, cfg, epoch_indices=epochs, generator=g, desc=self.name,
                         loss_fn=lambda logits, y, b: F.cross_entropy(logits, y, weight=w))
        return outcome(net, steps)
