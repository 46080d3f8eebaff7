"""Evaluate a run folder: load it, check what it is compared with, then :func:`api.evaluate`.

The unlearned model's run folder names its forget set (``forget.csv``) and the images it kept
out because they were forgotten earlier (``excluded.csv``); the original model and the retrained
reference are optional run folders. The record is :func:`medunlearn.api.evaluate`'s (see
:mod:`medunlearn.evaluation.record`) plus ``runs`` (which folders were compared) and
``evaluate_seconds``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from medunlearn import api
from medunlearn.checkpoint import (
    EXCLUDED_FILE,
    FORGET_FILE,
    Run,
    check_compatible,
    load_run,
    load_run_and_data,
    read_checked_indices,
)
from medunlearn.config import ModelConfig, TrainConfig, from_dict
from medunlearn.data import Dataset, data_identity
from medunlearn.errors import CheckpointError, ForgetSetError
from medunlearn.evaluation.companions import CompanionSet
from medunlearn.evaluation.record import EvalOptions, eval_options
from medunlearn.forget_set import ForgetSet
from medunlearn.runs.checks import check_original, check_reference
from medunlearn.runs.shadows import load_companions


def forget_file_for(run: Run, forget: str | os.PathLike | None,
                    reference: str | os.PathLike | None, notes: list[str]) -> Path | None:
    """The forget set of a model folder that has none (the original scored as the do-nothing
    candidate): ``forget`` if given, else the reference's ``forget.csv``; None: the run's own."""
    if forget is not None:
        notes.append(f"Forget set from {forget}.")
        return Path(forget)
    if (run.path / FORGET_FILE).is_file() or reference is None:
        return None
    ref = Path(reference) / FORGET_FILE
    if ref.is_file():
        notes.append(f"{run.path} forgot nothing (a {run.config.get('kind')} run): it is scored "
                     f"as the do-nothing candidate on the reference's forget set ({ref}).")
        return ref
    return None


def forget_set_of(run: Run, dataset: Dataset, notes: list[str],
                  forget_file: Path | None = None) -> ForgetSet:
    """The forget set an unlearning run folder records: ``forget.csv`` (or ``forget_file``),
    and ``excluded.csv`` (neither forget nor retain), checked against the data.

    Raises:
        ForgetSetError: no ``forget.csv`` (not an unlearning run), an empty or inconsistent one.
    """
    path = forget_file or run.path / FORGET_FILE
    if forget_file is not None and not path.is_file():
        raise ForgetSetError(f"The forget set {path} does not exist; give the forget.csv of an "
                             "unlearning run (e.g. the reference's).")
    if not path.is_file():
        raise ForgetSetError(
            f"{run.path} has no {FORGET_FILE}, so it is not an "
            "unlearning run and has no forget set to evaluate. Pass the --out folder of "
            "'medunlearn unlearn' as --model (the original model goes to --original); to score "
            "this model itself as 'original (no unlearning)', also give --reference "
            "RETRAIN_RUN or --forget FORGET_CSV."
        )
    forget = read_checked_indices(path, dataset)
    if len(forget) == 0:
        raise ForgetSetError(f"{path} lists no samples; there is nothing to evaluate.")
    excluded = np.zeros(0, dtype=np.int64)
    if (run.path / EXCLUDED_FILE).is_file():
        excluded = read_checked_indices(run.path / EXCLUDED_FILE, dataset, what="excluded set")
    else:
        count = int(((run.config.get("forget") or {}).get("excluded_count")) or 0)
        if count:
            notes.append(f"{count} earlier-forgotten samples are excluded from training but not "
                         f"listed ({EXCLUDED_FILE} missing): they are counted in the retain set.")
    retain = np.setdiff1d(np.arange(len(dataset.train)), np.union1d(forget, excluded))
    return ForgetSet(forget=torch.from_numpy(forget), retain=torch.from_numpy(retain),
                     spec=str((run.config.get("forget") or {}).get("spec") or FORGET_FILE),
                     excluded_count=len(excluded))


def load_comparison(path: str | os.PathLike, dataset: Dataset, model_run: Run,
                    role: str) -> Run:
    """Load a run folder to compare ``model_run`` with, refusing one trained on other data.

    Raises:
        CheckpointError: unreadable folder, another architecture's input/output shape, or
            other data (dataset, view, limits).
    """
    run = load_run(path)
    check_compatible(run, dataset)
    a = data_identity(model_run.data_record)
    b = data_identity(run.data_record)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "augment")
    if diff:
        raise CheckpointError(
            f"The {role} model {run.path} was trained on different data than {model_run.path} "
            f"({', '.join(f'{k}: {b[k]!r} vs {a[k]!r}' for k in diff)}). Compare models of the "
            "same dataset, view and limits."
        )
    return run


def _recipe(run: Run) -> tuple[ModelConfig, TrainConfig]:
    """The architecture and training recipe a run folder records (for LiRA shadow models)."""
    spec = run.config["model"]
    return (ModelConfig(arch=spec["arch"], width=int(spec["width"])),
            from_dict(TrainConfig, run.config.get("train") or {}, where="config.json train"))


def _describe_run(r: Run) -> dict:
    c = r.config
    return {"path": str(r.path), "kind": c.get("kind"), "fingerprint": c.get("fingerprint"),
            "method": c.get("method"), "seed": c.get("seed")}


def evaluate_run(model_dir: str | os.PathLike, *, original: str | os.PathLike | None = None,
                 reference: str | os.PathLike | None = None,
                 options: EvalOptions | Mapping | None = None, data_root: str | None = None,
                 gate=False, forgetting_quality: Mapping | None = None, cache=None,
                 shadows: str | os.PathLike | CompanionSet | None = None,
                 forget: str | os.PathLike | None = None) -> dict:
    """Evaluate an unlearned model, optionally against the original and the retrained reference.

    Args:
        model_dir: Unlearn run folder (its ``forget.csv`` names the forget set).
        original: Run folder of the model before unlearning.
        reference: Run folder of the model retrained without the forget set (the gold
            standard); refused unless it is exactly that (:func:`.checks.check_reference`).
        options: :class:`~medunlearn.evaluation.record.EvalOptions` or a dict of its fields.
        data_root: Folder with the MedMNIST files (default: as recorded / ``$MEDMNIST_ROOT``).
        gate: Run the safety gate and store its verdict as ``record["gate"]`` (see
            :func:`medunlearn.api.apply_gate`; False: no gate).
        forgetting_quality: A ``verify-forgetting`` result to add before the gate sees it.
        cache: A :class:`medunlearn.cache.Session` (loaded data and features are reused).
        shadows: Folder of shadow models of the original (``medunlearn shadows``): adds
            per-image membership evidence (``models.<role>.membership``) and the gate's
            ``membership`` check; refused when made for another model or other data. A
            loaded :class:`~medunlearn.evaluation.companions.CompanionSet` is checked against
            the data only (the caller vouches that it accompanies this model: the registry's
            set accompanies its first version, from which every later version descends).
        forget: A ``forget.csv`` naming the forget set, for a model folder without one (a
            ``train`` run scored as "original (no unlearning)"); by default such a folder takes
            the reference's ``forget.csv``.

    Returns:
        The nested metrics dict of :mod:`medunlearn.evaluation.record`, with ``runs`` and
        ``evaluate_seconds`` (and ``gate`` when gated).

    Raises:
        CheckpointError: unreadable or mismatched run folders, a reference that is not the
            exact retrain.
        ForgetSetError: missing or inconsistent ``forget.csv``.
        ConfigError: invalid options or metadata.
    """
    opts = eval_options(options)
    t0 = time.perf_counter()
    if reference is not None:
        check_reference(model_dir, reference)
    notes: list[str] = []
    run, dataset = load_run_and_data(model_dir, data_root=data_root, cache=cache)
    fs = forget_set_of(run, dataset, notes, forget_file_for(run, forget, reference, notes))
    runs = {"model": run}
    loaded = {run.path.resolve(): run}  # a folder given in two roles is loaded (and run) once
    for role, path in (("original", original), ("reference", reference)):
        if path is None:
            continue
        key = Path(path).resolve()
        if key not in loaded:
            loaded[key] = load_comparison(path, dataset, run, role)
        runs[role] = loaded[key]
    if original is not None and (warning := check_original(model_dir, original)):
        notes.append(warning)
    if reference is not None and not (runs["reference"].path / FORGET_FILE).is_file():
        notes.append(f"The reference {runs['reference'].path} has no {FORGET_FILE}; it is "
                     "assumed to be trained without the forget set.")
    companions = None
    if isinstance(shadows, CompanionSet):  # loaded by a caller that vouches for its source
        shadows.check_data(dataset)
        companions = shadows
    elif shadows is not None:  # refused before any model runs when made for another model/data
        companions = load_companions(shadows, data=dataset, fingerprints=[
            run.config.get("fingerprint"), (run.config.get("original") or {}).get("fingerprint")])
    model_config, train_config = _recipe(runs.get("original", run)) if opts.lira_shadows \
        else (None, None)
    record, _ = api.evaluate(
        run.model, dataset, forget=fs, original=runs["original"].model if original else None,
        reference=runs["reference"].model if reference else None, gate=False, options=opts,
        device=None, records={role: r.metrics for role, r in runs.items()},
        train_config=train_config, model_config=model_config,
        forgetting_quality=forgetting_quality, notes=notes, cache=cache, shadows=companions)
    record["runs"] = {role: _describe_run(r) for role, r in runs.items()}
    record["evaluate_seconds"] = time.perf_counter() - t0
    api.apply_gate(record, gate)
    return record


__all__ = ["evaluate_run", "forget_file_for", "forget_set_of", "load_comparison"]
