"""Run an unlearning method on a trained model and write a run folder.

:func:`run_unlearning` loads a run folder (from ``train`` or an earlier ``unlearn``), selects the
forget set, resolves the method's options (Config defaults < ``defaults/methods.toml``
``[default.<method>]`` < ``[<dataset>.<method>]`` < user options), runs the method, measures its
cost, evaluates the result and writes a run folder in the same layout as ``train`` (see
docs/CONTRACTS.md), so the unlearned model can be evaluated, audited or unlearned again.

Cost measurement:

* ``unlearn_seconds``: wall time of the method call (model copy included), ``time.perf_counter``.
* ``cpu_seconds``: process CPU time over the same span (all threads, ``time.process_time``);
  above ``unlearn_seconds`` when torch uses several threads.
* ``peak_memory_mb``: the process's peak resident set size (``getrusage`` ``ru_maxrss``) after
  the method: a high-water mark of the *whole process* (data, model, interpreter), not of the
  method alone. ``peak_memory_increase_mb`` is how much the method raised that mark (0 when it
  stayed below an earlier peak, e.g. of data loading). Torch CPU allocations are invisible to
  ``tracemalloc``, so RSS is the honest measure available on CPU.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path

import torch

from medunlearn.checkpoint import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    Run,
    load_run_and_data,
    save_weights,
)
from medunlearn.config import NONE_WORDS, ModelConfig, TrainConfig, from_dict
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError, OutputExistsError
from medunlearn.forget import (
    ForgetSet,
    previously_forgotten,
    select_forget,
    write_forget_csv,
    write_index_csv,
)
from medunlearn.io import atomic_write_json, fingerprint, sha256_file, staged_output
from medunlearn.loop import Runtime
from medunlearn.methods import Method, UnlearnContext, UnlearnOutcome, create_method
from medunlearn.methods.base import config_dict, get_method_class, revision_field
from medunlearn.provenance import environment
from medunlearn.runs import finished_run_metrics, now_iso, split_metrics
from medunlearn.sharding import save_shard_files, settle
from medunlearn.training import evaluate_split

DEFAULTS_VERSION = 1


def read_packaged_toml(name: str, version: int) -> dict:
    """A versioned TOML file shipped in ``medunlearn/defaults/``, parsed.

    Raises:
        ConfigError: the file's ``version`` is not ``version``.
    """
    text = resources.files("medunlearn").joinpath(f"defaults/{name}").read_text("utf-8")
    data = tomllib.loads(text)
    if data.get("version") != version:
        raise ConfigError(f"defaults/{name} has version {data.get('version')!r}; this "
                          f"medunlearn reads version {version}. Reinstall the package.")
    return data


def load_defaults() -> dict:
    """The parsed ``defaults/methods.toml`` shipped with the package.

    Raises:
        ConfigError: the file's ``version`` is not one this code understands.
    """
    return read_packaged_toml("methods.toml", DEFAULTS_VERSION)


def default_options(method: str, dataset: str | None = None) -> dict:
    """Options from ``defaults/methods.toml`` for a method: the ``default`` section, then the
    dataset's section on top (without the Config dataclass defaults)."""
    data = load_defaults()
    out = dict(data.get("default", {}).get(method, {}))
    if dataset:
        out.update(data.get(dataset, {}).get(method, {}))
    return out


def resolve_method(method: str, *, dataset: str | None, options: dict | None = None,
                   retain_budget: int | None = None) -> Method:
    """Build a method with Config defaults < toml default < toml dataset section < ``options``.

    ``retain_budget`` is ignored for methods without that option (see
    :func:`takes_retain_budget`).

    Raises:
        ConfigError: unknown method (lists valid ones), unknown or ill-typed option, or a
            negative ``retain_budget``.
    """
    merged = default_options(method, dataset) | dict(options or {})
    if retain_budget is not None:
        if retain_budget < 0:
            raise ConfigError(f"--retain-budget must be non-negative, got {retain_budget}.")
        if takes_retain_budget(method):
            merged["retain_budget"] = retain_budget
    return create_method(method, merged)


def takes_retain_budget(method: str) -> bool:
    """Whether a method has a ``retain_budget`` option. Methods without one read either no
    retain data (``gradient-ascent``) or all of it by definition (``retrain``, the exact
    reference); the runner's ``retain_budget`` does not apply to them and is recorded as such."""
    return "retain_budget" in {f.name for f in dataclasses.fields(get_method_class(method).Config)}


def parse_option_pairs(pairs: Iterable[str]) -> dict:
    """Parse ``key=value`` strings; values are read as TOML scalars (``0.01``, ``true``, ``3``),
    ``none``/``null`` as None, anything else as a string.

    Raises:
        ConfigError: an entry without ``=`` or a key given twice.
    """
    out: dict = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ConfigError(f"--option takes key=value (e.g. --option lr=0.01), got {pair!r}.")
        if key in out:
            raise ConfigError(f"Option {key!r} is given twice; give it once.")
        raw = raw.strip()
        if raw.lower() in NONE_WORDS:
            out[key] = None
            continue
        try:
            out[key] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = raw
    return out


def _model_config(run: Run) -> ModelConfig:
    if "model_config" in run.config and run.config["model_config"] is not None:
        return from_dict(ModelConfig, run.config["model_config"], where="config.json model_config")
    spec = run.config["model"]
    return ModelConfig(arch=spec.get("arch", "auto"), width=spec.get("width", 16))


def build_context(run: Run, dataset: Dataset, forget_set: ForgetSet, *, seed: int,
                  progress: bool = True, device: str | None = None,
                  on_batch: Callable[[torch.Tensor], None] | None = None) -> UnlearnContext:
    """The :class:`UnlearnContext` for a loaded run and forget set (recipe from config.json;
    ``device`` overrides the recipe's device, None keeps it)."""
    train_cfg = from_dict(TrainConfig, run.config.get("train", {}), where="config.json train")
    if device is not None:
        train_cfg = dataclasses.replace(train_cfg, device=device)
    return UnlearnContext(
        dataset=dataset, forget=forget_set.forget, retain=forget_set.retain, seed=seed,
        train_config=dataclasses.replace(train_cfg, progress=progress),
        model_config=_model_config(run), model_spec=run.config["model"], progress=progress,
        runtime=Runtime.create(train_cfg.device, train_cfg.precision, train_cfg.threads),
        on_batch=on_batch,
    )


def _maxrss_mb() -> float:
    """Peak resident set size of this process in MiB (``nan`` where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover  (Windows)
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def execute(method: Method, model: torch.nn.Module, ctx: UnlearnContext
            ) -> tuple[UnlearnOutcome, dict]:
    """Run ``method`` on ``model`` and measure wall time, CPU time and peak memory."""
    rss0 = _maxrss_mb()
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    result = method.unlearn(model, ctx)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    rss1 = _maxrss_mb()
    if result.model is model:
        raise RuntimeError(f"method {method.name!r} returned the original model object; methods "
                           "must return an unlearned copy")
    if not result.seconds:
        result.seconds = wall
    settle(result.model)  # a sharded model: drop slice checkpoints the method made stale
    cost = {"unlearn_seconds": wall, "method_seconds": result.seconds, "cpu_seconds": cpu,
            "peak_memory_mb": rss1, "peak_memory_increase_mb": max(0.0, rss1 - rss0),
            "steps": int(result.steps)}
    return result, cost


def run_unlearning(model_dir: str | os.PathLike, *, method: str, forget: str | Sequence[int],
                   seed: int = 0, out: str | os.PathLike, options: dict | None = None,
                   exclude: Iterable[int] | None = None, retain_budget: int | None = None,
                   overwrite: bool = False, replace_stale: bool = False,
                   data_root: str | None = None, progress: bool = True,
                   on_batch: Callable[[torch.Tensor], None] | None = None,
                   retain_limit: int | None = None, device: str | None = None) -> dict:
    """Unlearn a forget set from a trained model and write a run folder at ``out``.

    Args:
        model_dir: A run folder (``train`` or ``unlearn`` output).
        method: A registered method name (``medunlearn methods`` lists them).
        forget: A forget spec (``random:0.2``, ``class:1``, ``hashes:FILE`` ...; see
            :mod:`medunlearn.forget`) or a sequence of training-split indices.
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

    Returns:
        The metrics written to ``metrics.json``.

    Raises:
        MedUnlearnError: bad model folder, forget spec, method name or option, or output folder.
    """
    out = Path(out)
    run, dataset = load_run_and_data(model_dir, data_root=data_root)
    flag = dataset.name
    algo = resolve_method(method, dataset=flag, options=options, retain_budget=retain_budget)
    inherited = set(previously_forgotten(model_dir))
    if method == "retrain" and not isinstance(forget, str):
        # Retraining reads neither set, so samples the model forgot earlier that are named again
        # stay in the forget set and its evaluation covers them (a registry consolidation
        # retrains without every withdrawn image and verifies all of them).
        inherited -= {int(i) for i in forget}
    excluded = sorted(set(exclude or []) | inherited)
    forget_set = select_forget(dataset, forget=forget, seed=seed, exclude=excluded)
    ctx = build_context(run, dataset, forget_set, seed=seed, progress=progress,
                        device=device, on_batch=on_batch)
    weights_sha = sha256_file(Path(model_dir) / MODEL_FILE)
    resolved = config_dict(algo)
    key = fingerprint({"kind": "unlearn", "original": weights_sha, "method": method,
                       "options": resolved, "seed": seed,
                       "forget": forget_set.forget.tolist(), "retain": len(forget_set.retain)}
                      | revision_field(algo))
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
        result, cost = execute(algo, run.model, ctx)
        model = result.model.eval()
        # the training split is forget + retain: evaluate those two, not all of it again
        rt = ctx.runtime
        splits = split_metrics(model, dataset, ("val", "test"), runtime=rt)
        splits["forget"] = evaluate_split(model, dataset.train, forget_set.forget, runtime=rt)
        retain_eval = forget_set.retain
        if retain_limit is not None and len(retain_eval) > retain_limit:
            from medunlearn.evaluation.api import EvalOptions, retain_subset

            # the evaluation's subset (its default seed), so a verification reuses these outputs
            retain_eval = torch.from_numpy(retain_subset(
                retain_eval.numpy(), retain_limit, seed=EvalOptions.seed,
                n_train=len(dataset.train)))
        splits["retain"] = evaluate_split(model, dataset.train, retain_eval, runtime=rt) \
            if len(retain_eval) else None
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
            "details": result.details,
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
                       and takes_retain_budget(method), "seed": seed},
            "forget": {"spec": forget_set.spec, "count": len(forget_set),
                       "excluded_count": forget_set.excluded_count},
        }
        save_weights(stage / MODEL_FILE, model, {"fingerprint": key, "kind": "unlearn"})
        # a sharded model: its assignment, and its slice checkpoints while they describe it
        shard_section = save_shard_files(stage, model, num_classes=dataset.num_classes)
        if shard_section is not None:
            config["shards"] = shard_section
        atomic_write_json(stage / CONFIG_FILE, config)
        write_forget_csv(stage / "forget.csv", dataset, forget_set)
        if excluded:
            write_index_csv(stage / "excluded.csv", dataset, excluded)
        atomic_write_json(stage / METRICS_FILE, metrics)
    return metrics


__all__ = [
    "build_context", "default_options", "execute", "load_defaults", "parse_option_pairs",
    "resolve_method", "run_unlearning", "takes_retain_budget",
]
