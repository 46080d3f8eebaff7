"""``retrain``: train a fresh model on the retain set with the original recipe (the reference)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from medunlearn.methods._common import need_retain, outcome
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier
from medunlearn.models.adapter import reinitialized
from medunlearn.models.ensemble import is_ensemble
from medunlearn.sharding import retrain_shards
from medunlearn.training import fit, model_from_spec, seed_everything


@register_method("retrain")
class Retrain(Method):
    """Exact unlearning: the model the data owner would have had without the forget set.

    Uses the original model's recipe (``ctx.train_config``) and architecture, seeded with
    ``ctx.seed``: ``ctx.model_factory`` when given (any ``nn.Module``), else the spec of a
    medunlearn model (``ctx.model_spec``, including its normalisation statistics, so only the
    training data differ), else the original itself with every layer re-initialised. It never
    reads a forget or excluded sample.
    """

    summary = "train from scratch on the retain set with the original recipe (exact reference)"

    @dataclass(frozen=True)
    class Config:
        """The recipe is the original model's ``train`` config; ``seed_offset`` 0 (the default)
        retrains with the run's seed, any other value with a different one."""

        seed_offset: int = 0  # train with ctx.seed + seed_offset (nonzero: independent retraining)

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        need_retain(ctx, self.name)
        seed = ctx.seed + self.config.seed_offset
        if is_ensemble(model):  # a sharded model: every shard from scratch (medunlearn.sharding)
            new, details = retrain_shards(
                model, dataset=ctx.dataset, retain=ctx.retain, train_config=ctx.train_config,
                seed=seed, only_affected=False, runtime=ctx.runtime, progress=ctx.progress,
                on_batch=ctx.seen)
            return outcome(new, details.pop("steps"), **details)
        seed_everything(seed)
        if ctx.model_factory is not None:
            fresh = ctx.model_factory()
        elif ctx.model_spec is not None:
            fresh = model_from_spec(ctx.model_spec)
        else:
            fresh = reinitialized(model, seed)
        cfg = dataclasses.replace(ctx.train_config, progress=ctx.progress)
        result = fit(fresh, ctx.dataset, ctx.retain, cfg, seed=seed, desc="retrain",
                     on_batch=ctx.seen, runtime=ctx.runtime)
        return outcome(result.model, result.steps, best_epoch=result.best_epoch,
                       epochs=cfg.epochs)
