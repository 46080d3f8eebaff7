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
from medunlearn.evaluation.fidelity import forget_shift, tuning_closeness
from medunlearn.evaluation.membership_paired import paired_section
from medunlearn.evaluation.outputs import split_outputs
from medunlearn.evaluation.privacy import logit_confidence
from medunlearn.methods.base import config_dict, resolve_method, revision_field
from medunlearn.runs.checks import check_tuning_reference
from medunlearn.runs.evaluate import load_comparison
from medunlearn.runs.shadows import load_companions
from medunlearn.runs.unlearn import folds_for, forget_set_for, unlearn_in_memory
from medunlearn.tuning import (
    TUNE_CRITERION,
    default_grid,
    do_nothing_min_move,
    grid_as_options,
    judged,
    load_tuning_spec,
)

EFFECT_RETAIN = 1000  # retained images that calibrate the paired test (as a request's gate)


def tune_method(model_dir: str | os.PathLike, *, method: str, forget: str | Sequence[int],
                reference: str | os.PathLike, seed: int = 0,
                grid: Mapping[str, Sequence] | None = None, lrs: Sequence[float] = (),
                epochs: Sequence[int] = (), options: dict | None = None,
                tolerance: float | None = None, min_move: float | None = None,
                shadows: str | os.PathLike | None = None,
                exclude: Iterable[int] | None = None,
                data_root: str | None = None, progress: bool = False) -> dict:
    """Grid-search a method's options by closeness to a retrained reference.

    Each grid point runs the method in memory on the same forget set and is scored on the
    *validation* split and the forget set only (see ``TUNE_CRITERION``): never on test data,
    so the chosen values can be reported on the test split without selection bias.

    The untouched original is scored the same way (``do_nothing``), and every point records
    how far it moved from the original on the forget set against the reference (``moved``:
    its :func:`~medunlearn.evaluation.fidelity.forget_shift` over the reference's) and its
    prediction agreement with the original (``agreement_original``). A point that moved less
    than ``min_move`` (the gate's ``do_nothing_min_move``) is rejected (``rejected``: the
    reason; ``DO_NOTHING_RULE``), and so is one whose validation accuracy fell below the
    original's by more than the gate's ``ta_drop`` limit (``val_drop``, ``val_drop_limit``;
    ``DAMAGE_RULE``): a point that damages the model is not a safe default however much it
    moved. If all are rejected, the closest is chosen and ``warning`` says so
    (:func:`medunlearn.tuning.judged`).

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
        min_move: The do-nothing rule's threshold (default: the gate's
            ``do_nothing_min_move`` in ``defaults/gate.toml``).
        shadows: Shadow models of the original (``medunlearn shadows``): every point also gets
            the paired forget-effect test against the original
            (:mod:`medunlearn.evaluation.membership_paired`; ``forget_effect``,
            ``forget_share``), and a point it fails (its forgotten images confidently kept more
            than half of what retraining removes) is rejected like one that did not move.
        exclude: Training indices forgotten earlier.
        data_root: Where the MedMNIST files are.
        progress: Show progress bars.

    Returns:
        ``{"method", "dataset", "forget", "seed", "reference", "criterion", "tolerance",
        "grid_spec", "reference_scores", "do_nothing", "min_move", "rule", "n_val", "chosen",
        "grid"}``
        (and ``warning`` when every point was rejected): ``chosen`` maps each searched option
        to its chosen value; ``grid`` has one row per point (``options``, ``score``,
        ``forget_accuracy``, ``val_accuracy``, ``agreement``, ``forget_prob_w1``, ``moved``,
        ``agreement_original``, ``val_drop``, ``val_drop_limit``, ``rejected``, ``seconds``,
        ``steps``); ``do_nothing`` is the
        original's row (``moved`` 0).

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
    if min_move is None:
        min_move = do_nothing_min_move()
    if not 0 <= min_move < 1:
        raise ConfigError(f"min_move must be in [0, 1) (a share of retraining's shift from the "
                          f"original); got {min_move}.")
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
    cs = None
    if shadows is not None:  # refused before any work when made for another model or data
        cs = load_companions(shadows, data=dataset, fingerprints=[run.config.get("fingerprint")])
    ref = load_comparison(reference, dataset, run, "reference")
    val_labels = dataset.val.labels.numpy()
    forget_labels = dataset.train.labels[fs.forget].numpy()

    def predictions(model):
        forget_logits = predict_logits(model, dataset.train, fs.forget)
        probs = softmax(forget_logits)
        true_prob = probs[np.arange(len(forget_labels)), forget_labels]
        return (predict_logits(model, dataset.val).argmax(1), forget_logits.argmax(1), true_prob,
                logit_confidence(probs, forget_labels))

    ref_val, ref_forget, ref_prob, ref_phi = predictions(ref.model)
    orig_val, orig_forget, orig_prob, orig_phi = predictions(run.model)
    ref_shift = forget_shift(ref_phi, orig_phi)
    ref_val_acc = float((ref_val == val_labels).mean())
    ref_forget_acc = float((ref_forget == forget_labels).mean())

    def row(val_p, forget_p, prob, phi):
        close = tuning_closeness(val_labels=val_labels, forget_labels=forget_labels,
                                 val_pred=val_p, forget_pred=forget_p, forget_prob=prob,
                                 ref_val_pred=ref_val, ref_forget_pred=ref_forget,
                                 ref_forget_prob=ref_prob)
        agree_orig = float(((val_p == orig_val).sum() + (forget_p == orig_forget).sum())
                           / (len(val_p) + len(forget_p)))
        moved = forget_shift(phi, orig_phi) / ref_shift if ref_shift > 0 else None
        return {**close, "moved": moved, "agreement_original": agree_orig}

    effect = None
    if cs is not None:
        retain = np.setdiff1d(np.arange(len(dataset.train)), np.concatenate(
            [fs.forget, np.asarray(excluded, dtype=np.int64)]))
        retain = np.sort(np.random.default_rng(seed).choice(
            retain, min(EFFECT_RETAIN, len(retain)), replace=False))
        idx = np.concatenate([fs.forget, retain])

        def outputs(model):
            o = split_outputs(model, dataset.train, idx)
            n = len(fs.forget)
            return {"forget": o.subset(np.arange(n)),
                    "retain": o.subset(np.arange(n, len(idx)))}

        orig_outs = outputs(run.model)

        def effect(model):
            sec = paired_section(cs, outputs(model), orig_outs, forget=fs.forget,
                                 retain=retain)
            return {"forget_effect": sec["status"], "forget_share": sec["share"]}

    do_nothing = row(orig_val, orig_forget, orig_prob, orig_phi)
    if effect is not None:
        do_nothing |= effect(run.model)
    keys = list(space)
    rows = []
    for values in itertools.product(*(space[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        algo = resolve_method(method, dataset=flag, options=dict(options or {}) | point)
        result = unlearn_in_memory(run, dataset, fs, algo, seed=seed, progress=progress,
                                   folds=fold_set)
        r = {"options": point, **row(*predictions(result.model)),
             **(effect(result.model) if effect is not None else {}),
             "seconds": result.record["unlearn_seconds"], "steps": result.record["steps"]}
        rows.append(r)
    return judged({"method": method, **revision_field(base), "dataset": flag, "forget": fs.spec,
            "seed": seed, "reference": str(reference), "criterion": TUNE_CRITERION,
            "tolerance": tolerance,
            "grid_spec": space, "reference_scores": {"forget_accuracy": ref_forget_acc,
                                                    "val_accuracy": ref_val_acc,
                                                    "forget_shift": ref_shift},
            "do_nothing": do_nothing, "min_move": min_move, "grid": rows},
                  n_val=len(val_labels))


__all__ = ["tune_method"]
