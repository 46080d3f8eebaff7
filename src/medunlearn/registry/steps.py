"""The two pluggable steps of a request: unlearn a candidate, then gate it.

:func:`~medunlearn.registry.workflow.process_request` takes both as callables, defaulting to the
production ones: :func:`unlearn_candidate` (``medunlearn.runs.run_unlearning`` with the
registry's request options) and :func:`gate_candidate` (``evaluate_run`` against the active
version, then the safety ``gate``). Tests pass stand-ins (``medunlearn.testing.fake_unlearn`` and
``fake_verify``); nothing here selects them.

Contracts::

    unlearn(model_dir, *, method, forget, exclude, out, seed, data_root[, cache]) -> dict
    verify(run_dir, *, original, data_root[, cache]) -> Verification

A step that takes ``cache`` gets the registry's feature cache (a ``medunlearn.cache.Session``
whose tables the ledger vouches for; see :mod:`.features`); the production steps pass it on to
``run_unlearning`` and ``evaluate_run``.

Every attempt records the names of the two steps it used (:func:`step_name`); the audit flags a
promotion made with any step other than the production ones (:data:`REAL_STEPS`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from medunlearn.config import EXACT_METHODS


@dataclass
class Verification:
    """The outcome of the gate step: the safety gate's verdict on a candidate."""

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


def unlearn_candidate(model_dir: str | os.PathLike, *, method: str, forget: Sequence[int],
                      exclude: Sequence[int], out: str | os.PathLike, seed: int = 0,
                      data_root: str | None = None, cache=None) -> dict:
    """Unlearn with ``medunlearn.runs.run_unlearning`` (no progress bar), with the request
    options of :data:`REQUEST_OPTIONS` (``cache``: the registry's feature cache)."""
    from medunlearn.runs import run_unlearning

    return run_unlearning(model_dir, method=method, forget=list(forget), seed=seed, out=out,
                          exclude=list(exclude), data_root=data_root, progress=False,
                          retain_limit=VERIFY_OPTIONS["retain_limit"],
                          options=REQUEST_OPTIONS.get(method), cache=cache)


def gate_candidate(run_dir: str | os.PathLike, *, original: str | os.PathLike,
                   data_root: str | None = None, cache=None,
                   shadows: str | os.PathLike | None = None,
                   registry: str | os.PathLike | None = None) -> Verification:
    """Evaluate the candidate ``run_dir`` against the active version ``original`` (the
    registry's verification options) and apply the safety gate to the metrics (``cache``: the
    registry's feature cache).

    ``shadows``: the registry's shadow-model folder (:mod:`.shadows`): the gate's per-image
    ``membership`` check runs on the request's images. Without it (a registry without shadow
    models, ``registry`` given) the check is "not run", with the command that enables it.
    """
    from medunlearn.evaluation.gate import gate
    from medunlearn.runs import evaluate_run
    from medunlearn.runs.shadows import load_companions

    # the registry vouches for the set (its ledger records it for version 1, from which every
    # version descends), so only its data is checked (by evaluate_run)
    companions = load_companions(shadows) if shadows is not None else None
    metrics = evaluate_run(run_dir, original=original, data_root=data_root,
                           options=VERIFY_OPTIONS, cache=cache, shadows=companions)
    if companions is None and registry is not None:
        from medunlearn.registry.shadow_records import command

        metrics.setdefault("skipped", {})["membership"] = (
            f"not run: the registry has no shadow models; '{command(registry)}' trains them "
            "once, and every later request runs this check")
    exact = (metrics["runs"]["model"].get("method") or {}).get("name") in EXACT_METHODS
    # exact retraining is what the privacy checks approximate; its clinical safety still counts
    verdict = gate(metrics, {"privacy_checks": False} if exact else None)
    return Verification(passed=bool(verdict.passed), reasons=list(verdict.reasons),
                        checks=list(getattr(verdict, "checks", []) or []), metrics=metrics)


#: The names the ledger records for the production steps (their original import paths, kept when
#: the functions were renamed so that every registry's ledger names them the same way). An attempt
#: promoted with any other step is flagged by ``audit verify`` and in certificates.
REAL_STEPS = ("medunlearn.registry.steps.real_unlearn", "medunlearn.registry.steps.real_verify")
_LEDGER_NAMES = ((unlearn_candidate, REAL_STEPS[0]), (gate_candidate, REAL_STEPS[1]))


def step_name(step) -> str:
    """The name an attempt records for a step: :data:`REAL_STEPS` for the production steps,
    ``module.qualname`` for any other callable."""
    for func, name in _LEDGER_NAMES:
        if step is func:
            return name
    return f"{getattr(step, '__module__', '?')}.{getattr(step, '__qualname__', repr(step))}"
