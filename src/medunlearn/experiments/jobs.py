"""What each job of a grid does (train an original, retrain a reference, unlearn, evaluate,
judge), behind small replaceable functions.

The runner never calls training, unlearning or evaluation code directly; it calls a
:class:`Pipeline` of these steps. :func:`default_pipeline` wires the run-folder layer
(``runs.run_training``, ``runs.run_unlearning``, ``runs.evaluate_run``) and the gate
(``evaluation.gate.gate``); tests may pass a pipeline of fakes to exercise scheduling and
resumption quickly.

Every function that builds a folder must build it atomically (``fileio.staged_output``): the
runner treats a folder that exists as finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medunlearn.experiments.grid import CellJob, OriginalJob, ReferenceJob


@dataclass(frozen=True)
class Pipeline:
    """The per-job work of an experiment.

    Attributes:
        train_original: ``(job, out) -> metrics``; trains the original model into ``out``.
        train_reference: ``(job, original_dir, out) -> metrics``; retrains without the forget set.
        unlearn: ``(job, original_dir, reference_dir, out) -> metrics``; runs one method.
        evaluate: ``(job, run_dir, original_dir, reference_dir) -> metrics`` (nested dict).
        verdict: ``(metrics, tolerances) -> {"passed": bool, "reasons": [str]}``.
    """

    train_original: Callable[[OriginalJob, Path], dict]
    train_reference: Callable[[ReferenceJob, Path, Path], dict]
    unlearn: Callable[[CellJob, Path, Path, Path], dict]
    evaluate: Callable[[CellJob, Path, Path, Path], dict]
    verdict: Callable[[dict, dict | None], dict]


def train_original(job: OriginalJob, out: Path) -> dict:
    """Train the original model with :func:`medunlearn.runs.run_training`."""
    from medunlearn.runs import run_training

    if job.shards is not None:  # a sharded original (the study's shards/slices)
        from medunlearn.runs import run_sharded_training

        return run_sharded_training(job.source, job.model, job.train, seed=job.seed, out=out,
                                    shards=job.shards, slices=job.slices)
    return run_training(job.source, job.model, job.train, seed=job.seed, out=out)


def train_reference(job: ReferenceJob, original_dir: Path, out: Path) -> dict:
    """Retrain from scratch without the forget set (method ``retrain``)."""
    from medunlearn.runs import run_unlearning

    return run_unlearning(original_dir, method="retrain", forget=job.forget, seed=job.seed,
                          out=out, retain_budget=job.retain_budget,
                          data_root=job.original.data_root, progress=False)


def forget_indices(reference_dir: Path) -> list[int]:
    """The training indices the reference run forgot (every method forgets exactly these)."""
    from medunlearn.checkpoint import FORGET_FILE, read_indices

    return read_indices(Path(reference_dir) / FORGET_FILE)


#: K of the fold models a grid builds for methods that read them (``oracle-match``).
FOLDS_K = 5


def ensure_folds(job: CellJob, original_dir: Path) -> None:
    """Build the original's K fold models (``ORIGINAL/kfold``, once per original; reused by
    every later cell) when the cell's method reads them (``Method.needs_folds``)."""
    from medunlearn.evaluation.companions import KFOLD
    from medunlearn.methods.base import get_method_class
    from medunlearn.runs.shadows import companions_for_run

    if get_method_class(job.method.name).needs_folds:
        companions_for_run(original_dir, kind=KFOLD, k=FOLDS_K,
                           data_root=job.original.data_root, progress=False)


def unlearn(job: CellJob, original_dir: Path, reference_dir: Path, out: Path) -> dict:
    """Run one unlearning method on the reference's forget set (first building the fold
    models it reads, if any: :func:`ensure_folds`)."""
    from medunlearn.runs import run_unlearning

    ensure_folds(job, original_dir)
    return run_unlearning(original_dir, method=job.method.name,
                          forget=forget_indices(reference_dir), seed=job.seed, out=out,
                          options=job.method.options_dict or None,
                          retain_budget=job.reference.retain_budget,
                          data_root=job.original.data_root, progress=False)


#: The study's ``evaluation`` option that adds the per-example forgetting-quality check
#: (``runs.verify_forgetting``): N unlearned and N retrained models per cell. Off unless set.
FORGETTING_QUALITY = "forgetting_quality"


def forgetting_quality_folder(job: CellJob, reference_dir: Path) -> Path:
    """Where a cell's N + N runs go: one folder per reference (dataset, forget set, seed), so
    every method of the setting shares the N retrained models; a method listed twice with other
    options gets a folder of its own."""
    root = Path(reference_dir).parent.parent.parent / "forgetting_quality" / \
        Path(reference_dir).name
    if job.method.display == job.method.name:
        return root
    from medunlearn.experiments.grid import _safe

    return root / "variants" / _safe(job.method.display)


def evaluate_original(job: CellJob, original_dir: Path, reference_dir: Path) -> dict:
    """The do-nothing row: the original model evaluated as if it were the unlearned one, on
    the reference's forget set, against itself and the reference (the record of
    ``evaluate_run``, with no unlearning time). The per-example check (``forgetting_quality``)
    is not run for it: it needs N runs of a method."""
    from medunlearn import api
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.runs.evaluate import _recipe, forget_set_of, load_comparison

    opts = dict(job.evaluation_options or {})
    opts.pop(FORGETTING_QUALITY, None)
    notes = [f"{original_dir} is the original model itself, scored as '{job.method.display}' "
             f"on the forget set of the reference {reference_dir}."]
    run, dataset = load_run_and_data(original_dir, data_root=job.original.data_root)
    ref = load_comparison(reference_dir, dataset, run, "reference")
    forget = forget_set_of(ref, dataset, notes)  # the reference forgot exactly this set
    model_config, train_config = _recipe(run) if opts.get("lira_shadows") else (None, None)
    record, _ = api.evaluate(run.model, dataset, forget=forget, original=run.model,
                             reference=ref.model, gate=False, options=opts or None, device=None,
                             records={"model": None, "reference": ref.metrics},
                             train_config=train_config, model_config=model_config, notes=notes)
    record["runs"] = {role: {"path": str(p)} for role, p in
                      (("model", original_dir), ("original", original_dir),
                       ("reference", reference_dir))}
    return record


def evaluate(job: CellJob, run_dir: Path, original_dir: Path, reference_dir: Path) -> dict:
    """``evaluate_run`` against the original model and the retrained reference; with the
    study option ``evaluation: {forgetting_quality: N}`` also the per-example check. The
    do-nothing row goes to :func:`evaluate_original`."""
    from medunlearn.runs import evaluate_run

    if job.does_nothing:
        return evaluate_original(job, original_dir, reference_dir)
    opts = dict(job.evaluation_options or {})
    n_models = opts.pop(FORGETTING_QUALITY, None)
    record = evaluate_run(run_dir, original=original_dir, reference=reference_dir,
                          options=opts or None, data_root=job.original.data_root)
    if n_models:
        from medunlearn.evaluation.forgetting_quality import RESULT_FILE, attach_to_record
        from medunlearn.runs import verify_forgetting

        work = forgetting_quality_folder(job, reference_dir)
        result = verify_forgetting(original_dir, forget=forget_indices(reference_dir),
                                   method=job.method.name, options=job.method.options_dict,
                                   out=work, n=int(n_models), seed=job.seed,
                                   data_root=job.original.data_root, progress=False,
                                   overwrite=True)  # the folder is the study's own
        attach_to_record(record, result)
        record["models"]["model"]["forgetting_quality"]["result_file"] = str(
            work / job.method.name / RESULT_FILE)
    return record


def verdict(metrics: dict, tolerances: dict | None = None) -> dict:
    """The safety gate's verdict as a plain dict."""
    from medunlearn.evaluation.gate import gate

    v = gate(metrics, tolerances)
    return {"passed": bool(v.passed), "reasons": [str(r) for r in v.reasons]}


def default_pipeline() -> Pipeline:
    """The pipeline of the real training, unlearning and evaluation APIs."""
    return Pipeline(train_original=train_original, train_reference=train_reference,
                    unlearn=unlearn, evaluate=evaluate, verdict=verdict)


def replace(pipeline: Pipeline, **changes) -> Pipeline:
    """A copy of ``pipeline`` with some functions replaced."""
    return dataclasses.replace(pipeline, **changes)
