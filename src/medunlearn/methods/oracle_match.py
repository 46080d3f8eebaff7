"""``oracle-match``: fine-tune the model so that its outputs match what a retrained model would
output (oracle matching, after DMM, Georgiev et al., ICLR 2025), with out-of-fold predictions
of K fold models as the stand-in for the retrained oracle.

The K fold models (:func:`medunlearn.evaluation.companions.kfold_masks`: model k trained with
the original's recipe without fold k) are trained once per model, before any request
(``medunlearn shadows RUN --kind kfold``), and only their stored logits are read here: every
training image has one model that never saw it, whose prediction on it is a cheap draw of what
a model retrained without that image outputs. The method takes them in memory
(``UnlearnContext.folds``, a :class:`~medunlearn.evaluation.companions.CompanionSet`).

Unlearning, for ``epochs`` short passes:

* **forget images**: cross-entropy against the out-of-fold probabilities (the KL divergence to
  them up to a constant), so each forget image moves to where an oracle that never saw it
  puts it: hard images lose confidence, easy ones keep it.
* **retain images** (a fresh seeded random subset of ``retain_budget`` per epoch): cross-entropy
  against the *original's* probabilities (``retain_target="original"``, the default), a
  model trained on them as the retrained oracle is; matching the out-of-fold output there would
  teach the model to treat its own training images as unseen. ``retain_target="folds"`` uses
  the mean of the fold models that trained on the image instead (an ensemble: smoother).
* Optionally (``noise`` > 0), seeded Gaussian noise relative to each weight tensor's scale
  before matching (as ``noise-repair``): retrained models differ from run to run, and without
  a seeded perturbation every run lands near the same point.
* Optionally (``target_spread`` > 0), each run draws its own forget targets around the
  out-of-fold ones: seeded Gaussian noise on their (class-centred) logits, scaled by how much
  independently trained models disagree on an image none of them saw
  (:func:`unseen_logit_spread`: the fold models on the test split). One out-of-fold prediction
  is one draw of what a retrained model outputs; matching every run to that same draw takes
  away the run-to-run spread that retrained models have on exactly the forgotten images.

Randomness (retain subsets, batch order, augmentation, the noise) comes from the run's seed, so
N runs differ as N retrainings do.

Forgetting covers copies: every fold model except one trained on each forgotten image, so a
fold set is derived from the forgotten images. After a request is served, the set must be
deleted and rebuilt for the new model (``medunlearn shadows NEW_RUN --kind kfold``) before it
serves another one (``CompanionSet.trained_on`` names the members concerned).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medunlearn.errors import ConfigError
from medunlearn.evaluation.companions import KFOLD, KFOLD_HINT, CompanionSet
from medunlearn.evaluation.utility import softmax
from medunlearn.methods._common import clone_model, need_retain, outcome, subsample, train_on
from medunlearn.methods._repair import RepairOptions, check_range
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.methods.noise_repair import add_relative_noise
from medunlearn.models import Classifier
from medunlearn.training import predict_logits

RETAIN_TARGETS = ("original", "folds")
FOLDS_HINT = KFOLD_HINT  # what a user runs to build the fold models of run folder RUN


def fold_probabilities(folds: CompanionSet, indices: np.ndarray, *, out_of_fold: bool
                       ) -> np.ndarray:
    """Mean probabilities ``(n, C)`` on training images ``indices`` of the fold models that did
    not (``out_of_fold``) or did train on each image. An image without such a model (outside the
    set's pool, e.g. forgotten earlier) gets the mean of all K."""
    idx = np.asarray(indices, dtype=np.int64)
    probs = softmax(folds.logits["train"][:, idx].astype(np.float64))  # (K, n, C)
    use = ~folds.membership[:, idx] if out_of_fold else folds.membership[:, idx]  # (K, n)
    use = use.astype(np.float64)
    none = use.sum(axis=0) == 0
    use[:, none] = 1.0
    return np.einsum("kn,knc->nc", use, probs) / use.sum(axis=0)[:, None]


def unseen_logit_spread(folds: CompanionSet) -> float:
    """How much independently trained models disagree on images none of them saw: the standard
    deviation across the K fold models of each class-centred logit on the test split (no
    member trained on it), pooled over images and classes."""
    lg = folds.logits["test"].astype(np.float64)  # (K, n, C)
    centred = lg - lg.mean(axis=2, keepdims=True)
    if lg.shape[0] < 2 or lg.shape[1] == 0:
        return 0.0
    return float(np.sqrt(centred.var(axis=0, ddof=1).mean()))


def spread_targets(probs: np.ndarray, sigma: float, generator: torch.Generator) -> np.ndarray:
    """``probs`` with seeded Gaussian noise of standard deviation ``sigma`` on each class-centred
    log-probability (class-centred noise, rescaled so that each class's share has variance
    ``sigma ** 2``; for two classes the logit margin moves by ``2 * sigma``)."""
    n, c = probs.shape
    if sigma <= 0 or c < 2:
        return probs
    z = torch.randn((n, c), generator=generator, dtype=torch.float64).numpy()  # cpu: seeded
    e = sigma * np.sqrt(c / (c - 1)) * (z - z.mean(axis=1, keepdims=True))
    return softmax(np.log(np.clip(probs, 1e-12, 1.0)) + e)


def check_folds(folds: CompanionSet | None, ctx: UnlearnContext, method: str) -> CompanionSet:
    """The context's fold set, checked against the data in memory.

    Raises:
        ConfigError: no fold set, or a companion set of another kind.
        CheckpointError: fold models trained on other data (with the command that rebuilds
            them).
    """
    if folds is None:
        raise ConfigError(
            f"Method {method!r} needs the K fold models of the model it unlearns (their "
            f"out-of-fold predictions are its targets). Build them once: '{FOLDS_HINT}' "
            "(they go to RUN/kfold, where unlearning finds them), or pass folds=/--folds DIR.")
    if folds.kind != KFOLD:
        raise ConfigError(
            f"Method {method!r} needs K-fold models, but {folds.path} holds {folds.kind} "
            f"models. Build K-fold models: '{FOLDS_HINT}'.")
    folds.check_data(ctx.dataset)
    return folds


@register_method("oracle-match")
class OracleMatch(Method):
    """Match out-of-fold predictions (K fold models trained once) on the forget images and the
    original's own outputs on retain images."""

    summary = ("Fine-tune to the out-of-fold predictions of K fold models (a retraining "
               "oracle's stand-in) on the forget set; needs 'shadows RUN --kind kfold'")
    needs_folds = True

    @dataclass(frozen=True)
    class Config(RepairOptions):
        """Defaults before tuning (the published ones: ``defaults/methods.toml``): the damage
        and repair budget of ``noise-repair``'s verified defaults (noise 0.5 x each weight
        tensor's RMS; 2 epochs, each of every forget image + 2048 random retain images, lr 0.05
        cosine, batch 128, momentum 0.9, weight decay 5e-4, augmentation on), retain targets
        from the original."""

        epochs: int = 2
        lr: float = 0.05
        retain_budget: int | None = 2048  # retain images per epoch (seeded), None: all
        noise: float = 0.5  # weight noise before matching, relative to each tensor's RMS, >= 0
        retain_target: str = "original"  # "original" or "folds" (mean of the in-fold models)
        # per-run spread of the forget targets, in units of unseen_logit_spread (0: none)
        target_spread: float = 0.0

    def validate(self) -> None:
        super().validate()
        c = self.config
        check_range(self.name, "noise", c.noise, c.noise >= 0, "non-negative (>= 0)")
        check_range(self.name, "retain_target", c.retain_target,
                    c.retain_target in RETAIN_TARGETS, " or ".join(RETAIN_TARGETS))
        check_range(self.name, "target_spread", c.target_spread, c.target_spread >= 0,
                    "non-negative (>= 0)")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        need_retain(ctx, self.name)
        folds = check_folds(ctx.folds, ctx, self.name)
        gen = ctx.generator(47)
        retain_epochs = [subsample(ctx.retain, c.retain_budget, gen) for _ in range(c.epochs)]
        retain_seen = torch.unique(torch.cat(retain_epochs))
        n, classes = len(ctx.dataset.train), ctx.dataset.num_classes
        # soft target per train index, filled from numpy, then moved to the device below
        targets = torch.zeros(n, classes, dtype=torch.float32)  # cpu: filled from numpy
        f_idx = ctx.forget.numpy()
        oof = fold_probabilities(folds, f_idx, out_of_fold=True)
        sigma = c.target_spread * unseen_logit_spread(folds) if c.target_spread > 0 else 0.0
        targets[ctx.forget] = torch.from_numpy(
            spread_targets(oof, sigma, ctx.generator(49))).float()
        if c.retain_target == "original":
            ctx.seen(retain_seen)
            logits = predict_logits(model, ctx.dataset.train, retain_seen, runtime=ctx.runtime)
            targets[retain_seen] = torch.from_numpy(softmax(logits.astype(np.float64))).float()
        else:
            targets[retain_seen] = torch.from_numpy(fold_probabilities(
                folds, retain_seen.numpy(), out_of_fold=False)).float()
        targets = targets.to(ctx.device)
        net = clone_model(model)
        ratio = add_relative_noise(net, c.noise, ctx.generator(48)) if c.noise > 0 else 0.0
        epochs = [torch.cat([ctx.forget, r]) for r in retain_epochs]
        steps = train_on(net, ctx, c, epoch_indices=epochs, generator=gen, desc=self.name,
                         loss_fn=lambda lg, _y, b: F.cross_entropy(
                             lg, targets[b.to(targets.device)]))
        oof = torch.from_numpy(oof).float()
        labels = ctx.dataset.train.labels[ctx.forget]
        return outcome(net, steps, noise_to_weight=ratio, target_sigma=sigma,
                       folds=str(folds.path), folds_fingerprint=folds.manifest["fingerprint"],
                       folds_k=folds.k,
                       oof_forget_accuracy=float((oof.argmax(1) == labels).float().mean()),
                       oof_forget_true_prob=float(oof.gather(1, labels[:, None]).mean()),
                       oof_saw_copy=copies_seen(folds, f_idx))


def copies_seen(folds: CompanionSet, forget: np.ndarray) -> int:
    """Forget images whose out-of-fold model trained on another copy (same SHA-256) of them: a
    duplicate in another fold leaks the image into its target (recorded, not corrected)."""
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(folds.train_hashes):
        by_hash.setdefault(h, []).append(i)
    count = 0
    for i in np.asarray(forget, dtype=np.int64):
        copies = [j for j in by_hash.get(folds.train_hashes[i], []) if j != i]
        if not copies:
            continue
        out = ~folds.membership[:, i]
        if folds.membership[np.ix_(out, copies)].any():
            count += 1
    return count


__all__ = ["FOLDS_HINT", "OracleMatch", "RETAIN_TARGETS", "check_folds", "copies_seen",
           "fold_probabilities", "spread_targets", "unseen_logit_spread"]
