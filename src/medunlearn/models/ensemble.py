"""The deployed model of sharded training: one ``nn.Module`` averaging its constituents.

A sharded model (``medunlearn train --shards S``, :mod:`medunlearn.sharding`) is S classifiers,
each trained on its own disjoint shard. :class:`EnsembleClassifier` serves them as one model:

* ``forward(x)`` returns ``log(mean_s softmax(logits_s))`` (N, K): the log of the mean of the
  constituents' probabilities. It is a valid logit vector (``softmax`` of it *is* the mean
  probability, ``argmax`` the ensemble's vote by probability, cross-entropy on it the loss of
  the averaged prediction), so every metric, report and method that reads logits works on it.
* ``features(x)`` is the concatenation of the constituents' penultimate features (N, S * D),
  and ``head`` an :class:`EnsembleHead` that maps those features to the same output
  (each constituent's linear head on its own D columns, then the log-mean-probability).
  ``head(features(x)) == forward(x)``, which is what inference with features
  (:func:`medunlearn.loop.infer`), the representation probe (features of all constituents, so a
  residue of the forgotten images in any of them is visible) and the per-image feature cache
  (keyed by the weights outside the head) rely on.

The head is *not* linear. Code that needs a linear last layer (the Newton step's ``head`` and
``last-block`` scopes) refuses an ensemble with :func:`refuse_ensemble`, whose message names
the exact ``sisa`` method.

The state dict holds ``members.<s>.*`` (each constituent's own names under its index); the head
owns no tensors (it refers to the constituents' heads), so nothing is stored twice.
``shards`` carries the sharding plan and the slice checkpoints
(:class:`medunlearn.sharding.ShardState`) when the model came from sharded training; it is not
part of the state dict.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medunlearn.errors import ConfigError


def log_mean_prob(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_s softmax(logits_s))`` of S logit tensors (N, K), computed stably in the
    log domain (``logsumexp`` of the log-probabilities minus ``log S``)."""
    logp = torch.stack([F.log_softmax(lo.float(), dim=1) for lo in logits])  # (S, N, K)
    return torch.logsumexp(logp, dim=0) - math.log(len(logits))


class EnsembleHead(nn.Module):
    """Maps concatenated constituent features (N, S * D) to the ensemble's log-mean-probability.

    It holds no tensors of its own: :meth:`parameters` yields the constituents' head tensors
    (so device, dtype and "every weight but the head" digests see them), but the state dict does
    not list them twice.
    """

    def __init__(self, members: nn.ModuleList) -> None:
        super().__init__()
        self._members = [members]  # a plain list: the members are registered by the ensemble
        heads = [m.head for m in members]
        self.in_features = sum(h.in_features for h in heads)
        self.out_features = heads[0].out_features
        self._widths = [h.in_features for h in heads]

    @property
    def heads(self) -> list[nn.Linear]:
        return [m.head for m in self._members[0]]

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, nn.Parameter]]:
        for i, h in enumerate(self.heads):
            for n, p in h.named_parameters():
                yield (f"{prefix}.{i}.{n}" if prefix else f"{i}.{n}"), p

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        for _, p in self.named_parameters():
            yield p

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        parts = torch.split(features, self._widths, dim=1)  # S x (N, D_s)
        return log_mean_prob([h(f) for h, f in zip(self.heads, parts, strict=True)])


class EnsembleClassifier(nn.Module):
    """The mean of the constituents' probabilities as one classifier (see the module docstring).

    Args:
        members: S classifiers with ``features(x)`` and a linear ``head`` (medunlearn's own
            :class:`~medunlearn.models.Classifier`), all with the same classes.
    """

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("An ensemble needs at least one constituent model.")
        for m in members:
            if not (hasattr(m, "features") and isinstance(getattr(m, "head", None), nn.Linear)):
                raise ConfigError(f"Ensemble constituents need features(x) and a linear head; "
                                  f"got {type(m).__name__}.")
        if len({m.head.out_features for m in members}) != 1:
            raise ConfigError("Ensemble constituents must have the same number of classes.")
        self.members = nn.ModuleList(members)
        self.head = EnsembleHead(self.members)
        self.shards = None  # medunlearn.sharding.ShardState, set by sharded training / load_run

    def __len__(self) -> int:
        return len(self.members)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenated penultimate features (N, S * D) of images ``x`` (N, C, H, W)."""
        return torch.cat([m.features(x) for m in self.members], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return log_mean_prob([m(x) for m in self.members])  # (N, K)


def is_ensemble(model: nn.Module) -> bool:
    return isinstance(model, EnsembleClassifier)


def has_parts(model: nn.Module) -> bool:
    """Whether ``model`` exposes ``features(x)`` and a head medunlearn can apply to them (a
    linear layer, or an ensemble's :class:`EnsembleHead`)."""
    return hasattr(model, "features") and isinstance(getattr(model, "head", None),
                                                     (nn.Linear, EnsembleHead))


def refuse_ensemble(model: nn.Module, what: str) -> None:
    """Raise a :class:`ConfigError` naming ``sisa`` if ``model`` is a sharded ensemble.

    Args:
        what: What cannot run on an ensemble and why, e.g. ``"newton with scope='head' (it
            needs a linear last layer)"``.
    """
    if is_ensemble(model):
        raise ConfigError(
            f"{what} cannot run on a sharded model (an ensemble of {len(model)} constituents "
            "whose output is the mean of their probabilities). Forget from a sharded model with "
            "the exact method 'sisa' (it retrains only the shards that hold the images), or "
            "with 'retrain'.")


__all__ = ["EnsembleClassifier", "EnsembleHead", "has_parts", "is_ensemble", "log_mean_prob",
           "refuse_ensemble"]
