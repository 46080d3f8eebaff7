"""Run an experiment grid: train shared models once, run every cell, keep one results table.

Layout of a results folder::

    RESULTS/
      results.sqlite      one row per cell and seed (see ``store.py``)
      results.csv         the same rows, exported after every run
      configs/            the resolved study configs that wrote into this folder
      models/original/    one run folder per (dataset, augmentation, seed), keyed by fingerprint
      models/reference/   one retrained reference per original and forget selection
      runs/               one unlearning run folder per cell
      evaluations/        the full evaluation of each cell (JSON)
      logs/               one log file per job

Resumption: every run folder is built in a staging folder and renamed into place only when
complete, a cell's row is inserted in one transaction after its folder and evaluation exist, and
the row's primary key is the cell's fingerprint. Rerunning after an interruption (Ctrl-C, a
crash, ``kill -9``) skips finished rows, reuses finished folders and redoes only the rest.

Scheduling happens in phases so that parallel workers never build the same folder: all
originals, then all references, then the cells: each reference's do-nothing row (the original
scored like a method, no unlearning job) and the method cells. Jobs run through
:mod:`medunlearn.executors` (here, or as Ray tasks): workers only build run folders and log files
and return rows; the driver alone writes the SQLite results table, so the table never sees
concurrent writers.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medunlearn.checkpoint import CONFIG_FILE, METRICS_FILE
from medunlearn.errors import MedUnlearnError
from medunlearn.executors import BACKENDS, make_executor
from medunlearn.experiments.grid import (
    CellJob,
    ExperimentConfig,
    OriginalJob,
    ReferenceJob,
    forget_ratio,
)
from medunlearn.experiments.jobs import Pipeline, default_pipeline
from medunlearn.experiments.store import CSV_FILE, ResultsStore, flatten
from medunlearn.fileio import atomic_write_json, exclusive_lock, fingerprint, read_json
from medunlearn.provenance import now_iso

log = logging.getLogger("medunlearn.experiments")


class ExperimentBusyError(MedUnlearnError):
    """Another experiment process is writing into the same results folder."""


@dataclass
class ExperimentSummary:
    """What :func:`run_experiment` did."""

    results: Path
    cells: int  # cells in the grid
    already_done: int  # cells finished by earlier runs (skipped)
    completed: int  # cells finished by this run
    failed: list[dict] = field(default_factory=list)  # {key, slug, error, log}
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


# -- the work of one job (runs in the driver or in a Ray worker) ----------------------------------
def is_finished(folder: Path) -> bool:
    """A run folder exists only once complete (staged_output), but check its files anyway."""
    return (folder / CONFIG_FILE).is_file() and (folder / METRICS_FILE).is_file()


@contextlib.contextmanager
def job_log(path: Path, title: str) -> Iterator[logging.Logger]:
    """Send this job's log records and any printed output to its own log file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8", buffering=1) as fh:
        handler = logging.StreamHandler(fh)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger("medunlearn")
        root.addHandler(handler)
        old_level = root.level
        if root.level == logging.NOTSET or root.level > logging.INFO:
            root.setLevel(logging.INFO)
        log.info("=== %s (pid %d)", title, os.getpid())
        try:
            with contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                yield log
        except BaseException:
            fh.write(traceback.format_exc())
            raise
        finally:
            root.removeHandler(handler)
            root.setLevel(old_level)


def run_job(kind: str, job: OriginalJob | ReferenceJob | CellJob, results: str,
            pipeline: Pipeline | None = None, experiment: str = "",
            threads: int | None = None) -> dict:
    """Do one job of the grid and report what happened (never raises for job failures).

    Returns:
        ``{"kind", "key", "slug", "status": "ok" | "failed", "error", "log", "seconds"}``, plus
        ``"row"`` (the results-table row) for a finished cell.
    """
    results = Path(results)
    pipeline = pipeline or default_pipeline()
    logfile = results / "logs" / kind / f"{job.slug}.log"
    t0 = time.perf_counter()
    outcome: dict[str, Any] = {"kind": kind, "key": job.key, "slug": job.slug, "status": "ok",
                               "error": None, "log": str(logfile)}
    try:
        if threads:
            from medunlearn.training import set_threads

            set_threads(threads)
        with job_log(logfile, f"{kind} {job.slug}"):
            if kind == "original":
                _do_original(job, results, pipeline)
            elif kind == "reference":
                _do_reference(job, results, pipeline)
            else:
                outcome["row"] = _do_cell(job, results, pipeline, experiment, t0)
            log.info("finished in %.1f s", time.perf_counter() - t0)
    except Exception as exc:  # a failed job must not stop the grid
        outcome["status"] = "failed"
        outcome["error"] = f"{type(exc).__name__}: {exc}"
    outcome["seconds"] = time.perf_counter() - t0
    return outcome


def _do_original(job: OriginalJob, results: Path, pipeline: Pipeline) -> None:
    out = results / job.folder
    if is_finished(out):
        log.info("reusing %s", out)
        return
    log.info("training the original model into %s", out)
    pipeline.train_original(job, out)


def _do_reference(job: ReferenceJob, results: Path, pipeline: Pipeline) -> None:
    out = results / job.folder
    if is_finished(out):
        log.info("reusing %s", out)
        return
    original = results / job.original.folder
    if not is_finished(original):
        raise MedUnlearnError(f"the original model {original} is missing (its job failed)")
    log.info("retraining the reference without %s into %s", job.forget, out)
    pipeline.train_reference(job, original, out)


def _do_cell(job: CellJob, results: Path, pipeline: Pipeline, experiment: str,
             t0: float) -> dict:
    original = results / job.original.folder
    reference = results / job.reference.folder
    for what, folder in (("original model", original), ("reference model", reference)):
        if not is_finished(folder):
            raise MedUnlearnError(f"the {what} {folder} is missing (its job failed)")
    run_dir = results / job.folder
    if job.does_nothing:
        log.info("scoring the original %s as '%s'", run_dir, job.method.display)
    elif is_finished(run_dir):
        log.info("reusing the finished run %s", run_dir)
    else:
        log.info("unlearning with %s into %s", job.method.display, run_dir)
        pipeline.unlearn(job, original, reference, run_dir)
    log.info("evaluating %s", run_dir)
    evaluation = pipeline.evaluate(job, run_dir, original, reference)
    verdict = pipeline.verdict(evaluation, job.gate_tolerances)
    atomic_write_json(results / "evaluations" / f"{job.slug}.json",
                      {"key": job.key, "evaluation": evaluation, "verdict": verdict})
    return build_row(job, experiment=experiment, evaluation=evaluation, verdict=verdict,
                     unlearn_metrics=read_json(run_dir / METRICS_FILE),
                     reference_metrics=read_json(reference / METRICS_FILE),
                     original_metrics=read_json(original / METRICS_FILE),
                     run_dir=run_dir, original_dir=original, reference_dir=reference,
                     cell_seconds=time.perf_counter() - t0)


# -- rows ---------------------------------------------------------------------------------------
#: Where ``evaluate_run`` puts each headline column (flattened path).
METRIC_PATHS = {
    "UA": "models.model.utility.UA",
    "RA": "models.model.utility.RA",
    "TA": "models.model.utility.TA",
    "test_auc": "models.model.utility.test_auc",
    "mia_efficacy": "models.model.privacy.mia_efficacy",
    "attack_auc": "models.model.privacy.attack_auc",
    "average_gap_pp": "fidelity.average_gap_pp",
    "fnr": "models.model.clinical.test.fnr",
    "fpr": "models.model.clinical.test.fpr",
    "global_risk": "models.model.clinical.test.global_risk",
    "original_fnr": "models.original.clinical.test.fnr",
    "original_global_risk": "models.original.clinical.test.global_risk",
}


def pick(flat: dict, name: str) -> float | None:
    """A headline metric from a flattened ``evaluate_run`` dict (``None`` when absent).

    Looks at the documented path first (:data:`METRIC_PATHS`), then at any path ending in the
    metric's name outside the comparison sections (``changes``, other models).
    """
    path = METRIC_PATHS.get(name)
    cands = [path] if path in flat else []
    if not cands:
        leaf = name.rsplit(".", 1)[-1]
        cands = sorted((k for k in flat if k.rsplit(".", 1)[-1] == leaf
                        and not {"original", "reference", "changes", "bias"} & set(k.split("."))),
                       key=lambda k: (k.count("."), k))
    for k in cands:
        v = flat[k]
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _num(d: dict | None, key: str) -> float | None:
    v = (d or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def build_row(job: CellJob, *, experiment: str, evaluation: dict, verdict: dict,
              unlearn_metrics: dict, reference_metrics: dict, original_metrics: dict,
              run_dir: Path, original_dir: Path, reference_dir: Path,
              cell_seconds: float) -> dict:
    """The results-table row of one finished cell."""
    flat = flatten(evaluation)
    o = job.original
    row: dict[str, Any] = {
        # image files are named by the study's short name, MedMNIST sets by their flag
        "key": job.key, "experiment": experiment,
        "dataset": o.dataset.dataset if o.dataset.files is None
        else (o.dataset.label or o.dataset.name.rsplit("-", 1)[0]),
        "view": o.dataset.view, "augment": o.augment, "forget": job.reference.forget,
        "forget_ratio": forget_ratio(job.reference.forget), "method": job.method.name,
        "label": job.method.display, "seed": job.seed,
    }
    for name in METRIC_PATHS:
        row[name] = pick(flat, name)
    if row["fnr"] is not None and row["original_fnr"] is not None:
        row["fnr_change"] = row["fnr"] - row["original_fnr"]
    unlearn_s = _num(unlearn_metrics, "unlearn_seconds") or pick(flat, "unlearn_seconds")
    retrain_s = _num(reference_metrics, "unlearn_seconds") or pick(flat, "retrain_seconds")
    row["unlearn_seconds"] = unlearn_s
    row["retrain_seconds"] = retrain_s
    row["speedup"] = (retrain_s / unlearn_s if unlearn_s and retrain_s
                      else pick(flat, "speedup"))
    row["original_train_seconds"] = _num(original_metrics, "train_seconds")
    row["cell_seconds"] = cell_seconds
    row["gate_passed"] = verdict.get("passed")
    row["gate_reasons"] = list(verdict.get("reasons") or [])
    row["run_dir"] = str(run_dir)
    row["original_dir"] = str(original_dir)
    row["reference_dir"] = str(reference_dir)
    row["options"] = job.method.options_dict
    row["metrics"] = flat | {f"run.{k}": v for k, v in flatten(unlearn_metrics).items()}
    row["config"] = {"original": o.key, "reference": job.reference.key,
                     "data": o.data.identity() if o.data is not None else dict(o.files),
                     "model": o.model, "train": o.train,
                     "evaluation": job.evaluation_options, "gate": job.gate_tolerances}
    row["created"] = now_iso()
    return row


# -- a failed Ray task as a row ------------------------------------------------------------------
def failed_task_row(args: tuple, exc: Exception) -> dict:
    """The outcome of a grid job whose Ray worker died (e.g. out of memory): a failed-job row,
    as :func:`run_job` reports its own failures (``args``: ``(kind, job, results, ...)``)."""
    kind, job, results = args[:3]
    return {"kind": kind, "key": job.key, "slug": job.slug, "status": "failed",
            "error": f"Ray task failed: {exc}", "log": f"{results}/logs/{kind}/{job.slug}.log",
            "seconds": 0.0}


# -- the driver -----------------------------------------------------------------------------------
@contextlib.contextmanager
def results_lock(results: Path) -> Iterator[None]:
    """Hold an exclusive lock on the results folder (released by the OS even on kill -9)."""
    def busy() -> ExperimentBusyError:
        return ExperimentBusyError(
            f"Another 'medunlearn experiment' is writing into {results}. Wait for it to finish "
            "(or stop it), or choose another --out folder.")

    with exclusive_lock(results / ".lock", busy) as fh:
        fh.seek(0)
        fh.truncate()
        fh.write(f"{os.getpid()}\n")
        fh.flush()
        yield


def clean_stale(results: Path) -> int:
    """Delete staging folders left by interrupted jobs (only call while holding the lock)."""
    n = 0
    for parent in (results / "models" / "original", results / "models" / "reference",
                   results / "runs"):
        if not parent.is_dir():
            continue
        for p in parent.iterdir():
            if p.name.startswith(".") and (".staging-" in p.name or ".replaced-" in p.name):
                shutil.rmtree(p, ignore_errors=True)
                n += 1
    for parent in (results / "evaluations", results / "configs", results):
        for p in parent.glob(".*.tmp") if parent.is_dir() else ():
            p.unlink(missing_ok=True)  # half-written atomic writes of a killed run
            n += 1
    return n


def _progress(total: int, initial: int, enabled: bool):
    from medunlearn.progress import progress_bar

    return progress_bar(total, "experiment", enabled=enabled, unit="job", initial=initial,
                        leave=True)


def run_experiment(config: ExperimentConfig, out: str | os.PathLike, *, backend: str = "local",
                   ray_address: str | None = None, num_cpus: int | None = None,
                   cpus_per_task: int = 1, pipeline: Pipeline | None = None,
                   progress: bool = True) -> ExperimentSummary:
    """Run (or resume) every cell of an experiment grid into the results folder ``out``.

    Args:
        config: The parsed study (:func:`~medunlearn.experiments.config.load_experiment`).
        out: The results folder; rerun with the same folder to resume.
        backend: ``"local"`` (jobs one after another in this process) or ``"ray"``.
        ray_address: Address of a Ray cluster (``ray://host:10001`` or ``auto``); without it a
            local Ray is started with ``num_cpus`` CPUs. On a cluster ``out`` must be a folder
            every node can write to.
        num_cpus: CPUs of the local Ray instance (default: all).
        cpus_per_task: CPUs reserved for each Ray task (also its torch thread count).
        pipeline: The per-job work; tests pass fakes (default: the real APIs).
        progress: Show a progress bar with ETA over the whole grid.

    Returns:
        An :class:`ExperimentSummary`; failed cells are listed there (and retried next time).

    Raises:
        ExperimentBusyError: another process is running an experiment into ``out``.
    """
    if backend not in BACKENDS:
        raise MedUnlearnError(f"Unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    results = Path(out)
    t_start = time.perf_counter()
    with results_lock(results):
        clean_stale(results)
        cfg_dict = config.to_dict()
        atomic_write_json(results / "configs" / f"{config.name}-{fingerprint(cfg_dict)}.json",
                          cfg_dict)
        store = ResultsStore(results)
        try:
            return _run(config, results, store, backend=backend, ray_address=ray_address,
                        num_cpus=num_cpus, cpus_per_task=cpus_per_task, pipeline=pipeline,
                        progress=progress, t_start=t_start)
        finally:
            store.close()


def _run(config: ExperimentConfig, results: Path, store: ResultsStore, *, backend: str,
         ray_address: str | None, num_cpus: int | None, cpus_per_task: int,
         pipeline: Pipeline | None, progress: bool, t_start: float) -> ExperimentSummary:
    originals, references, cells = config.plan()
    cells = config.baselines(references) + cells  # the do-nothing rows first: they are cheap
    done = store.keys()
    pending = [c for c in cells if c.key not in done]
    need_refs = {c.reference.key: c.reference for c in pending}
    refs_todo = [r for r in references
                 if r.key in need_refs and not is_finished(results / r.folder)]
    need_orig = {r.original.key for r in refs_todo} | {c.original.key for c in pending}
    orig_todo = [o for o in originals
                 if o.key in need_orig and not is_finished(results / o.folder)]
    total = len(originals) + len(references) + len(cells)
    summary = ExperimentSummary(results=results, cells=len(cells),
                                already_done=len(cells) - len(pending), completed=0)
    threads = config.threads if backend == "local" else (config.threads or cpus_per_task)
    bar = _progress(total, total - len(orig_todo) - len(refs_todo) - len(pending), progress)
    executor = None
    if orig_todo or refs_todo or pending:  # do not start Ray for a finished grid
        executor = make_executor(backend, run_job, ray_address=ray_address, num_cpus=num_cpus,
                                 cpus_per_task=cpus_per_task, threads=threads,
                                 on_failure=failed_task_row)
    name = config.name
    try:
        for kind, jobs in (("original", orig_todo), ("reference", refs_todo),
                           ("cell", pending)):
            if not jobs or executor is None:
                continue
            bar.set_postfix_str(f"{kind}s")
            calls = [(kind, job, str(results), pipeline, name) for job in jobs]
            for outcome in executor.map(calls):
                _record(outcome, store, summary, bar)
    finally:
        bar.close()
        if executor is not None:
            executor.close()
        store.export_csv(results / CSV_FILE)
    summary.seconds = time.perf_counter() - t_start
    return summary


def _record(outcome: dict, store: ResultsStore, summary: ExperimentSummary, bar) -> None:
    if outcome["status"] == "ok":
        if outcome["kind"] == "cell":
            store.insert(outcome["row"])
            summary.completed += 1
    else:
        if outcome["kind"] == "cell":
            store.record_failure(outcome["key"], outcome["slug"], outcome["error"],
                                 outcome["log"], now_iso())
        summary.failed.append({k: outcome[k] for k in ("kind", "key", "slug", "error", "log")})
        bar.write(f"failed: {outcome['kind']} {outcome['slug']}: {outcome['error']} "
                  f"(log: {outcome['log']})")
    bar.update(1)
