"""``neggrad-plus``: descend on retain batches while ascending (bounded) on forget batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.errors import ConfigError
from medunlearn.loop import sgd_steps
from medunlearn.methods._common import (
    Forward,
    SGDOptions,
    augment_policy,
    clamped_ascent_loss,
    clone_model,
    cycle_batches,
    loss_weights,
    need_retain,
    outcome,
    read_batches,
    sgd,
    subsample,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


@register_method("neggrad-plus")
class NegGradPlus(Method):
    """NegGrad+ (Kurmanji et al., 2023): ``alpha * CE(retain) - (1 - alpha) * CE(forget)``.

    Every step pairs a retain batch with a forget batch (the smaller forget set is cycled). The
    forget term is bounded per sample by ``loss_ceiling`` and the gradient norm is clipped, so the
    ascent cannot diverge.
    """

    summary = "descend on retain while ascending on forget, weighted by alpha"

    @dataclass(frozen=True)
    class Config(SGDOptions):
        """Defaults: alpha 0.9, 2 epochs over the retain set, lr 0.01 (cosine), batch 128 (retain)
        and 64 (forget), momentum 0.9, weight decay 5e-4, augmentation on retain batches, forget
        loss ceiling 2.0 nats, gradient norm clipped to 5.0, whole retain set per epoch."""

        alpha: float = 0.9  # weight of the retain loss; 1 - alpha weighs the forget ascent
        forget_batch_size: int = 64
        loss_ceiling: float = 2.0
        clip_norm: float = 5.0  # 0: no clipping
        retain_budget: int | None = None  # max retain samples per epoch (seeded), None: all

    def validate(self) -> None:
        super().validate()
        cfg = self.config
        if not 0.0 <= cfg.alpha <= 1.0:
            raise ConfigError(f"alpha must lie in [0, 1], got {cfg.alpha}.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        cfg = self.config
        need_retain(ctx, self.name)
        net = clone_model(model)
        forward = Forward(ctx)
        forward.prepare(net)
        g, gf = ctx.generator(3), ctx.generator(4)
        epochs = [subsample(ctx.retain, cfg.retain_budget, g) for _ in range(cfg.epochs)]
        opt, sched = sgd(net, cfg, sum(-(-len(e) // cfg.batch_size) for e in epochs))
        w = loss_weights(ctx, ctx.retain)
        forget_stream = cycle_batches(ctx, ctx.forget, batch_size=cfg.forget_batch_size,
                                      generator=gf)
        augment = augment_policy(ctx, cfg)
        scaler = ctx.runtime.grad_scaler()

        def loss_fn(batch):
            x, y, _b, xf, yf = batch
            logits = forward(net, torch.cat([x, xf]))
            retain_loss = F.cross_entropy(logits[:len(y)], y, weight=w)
            forget_loss = clamped_ascent_loss(logits[len(y):], yf, cfg.loss_ceiling)
            return cfg.alpha * retain_loss - (1 - cfg.alpha) * forget_loss

        steps = 0
        for ix in epochs:
            net.train()
            # each retain batch paired with the next batch of the (cycled) forget set
            paired = (retain + next(forget_stream)[:2]
                      for retain in read_batches(ctx, ix, batch_size=cfg.batch_size, generator=g,
                                                 shuffle=True, augment=augment))
            steps += sgd_steps(net, paired, loss_fn, optimizer=opt, scheduler=sched,
                               runtime=ctx.runtime, clip_norm=cfg.clip_norm, scaler=scaler).steps
        return outcome(net, steps)
