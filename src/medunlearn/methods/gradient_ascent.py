"""``gradient-ascent``: raise the loss on the forget set, bounded so it cannot diverge."""

from __future__ import annotations

from dataclasses import dataclass

from medunlearn.errors import ConfigError
from medunlearn.loop import sgd_steps
from medunlearn.methods._common import (
    Forward,
    SGDOptions,
    clamped_ascent_loss,
    clone_model,
    outcome,
    read_batches,
    sgd,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


@register_method("gradient-ascent")
class GradientAscent(Method):
    """Gradient ascent on the forget set's cross-entropy.

    Two bounds keep it from exploding: each sample's loss is only ascended while it is below
    ``loss_ceiling`` (nats), and the gradient norm is clipped to ``clip_norm``. It reads only the
    forget set. Training-mode BatchNorm statistics are updated from forget batches.
    """

    summary = "ascend the loss on the forget set (per-sample ceiling + gradient clipping)"

    @dataclass(frozen=True)
    class Config(SGDOptions):
        """Defaults: 2 epochs, lr 0.002 constant, batch 64, momentum 0.9, no weight decay, no
        augmentation, loss ceiling 2.0 nats per sample, gradient norm clipped to 1.0."""

        epochs: int = 2
        lr: float = 0.002
        batch_size: int = 64
        weight_decay: float = 0.0
        schedule: str = "constant"
        augment: bool = False
        loss_ceiling: float = 2.0  # stop ascending a sample once its loss exceeds this
        clip_norm: float = 1.0  # max gradient norm per step (0: no clipping)

    def validate(self) -> None:
        super().validate()
        cfg = self.config
        if cfg.loss_ceiling <= 0:
            raise ConfigError(f"loss_ceiling must be positive, got {cfg.loss_ceiling}.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        cfg = self.config
        net = clone_model(model)
        forward = Forward(ctx)
        forward.prepare(net)
        g = ctx.generator(2)
        per_epoch = -(-len(ctx.forget) // cfg.batch_size)
        opt, sched = sgd(net, cfg, cfg.epochs * per_epoch)
        scaler = ctx.runtime.grad_scaler()
        steps, last = 0, float("nan")
        for _ in range(cfg.epochs):
            net.train()
            batches = read_batches(ctx, ctx.forget, batch_size=cfg.batch_size, generator=g,
                                   shuffle=True)
            # minimise the negated (clamped) loss: ascend the forget loss
            stats = sgd_steps(net, batches,
                              lambda b: -clamped_ascent_loss(forward(net, b[0]), b[1],
                                                             cfg.loss_ceiling),
                              optimizer=opt, scheduler=sched, runtime=ctx.runtime,
                              clip_norm=cfg.clip_norm, scaler=scaler)
            steps += stats.steps
            last = -stats.mean_loss
        return outcome(net, steps, last_epoch_clamped_forget_loss=last)
