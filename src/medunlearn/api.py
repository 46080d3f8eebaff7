"""The front door: unlearn and evaluate any classifier on any in-memory dataset.

Two calls cover the whole core; run folders, the CLI, experiment grids and the registry are thin
layers over the same pieces::

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
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from medunlearn.config import TrainConfig, as_config
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError, ForgetSetError
from medunlearn.forget import ForgetSet, hash_indices, patient_indices, select_forget
from medunlearn.loop import Runtime
from medunlearn.methods import UnlearnContext
from medunlearn.models.adapter import WrappedClassifier, as_classifier

ForgetSpec = str | Sequence[int] | np.ndarray | torch.Tensor | Mapping[str, Sequence]


class UnlearnResult(NamedTuple):
    """What :func:`unlearn` returns (also unpacks as ``model, record = ...``)."""

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
    see :mod:`medunlearn.forget`), a sequence of training-split indices, or a mapping with one
    of ``indices``, ``hashes`` (every byte-identical copy is forgotten) or ``patients`` (every
    image of each patient and every copy of those images).

    Raises:
        ForgetSetError: empty, out-of-range, unknown hashes or patients (listed).
    """
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
    copy (:func:`medunlearn.forget.hash_indices`, :func:`medunlearn.forget.patient_indices`).

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


def _factory(model_factory, data: Dataset) -> Callable[[], nn.Module] | None:
    """A callable building a fresh model: the user's callable, or a torchvision/timm name."""
    if model_factory is None or callable(model_factory):
        return model_factory
    if not isinstance(model_factory, str):
        raise ConfigError("model_factory must be a callable returning a new model, or a "
                          "torchvision/timm model name such as 'resnet18'.")
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

    return build


def _adapt_first_conv(net: nn.Module, channels: int) -> None:
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d) and m.in_channels == 3:
            new = nn.Conv2d(channels, m.out_channels, m.kernel_size, m.stride, m.padding,
                            bias=m.bias is not None)
            parent = net.get_submodule(name.rsplit(".", 1)[0]) if "." in name else net
            setattr(parent, name.rsplit(".", 1)[-1], new)
            return


def unlearn(model: nn.Module, data: Dataset, *, forget: ForgetSpec, method: str = "salun-cra",
            options: Mapping | None = None, seed: int = 0, device: str | None = "auto",
            train_config: TrainConfig | Mapping | None = None,
            model_factory: Callable[[], nn.Module] | str | None = None,
            exclude: Sequence[int] | None = None, progress: bool = False,
            on_batch: Callable[[torch.Tensor], None] | None = None) -> UnlearnResult:
    """Make ``model`` forget part of ``data``'s training split with an unlearning method.

    Args:
        model: Any classifier (``nn.Module``) mapping images in [0, 1] to logits. It is not
            changed; the result is a new model.
        data: The in-memory dataset the model was trained on.
        forget: What to forget (see :func:`resolve_forget`).
        method: A method name (``medunlearn.methods.method_names()``).
        options: Method options over the shipped defaults for this dataset.
        seed: Seeds the forget-set choice and the method.
        device: ``auto`` (CUDA, then MPS, then CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        train_config: The model's training recipe (used by ``retrain`` and for class weights;
            default: medunlearn's recipe).
        model_factory: How ``retrain`` builds a fresh model: a callable, a torchvision name
            (``"resnet18"``) or ``"timm:NAME"``; default: medunlearn's own models are rebuilt
            from their spec, others are copied with every layer re-initialised.
        exclude: Training indices forgotten earlier (in neither the forget nor the retain set).
        progress: Show progress.
        on_batch: Called with the training indices of every batch the method reads (audit).

    Returns:
        ``UnlearnResult(model, record, forget)``; the record holds the method, its resolved
        options, forget/retain sizes, times, steps, device and precision.

    Raises:
        ConfigError: unknown method or option, bad device.
        ForgetSetError: empty, out-of-range or unknown forget set.
    """
    from medunlearn.unlearning import execute, resolve_method

    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(data, Dataset):
        raise ConfigError("data must be a medunlearn Dataset (medunlearn.load_dataset, "
                          f"medunlearn.from_arrays, ...), got {type(data).__name__}.")
    algo = resolve_method(method, dataset=data.name, options=options)
    cfg = _train_config(train_config, device, progress)
    runtime = Runtime.create(cfg.device, cfg.precision, cfg.threads)
    fs = resolve_forget(data, forget, seed=seed, exclude=exclude)
    net = as_classifier(model)
    ctx = UnlearnContext(dataset=data, forget=fs.forget, retain=fs.retain, seed=seed,
                         train_config=cfg, runtime=runtime,
                         model_factory=_factory(model_factory, data), progress=progress,
                         on_batch=on_batch)
    outcome, cost = execute(algo, net, ctx)
    result = outcome.model.eval()
    if isinstance(result, WrappedClassifier) and not isinstance(model, WrappedClassifier):
        result = result.module  # hand back the user's own module type
    record = {
        "method": method, "options": dataclasses.asdict(algo.config), "seed": seed,
        "forget": {"spec": fs.spec, "count": len(fs), "excluded": fs.excluded_count},
        "retain_count": int(len(fs.retain)), **cost, "details": outcome.details,
        "runtime": runtime.describe(), "dataset": data.name,
    }
    return UnlearnResult(result, record, fs.forget.numpy())


def evaluate(model: nn.Module, data: Dataset, *, forget: ForgetSpec,
             original: nn.Module | None = None, reference: nn.Module | None = None,
             gate: bool | Mapping = True, options: Mapping | None = None,
             device: str | None = "auto", exclude: Sequence[int] | None = None,
             seed: int = 0, times: Mapping[str, float] | None = None,
             shadows=None) -> EvaluationResult:
    """Every evaluation of an unlearned model, optionally against the original and the
    retrained reference, and the safety gate's verdict.

    Args:
        model: The unlearned classifier.
        data: The dataset (the forget set indexes its training split).
        forget: The forget set, in any form :func:`unlearn` takes (usually ``result.forget``).
        original: The model before unlearning (for changes and difficulty terciles).
        reference: The model retrained without the forget set (the gold standard).
        gate: Apply the safety gate (True: shipped tolerances; a mapping: tolerances).
        options: :class:`medunlearn.evaluation.api.EvalOptions` fields (costs, seeds, ...).
        device: Where the models run for their outputs.
        exclude: Training indices forgotten earlier (in neither set).
        seed: Seeds the forget-set choice when ``forget`` is a random spec.
        times: ``{"unlearn_seconds": ..., "retrain_seconds": ...}`` for the efficiency section.
        shadows: Shadow models of the original (a :class:`medunlearn.shadows.CompanionSet` or
            its folder; :func:`medunlearn.shadows.train_shadows`): adds per-image membership
            evidence for every model (``models.<role>.membership``) and the gate's
            ``membership`` check. Without them that check is "not run".

    The original itself may be passed as ``model`` (with ``original=`` the same object): the
    "original (no unlearning)" row every comparison needs.

    Returns:
        ``EvaluationResult(record, verdict)``.
    """
    from medunlearn.evaluation.api import _options, evaluate_outputs
    from medunlearn.evaluation.gate import gate as apply_gate
    from medunlearn.evaluation.outputs import model_outputs

    opts = _options(options)
    opts = dataclasses.replace(opts, device=str(device) if device is not None else opts.device)
    fs = resolve_forget(data, forget, seed=seed, exclude=exclude)
    forget_idx, retain = fs.forget.numpy(), fs.retain.numpy()
    notes: list[str] = []
    from medunlearn.evaluation.api import _retain_subset, _runtime

    retain_eval = _retain_subset(retain, opts, notes, len(data.train))
    rt = _runtime(opts)
    models = {"model": model, "original": original, "reference": reference}
    outs, seen = {}, {}
    for role, m in models.items():
        if m is None:
            continue
        if id(m) not in seen:
            seen[id(m)] = model_outputs(as_classifier(m), data, forget=forget_idx,
                                        retain=retain_eval, batch_size=opts.batch_size,
                                        runtime=rt)
        outs[role] = seen[id(m)]
    t = dict(times or {})
    timing = {"model": {"unlearn_seconds": t["unlearn_seconds"]} if "unlearn_seconds" in t
              else None,
              "reference": {"train_seconds": t["retrain_seconds"]} if "retrain_seconds" in t
              else None}
    cs = None
    if shadows is not None:
        from medunlearn.shadows import CompanionSet, load_companions

        cs = shadows if isinstance(shadows, CompanionSet) else load_companions(shadows)
        cs.check_data(data)
    record = evaluate_outputs(outs, data, forget=forget_idx, n_retain=len(retain),
                              options=opts, times=timing, notes=notes)
    from medunlearn.shadows import attach_membership

    attach_membership(record, outs, cs, forget=forget_idx, retain=retain_eval,
                      rebuild="medunlearn.shadows.train_shadows(original, data, out=DIR)")
    verdict = None
    if gate:
        verdict = apply_gate(record, None if gate is True else gate)
        record["gate"] = verdict.to_dict() if hasattr(verdict, "to_dict") else \
            dataclasses.asdict(verdict)
    return EvaluationResult(record, verdict)


__all__ = ["EvaluationResult", "UnlearnResult", "evaluate", "indices_of", "resolve_forget",
           "unlearn"]
