"""SCRUB (Kurmanji, Triantafillou, Hayes & Triantafillou, 2023): teacher-student max-min.

The original model is a frozen teacher ``t``; the student ``s`` starts as a copy of it. With the
tempered distillation divergence

    d(x) = T^2 * KL( softmax(t(x) / T) || softmax(s(x) / T) ),

each epoch first (in the first ``max_epochs`` epochs only) takes *max-steps* on forget batches,

    minimise  -mean_{x in F} d(x)          (move away from the teacher on the forget set),

then *min-steps* on retain batches,

    minimise  gamma * CE(s(x), y) + alpha_kl * mean_{x in R} d(x)   (stay close elsewhere).

Reads the forget set and (``retain_budget`` samples of) the retain set only.

BatchNorm: min-steps run in train mode on retain data (running statistics follow the retain
data); max-steps run with BatchNorm in eval mode, so forget images never enter the running
statistics. Max-step gradients are clipped (``max_grad_norm``) because ``-d`` is unbounded.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.errors import ConfigError
from medunlearn.loop import sgd_steps
from medunlearn.methods._common import (
    Forward,
    SGDOptions,
    augment_policy,
    clone_model,
    freeze_batchnorm_stats,
    loss_weights,
    need_retain,
    outcome,
    read_batches,
    sgd,
    subsample,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float) -> torch.Tensor:
    """``T^2 * mean_x KL(softmax(t/T) || softmax(s/T))`` (Hinton et al.'s scaled KD loss)."""
    log_s = F.log_softmax(student_logits / temperature, dim=1)
    log_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_s, log_t, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


@register_method("scrub")
class Scrub(Method):
    """SCRUB: alternate forget max-steps and retain min-steps against the original teacher."""

    summary = "SCRUB teacher-student max-min distillation (forget max-steps, retain min-steps)"

    @dataclass(frozen=True)
    class Config(SGDOptions):
        """Hyperparameters of ``scrub`` (SCRUB's recipe: 3 epochs, max-steps in the first 2,
        T=4, SGD with momentum 0.9 and weight decay 5e-4)."""

        epochs: int = 3  # epochs of min-steps
        max_epochs: int = 2  # the first max_epochs epochs also take max-steps on the forget set
        lr: float = 0.002  # peak learning rate (cosine schedule)
        batch_size: int = 64  # retain (min-step) batch size
        forget_batch_size: int = 32  # forget (max-step) batch size
        temperature: float = 4.0  # T of the distillation divergence
        gamma: float = 1.0  # weight of the retain cross-entropy
        alpha_kl: float = 0.5  # weight of the retain distillation term
        max_grad_norm: float = 1.0  # gradient-norm clip on max-steps
        augment: bool = False  # augment retain batches with the dataset's policy
        retain_budget: int | None = 1024  # retain samples used (seeded subset; None: all)

    def validate(self) -> None:
        super().validate()
        c = self.config
        if not 0 <= c.max_epochs <= c.epochs:
            raise ConfigError(f"max_epochs must be between 0 and epochs ({c.epochs}), "
                              f"got {c.max_epochs}.")
        if c.temperature <= 0 or c.forget_batch_size < 1 or c.max_grad_norm <= 0:
            raise ConfigError("scrub needs temperature > 0, forget_batch_size >= 1 and "
                              "max_grad_norm > 0.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        need_retain(ctx, self.name)
        teacher = copy.deepcopy(model).to(ctx.device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        student = clone_model(model).to(ctx.device)
        forward = Forward(ctx)
        forward.prepare(student)
        forward.prepare(teacher)
        g = ctx.generator(41)
        retain = subsample(ctx.retain, c.retain_budget, g)
        w = loss_weights(ctx, ctx.retain)
        n_max = math.ceil(len(ctx.forget) / c.forget_batch_size) if len(ctx.forget) else 0
        n_min = math.ceil(len(retain) / c.batch_size)
        opt, sched = sgd(student, c, c.max_epochs * n_max + c.epochs * n_min)
        augment = augment_policy(ctx, c)
        scaler = ctx.runtime.grad_scaler()
        steps, max_steps = 0, 0
        last_max, last_min = float("nan"), float("nan")

        def max_loss(batch):  # push the student away from the teacher on forget images
            x = batch[0]
            with torch.no_grad():
                t = forward(teacher, x)
            return -distill_kl(forward(student, x), t, c.temperature)

        def min_loss(batch):  # stay close to the teacher and the labels on retain images
            x, y = batch[0], batch[1]
            with torch.no_grad():
                t = forward(teacher, x)
            s = forward(student, x)
            return c.gamma * F.cross_entropy(s, y, weight=w) + \
                c.alpha_kl * distill_kl(s, t, c.temperature)

        for epoch in range(c.epochs):
            if epoch < c.max_epochs and len(ctx.forget):
                student.train()
                freeze_batchnorm_stats(student)
                st = sgd_steps(student, read_batches(ctx, ctx.forget,
                                                     batch_size=c.forget_batch_size, generator=g,
                                                     shuffle=True, augment=augment),
                               max_loss, optimizer=opt, scheduler=sched, runtime=ctx.runtime,
                               clip_norm=c.max_grad_norm, scaler=scaler)
                steps += st.steps
                max_steps += st.steps
                last_max = -st.mean_loss
            student.train()
            st = sgd_steps(student, read_batches(ctx, retain, batch_size=c.batch_size,
                                                 generator=g, shuffle=True, augment=augment),
                           min_loss, optimizer=opt, scheduler=sched, runtime=ctx.runtime,
                           scaler=scaler)
            steps += st.steps
            last_min = st.mean_loss
        return outcome(student, steps, max_steps=max_steps, min_steps=steps - max_steps,
                       retain_used=len(retain), last_forget_kl=last_max,
                       last_retain_loss=last_min)
