"""``random-label``: learn the forget samples under random wrong labels, alongside retain data."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.methods._common import (
    RelabelOptions,
    clone_model,
    outcome,
    random_wrong_labels,
    relabel_epochs,
    relabel_weights,
    train_on,
)
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


def relabelled_targets(ctx: UnlearnContext, generator: torch.Generator) -> torch.Tensor:
    """Training-split labels with each forget sample's label replaced by a random wrong one."""
    targets = ctx.dataset.train.labels.clone()
    targets[ctx.forget] = random_wrong_labels(targets[ctx.forget], ctx.dataset.num_classes,
                                              generator)
    return targets


@register_method("random-label")
class RandomLabel(Method):
    """Random labelling (Golatkar et al.; SalUn's RL): each forget sample gets one random wrong
    label (drawn once, seeded) and the model trains on forget and retain samples shuffled
    together."""

    summary = "train on forget samples with random wrong labels, together with retain data"

    @dataclass(frozen=True)
    class Config(RelabelOptions):
        """Defaults: 2 epochs, lr 0.01 (cosine), batch 128, momentum 0.9, weight decay 5e-4,
        augmentation on, all retain samples each epoch (``retain_budget`` None), class weights
        balanced over the trained labels."""

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        cfg = self.config
        net = clone_model(model)
        g = ctx.generator(5)
        targets = relabelled_targets(ctx, g)
        epochs = relabel_epochs(ctx, cfg, g)
        w = relabel_weights(ctx, cfg.weight_by, targets, epochs[0])
        targets = targets.to(ctx.device)
        steps = train_on(net, ctx, cfg, epoch_indices=epochs, generator=g, desc=self.name,
                         loss_fn=lambda logits, y, b: F.cross_entropy(logits, targets[b],
                                                                      weight=w))
        return outcome(net, steps)
