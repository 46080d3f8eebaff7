"""``salun-cra``: clinical-risk-aware SalUn.

Random relabelling teaches a binary medical classifier that a forgotten malignant image "looks
benign", which raises the false-negative rate. SalUn-CRA keeps SalUn's saliency mask and retain
data but changes the target of *disease-positive* forget samples: instead of a random wrong
label they get an entropy-maximisation loss that pushes their prediction towards the uniform
distribution. Negative forget samples keep random wrong labels; retain samples keep their true
labels. Positive means a label in ``dataset.view.positive_labels`` (label 1 of a binary view, or
the disease classes of a multi-class view).

Entropy maximisation is implemented as ``KL(uniform || p) = -mean_k log p_k - log K``, which is
zero exactly at the uniform prediction and (unlike ``-H(p)``) keeps a useful gradient when the
model is confident.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from medunlearn.errors import ConfigError
from medunlearn.methods._common import random_wrong_labels
from medunlearn.methods.base import UnlearnContext, register_method
from medunlearn.methods.salun import SalUn

IGNORE = -100  # target of samples that take the entropy loss instead of cross-entropy


def cra_targets(labels: torch.Tensor, forget: torch.Tensor, *, positive_labels: tuple[int, ...],
                num_classes: int, generator: torch.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample targets and loss kinds over a whole split.

    Args:
        labels: (N,) true labels of the split.
        forget: (F,) indices of the forget samples.
        positive_labels: Labels that mean disease.
        num_classes: Number of classes.
        generator: Seeds the random wrong labels.

    Returns:
        ``(targets, entropy)``: ``targets`` (N,) holds the true label for retain samples, a
        random wrong label for negative forget samples and ``IGNORE`` for positive forget
        samples; ``entropy`` (N,) bool marks the positive forget samples, which take the
        entropy-maximisation loss.
    """
    targets = labels.clone()
    entropy = torch.zeros(len(labels), dtype=torch.bool)  # cpu: per training sample
    is_pos = torch.isin(labels[forget], torch.tensor(positive_labels, dtype=labels.dtype,
                                                     device=labels.device))
    pos, neg = forget[is_pos], forget[~is_pos]
    targets[neg] = random_wrong_labels(labels[neg], num_classes, generator)
    targets[pos] = IGNORE
    entropy[pos] = True
    return targets, entropy


def cra_per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, entropy: torch.Tensor,
                        weight: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) losses: ``KL(uniform || softmax)`` where ``entropy`` is set, else (class-weighted)
    cross-entropy with ``targets``."""
    logp = F.log_softmax(logits, dim=1)  # (B, K)
    kl_uniform = -logp.mean(dim=1) - math.log(logits.shape[1])
    ce = F.nll_loss(logp, torch.where(entropy, IGNORE, targets), weight=weight,
                    ignore_index=IGNORE, reduction="none")
    return torch.where(entropy, kl_uniform, ce)


def cra_loss(logits: torch.Tensor, targets: torch.Tensor, entropy: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of :func:`cra_per_sample_loss` over the batch."""
    return cra_per_sample_loss(logits, targets, entropy, weight).mean()


@register_method("salun-cra")
class SalUnCRA(SalUn):
    """SalUn with entropy maximisation (not random labels) for disease-positive forget samples."""

    summary = ("SalUn, but positive (disease) forget samples are pushed to uniform predictions "
               "instead of random labels")

    @dataclass(frozen=True)
    class Config(SalUn.Config):
        """Defaults as ``salun``: mask_fraction 0.5, 2 epochs, lr 0.01 (cosine), batch 128,
        momentum 0.9, weight decay 5e-4, augmentation on, whole retain set, BN stats updated."""

    def forget_targets(self, ctx: UnlearnContext, generator: torch.Generator
                       ) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
        """Random wrong labels for negative forget samples, ``IGNORE`` and the entropy mask for
        positive ones."""
        positives = ctx.dataset.view.positive_labels
        if not positives:
            raise ConfigError(
                f"salun-cra needs to know which labels mean disease, but the "
                f"{ctx.dataset.view.kind} view of {ctx.dataset.name} has none. Train the "
                "model with --view binary or --positive-classes, or use salun."
            )
        targets, entropy = cra_targets(ctx.dataset.train.labels, ctx.forget,
                                       positive_labels=tuple(positives),
                                       num_classes=ctx.dataset.num_classes, generator=generator)
        n_ent = int(entropy.sum())
        details = {"entropy_forget_samples": n_ent,
                   "random_label_forget_samples": len(ctx.forget) - n_ent}
        return targets, entropy, details

    def forget_loss(self, targets: torch.Tensor, entropy: torch.Tensor | None,
                    weight: torch.Tensor | None):
        return lambda logits, y, b: cra_loss(logits, targets[b], entropy[b], weight)
