"""``sisa``: exact forgetting from a sharded model by retraining only the shards that saw the
images (SISA, Bourtoule et al., IEEE S&P 2021; :mod:`medunlearn.sharding`)."""

from __future__ import annotations

from dataclasses import dataclass

from medunlearn.methods._common import outcome
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.sharding import retrain_shards


@register_method("sisa")
class Sisa(Method):
    """Exact unlearning on a sharded model (``medunlearn train --shards S [--slices R]``).

    Each shard holding a forget image (or any image withdrawn earlier that its checkpoints saw)
    is retrained once, from its last checkpoint before the first slice holding one, with the
    original recipe and the recorded assignment; every other shard is kept byte for byte. The
    result carries updated slice checkpoints, so the next request works on it too. With the
    seed the model was trained with (``ctx.seed``; 0 by default for both), it is bit for bit the
    model that ``retrain`` gives, and that sharded training without those images gives. A
    monolithic model, or a sharded one changed by an approximate method, is refused (use
    ``retrain``).
    """

    summary = "retrain only the shards holding the images, from a clean checkpoint (exact)"

    @dataclass(frozen=True)
    class Config:
        """No options: the recipe, assignment and slice epochs are the sharded model's own."""

    def unlearn(self, model, ctx: UnlearnContext) -> UnlearnOutcome:
        new, details = retrain_shards(
            model, dataset=ctx.dataset, retain=ctx.retain, train_config=ctx.train_config,
            seed=ctx.seed, only_affected=True, runtime=ctx.runtime, progress=ctx.progress,
            on_batch=ctx.seen)
        return outcome(new, details.pop("steps"), **details)
