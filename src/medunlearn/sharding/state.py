"""What a sharded model carries besides its weights (:class:`ShardState`): the assignment, the
stage seeds and epochs, and every shard's checkpoint after each slice (:class:`Checkpoint`)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from torch import nn

from medunlearn.config import TrainConfig
from medunlearn.errors import CheckpointError, ConfigError
from medunlearn.fileio import canonical_safetensors
from medunlearn.models.ensemble import EnsembleClassifier, is_ensemble
from medunlearn.sharding.assignment import Assignment


def checkpoint_bytes(model: nn.Module, *, shard: int, stage: int, seed: int) -> bytes:
    """The safetensors bytes of a constituent after a slice stage (canonical header, so the same
    weights always give the same bytes)."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "medunlearn", "kind": "shard-checkpoint", "shard": str(shard),
            "slice": str(stage + 1), "seed": str(seed)}
    return canonical_safetensors(save_safetensors(state, metadata=meta))


@dataclass(frozen=True)
class Checkpoint:
    """One slice checkpoint: its bytes in memory, or a file read (and checked) on demand."""

    sha256: str
    data: bytes | None = field(default=None, repr=False)
    path: Path | None = None

    @classmethod
    def of(cls, data: bytes) -> Checkpoint:
        return cls(hashlib.sha256(data).hexdigest(), data)

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        try:
            data = Path(self.path).read_bytes()
        except OSError as exc:
            raise CheckpointError(f"Cannot read the shard checkpoint {self.path} "
                                  f"({exc.strerror or exc}). Restore the run folder.") from None
        if hashlib.sha256(data).hexdigest() != self.sha256:
            raise CheckpointError(
                f"The shard checkpoint {self.path} is not the file its run recorded (SHA-256 "
                "differs): it was changed or belongs to another run. Restore the folder or "
                "train the sharded model again.")
        return data

    def state(self) -> dict[str, torch.Tensor]:
        try:
            return load_safetensors(self.read())
        except (SafetensorError, ValueError) as exc:
            raise CheckpointError(f"The shard checkpoint {self.path or '(in memory)'} is not "
                                  f"readable safetensors ({exc}).") from None


@dataclass
class ShardState:
    """What a sharded model needs besides its weights to forget exactly.

    Attributes:
        assignment: Shard and slice of every training image.
        spec: The constituents' model spec (as a run's ``config.json`` ``model``).
        epochs: Epochs of each slice stage (:func:`stage_epochs`).
        seeds: (S, R) seed of each slice stage (:func:`stage_seed` of the seed that trained it).
        excluded: Training indices that no checkpoint has seen (forgotten images); they are
            never trained on again.
        checkpoints: (S, R) checkpoints after each slice, or None when they no longer describe
            the weights (an approximate method changed them): then only ``retrain`` applies.
        recipe: The training recipe the shards were trained with (exact forgetting repeats
            it; None: the caller's).
    """

    assignment: Assignment
    spec: dict
    epochs: tuple[int, ...]
    seeds: list[list[int]]
    excluded: frozenset[int] = frozenset()
    checkpoints: list[list[Checkpoint]] | None = None
    recipe: TrainConfig | None = None

    @property
    def shards(self) -> int:
        return self.assignment.shards

    @property
    def slices(self) -> int:
        return self.assignment.slices

    def build_model(self) -> EnsembleClassifier:
        """The ensemble of the last checkpoint of every shard."""
        from medunlearn.training import model_from_spec

        members = []
        for s in range(self.shards):
            m = model_from_spec(self.spec)
            m.load_state_dict(self.checkpoints[s][-1].state(), strict=True)
            members.append(m.eval())
        model = EnsembleClassifier(members).eval()
        model.shards = self
        return model

    def describes(self, model: EnsembleClassifier) -> bool:
        """Whether every constituent's weights equal its shard's last checkpoint."""
        if self.checkpoints is None or len(model) != self.shards:
            return False
        for s, member in enumerate(model.members):
            ck = self.checkpoints[s][-1].state()
            own = member.state_dict()
            if set(own) != set(ck) or not all(torch.equal(own[k].cpu(), ck[k]) for k in ck):
                return False
        return True

    def allowed(self, retain: np.ndarray | torch.Tensor | None = None) -> np.ndarray:
        """(N,) mask of the images a stage may train on: ``retain`` (all when None) minus the
        images no checkpoint has seen."""
        n = len(self.assignment)
        mask = np.ones(n, bool)
        if retain is not None:
            mask[:] = False
            mask[np.asarray(retain, dtype=np.int64)] = True
        if self.excluded:
            mask[np.fromiter(self.excluded, dtype=np.int64)] = False
        return mask


def shard_state_of(model: nn.Module, method: str) -> ShardState:
    """The :class:`ShardState` a sharded model carries.

    Raises:
        ConfigError: the model is not a sharded model from sharded training (or its folder).
    """
    state = getattr(model, "shards", None) if is_ensemble(model) else None
    if state is None:
        what = ("an ensemble without its shard assignment" if is_ensemble(model)
                else "a monolithic model")
        fix = ("" if method == "retrain" else
               ", or use 'retrain' or an approximate method")
        raise ConfigError(
            f"Method {method!r} on an ensemble needs a sharded model (trained with 'medunlearn "
            "train --shards S' or medunlearn.sharding.train_sharded, or loaded from such a run "
            f"folder); this is {what}. Train a sharded model{fix}.")
    return state


def settle(model: nn.Module) -> None:
    """Drop the slice checkpoints a sharded model carries once they no longer describe its
    weights (after an approximate method): they hold what the method was asked to forget. The
    assignment stays, so ``retrain`` still works; ``sisa`` then refuses."""
    state = getattr(model, "shards", None) if is_ensemble(model) else None
    if state is not None and state.checkpoints is not None and not state.describes(model):
        model.shards = dataclasses.replace(state, checkpoints=None)


__all__ = ["Checkpoint", "ShardState", "checkpoint_bytes", "settle", "shard_state_of"]
