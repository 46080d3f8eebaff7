"""``l1-sparse``: fine-tune on the retain set with a decaying l1 penalty on the weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.errors import ConfigError
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


@register_method("l1-sparse")
class L1Sparse(Method):
    """Sparsity-aware unlearning (Jia et al., 2023): retain fine-tuning plus
    ``gamma_t * sum |w|`` over all parameters, with ``gamma_t`` decaying linearly from ``alpha``
    at the first step to 0 at the last."""

    summary = "fine-tune on retain with a linearly decaying l1 penalty on the weights"

    @dataclass(frozen=True)
    class Config(SGDOptions):
        """Defaults: alpha 5e-5, 2 epochs, lr 0.01 (cosine), batch 128, momentum 0.9, weight
        decay 5e-4, augmentation on, whole retain set per epoch."""

        alpha: float = 5e-5  # initial l1 coefficient
        retain_budget: int | None = None  # max retain samples per epoch (seeded), None: all

    def validate(self) -> None:
        super().validate()
        cfg = self.config
        if cfg.alpha < 0:
            raise ConfigError(f"alpha must be non-negative, got {cfg.alpha}.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        cfg = self.config
        need_retain(ctx, self.name)
        net = clone_model(model)
        g = ctx.generator(7)
        epochs = [subsample(ctx.retain, cfg.retain_budget, g) for _ in range(cfg.epochs)]
        total = sum(-(-len(e) // cfg.batch_size) for e in epochs)
        w = loss_weights(ctx, ctx.retain)
        params = list(net.parameters())
        step = [0]

        def loss_fn(logits, y, _b):
            gamma = cfg.alpha * (1 - step[0] / max(total, 1))
            step[0] += 1
            l1 = torch.stack([p.abs().sum() for p in params]).sum()
            return F.cross_entropy(logits, y, weight=w) + gamma * l1

        steps = train_on(net, ctx, cfg, epoch_indices=epochs, generator=g, desc=self.name,
                         loss_fn=loss_fn)
        l1_end = float(sum(p.detach().abs().sum() for p in params))
        return outcome(net, steps, l1_norm_after=l1_end)
