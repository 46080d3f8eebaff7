"""Tune a method on a run folder: :func:`medunlearn.api.unlearn` once per grid point, scored by
closeness to the retrained reference (:mod:`medunlearn.tuning` says what is searched and how the
winner is chosen)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from medunlearn.checkpoint import load_run_and_data
from medunlearn.errors import ConfigError
from medunlearn.evaluation.fidelity import tuning_closeness
from medunlearn.methods.base import config_dict, resolve_method, revision_field
from medunlearn.runs.checks import check_tuning_reference
from medunlearn.runs.evaluate import load_comparison
from medunlearn.runs.unlearn import folds_for, forget_set_for, unlearn_in_memory
from medunlearn.tuning import (
    TUNE_CRITERION,
    choose,
    default_grid,
    grid_as_options,
    load_tuning_spec,
)


def tune_method(model_dir: str | os.PathLike, *, method: str, forget: str | Sequence[int],
                reference: str | os.PathLike, seed: int = 0,
                grid: Mapping[str, Sequence] | None = None, lrs: Sequence[float] = (),
                epochs: Sequence[int] = (), options: dict | None = None,
                tolerance: float | None = None, exclude: Iterable[int] | None = None,
                data_root: str | None = None, progress: bool = False) -> dict:
    """Grid-search a method's options by closeness to a retrained reference.

    Each grid point runs the method in memory on the same forget set and is scored on the
    *validation* split and the forget set only (see ``TUNE_CRITERION``): never on test data,
    so the chosen values can be reported on the test split without selection bias.

    Args:
        model_dir: The original run folder.
        method: Method name.
        forget: Forget spec or indices (must select the reference's forget set).
        reference: A ``retrain`` run folder of ``model_dir`` for the same forget set.
        seed: Seeds the forget set and the method.
        grid: Option -> values to try (the product is searched). ``lrs``/``epochs`` add
            ``lr``/``epochs`` entries. All empty: the method's grid in ``defaults/tuning.toml``,
            or its resolved defaults only when it has none.
        options: Other method options, fixed across the grid.
        tolerance: Scores within this of the best tie; the cheapest tie wins (default: the
            recipe's ``tolerance``).
        exclude: Training indices forgotten earlier.
        data_root: Where the MedMNIST files are.
        progress: Show progress bars.

    Returns:
        ``{"method", "dataset", "forget", "seed", "reference", "criterion", "tolerance",
        "grid_spec", "reference_scores", "chosen", "grid"}``: ``chosen`` maps each searched
        option to its chosen value; ``grid`` has one row per point (``options``, ``score``,
        ``forget_accuracy``, ``val_accuracy``, ``agreement``, ``forget_prob_w1``, ``seconds``,
        ``steps``).

    Raises:
        ConfigError: an option the method does not have, or a grid without values.
        CheckpointError: a reference that is not the retrain of ``model_dir`` without the same
            forget set, or one trained on other data.
    """
    from medunlearn.training import predict_logits, softmax

    space = grid_as_options(grid or {})
    if lrs:
        space["lr"] = [float(v) for v in lrs]
    if epochs:
        space["epochs"] = [int(v) for v in epochs]
    if not space:
        space = grid_as_options(default_grid(method))
    if tolerance is None:
        tolerance = float(load_tuning_spec()["recipe"]["tolerance"])
    run, dataset = load_run_and_data(model_dir, data_root=data_root)
    flag = dataset.name
    base = resolve_method(method, dataset=flag, options=options)
    unknown = sorted(set(space) - set(config_dict(base)))
    if unknown:
        raise ConfigError(f"Method {method!r} has no option(s) {', '.join(unknown)} to tune; "
                          f"its options: {', '.join(sorted(config_dict(base)))}.")
    empty = sorted(k for k, vs in space.items() if not vs)
    if empty:
        raise ConfigError(f"The grid gives no values for {', '.join(empty)}.")
    fold_set = folds_for(model_dir, run, dataset, base)  # RUN/kfold, for oracle-match
    fs, excluded = forget_set_for(model_dir, dataset, forget, seed=seed, exclude=exclude)
    check_tuning_reference(model_dir, reference, forget=fs.forget.tolist(), excluded=excluded,
                           spec=fs.spec, seed=seed)
    ref = load_comparison(reference, dataset, run, "reference")
    val_labels = dataset.val.labels.numpy()
    forget_labels = dataset.train.labels[fs.forget].numpy()

    def predictions(model):
        forget_logits = predict_logits(model, dataset.train, fs.forget)
        true_prob = softmax(forget_logits)[np.arange(len(forget_labels)), forget_labels]
        return (predict_logits(model, dataset.val).argmax(1), forget_logits.argmax(1), true_prob)

    ref_val, ref_forget, ref_prob = predictions(ref.model)
    ref_val_acc = float((ref_val == val_labels).mean())
    ref_forget_acc = float((ref_forget == forget_labels).mean())
    keys = list(space)
    rows = []
    for values in itertools.product(*(space[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        algo = resolve_method(method, dataset=flag, options=dict(options or {}) | point)
        result = unlearn_in_memory(run, dataset, fs, algo, seed=seed, progress=progress,
                                   folds=fold_set)
        val_p, forget_p, prob = predictions(result.model)
        close = tuning_closeness(val_labels=val_labels, forget_labels=forget_labels,
                                 val_pred=val_p, forget_pred=forget_p, forget_prob=prob,
                                 ref_val_pred=ref_val, ref_forget_pred=ref_forget,
                                 ref_forget_prob=ref_prob)
        rows.append({"options": point, **close,
                     "seconds": result.record["unlearn_seconds"],
                     "steps": result.record["steps"]})
    best = choose(rows, tolerance)
    return {"method": method, **revision_field(base), "dataset": flag, "forget": fs.spec,
            "seed": seed, "reference": str(reference), "criterion": TUNE_CRITERION,
            "tolerance": tolerance,
            "grid_spec": space, "reference_scores": {"forget_accuracy": ref_forget_acc,
                                                    "val_accuracy": ref_val_acc},
            "chosen": dict(best["options"]), "grid": rows}


__all__ = ["tune_method"]
