"""The four pieces of work an experiment cell is made of, behind small replaceable functions.

The runner never calls training, unlearning or evaluation code directly; it calls a
:class:`Pipeline`. :func:`default_pipeline` wires the real APIs (``runs.run_training``,
``unlearning.run_unlearning``, ``evaluation.api.evaluate_run``, ``evaluation.gate.gate``); tests
may pass a pipeline of fakes to exercise scheduling and resumption quickly.

Every function that builds a folder must build it atomically (``io.staged_output``): the
runner treats a folder that exists as finished.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from medunlearn.experiments.config import CellJob, OriginalJob, ReferenceJob


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

    return run_training(job.data, job.model, job.train, seed=job.seed, out=out,
                        dataset=job.load_files())


def train_reference(job: ReferenceJob, original_dir: Path, out: Path) -> dict:
    """Retrain from scratch without the forget set (method ``retrain``)."""
    from medunlearn.unlearning import run_unlearning

    return run_unlearning(original_dir, method="retrain", forget=job.forget, seed=job.seed,
                          out=out, retain_budget=job.retain_budget,
                          data_root=job.original.data_root, progress=False)


def forget_indices(reference_dir: Path) -> list[int]:
    """The training indices the reference run forgot (every method forgets exactly these)."""
    from medunlearn.forget import read_forget_csv

    return [int(i) for i in read_forget_csv(Path(reference_dir) / "forget.csv").tolist()]


def unlearn(job: CellJob, original_dir: Path, reference_dir: Path, out: Path) -> dict:
    """Run one unlearning method on the reference's forget set."""
    from medunlearn.unlearning import run_unlearning

    return run_unlearning(original_dir, method=job.method.name,
                          forget=forget_indices(reference_dir), seed=job.seed, out=out,
                          options=job.method.options_dict or None,
                          retain_budget=job.reference.retain_budget,
                          data_root=job.original.data_root, progress=False)


def evaluate(job: CellJob, run_dir: Path, original_dir: Path, reference_dir: Path) -> dict:
    """``evaluate_run`` against the original model and the retrained reference."""
    from medunlearn.evaluation.api import evaluate_run

    return evaluate_run(run_dir, original=original_dir, reference=reference_dir,
                        options=job.evaluation_options or None,
                        data_root=job.original.data_root)


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
