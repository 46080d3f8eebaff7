"""Building blocks shared by the unlearning methods.

* :class:`SGDOptions` the optimisation options most methods share (subclass it for a
  method's ``Config`` and override the defaults).
* :func:`read_batches` batches of training-split indices that report every batch to
  ``ctx.seen`` (the data-access audit).
* :func:`train_on` "train on (re)labelled indices" on top of the one loop
  (:func:`medunlearn.loop.sgd_steps`): it takes the index set of each epoch, a loss function
  and optional hooks around each optimiser step.
* :class:`MaskGuard` keeps parameter entries outside a mask bit-identical (SalUn).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medunlearn.config import TrainConfig
from medunlearn.data import iterate_batches
from medunlearn.errors import ForgetSetError
from medunlearn.loop import sgd_steps
from medunlearn.methods.base import UnlearnContext, UnlearnOutcome, check_options
from medunlearn.models import Classifier
from medunlearn.progress import progress_bar
from medunlearn.training import class_weights, make_optimizer

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SGDOptions:
    """Optimisation options shared by the fine-tuning-style methods (SGD, Nesterov momentum)."""

    epochs: int = 2  # passes over the method's training indices
    lr: float = 0.01  # peak learning rate
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"  # "cosine", "onecycle" or "constant" (as in training)
    augment: bool = True  # apply the dataset's augmentation policy to training batches


@dataclass(frozen=True)
class RelabelOptions(SGDOptions):
    """Options of the relabelling methods (random-label, SalUn, SalUn-CRA): the retain replay
    per epoch and how the loss is class-balanced.

    ``weight_by="targets"`` balances the class weights over the labels actually trained on
    (relabelled forget samples included). ``"retain"`` balances them over the retain labels as
    the original recipe did; in an imbalanced binary task most relabelled samples then carry the
    minority label, which those weights over-count, and with large forget sets the model learns
    to predict that class for everyone (docs/results section 9)."""

    retain_budget: int | None = None  # max retain samples per epoch (seeded), None: all
    retain_per_forget: float | None = None  # budget >= this x forget samples (None: fixed)
    weight_by: str = "targets"  # class weights from the trained "targets" or "retain" labels


def clone_model(model: nn.Module) -> Classifier:
    """A deep copy in training mode, so the original is never changed."""
    m = copy.deepcopy(model)
    m.train()
    return m


class Forward:
    """A training forward pass as :func:`medunlearn.training.fit` runs it, in the context's
    :class:`~medunlearn.loop.Runtime`: inputs moved to the device in the training layout,
    autocast where the recipe resolves to bf16/fp16, logits back in float32 (losses and
    gradients stay float32). Using the same arithmetic as training keeps an unlearning method's
    time comparable to retraining's.

    Call :meth:`prepare` on each model first (device and layout); :func:`outcome` returns
    models to the contiguous layout the checkpoint writer needs.
    """

    def __init__(self, ctx: UnlearnContext) -> None:
        self.rt = ctx.runtime
        self.layout = torch.contiguous_format

    def prepare(self, model: nn.Module) -> nn.Module:
        self.layout = self.rt.prepare(model)
        return model

    def __call__(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.rt.forward(model, self.rt.batch(x, self.layout))


def freeze_batchnorm_stats(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: running statistics stop updating."""
    for mod in model.modules():
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            mod.eval()


def outcome(model: Classifier, steps: int, **details) -> UnlearnOutcome:
    """The :class:`UnlearnOutcome` of an unlearned copy, in eval mode and the contiguous layout
    checkpoints are written in. The caller (``medunlearn.api``) times the method."""
    model.to(memory_format=torch.contiguous_format)
    model.eval()
    return UnlearnOutcome(model=model, steps=steps, details=details)


def need_retain(ctx: UnlearnContext, method: str) -> None:
    if len(ctx.retain) == 0:
        raise ForgetSetError(
            f"Method {method!r} learns from the retain set, but nothing is left to retain (the "
            "forget set covers every remaining training sample). Forget fewer samples."
        )


def subsample(indices: torch.Tensor, budget: int | None, generator: torch.Generator
              ) -> torch.Tensor:
    """At most ``budget`` of ``indices`` drawn without replacement (None: all of them)."""
    if budget is None or budget >= len(indices):
        return indices
    pick = torch.randperm(len(indices), generator=generator)[:budget]
    return indices[pick].sort().values


def retain_quota(budget: int | None, per_forget: float | None, n_forget: int) -> int | None:
    """Retain samples per epoch: ``budget``, raised to ``per_forget`` times the forget-set size
    when that is larger, so relabelled forget samples never outnumber retain samples by more
    than ``1 / per_forget`` (None budget: every retain sample; None ``per_forget``: fixed)."""
    if budget is None or per_forget is None:
        return budget
    return max(budget, math.ceil(per_forget * n_forget))


def read_batches(ctx: UnlearnContext, indices: torch.Tensor, *, batch_size: int,
                 generator: torch.Generator | None = None, shuffle: bool = False,
                 augment: str = "none") -> Iterator[tuple[torch.Tensor, torch.Tensor,
                                                          torch.Tensor]]:
    """``iterate_batches`` over the training split that reports each batch to ``ctx.seen``;
    images and labels come on the context's device (indices stay on the CPU)."""
    for x, y, b in iterate_batches(ctx.dataset.train, indices, batch_size=batch_size,
                                   shuffle=shuffle, generator=generator, augment=augment):
        ctx.seen(b)
        yield x.to(ctx.device, non_blocking=True), y.to(ctx.device), b


def cycle_batches(ctx: UnlearnContext, indices: torch.Tensor, *, batch_size: int,
                  generator: torch.Generator, augment: str = "none"
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless reshuffled batches of ``indices`` (pairs a small set with a large one)."""
    while True:
        yield from read_batches(ctx, indices, batch_size=batch_size, generator=generator,
                                shuffle=True, augment=augment)


def augment_policy(ctx: UnlearnContext, cfg) -> str:
    return ctx.dataset.augment if getattr(cfg, "augment", False) else "none"


def sgd(model: nn.Module, cfg, total_steps: int):
    """SGD + schedule from the shared options, built with :func:`training.make_optimizer`."""
    tc = TrainConfig(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                     schedule=cfg.schedule)
    return make_optimizer(model.parameters(), tc, total_steps)


def loss_weights(ctx: UnlearnContext, indices: torch.Tensor) -> torch.Tensor | None:
    """Class weights as in the original recipe (``balanced`` or none), from ``indices``' labels."""
    return target_weights(ctx, ctx.dataset.train.labels, indices)


def target_weights(ctx: UnlearnContext, targets: torch.Tensor, indices: torch.Tensor
                   ) -> torch.Tensor | None:
    """Class weights as in the original recipe, from the labels a method really trains on:
    ``targets[indices]`` (relabelled forget samples included; negative targets, i.e. samples
    that take another loss, left out)."""
    t = targets[indices]
    t = t[t >= 0]
    if len(t) == 0:
        return None
    w = class_weights(t.cpu(), ctx.dataset.num_classes, ctx.train_config.class_weights)
    return w.to(ctx.device) if w is not None else None


def relabel_weights(ctx: UnlearnContext, weight_by: str, targets: torch.Tensor,
                    indices: torch.Tensor) -> torch.Tensor | None:
    """The class weights of a relabelling method: ``"retain"`` from the retain labels (as the
    original recipe balanced them), ``"targets"`` from the labels of the samples it trains on
    (``target_weights``), so relabelled forget samples count in the balance."""
    if weight_by == "targets":
        return target_weights(ctx, targets, indices)
    return loss_weights(ctx, ctx.retain)


def relabel_epochs(ctx: UnlearnContext, cfg, generator: torch.Generator) -> list[torch.Tensor]:
    """Each epoch's indices for a relabelling method: every forget sample and the retain samples
    of its budget (``retain_budget``, raised by ``retain_per_forget``), drawn per epoch."""
    budget = retain_quota(cfg.retain_budget, cfg.retain_per_forget, len(ctx.forget))
    return [torch.cat([ctx.forget, subsample(ctx.retain, budget, generator)])
            for _ in range(cfg.epochs)]


def random_wrong_labels(labels: torch.Tensor, num_classes: int, generator: torch.Generator
                        ) -> torch.Tensor:
    """A uniformly random label different from each true label."""
    if num_classes < 2:
        return labels.clone()
    shift = torch.randint(1, num_classes, labels.shape, generator=generator)  # cpu: labels
    return (labels + shift) % num_classes


def clamped_ascent_loss(logits: torch.Tensor, y: torch.Tensor, ceiling: float) -> torch.Tensor:
    """Mean cross-entropy over the samples whose loss is still below ``ceiling`` (0 otherwise).

    Ascending this loss raises each forget sample's loss up to the ceiling and no further, so
    gradient ascent cannot diverge.
    """
    per = F.cross_entropy(logits, y, reduction="none")
    return (per * (per.detach() < ceiling)).sum() / max(len(y), 1)


def train_on(model: Classifier, ctx: UnlearnContext, cfg, *,
             epoch_indices: list[torch.Tensor], loss_fn: LossFn, generator: torch.Generator,
             desc: str, after_step: Callable[[], None] | None = None,
             before_step: Callable[[], None] | None = None, freeze_bn: bool = False) -> int:
    """Train ``model`` in place with SGD over a list of per-epoch index sets.

    Args:
        model: The (copied) model to update.
        ctx: The unlearning context (data, runtime, ``ctx.seen`` audit, progress flag).
        cfg: A config with the :class:`SGDOptions` fields.
        epoch_indices: Training-split indices of each epoch (shuffled and batched here).
        loss_fn: ``loss_fn(logits, labels, indices) -> scalar``; ``indices`` lets it look up
            replacement targets or per-sample loss kinds.
        generator: Seeds order and augmentation.
        desc: Progress-bar label.
        after_step: Called after every optimiser step (e.g. to restore frozen entries).
        before_step: Called after ``backward`` and before the step (e.g. to mask gradients).
        freeze_bn: Keep BatchNorm running statistics as they are.

    Returns:
        The number of optimiser steps taken.
    """
    bs = cfg.batch_size
    total = sum(math.ceil(len(ix) / bs) for ix in epoch_indices)
    opt, sched = sgd(model, cfg, total)
    scaler = ctx.runtime.grad_scaler()
    augment = augment_policy(ctx, cfg)
    forward = Forward(ctx)
    forward.prepare(model)
    steps = 0
    bar = progress_bar(total, desc, enabled=ctx.progress)
    for ix in epoch_indices:
        model.train()
        if freeze_bn:
            freeze_batchnorm_stats(model)
        batches = read_batches(ctx, ix, batch_size=bs, generator=generator, shuffle=True,
                               augment=augment)
        steps += sgd_steps(model, batches, lambda b: loss_fn(forward(model, b[0]), b[1], b[2]),
                           optimizer=opt, scheduler=sched, runtime=ctx.runtime, scaler=scaler,
                           before_step=before_step, after_step=after_step,
                           on_step=lambda *_: bar.update(1)).steps
    bar.close()
    return steps


class MaskGuard:
    """Keeps every parameter entry outside ``masks`` bit-identical to its value at creation.

    ``mask_grads`` zeroes the gradient outside the mask (so momentum buffers see no gradient
    there); ``restore`` writes the saved values back into the unmasked entries after each step,
    which undoes anything weight decay or momentum moved. Together these hold by construction,
    whatever the optimiser does. Parameters without a mask entry are frozen entirely.
    """

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
        self.params = dict(model.named_parameters())
        self.masks = {n: masks.get(n, torch.zeros_like(p, dtype=torch.bool))
                      for n, p in self.params.items()}
        self.saved = {n: p.detach().clone() for n, p in self.params.items()}

    def mask_grads(self) -> None:
        for n, p in self.params.items():
            if p.grad is not None:
                p.grad.mul_(self.masks[n])

    @torch.no_grad()
    def restore(self) -> None:
        for n, p in self.params.items():
            p.copy_(torch.where(self.masks[n], p, self.saved[n]))


__all__ = [
    "Forward", "MaskGuard", "SGDOptions", "check_options", "clamped_ascent_loss",
    "clone_model", "cycle_batches", "freeze_batchnorm_stats", "loss_weights", "need_retain",
    "outcome", "random_wrong_labels", "read_batches", "subsample", "train_on",
]
