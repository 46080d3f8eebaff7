"""The two pluggable steps of a request: unlearn, then verify.

:func:`~medunlearn.registry.core.forget` takes both as callables, defaulting to the real ones
(:func:`real_unlearn` around ``medunlearn.unlearning.run_unlearning`` and :func:`real_verify`
around ``evaluate_run`` + ``gate``). Tests inject fast fakes; subprocess tests select the fakes
with the environment variable ``MEDUNLEARN_REGISTRY_STEPS=fake`` (fake knobs:
``MEDUNLEARN_REGISTRY_FAKE_DELAY`` seconds per step and ``MEDUNLEARN_REGISTRY_FAKE_FAIL``, a
comma-separated list of methods whose verdict fails).

Contracts::

    unlearn(model_dir, *, method, forget, exclude, out, seed, data_root) -> dict  # metrics
    verify(run_dir, *, original, data_root) -> Verification
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medunlearn.errors import ConfigError
from medunlearn.io import atomic_write_json, staged_output
from medunlearn.registry import store

STEPS_ENV = "MEDUNLEARN_REGISTRY_STEPS"
DELAY_ENV = "MEDUNLEARN_REGISTRY_FAKE_DELAY"
FAIL_ENV = "MEDUNLEARN_REGISTRY_FAKE_FAIL"


@dataclass
class Verification:
    """The outcome of the verify step."""

    passed: bool
    reasons: list[str] = field(default_factory=list)
    checks: list[dict] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


UnlearnStep = Callable[..., dict]
VerifyStep = Callable[..., Verification]


#: A deletion request is verified on seeded subsets of the retain data (RA on 1000 images, the
#: membership attack trained on 1000 members): the forgotten images, validation and test sets are
#: always used whole. This keeps verification to a few seconds on a 2-core CPU.
VERIFY_OPTIONS = {"retain_limit": 1000, "attack_retain_cap": 1000}


#: Method options of a deletion request that differ from the method's defaults (recorded in
#: each candidate's config.json). The Newton step of a request updates the linear head on fixed
#: features (``scope="head"``): the convex case, in which the step is the exact influence
#: removal of certified-removal methods and CG converges (residual ~1e-5 in 8-10 products). It
#: takes ~1-2 s where the last-block default takes 30-45 s on a 2-core CPU, and on the bundled
#: models it kept test AUC unchanged where the last-block step at 5% of the TB patients flipped
#: the model to "TB" for every image (bench/bench_request.py, docs/results section 4).
REQUEST_OPTIONS: dict[str, dict] = {"newton": {"scope": "head"}}


def real_unlearn(model_dir: str | os.PathLike, *, method: str, forget: Sequence[int],
                 exclude: Sequence[int], out: str | os.PathLike, seed: int = 0,
                 data_root: str | None = None) -> dict:
    """Unlearn with ``medunlearn.unlearning.run_unlearning`` (no progress bar), with the
    request options of :data:`REQUEST_OPTIONS`."""
    from medunlearn.unlearning import run_unlearning

    return run_unlearning(model_dir, method=method, forget=list(forget), seed=seed, out=out,
                          exclude=list(exclude), data_root=data_root, progress=False,
                          retain_limit=VERIFY_OPTIONS["retain_limit"],
                          options=REQUEST_OPTIONS.get(method))


def real_verify(run_dir: str | os.PathLike, *, original: str | os.PathLike,
                data_root: str | None = None) -> Verification:
    """Evaluate the candidate against the active version and apply the safety gate."""
    from medunlearn.evaluation.api import evaluate_run
    from medunlearn.evaluation.gate import gate

    metrics = evaluate_run(run_dir, original=original, data_root=data_root,
                           options=VERIFY_OPTIONS)
    exact = (metrics["runs"]["model"].get("method") or {}).get("name") == "retrain"
    # exact retraining is what the privacy checks approximate; its clinical safety still counts
    verdict = gate(metrics, {"privacy_checks": False} if exact else None)
    return Verification(passed=bool(verdict.passed), reasons=list(verdict.reasons),
                        checks=list(getattr(verdict, "checks", []) or []), metrics=metrics)


def _sleep() -> None:
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    if delay > 0:
        time.sleep(delay)


def fake_unlearn(model_dir: str | os.PathLike, *, method: str, forget: Sequence[int],
                 exclude: Sequence[int], out: str | os.PathLike, seed: int = 0,
                 data_root: str | None = None) -> dict:
    """A fast stand-in for tests: copies the model with new metadata (so a new weights hash).

    It writes a complete run folder through ``staged_output`` like the real step, and records
    the indices it was given in ``fake_call.json`` so tests can check what a retrain would see.
    """
    from safetensors.numpy import load_file, save_file

    model_dir = Path(model_dir)
    forget, exclude = sorted(int(i) for i in forget), sorted(int(i) for i in exclude)
    overlap = set(forget) & set(exclude)
    if overlap:
        raise ConfigError(f"forget and exclude overlap: {sorted(overlap)[:5]}")
    _sleep()
    with staged_output(out, what="unlearning run") as stage:
        tensors = load_file(str(model_dir / "model.safetensors"))
        save_file(tensors, str(stage / "model.safetensors"),
                  metadata={"format": "medunlearn", "fake_method": method,
                            "forget": json.dumps(forget)})
        config = json.loads((model_dir / "config.json").read_text())
        config.update(kind="unlearn", method={"name": method, "options": {}},
                      original={"path": str(model_dir)},
                      forget={"spec": "indices", "count": len(forget),
                              "excluded_count": len(exclude)})
        atomic_write_json(stage / "config.json", config)
        with open(stage / "forget.csv", "w", newline="") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(["index"])
            w.writerows([i] for i in forget)
        atomic_write_json(stage / "fake_call.json", {"method": method, "forget": forget,
                                                     "exclude": exclude, "seed": seed})
        metrics = {"unlearn_seconds": 0.0, "steps": 0, "fake": True}
        atomic_write_json(stage / "metrics.json", metrics)
        store.stage("fake-unlearn-writing")  # a crash test can stop it with the folder half done
        _sleep()
    return metrics


def fake_verify(run_dir: str | os.PathLike, *, original: str | os.PathLike,
                data_root: str | None = None) -> Verification:
    """A fast stand-in for tests: fails the methods listed in ``$MEDUNLEARN_REGISTRY_FAKE_FAIL``."""
    _sleep()
    method = json.loads((Path(run_dir) / "config.json").read_text())["method"]["name"]
    failing = {m.strip() for m in os.environ.get(FAIL_ENV, "").split(",") if m.strip()}
    if method in failing:
        return Verification(False, [f"fake gate: {method} is configured to fail"],
                            [{"name": "fake", "status": "fail"}], {"fake": True})
    return Verification(True, [], [{"name": "fake", "status": "pass"}], {"fake": True})


def resolve_steps(unlearn: UnlearnStep | None,
                  verify: VerifyStep | None) -> tuple[UnlearnStep, VerifyStep]:
    """The steps to use: explicit callables, else the environment's choice, else the real ones."""
    choice = os.environ.get(STEPS_ENV, "real").strip().lower() or "real"
    if choice not in ("real", "fake"):
        raise ConfigError(f"{STEPS_ENV}={choice!r} is not valid; use 'real' (default) or 'fake' "
                          "(fast stand-ins for tests only).")
    default_u, default_v = (fake_unlearn, fake_verify) if choice == "fake" else (real_unlearn,
                                                                                 real_verify)
    return unlearn or default_u, verify or default_v


#: The production steps; any other step is recorded and flagged by ``audit verify``.
REAL_STEPS = ("medunlearn.registry.steps.real_unlearn", "medunlearn.registry.steps.real_verify")


def step_name(step) -> str:
    """``module.qualname`` of a step callable (recorded with every attempt)."""
    return f"{getattr(step, '__module__', '?')}.{getattr(step, '__qualname__', repr(step))}"


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
