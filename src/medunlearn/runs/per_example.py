"""Verify forgetting per example over run folders (``medunlearn verify-forgetting``): N
unlearned and N retrained runs, scored like the NeurIPS 2023 unlearning challenge
(:mod:`medunlearn.evaluation.forgetting_quality`; in memory:
:func:`medunlearn.api.forgetting_quality`).

Semantics (what is compared with what):

* **Unlearned models**: the *same* original model unlearned N times with seeds
  ``seed, seed + 1, ..., seed + N - 1`` (only the method's randomness varies: batch order,
  subsamples, noise). This asks the deployment question "does unlearning THIS model look like
  retraining?". The challenge does the same (one original, N unlearning runs). A method that is
  deterministic given the original (or does nothing) gives N identical models; the challenge's
  rule then gives every example the cap epsilon (a point mass is perfectly distinguishable from
  the spread of retraining), and the result says so (``identical_unlearned_models``).
* **Retrained models**: ``retrain`` on the retain set with the original recipe, seeds
  ``seed + 100000 + i`` (never a seed of the unlearned runs, so ``--method retrain`` compares
  two independent sets of retrained models: the calibration point).
* **Forget set**: chosen once, from the spec and ``seed``, and given to every run as explicit
  indices, so all 2N runs forget the same images.

Every run is a normal run folder (:func:`medunlearn.runs.unlearn.run_unlearning`) under
``OUT/retrained/seed-S`` and ``OUT/<method>/seed-S``, keyed by fingerprint: a finished run is
reused, so an interrupted check resumes and methods checked into the same ``OUT`` share the
retrained models. The result is ``OUT/<method>/forgetting_quality.json`` (written atomically)
and ``OUT/<method>/scores.npz`` (the (N, F) logit-scaled confidences of both sides), so several
methods can share one ``OUT``.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from medunlearn import ray_support
from medunlearn.checkpoint import (
    CONFIG_FILE,
    FORGET_FILE,
    METRICS_FILE,
    MODEL_FILE,
    load_run,
    load_run_and_data,
    read_indices,
)
from medunlearn.errors import ConfigError
from medunlearn.evaluation import forgetting_quality as fq
from medunlearn.evaluation.forgetting_quality import RESULT_FILE, check_n, seeds
from medunlearn.evaluation.outputs import forget_confidences
from medunlearn.fileio import atomic_write_bytes, atomic_write_json, read_json, sha256_file
from medunlearn.loop import Runtime
from medunlearn.methods.base import method_names, resolve_method
from medunlearn.provenance import now_iso
from medunlearn.runs.unlearn import forget_set_for, run_unlearning


def _one_run(kwargs: dict) -> dict:
    """One ``run_unlearning`` call (module level: picklable for Ray)."""
    threads = kwargs.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    metrics = run_unlearning(**kwargs)  # a finished run of this configuration is reused
    return {"out": str(kwargs["out"]), "reused": bool(metrics.get("reused")),
            "retain_accuracy": metrics.get("retain_accuracy"),
            "test_accuracy": metrics.get("test_accuracy"),
            "unlearn_seconds": metrics.get("unlearn_seconds")}


def _run_all(calls: list[dict], *, backend: str, progress: bool,
             ray_address: str | None = None) -> list[dict]:
    from medunlearn.progress import progress_bar

    # finished folders are reused in a moment: the bar (and its ETA) counts the runs to train
    done_before = {str(c["out"]) for c in calls if (Path(c["out"]) / METRICS_FILE).is_file()}
    bar = progress_bar(len(calls) - len(done_before), "verify-forgetting", enabled=progress,
                       unit="model")
    results: list[dict] = []
    try:
        if backend == "local":
            for c in calls:
                results.append(_one_run(dict(c)))
                if str(c["out"]) not in done_before:
                    bar.update(1)
        elif backend == "ray":
            with ray_support.running(ray_address) as ray:
                task = ray.remote(num_cpus=1, max_retries=0)(_one_run)
                # retrained folders first: several methods checked into one OUT share them
                pending = [task.remote(dict(c) | {"threads": 1}) for c in calls]
                while pending:
                    done, pending = ray.wait(pending, num_returns=1)
                    got = ray.get(done)
                    results.extend(got)
                    bar.update(sum(str(r.get("out")) not in done_before for r in got))
        else:
            raise ConfigError(f"--backend must be 'local' or 'ray', got {backend!r}.")
    finally:
        bar.close()
    return results


def _save_scores(path: Path, **arrays: np.ndarray) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


RETRAINED_DIR = "retrained"  # the retrained runs' folder under OUT, shared by every label


def check_label(label: str) -> str:
    """A label is one folder name under OUT: letters, digits and ``-_.@=,+``, not the
    retrained models' folder.

    Raises:
        ConfigError: any other label, naming the rule.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@=,+-]*", label) or label == RETRAINED_DIR:
        raise ConfigError(f"Label {label!r} cannot name a folder of unlearned runs: use "
                          "letters, digits and -_.@=,+ (starting with a letter or digit), and "
                          f"not {RETRAINED_DIR!r}.")
    return label


def verify_forgetting(model_dir: str | os.PathLike, *, forget: str | Sequence[int], method: str,
                      out: str | os.PathLike, n: int = 16, seed: int = 0,
                      options: Mapping | None = None, device: str | None = None,
                      data_root: str | None = None, progress: bool = True,
                      backend: str = "local", ray_address: str | None = None,
                      retain_limit: int | None = 2000, resamples: int = 1000,
                      null_permutations: int = 3,
                      exclude: Sequence[int] | None = None, overwrite: bool = False,
                      on_runs_done: Callable[[list[dict]], None] | None = None,
                      label: str | None = None) -> dict:
    """Train (or reuse) N unlearned and N retrained run folders and score forgetting per example.

    Args:
        model_dir: The original run folder (``medunlearn train``).
        forget: Forget spec or training indices (chosen once with ``seed``).
        method: The unlearning method to check.
        out: Output folder; finished runs in it are reused.
        n: Models per side (at least 3; 16 by default).
        seed: Seeds the forget set, the first unlearning run (later ones ``seed + i``) and the
            retrained runs (``seed + 100000 + i``).
        options: Method options.
        device: ``auto``, ``cpu``, ``cuda`` ... (None: the original recipe's).
        data_root: Where the data files are.
        progress: A progress bar (plain lines when not a terminal) over the 2N runs.
        backend: ``local`` (one after the other) or ``ray`` (one CPU per run).
        ray_address: A Ray cluster address (``ray`` backend; default: a local Ray).
        retain_limit: Retain accuracy (RA) of each run on a seeded subset of at most this many
            retain samples (None: all).
        resamples: Bootstrap resamples of the score's interval.
        null_permutations: Re-splits for the permutation null (0: skip).
        exclude: Training indices withdrawn earlier (e.g. by earlier deletion requests): in
            neither the forget nor the retain set of any of the 2N runs (passed to
            ``run_unlearning``). The images ``model_dir`` itself forgot are always added.
        overwrite: Replace run folders under ``out`` that hold a run of another configuration
            (without it they are an error); finished runs of this configuration are reused
            either way.
        label: Folder of the unlearned runs and the result under ``out`` (default: the
            method's name). Give each option set of one method its own label, so that they
            share the retrained models without replacing each other's runs.

    Returns:
        The dict written to ``OUT/<label>/forgetting_quality.json``.

    Raises:
        MedUnlearnError: bad model folder, forget spec, method, option or ``n``.
    """
    check_n(n)
    if method not in method_names():
        raise ConfigError(f"Unknown method {method!r}; choose one of {', '.join(method_names())}.")
    label = check_label(method if label is None else label)
    t0 = time.perf_counter()
    out = Path(out)
    run, dataset = load_run_and_data(model_dir, data_root=data_root)
    algo = resolve_method(method, dataset=dataset.name, options=dict(options or {}))
    fs, excluded = forget_set_for(model_dir, dataset, forget, seed=seed, exclude=exclude)
    f_idx = fs.forget.numpy()
    u_seeds, r_seeds = seeds(seed, n)
    common = {"model_dir": str(model_dir), "forget": f_idx.tolist(), "data_root": data_root,
              "progress": False, "device": device, "retain_limit": retain_limit,
              "replace_stale": overwrite}
    if exclude is not None:
        common["exclude"] = excluded
    calls = [common | {"method": "retrain", "seed": s, "out": out / RETRAINED_DIR / f"seed-{s}"}
             for s in r_seeds]
    calls += [common | {"method": method, "seed": s, "options": dict(options or {}),
                        "out": out / label / f"seed-{s}"} for s in u_seeds]
    runs = _run_all(calls, backend=backend, progress=progress, ray_address=ray_address)
    if on_runs_done is not None:
        on_runs_done(runs)
    by_out = {r["out"]: r for r in runs}
    rt = Runtime.create("cpu" if device is None else device, "fp32", None)

    def side(cs: list[dict]) -> dict:
        conf, ra, ta = [], [], []
        for c in cs:
            m = load_run(c["out"]).model
            conf.append(forget_confidences(m, dataset.train, f_idx, runtime=rt))
            r = by_out[str(c["out"])]
            ra.append(r["retain_accuracy"])
            ta.append(r["test_accuracy"])
        return {"scores": np.stack(conf), "RA": ra, "TA": ta}

    r_side, u_side = side(calls[:n]), side(calls[n:])
    train_seconds = time.perf_counter() - t0
    result = fq.summarize(u_side["scores"], r_side["scores"], seed=seed, resamples=resamples,
                          null_permutations=null_permutations,
                          accuracies={"unlearned": u_side, "retrained": r_side})
    hashes = dataset.train.hashes
    result["per_example"] = {"index": f_idx.tolist(),
                             "sha256": [hashes[int(i)] for i in f_idx]} | result["per_example"]
    result = {
        "kind": "forgetting_quality", "created": now_iso(), "method": method, "label": label,
        "options": dataclasses.asdict(algo.config), "user_options": dict(options or {}),
        "n": n, "seed": seed, "seeds": {"unlearned": u_seeds, "retrained": r_seeds},
        "forget": {"spec": forget if isinstance(forget, str) else "indices",
                   "resolved": fs.spec, "count": len(fs), "excluded_count": fs.excluded_count},
        "original": {"path": str(Path(model_dir).resolve()),
                     "weights_sha256": sha256_file(Path(model_dir) / MODEL_FILE),
                     "fingerprint": run.config.get("fingerprint")},
        "dataset": dataset.name,
        "semantics": ("unlearned: the same original unlearned N times (method seed varies); "
                      "retrained: N retrain runs with other seeds; same forget set for all"),
        "backend": backend,
        "runs": {"retrained": [str(c["out"]) for c in calls[:n]],
                 "unlearned": [str(c["out"]) for c in calls[n:]],
                 "reused": sum(r["reused"] for r in runs)},
        **result,
        "wall_seconds": time.perf_counter() - t0,
        "train_and_load_seconds": train_seconds,
    }
    if result["identical_unlearned_models"]:
        result["note"] = ("the N unlearned models give identical outputs on every forget "
                          "example (the method is deterministic given the original, or does "
                          "nothing), so every example gets the cap epsilon")
    _save_scores(out / label / "scores.npz", unlearned=u_side["scores"],
                 retrained=r_side["scores"], forget_indices=f_idx)
    atomic_write_json(out / label / RESULT_FILE, result)
    return result


def load_result_for(path: str | os.PathLike, model_dir: str | os.PathLike) -> dict:
    """Read a ``forgetting_quality.json`` and check it belongs to the unlearn run ``model_dir``
    (same original weights, same forget set).

    Raises:
        ConfigError: unreadable file, or a result for another original or forget set.
    """
    try:
        result = read_json(path)
        if result.get("kind") != "forgetting_quality":
            raise ValueError("not a verify-forgetting result")
    except (OSError, ValueError, AttributeError) as exc:
        raise ConfigError(f"--forgetting-quality {path} is not a readable "
                          f"{RESULT_FILE} ({exc}); give the file that 'medunlearn "
                          "verify-forgetting' wrote.") from None
    model_dir = Path(model_dir)
    cfg = read_json(model_dir / CONFIG_FILE)
    want = (cfg.get("original") or {}).get("weights_sha256")
    if want and want != result["original"]["weights_sha256"]:
        raise ConfigError(f"--forgetting-quality {path} was computed for another original model "
                          f"than the one {model_dir} was unlearned from; run verify-forgetting "
                          "with that model's original.")
    forget_csv = model_dir / FORGET_FILE
    if forget_csv.is_file() and sorted(read_indices(forget_csv)) != \
            sorted(result["per_example"]["index"]):
        raise ConfigError(f"--forgetting-quality {path} covers another forget set than "
                          f"{forget_csv}; run verify-forgetting with the same --forget and "
                          "--seed.")
    return result


__all__ = ["load_result_for", "verify_forgetting"]
