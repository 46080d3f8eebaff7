"""Unlearn a run folder: load it, :func:`medunlearn.api.unlearn`, save a run folder.

:func:`run_unlearning` loads a run folder (from ``train`` or an earlier ``unlearn``), selects the
forget set, resolves the method's options (Config defaults < ``defaults/methods.toml``
``[default.<method>]`` < ``[<dataset>.<method>]`` < user options), unlearns in memory with the
original recipe, evaluates the result on its splits and writes a run folder in the same layout
as ``train`` (see docs/CONTRACTS.md), so the unlearned model can be evaluated, audited or
unlearned again. What the costs measure: :func:`medunlearn.api._run_method`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch

from medunlearn import api
from medunlearn.checkpoint import (
    CONFIG_FILE,
    EXCLUDED_FILE,
    FORGET_FILE,
    METRICS_FILE,
    MODEL_FILE,
    Run,
    finished_run_metrics,
    load_run_and_data,
    previously_forgotten,
    save_shard_files,
    save_weights,
    write_index_csv,
)
from medunlearn.config import EXACT_METHODS, ModelConfig, TrainConfig, from_dict
from medunlearn.data import Dataset
from medunlearn.errors import CheckpointError, ConfigError, OutputExistsError
from medunlearn.evaluation.companions import KFOLD, KFOLD_FOLDER, CompanionSet
from medunlearn.evaluation.record import EvalOptions, retain_subset
from medunlearn.fileio import atomic_write_json, fingerprint, sha256_file, staged_output
from medunlearn.forget_set import ForgetSet, select_forget
from medunlearn.loop import Runtime
from medunlearn.methods.base import (
    Method,
    config_dict,
    key_options,
    resolve_method,
    revision_field,
    takes_retain_budget,
)
from medunlearn.provenance import environment, now_iso
from medunlearn.runs.shadows import MANIFEST_FILE, load_companions
from medunlearn.runs.train import split_metrics
from medunlearn.training import evaluate_split


def model_config(run: Run) -> ModelConfig:
    """The architecture settings a run folder records (older folders: from the model spec)."""
    if "model_config" in run.config and run.config["model_config"] is not None:
        return from_dict(ModelConfig, run.config["model_config"], where="config.json model_config")
    spec = run.config["model"]
    return ModelConfig(arch=spec.get("arch", "auto"), width=spec.get("width", 16))


def train_config(run: Run) -> TrainConfig:
    """The training recipe a run folder records (what ``retrain`` repeats)."""
    return from_dict(TrainConfig, run.config.get("train", {}), where="config.json train")


def forget_set_for(model_dir: str | os.PathLike, dataset: Dataset, forget: str | Sequence[int],
                   *, seed: int, exclude: Iterable[int] | None = None, retrain: bool = False
                   ) -> tuple[ForgetSet, list[int]]:
    """The forget set of a request on a run folder, and the images kept out of it: ``exclude``
    plus every image the folder forgot already (its ``forget.csv`` and ``excluded.csv``), so
    a chain of runs never forgets an image twice nor trains on one again. With ``retrain`` (an
    exact method: ``retrain`` or ``sisa``) and explicit indices, images forgotten earlier that
    are named again stay in the forget set (retraining reads neither set, and the evaluation
    then covers them: a registry consolidation retrains without every withdrawn image and
    verifies all of them)."""
    inherited = set(previously_forgotten(model_dir))
    if retrain and not isinstance(forget, str):
        inherited -= {int(i) for i in forget}
    excluded = sorted({int(i) for i in exclude or []} | inherited)
    return select_forget(dataset, forget=forget, seed=seed, exclude=excluded), excluded


def folds_for(model_dir: str | os.PathLike, run: Run, dataset: Dataset, method: Method,
              folds: str | os.PathLike | None = None) -> CompanionSet | None:
    """The K fold models a method reads (``Method.needs_folds``; None for the others):
    ``folds``, else ``RUN/kfold`` (where ``medunlearn shadows RUN --kind kfold`` puts them).

    Raises:
        CheckpointError: no fold set there (naming the command that builds it), an incomplete
            one, or one made for other data or another model (naming the command that
            rebuilds it).
        ConfigError: a companion set of another kind.
    """
    if not method.needs_folds:
        return None
    path = Path(folds) if folds is not None else Path(model_dir) / KFOLD_FOLDER
    build = f"medunlearn shadows {model_dir} --kind kfold --k 5" + (
        f" --out {folds}" if folds is not None else "")
    if not (path / MANIFEST_FILE).is_file():
        raise CheckpointError(
            f"Method {method.name!r} needs the K fold models of {model_dir} (their out-of-fold "
            f"predictions are its targets), and {path} holds none. Build them once (about K - 1 "
            f"trainings of the model; rebuild them after every deletion request): {build}")
    cs = load_companions(path, data=dataset, fingerprints=[run.config.get("fingerprint")])
    if cs.kind != KFOLD:
        raise ConfigError(f"Method {method.name!r} needs K-fold models, but {path} holds "
                          f"{cs.kind} models. Build K-fold models: {build}")
    return cs


def unlearn_in_memory(run: Run, dataset: Dataset, forget_set: ForgetSet, method: Method, *,
                      seed: int, progress: bool = True, device: str | None = None,
                      on_batch: Callable[[torch.Tensor], None] | None = None,
                      cache=None, folds: CompanionSet | None = None) -> api.UnlearnResult:
    """:func:`medunlearn.api.unlearn` of a loaded run with its own recipe and architecture
    (``device`` overrides the recipe's device; None keeps it; ``folds``: :func:`folds_for`)."""
    return api.unlearn(run.model, dataset, forget=forget_set, method=method, seed=seed,
                       device=device, train_config=train_config(run),
                       model_factory=run.config["model"], model_config=model_config(run),
                       progress=progress, on_batch=on_batch, cache=cache, folds=folds)


def run_unlearning(model_dir: str | os.PathLike, *, method: str, forget: str | Sequence[int],
                   seed: int = 0, out: str | os.PathLike, options: dict | None = None,
                   exclude: Iterable[int] | None = None, retain_budget: int | None = None,
                   overwrite: bool = False, replace_stale: bool = False,
                   data_root: str | None = None, progress: bool = True,
                   on_batch: Callable[[torch.Tensor], None] | None = None,
                   retain_limit: int | None = None, device: str | None = None,
                   cache=None, folds: str | os.PathLike | None = None) -> dict:
    """Unlearn a forget set from a trained model and write a run folder at ``out``.

    Args:
        model_dir: A run folder (``train`` or ``unlearn`` output).
        method: A registered method name (``medunlearn methods`` lists them).
        forget: A forget spec (``random:0.2``, ``class:1``, ``hashes:FILE`` ...; see
            :mod:`medunlearn.forget_set`) or a sequence of training-split indices.
        seed: Seeds the forget-set selection and the method.
        out: The output run folder (built in a staging folder, renamed in on success).
        options: Method options overriding the defaults.
        exclude: Training indices forgotten earlier: in neither forget nor retain set. When
            ``model_dir`` is itself an unlearning run, the samples it forgot (its
            ``forget.csv`` and inherited ``excluded.csv``) are always added, so a chain of
            unlearning runs never forgets a sample twice and never retrains on one (with
            ``retrain``, such samples listed in ``forget`` stay in the forget set instead).
        retain_budget: Maximum retain samples per epoch, for methods that take one (ignored,
            and recorded as not applied, for ``retrain`` and methods that read no retain data).
        overwrite: Replace an existing non-empty ``out``.
        replace_stale: Replace ``out`` only when it holds a run of another configuration (a
            finished run of this one is still reused; a folder that is not a run never is
            replaced). Without it (or ``overwrite``) such a run is an error.
        data_root: Where the MedMNIST files are (default: the original run's setting).
        progress: Show progress bars.
        on_batch: Called with the training indices of every batch the method reads (audit).
        retain_limit: Report retain accuracy on a seeded subset of at most this many retain
            samples (the method itself is unaffected); None: all of them.
        device: ``auto``, ``cpu``, ``cuda``, ``mps`` (None: the original recipe's, ``auto``).
        cache: A :class:`medunlearn.cache.Session` (loaded data and features are reused).
        folds: The K fold models' folder for methods that read them (``oracle-match``;
            default ``MODEL_DIR/kfold``, see :func:`folds_for`); ignored by the others.

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        MedUnlearnError: bad model folder, forget spec, method name or option, or output folder.
    """
    out = Path(out)
    run, dataset = load_run_and_data(model_dir, data_root=data_root, cache=cache)
    algo = resolve_method(method, dataset=dataset.name, options=options,
                          retain_budget=retain_budget)
    forget_set, excluded = forget_set_for(model_dir, dataset, forget, seed=seed, exclude=exclude,
                                          retrain=method in EXACT_METHODS)
    fold_set = folds_for(model_dir, run, dataset, algo, folds)
    weights_sha = sha256_file(Path(model_dir) / MODEL_FILE)
    resolved = config_dict(algo)
    key = fingerprint({"kind": "unlearn", "original": weights_sha, "method": method,
                       "options": key_options(algo), "seed": seed,
                       "forget": forget_set.forget.tolist(), "retain": len(forget_set.retain)}
                      | revision_field(algo)
                      | ({"folds": fold_set.manifest["fingerprint"]} if fold_set else {}))
    if not overwrite:
        previous = finished_run_metrics(out, key)
        if previous is not None:
            return previous | {"reused": True}
        if (out / CONFIG_FILE).is_file():  # a run, but of another configuration
            if not replace_stale:
                raise OutputExistsError(
                    f"The output folder {out} already holds files from a run of another "
                    "configuration (another model, forget set, seed, method option or medunlearn "
                    "version). Choose a new --out folder, or pass --overwrite to replace it.")
            overwrite = True
    with staged_output(out, overwrite=overwrite, what="unlearning run") as stage:
        result = unlearn_in_memory(run, dataset, forget_set, algo, seed=seed, progress=progress,
                                   device=device, on_batch=on_batch, cache=cache,
                                   folds=fold_set)
        model = result.model
        cost = {k: result.record[k] for k in api.COST_KEYS}
        recipe = train_config(run)  # the runtime the method ran in, for the split metrics
        rt = Runtime.create(device if device is not None else recipe.device, recipe.precision,
                            recipe.threads)
        # the training split is forget + retain: evaluate those two, not all of it again
        splits = split_metrics(model, dataset, ("val", "test"), runtime=rt, cache=cache)
        splits["forget"] = evaluate_split(model, dataset.train, forget_set.forget, runtime=rt,
                                          cache=cache)
        retain_eval = forget_set.retain
        if retain_limit is not None and len(retain_eval) > retain_limit:
            # the evaluation's subset (its default seed), so a verification reuses these outputs
            retain_eval = torch.from_numpy(retain_subset(
                retain_eval.numpy(), retain_limit, seed=EvalOptions.seed,
                n_train=len(dataset.train)))
        splits["retain"] = evaluate_split(model, dataset.train, retain_eval, runtime=rt,
                                          cache=cache) if len(retain_eval) else None
        original_seconds = (run.metrics or {}).get("train_seconds")
        metrics = {
            "method": method, **cost, "runtime": rt.describe(),
            "splits": splits,
            "forget_accuracy": splits["forget"]["accuracy"],
            "retain_accuracy": splits["retain"]["accuracy"] if splits["retain"] else None,
            "val_accuracy": splits["val"]["accuracy"],
            "test_accuracy": splits["test"]["accuracy"],
            "forget_count": len(forget_set),
            "retain_count": int(len(forget_set.retain)),
            "original_train_seconds": original_seconds,
            "time_ratio_to_original_training":
                cost["unlearn_seconds"] / original_seconds if original_seconds else None,
            "details": result.record["details"],
        }
        config = {
            "kind": "unlearn", "fingerprint": key,
            # ``seed`` stays the original run's: it seeds the train_limit/eval_limit subsets, so
            # reloading this folder must see the same samples. The unlearning seed is below.
            "seed": run.seed, "unlearn_seed": seed, "created": now_iso(),
            "data": run.config["data"], "model": run.config["model"],
            "model_config": run.config.get("model_config"), "train": run.config.get("train"),
            "runtime": rt.describe(), "dataset": dataset.describe(),
            "environment": environment(),
            "original": {"path": str(Path(model_dir).resolve()), "weights_sha256": weights_sha,
                         "fingerprint": run.config.get("fingerprint"),
                         "kind": run.config.get("kind")},
            "method": {"name": method, **revision_field(algo), "options": resolved,
                       "user_options": dict(options or {}),
                       "retain_budget": retain_budget,
                       "retain_budget_applied": retain_budget is not None
                       and takes_retain_budget(method), "seed": seed,
                       **({"folds": {"path": str(fold_set.path.resolve()), "k": fold_set.k,
                                     "fingerprint": fold_set.manifest["fingerprint"]}}
                          if fold_set else {})},
            "forget": {"spec": forget_set.spec, "count": len(forget_set),
                       "excluded_count": forget_set.excluded_count},
        }
        save_weights(stage / MODEL_FILE, model, {"fingerprint": key, "kind": "unlearn"})
        # a sharded model: its assignment, and its slice checkpoints while they describe it
        shard_section = save_shard_files(stage, model, num_classes=dataset.num_classes)
        if shard_section is not None:
            config["shards"] = shard_section
        atomic_write_json(stage / CONFIG_FILE, config)
        write_index_csv(stage / FORGET_FILE, dataset, forget_set.forget.tolist())
        if excluded:
            write_index_csv(stage / EXCLUDED_FILE, dataset, excluded)
        atomic_write_json(stage / METRICS_FILE, metrics)
    return metrics


__all__ = ["folds_for", "forget_set_for", "model_config", "run_unlearning", "train_config",
           "unlearn_in_memory"]
