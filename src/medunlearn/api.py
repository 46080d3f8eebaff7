"""The front door: unlearn and evaluate any classifier on any in-memory dataset.

Two calls cover the whole core; run folders (:mod:`medunlearn.runs`), the CLI, experiment grids
and the registry are thin layers over them::

    import medunlearn as mu

    data = mu.from_arrays({"train": {...}, "val": {...}, "test": {...}})   # or load_dataset(...)
    result = mu.unlearn(model, data, forget="random:0.1", method="salun-cra", device="auto")
    report = mu.evaluate(result.model, data, forget=result.forget, original=model,
                         reference=mu.unlearn(model, data, forget=result.forget,
                                              method="retrain").model)
    print(report.verdict.passed, report.record["fidelity"]["average_gap_pp"])

``model`` is any ``torch.nn.Module`` mapping images in [0, 1], (N, C, H, W), to logits; models
without ``features``/``head`` are wrapped by :func:`medunlearn.models.as_classifier` (their last
``nn.Linear`` is the head). Give normalisation with ``as_classifier(net, mean=..., std=...)``.

This module is also where the core is assembled, once: a method's ``unlearn`` is called here
and nowhere else (:func:`unlearn`), and each model's outputs are computed once per evaluation
(:func:`evaluate`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from medunlearn.config import ModelConfig, TrainConfig, as_config
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError, ForgetSetError
from medunlearn.evaluation import forgetting_quality as fq
from medunlearn.evaluation.companions import KFOLD, KFOLD_HINT, CompanionSet
from medunlearn.evaluation.membership import attach_membership
from medunlearn.evaluation.outputs import model_outputs, score_models
from medunlearn.evaluation.record import (
    EvalOptions,
    eval_options,
    evaluate_outputs,
    retain_subset,
)
from medunlearn.forget_set import ForgetSet, hash_indices, patient_indices, select_forget
from medunlearn.loop import Runtime
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, resolve_method
from medunlearn.models.adapter import WrappedClassifier, as_classifier
from medunlearn.sharding import settle

ForgetSpec = str | Sequence[int] | np.ndarray | torch.Tensor | Mapping[str, Sequence] | ForgetSet

#: What :func:`unlearn` measures around a method (keys of its record and of a run's metrics).
COST_KEYS = ("unlearn_seconds", "method_seconds", "cpu_seconds", "peak_memory_mb",
             "peak_memory_increase_mb", "steps")


class UnlearnResult(NamedTuple):
    """What :func:`unlearn` returns (also unpacks as ``model, record, forget = ...``)."""

    model: nn.Module
    record: dict
    forget: np.ndarray  # training-split indices that were forgotten (pass to evaluate)


class EvaluationResult(NamedTuple):
    """What :func:`evaluate` returns: the metrics record and the gate verdict (None if off)."""

    record: dict
    verdict: Any  # medunlearn.evaluation.gate.Verdict | None


def resolve_forget(data: Dataset, forget: ForgetSpec, *, seed: int = 0,
                   exclude: Sequence[int] | None = None) -> ForgetSet:
    """Turn any accepted form of forget set into forget/retain index sets.

    Accepted: a spec string (``random:0.1``, ``class:1``, ``positive:0.3``, ``hashes:FILE`` ...;
    see :mod:`medunlearn.forget_set`), a sequence of training-split indices, a mapping with one
    of ``indices``, ``hashes`` (every byte-identical copy is forgotten) or ``patients`` (every
    image of each patient and every copy of those images), or a resolved :class:`ForgetSet`
    (taken as it is: it holds its own exclusions).

    Raises:
        ForgetSetError: empty, out-of-range, unknown hashes or patients (listed).
        ConfigError: a resolved ForgetSet together with ``exclude``.
    """
    if isinstance(forget, ForgetSet):
        if exclude is not None:
            raise ConfigError("A resolved ForgetSet already leaves out what was forgotten "
                              "earlier; pass exclude= only with a spec, indices or names.")
        return forget
    if isinstance(forget, Mapping):
        keys = set(forget) & {"indices", "hashes", "patients"}
        if len(keys) != 1 or len(forget) != 1:
            raise ForgetSetError("A forget mapping takes exactly one of 'indices', 'hashes' or "
                                 f"'patients'; got keys {sorted(forget)}.")
        kind = keys.pop()
        values = list(forget[kind])
        if kind == "indices":
            forget = values
        else:
            forget = indices_of(data, **{kind: values})
    elif isinstance(forget, torch.Tensor | np.ndarray):
        forget = np.asarray(forget).astype(np.int64).tolist()
    return select_forget(data, forget=forget, seed=seed, exclude=exclude)


def indices_of(data: Dataset, *, hashes: Sequence[str] | None = None,
               patients: Sequence[str] | None = None) -> list[int]:
    """Training-split indices of images named by hash or by patient, with every byte-identical
    copy (:func:`medunlearn.forget_set.hash_indices`,
    :func:`medunlearn.forget_set.patient_indices`).

    Raises:
        ForgetSetError: nothing named, or unknown hashes/patients (listed).
    """
    if hashes is not None:
        return hash_indices(data, list(hashes)).tolist()
    if patients is not None:
        return patient_indices(data, list(patients)).tolist()
    raise ForgetSetError("Name the images to forget by hashes or patients.")


def _train_config(train_config: TrainConfig | Mapping | None, device, progress: bool
                  ) -> TrainConfig:
    cfg = as_config(TrainConfig, train_config, where="train_config")
    return dataclasses.replace(cfg, device=str(device) if device is not None else cfg.device,
                               progress=progress)


def _factory(model_factory, data: Dataset
             ) -> tuple[Callable[[], nn.Module] | None, dict | None]:
    """``(factory, spec)``: how ``retrain`` builds a fresh model. A callable is the user's own;
    a mapping is a medunlearn model spec (a run's ``config.json`` ``model``), rebuilt from it;
    a string names a torchvision or timm model."""
    if model_factory is None or callable(model_factory):
        return model_factory, None
    if isinstance(model_factory, Mapping):
        return None, dict(model_factory)
    if not isinstance(model_factory, str):
        raise ConfigError("model_factory must be a callable returning a new model, a "
                          "torchvision/timm model name such as 'resnet18', or a medunlearn "
                          "model spec (a run's config.json 'model').")
    name = model_factory
    kwargs = {"num_classes": data.num_classes}

    def build() -> nn.Module:
        if name.startswith("timm:"):
            try:
                import timm
            except ImportError:
                raise ConfigError("model_factory 'timm:...' needs the timm package "
                                  "(pip install timm).") from None
            net = timm.create_model(name[5:], pretrained=False, in_chans=data.in_channels,
                                    **kwargs)
        else:
            from torchvision import models as tvm

            try:
                net = tvm.get_model(name, weights=None, **kwargs)
            except ValueError as exc:
                raise ConfigError(f"Unknown torchvision model {name!r} ({exc}); use a name "
                                  "from torchvision.models.list_models() or 'timm:NAME'.") \
                    from None
            if data.in_channels != 3:
                _adapt_first_conv(net, data.in_channels)
        return as_classifier(net)

    return build, None


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            bias=m.bias is not None)
            parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


def _maxrss_mb() -> float:
    """Peak resident set size of this process in MiB (``nan`` where getrusage is missing)."""
    try:
        import resource
    except ImportError:  # pragma: no cover  (Windows)
        return float("nan")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / (1024 * 1024) if sys.platform == "darwin" else rss / 1024  # bytes vs KiB


def _run_method(method: Method, model: nn.Module, ctx: UnlearnContext
                ) -> tuple[UnlearnOutcome, dict]:
    """Call ``method.unlearn`` (the one place that does) and measure it.

    * ``unlearn_seconds``: wall time of the call (the method's model copy included),
      ``time.perf_counter``; a method that leaves ``UnlearnOutcome.seconds`` at 0 gets it as
      ``method_seconds`` too.
    * ``cpu_seconds``: process CPU time over the same span (all threads,
      ``time.process_time``); above ``unlearn_seconds`` when torch uses several threads.
    * ``peak_memory_mb``: the process's peak resident set size (``getrusage`` ``ru_maxrss``)
      after the method: a high-water mark of the *whole process* (data, model, interpreter),
      not of the method alone. ``peak_memory_increase_mb`` is how much the method raised that
      mark (0 when it stayed below an earlier peak, e.g. of data loading). Torch CPU
      allocations are invisible to ``tracemalloc``, so RSS is the honest measure on a CPU.
    """
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


def _check_folds(algo: Method, folds, data: Dataset) -> None:
    """Refuse a method that reads fold models without a K-fold set of this data, before any
    work (the method's own check names the command that builds one)."""
    if folds is None:
        raise ConfigError(
            f"Method {algo.name!r} needs the K fold models of the model it unlearns. Build them "
            f"once: '{KFOLD_HINT}' (RUN/kfold), then pass them (folds=load_companions(DIR), or "
            "--folds DIR on the command line).")
    if not isinstance(folds, CompanionSet) or folds.kind != KFOLD:
        raise ConfigError(f"folds must be a K-fold companion set ({KFOLD_HINT}), got "
                          f"{getattr(folds, 'kind', type(folds).__name__)}.")
    folds.check_data(data)


def unlearn(model: nn.Module, data: Dataset, *, forget: ForgetSpec,
            method: str | Method = "salun-cra", options: Mapping | None = None, seed: int = 0,
            device: str | None = "auto", train_config: TrainConfig | Mapping | None = None,
            model_factory: Callable[[], nn.Module] | str | Mapping | None = None,
            model_config: ModelConfig | Mapping | None = None,
            exclude: Sequence[int] | None = None, retain_budget: int | None = None,
            progress: bool = False, on_batch: Callable[[torch.Tensor], None] | None = None,
            cache=None, folds: CompanionSet | None = None) -> UnlearnResult:
    """Make ``model`` forget part of ``data``'s training split with an unlearning method.

    Args:
        model: Any classifier (``nn.Module``) mapping images in [0, 1] to logits. It is not
            changed; the result is a new model.
        data: The in-memory dataset the model was trained on.
        forget: What to forget (see :func:`resolve_forget`).
        method: A method name (``medunlearn.methods.method_names()``), or a method already
            built (:func:`medunlearn.methods.base.resolve_method`; then no ``options``).
        options: Method options over the shipped defaults for this dataset.
        seed: Seeds the forget-set choice and the method.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
            None: the one ``train_config`` names.
        train_config: The model's training recipe (used by ``retrain`` and for class weights;
            default: medunlearn's recipe).
        model_factory: How ``retrain`` builds a fresh model: a callable, a torchvision name
            (``"resnet18"``), ``"timm:NAME"``, or a medunlearn model spec (a run's
            ``config.json`` ``model``); default: medunlearn's own models are copied with every
            layer re-initialised, as are other models.
        model_config: The architecture settings the model was built with (medunlearn models).
        exclude: Training indices forgotten earlier (in neither the forget nor the retain set).
        retain_budget: Most retain samples per epoch, for methods that take one.
        progress: Show progress.
        on_batch: Called with the training indices of every batch the method reads (audit).
        cache: A :class:`medunlearn.cache.Session` the method's inference may reuse features
            from.
        folds: K fold models of ``model`` (a ``kfold`` :class:`CompanionSet`,
            ``medunlearn.runs.shadows.load_companions``), for methods that read them
            (``oracle-match``); checked against ``data``. Ignored by the other methods.

    Returns:
        ``UnlearnResult(model, record, forget)``; the record holds the method, its resolved
        options, forget/retain sizes, times (:data:`COST_KEYS`), steps, device and precision.

    Raises:
        ConfigError: unknown method or option, bad device.
        ForgetSetError: empty, out-of-range or unknown forget set.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(data, Dataset):
        raise ConfigError("data must be a medunlearn Dataset (medunlearn.load_dataset, "
                          f"medunlearn.from_arrays, ...), got {type(data).__name__}.")
    if isinstance(method, Method):
        if options or retain_budget is not None:
            raise ConfigError("Give options and retain_budget with a method name; a built "
                              "method already has its options.")
        algo = method
    else:
        algo = resolve_method(method, dataset=data.name, options=dict(options or {}),
                              retain_budget=retain_budget)
    if algo.needs_folds:
        _check_folds(algo, folds, data)
    cfg = _train_config(train_config, device, progress)
    runtime = Runtime.create(cfg.device, cfg.precision, cfg.threads)
    fs = resolve_forget(data, forget, seed=seed, exclude=exclude)
    net = as_classifier(model)
    factory, spec = _factory(model_factory, data)
    ctx = UnlearnContext(dataset=data, forget=fs.forget, retain=fs.retain, seed=seed,
                         train_config=cfg,
                         model_config=as_config(ModelConfig, model_config, where="model_config"),
                         model_spec=spec, runtime=runtime, model_factory=factory,
                         progress=progress, on_batch=on_batch, cache=cache,
                         folds=folds if algo.needs_folds else None)
    outcome, cost = _run_method(algo, net, ctx)
    result = outcome.model.eval()
    if isinstance(result, WrappedClassifier) and not isinstance(model, WrappedClassifier):
        result = result.module  # hand back the user's own module type
    record = {
        "method": algo.name, "options": dataclasses.asdict(algo.config), "seed": seed,
        "forget": {"spec": fs.spec, "count": len(fs), "excluded": fs.excluded_count},
        "retain_count": int(len(fs.retain)), **cost, "details": outcome.details,
        "runtime": runtime.describe(), "dataset": data.name,
    }
    return UnlearnResult(result, record, fs.forget.numpy())


def _runtime(opts: EvalOptions) -> Runtime:
    return Runtime.create(opts.device, "fp32", opts.threads)


def _retain_subset(retain: np.ndarray, opts: EvalOptions, notes: list[str],
                   n_train: int) -> np.ndarray:
    """The retain samples RA is measured on (all of them unless ``retain_limit``)."""
    if opts.retain_limit is not None and opts.retain_limit < len(retain):
        notes.append(f"RA is measured on a seeded subset of {opts.retain_limit} of the "
                     f"{len(retain)} retain samples (retain_limit).")
        return retain_subset(retain, opts.retain_limit, seed=opts.seed, n_train=n_train)
    return retain


def _read_subgroups(opts: EvalOptions, dataset: Dataset, forget: np.ndarray
                    ) -> tuple[list[str], dict, dict] | None:
    """Read and match the metadata CSV (before any model runs, so bad files fail fast)."""
    from medunlearn.evaluation import bias as B

    if not opts.metadata:
        return None
    columns, table = B.read_metadata(opts.metadata, key=opts.metadata_key)
    if opts.metadata_key == "sha256":
        keys = {s: dataset.splits[s].hashes for s in ("train", "val", "test")}
    else:
        keys = {s: [f"{s}:{i}" for i in range(len(dataset.splits[s]))]
                for s in ("train", "val", "test")}
    matched = B.match_metadata(table, keys, key=opts.metadata_key, path=str(opts.metadata))
    per_set = {"forget": [matched["train"][i] for i in forget], "test": matched["test"]}
    return columns, table, per_set


def apply_gate(record: dict, gate) -> Any:
    """Run the safety gate on an evaluation record and store its verdict as ``record["gate"]``.

    Args:
        record: An evaluation record (:func:`evaluate`).
        gate: False or None (no gate: returns None), True (the shipped tolerances), a mapping of
            tolerances or a :class:`medunlearn.evaluation.gate.GateTolerances`.

    Returns:
        The :class:`~medunlearn.evaluation.gate.Verdict`, or None.
    """
    from medunlearn.evaluation.gate import gate as run_gate

    if gate is None or gate is False:
        return None
    verdict = run_gate(record, None if gate is True else gate)
    record["gate"] = verdict.to_dict()
    return verdict


def evaluate(model: nn.Module, data: Dataset, *, forget: ForgetSpec,
             original: nn.Module | None = None, reference: nn.Module | None = None,
             gate: bool | Mapping | Any = True, options: EvalOptions | Mapping | None = None,
             device: str | None = "auto", exclude: Sequence[int] | None = None,
             seed: int = 0, times: Mapping[str, float] | None = None,
             records: Mapping[str, Mapping | None] | None = None,
             train_config: TrainConfig | Mapping | None = None,
             model_config: ModelConfig | Mapping | None = None,
             forgetting_quality: Mapping | None = None, notes: Sequence[str] = (),
             cache=None, shadows=None) -> EvaluationResult:
    """Every evaluation of an unlearned model, optionally against the original and the
    retrained reference, and the safety gate's verdict.

    Args:
        model: The unlearned classifier.
        data: The dataset (the forget set indexes its training split).
        forget: The forget set, in any form :func:`unlearn` takes (usually ``result.forget``).
        original: The model before unlearning (for changes and difficulty terciles).
        reference: The model retrained without the forget set (the gold standard).
        gate: Apply the safety gate (True: shipped tolerances; a mapping or GateTolerances:
            those tolerances; False: no gate); see :func:`apply_gate`.
        options: :class:`medunlearn.evaluation.record.EvalOptions` fields (costs, seeds, ...).
        device: Where the models run for their outputs (None: ``options.device``).
        exclude: Training indices forgotten earlier (in neither set).
        seed: Seeds the forget-set choice when ``forget`` is a random spec.
        times: ``{"unlearn_seconds": ..., "retrain_seconds": ...}`` for the efficiency section
            (a shorthand for ``records``).
        records: Role (``model``, ``reference``) -> what made that model: an
            :class:`UnlearnResult` record or a run's ``metrics.json`` (``unlearn_seconds``,
            ``cpu_seconds``, ``peak_memory_mb``; a training run's ``train_seconds``), for the
            efficiency section.
        train_config, model_config: The original's recipe and architecture, for the LiRA
            shadow models (``options.lira_shadows``; default: medunlearn's recipe and model).
        forgetting_quality: A per-example forgetting-quality result
            (:func:`forgetting_quality` or ``verify-forgetting``) to add to the record before
            the gate sees it.
        notes: Notes to carry into the record (e.g. from loading the models).
        cache: A :class:`medunlearn.cache.Session` whose features the models' outputs reuse.
        shadows: Shadow models of the original, in memory (a
            :class:`medunlearn.evaluation.companions.CompanionSet`: from
            :func:`medunlearn.runs.shadows.train_shadows` or
            :func:`medunlearn.runs.shadows.load_companions`): adds per-image membership
            evidence for every model (``models.<role>.membership``) and the gate's
            ``membership`` check. Without them that check is "not run".

    The original itself may be passed as ``model`` (with ``original=`` the same object): the
    "original (no unlearning)" row every comparison needs.

    Returns:
        ``EvaluationResult(record, verdict)``.
    """
    opts = eval_options(options)
    opts = dataclasses.replace(opts, device=str(device) if device is not None else opts.device)
    fs = resolve_forget(data, forget, seed=seed, exclude=exclude)
    forget_idx, retain = fs.forget.numpy(), fs.retain.numpy()
    if shadows is not None:  # refused before any model runs
        if not isinstance(shadows, CompanionSet):
            raise ConfigError(
                f"shadows= takes shadow models in memory (a CompanionSet), got "
                f"{type(shadows).__name__}. Load a folder of 'medunlearn shadows' with "
                "medunlearn.runs.shadows.load_companions(path), or train them with "
                "medunlearn.runs.shadows.train_shadows(model, data, out=DIR).")
        shadows.check_data(data)
    notes = list(notes)
    subgroups = _read_subgroups(opts, data, forget_idx)
    retain_eval = _retain_subset(retain, opts, notes, len(data.train))
    rt = _runtime(opts)
    outs, seen = {}, {}
    for role, m in (("model", model), ("original", original), ("reference", reference)):
        if m is None:
            continue
        if id(m) not in seen:  # a model given in two roles runs once
            seen[id(m)] = model_outputs(as_classifier(m), data, forget=forget_idx,
                                        retain=retain_eval, batch_size=opts.batch_size,
                                        runtime=rt, cache=cache)
        outs[role] = seen[id(m)]
    lira = None
    if opts.lira_shadows:
        from medunlearn.evaluation.lira import shadow_confidences

        lira = shadow_confidences(
            data, model_config=as_config(ModelConfig, model_config, where="model_config"),
            train_config=as_config(TrainConfig, train_config, where="train_config"),
            retain=retain, forget=forget_idx, shadows=opts.lira_shadows, seed=opts.seed,
            epochs=opts.lira_epochs)
    if records is None:
        t = dict(times or {})
        records = {"model": {"unlearn_seconds": t["unlearn_seconds"]}
                   if "unlearn_seconds" in t else None,
                   "reference": {"train_seconds": t["retrain_seconds"]}
                   if "retrain_seconds" in t else None}
    record = evaluate_outputs(outs, data, forget=forget_idx, n_retain=len(retain),
                              options=opts, times=records, shadows=lira,
                              subgroups=subgroups, notes=notes)
    attach_membership(record, outs, shadows, forget=forget_idx, retain=retain_eval)
    if forgetting_quality is not None:
        fq.attach_to_record(record, forgetting_quality)
    return EvaluationResult(record, apply_gate(record, gate))


def forgetting_quality(model: nn.Module, data: Dataset, *, forget: ForgetSpec, method: str,
                       n: int = 16, seed: int = 0, options: Mapping | None = None,
                       train_config=None, device: str | None = "auto", progress: bool = False,
                       unlearned: Sequence[nn.Module] | None = None,
                       retrained: Sequence[nn.Module] | None = None,
                       resamples: int = 1000, null_permutations: int = 3) -> dict:
    """Per-example forgetting quality in memory (no files): unlearn ``model`` N times with
    ``method`` and retrain it N times (:func:`medunlearn.evaluation.forgetting_quality.seeds`),
    then score every forget image (:func:`medunlearn.evaluation.forgetting_quality.summarize`).

    ``unlearned`` / ``retrained`` skip the corresponding training with ready models (e.g. the
    original itself as the "unlearned" side, to see a method that does nothing). Run folders
    and Ray: ``medunlearn.runs.verify_forgetting``.

    Raises:
        ConfigError: ``n`` below 3, unknown method or option.
    """
    fq.check_n(n)
    fs = resolve_forget(data, forget, seed=seed)
    f_idx, r_idx = fs.forget.numpy(), fs.retain.numpy()
    u_seeds, r_seeds = fq.seeds(seed, n)
    t0 = time.perf_counter()
    if unlearned is None:
        unlearned = [unlearn(model, data, forget=f_idx, method=method, options=options, seed=s,
                             device=device, train_config=train_config, progress=progress).model
                     for s in u_seeds]
    if retrained is None:
        retrained = [unlearn(model, data, forget=f_idx, method="retrain", seed=s, device=device,
                             train_config=train_config, progress=progress).model
                     for s in r_seeds]
    u = score_models(unlearned, data, f_idx, r_idx)
    r = score_models(retrained, data, f_idx, r_idx)
    out = fq.summarize(u["scores"], r["scores"], seed=seed, resamples=resamples,
                       null_permutations=null_permutations,
                       accuracies={"unlearned": u, "retrained": r})
    out.update(method=method, seed=seed, wall_seconds=time.perf_counter() - t0,
               forget_indices=f_idx.tolist())
    out["scores"] = {"unlearned": u["scores"], "retrained": r["scores"]}
    return out


__all__ = ["COST_KEYS", "EvaluationResult", "UnlearnResult", "apply_gate", "evaluate",
           "forgetting_quality", "indices_of", "resolve_forget", "unlearn"]
