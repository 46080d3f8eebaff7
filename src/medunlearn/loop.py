"""The one training and inference loop under training, retraining and every unlearning method.

* :class:`Runtime` decides once where and how a model runs: the device (``auto`` picks CUDA,
  then Apple MPS, then the CPU), the arithmetic (``auto`` means bf16 autocast on CPUs with native
  bf16 and on GPUs that have it, fp16 with loss scaling on other CUDA GPUs, fp32 elsewhere), the
  memory layout (channels-last on the CPU) and the number of CPU threads.
* :func:`sgd_steps` runs optimiser steps over any stream of batches with a loss function:
  training, fine-tuning, gradient ascent, NegGrad+ and SCRUB's two phases are all this loop
  with a different batch stream and loss.
* :func:`infer` computes logits (and penultimate features) of a model on a split, in eval mode:
  training-time validation, run metrics and every evaluation metric read their outputs from it.

Every tensor the loop creates follows ``Runtime.device``; batches are built on the CPU (the
data live there as ``uint8``) and moved once per step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medunlearn.errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` (or None) picks CUDA, then MPS, then the CPU; other names are checked.

    Raises:
        ConfigError: an unknown device name, or a device this machine does not have.
    """
    if isinstance(device, torch.device):
        name = device.type
    else:
        name = (device or "auto").strip().lower()
    kind = name.split(":", 1)[0]
    if kind not in DEVICES:
        raise ConfigError(f"Unknown device {name!r}; choose one of {', '.join(DEVICES)} "
                          "(or cuda:N for a particular GPU).")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"Device {name!r} was asked for, but this machine has no usable "
                              "CUDA GPU (or torch was installed without CUDA). Use --device cpu "
                              "or --device auto.")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"Device {name!r}: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s). Use cuda:0 or --device auto.")
        return dev
    if kind == "mps" and not _mps_available():
        raise ConfigError("Device 'mps' was asked for, but Apple's Metal backend is not "
                          "available here. Use --device cpu or --device auto.")
    return torch.device(name)


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def cpu_has_native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """The arithmetic a model trains in on ``device``.

    ``auto``: bf16 autocast on CPUs with native bf16 (about twice the fp32 throughput of the
    default model on an AVX512-BF16 CPU) and on GPUs that support it; fp16 with loss scaling on
    older CUDA GPUs; fp32 otherwise (other CPUs, MPS).

    Raises:
        ConfigError: an unknown precision, or fp16 on the CPU (not supported by autocast there).
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r}; choose one of {PRECISIONS}.")
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        raise ConfigError("fp16 mixed precision runs on GPUs only; on the CPU use bf16 (where "
                          "the CPU supports it) or fp32.")
    if precision != "auto":
        return precision
    if kind == "cpu":
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "fp32"


def set_threads(threads: int | None) -> None:
    """Set torch's CPU thread count (None leaves torch's default). The one place that does."""
    if threads:
        torch.set_num_threads(int(threads))


def training_layout(model: nn.Module, device: torch.device = torch.device("cpu")  # noqa: B008
                    ) -> torch.memory_format:
    """Channels-last on the CPU (faster convolutions), unless the model has a strided 1x1
    convolution with fewer than 16 input channels: the channels-last backward pass of such a
    convolution in torch 2.14's CPU kernels corrupts memory on odd batch sizes (seen with width-8
    ResNets, whose first shortcut is 8 -> 16 channels). Other devices keep the default layout."""
    if device.type != "cpu":
        return torch.contiguous_format
    for m in model.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and m.stride != (1, 1) \
                and m.in_channels < 16:
            return torch.contiguous_format
    return torch.channels_last


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Runtime:
    """Where and in which arithmetic models run (resolved values, never ``auto``)."""

    device: torch.device
    precision: str  # "fp32", "bf16" or "fp16"
    threads: int | None = None

    @classmethod
    def create(cls, device: str | torch.device | None = "auto", precision: str = "auto",
               threads: int | None = None) -> Runtime:
        dev = resolve_device(device)
        rt = cls(dev, resolve_precision(precision, dev), threads)
        set_threads(threads)
        return rt

    def describe(self) -> dict:
        return {"device": str(self.device), "precision": self.precision,
                "threads": self.threads or torch.get_num_threads()}

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=_DTYPES[self.precision])

    def prepare(self, model: nn.Module) -> torch.memory_format:
        """Move ``model`` to the device in its training layout (in place); return the layout
        its input batches should have (see :meth:`batch`)."""
        layout = training_layout(model, self.device)
        model.to(self.device, memory_format=layout)
        return layout

    def release(self, model: nn.Module) -> nn.Module:
        """Back to the default layout (what checkpoints and other code expect)."""
        return model.to(memory_format=torch.contiguous_format)

    def batch(self, x: torch.Tensor,
              layout: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
        """A CPU batch moved to the device in ``layout`` (from :meth:`prepare`)."""
        return x.to(self.device, non_blocking=True).contiguous(memory_format=layout)

    def forward(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Logits in float32 (losses and gradients stay float32 under autocast)."""
        with self.autocast():
            return model(x).float()

    def grad_scaler(self) -> torch.amp.GradScaler:
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")


CPU_FP32 = Runtime(torch.device("cpu"), "fp32")

Batch = tuple
LossFn = Callable[[Batch], torch.Tensor]


@dataclass
class LoopStats:
    steps: int = 0
    loss_sum: float = 0.0
    seen: int = 0

    @property
    def mean_loss(self) -> float:
        return self.loss_sum / self.seen if self.seen else float("nan")


def sgd_steps(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn, *,
              optimizer: torch.optim.Optimizer, scheduler=None, runtime: Runtime,
              clip_norm: float = 0.0, before_step: Callable[[], None] | None = None,
              after_step: Callable[[], None] | None = None, on_step=None,
              scaler: torch.amp.GradScaler | None = None) -> LoopStats:
    """One optimiser step per batch: ``loss_fn(batch)`` -> backward -> (mask) -> (clip) -> step.

    Args:
        model: The network being trained (already on the runtime's device).
        batches: Any iterable of batches; ``loss_fn`` knows their shape.
        loss_fn: Returns the scalar loss to *minimise* for a batch (ascent methods negate).
        optimizer, scheduler: Stepped once per batch.
        runtime: Device and arithmetic (an fp16 runtime scales the loss).
        clip_norm: Clip the gradient norm to this value (0: no clipping).
        before_step: Called after ``backward`` and before the step (e.g. to mask gradients).
        after_step: Called after each step (e.g. to restore frozen weights).
        on_step: Called with ``(loss_value, batch)`` after each step (progress, statistics).
        scaler: Reuse a gradient scaler across calls (fp16); one is made when None.

    Returns:
        Steps taken and the running sum of losses.
    """
    scaler = scaler or runtime.grad_scaler()
    stats = LoopStats()
    params = [p for p in model.parameters() if p.requires_grad]
    for batch in batches:
        loss = loss_fn(batch)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if before_step is not None:
            before_step()
        if clip_norm > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        scaler.step(optimizer)
        scaler.update()
        if scheduler is not None:
            scheduler.step()
        if after_step is not None:
            after_step()
        stats.steps += 1
        value = float(loss.detach())
        n = len(batch[1]) if len(batch) > 1 and hasattr(batch[1], "__len__") else 1
        stats.loss_sum += value * n
        stats.seen += n
        if on_step is not None:
            on_step(value, batch)
    return stats


def model_parts(model: nn.Module) -> tuple[Callable[[torch.Tensor], torch.Tensor], nn.Module]:
    """``(features, head)`` of a classifier: penultimate features and the final linear layer.

    Models built by medunlearn (:class:`medunlearn.models.Classifier`) and wrapped models
    (:func:`medunlearn.models.as_classifier`) have both; for any other module the last
    ``nn.Linear`` is taken as the head and features are the input it receives.
    """
    from medunlearn.models.ensemble import has_parts

    if has_parts(model):  # a linear head, or a sharded ensemble's (models/ensemble.py)
        return model.features, model.head
    from medunlearn.models.adapter import as_classifier

    wrapped = as_classifier(model)
    return wrapped.features, wrapped.head


@torch.no_grad()
def infer(model: nn.Module, split, indices=None, *, runtime: Runtime = CPU_FP32,
          batch_size: int = 512, features: bool = False, cache=None
          ) -> tuple[np.ndarray, np.ndarray | None]:
    """Logits ``(N, K)`` (and penultimate features ``(N, D)`` when asked) of ``model`` on a
    split or its ``indices`` subset, in that order, in eval mode, as float32 numpy arrays.

    Inference runs in float32 whatever the training arithmetic, so metrics do not depend on it.
    With ``cache`` (a :class:`medunlearn.cache.Session`) penultimate features are kept per image
    and backbone and reused; logits are then the head applied to them.
    """
    if cache is not None:
        return _infer_cached(cache, model, split, indices, runtime=runtime,
                             batch_size=batch_size, features=features)
    return _infer(model, split, indices, runtime=runtime, batch_size=batch_size,
                  features=features)


def _infer_cached(session, model: nn.Module, split, indices, *, runtime: Runtime,
                  batch_size: int, features: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`infer` through the session's per-image feature table of this model's backbone
    (misses computed in one pass, in the order asked); logits = head(features)."""
    from medunlearn.cache import feature_key

    sel = (np.arange(len(split)) if indices is None
           else np.asarray(indices, dtype=np.int64).reshape(-1))
    if not len(sel):
        return _infer(model, split, sel, runtime=runtime, batch_size=batch_size,
                      features=features)
    _, head = model_parts(model)
    table = session.table(feature_key(model, runtime.device.type, head),
                          getattr(head, "in_features", None))
    hashes = split.pixel_hashes  # what the network sees, whatever the source file was
    wanted = [hashes[i] for i in sel]
    missing, seen = [], set()
    for i, h in zip(sel.tolist(), wanted, strict=True):
        if h not in table.rows and h not in seen:
            seen.add(h)
            missing.append(i)
    session.misses += len(missing)
    session.hits += len(sel) - len(missing)
    if table.from_disk:
        session.disk_hits += len(sel) - len(missing)
    if missing:
        _, fe = _infer(model, split, np.array(missing, dtype=np.int64), runtime=runtime,
                       batch_size=batch_size, features=True)
        table.add([hashes[i] for i in missing], fe)
    fe = table.get(wanted)
    was_training = head.training
    head.eval()
    w = next(head.parameters())
    lo = head(torch.from_numpy(fe).to(device=w.device, dtype=w.dtype)).float().cpu().numpy()
    head.train(was_training)
    return lo, (fe if features else None)


def _infer(model: nn.Module, split, indices=None, *, runtime: Runtime = CPU_FP32,
           batch_size: int = 512, features: bool = False
           ) -> tuple[np.ndarray, np.ndarray | None]:
    from medunlearn.data import iterate_batches

    was_training = model.training
    model.eval()
    feats_fn, head = model_parts(model)
    layout = torch.channels_last if runtime.device.type == "cpu" else torch.contiguous_format
    model.to(runtime.device, memory_format=layout)
    logits, feats = [], []
    idx = None if indices is None else torch.as_tensor(np.asarray(indices), dtype=torch.long)
    for x, _, _ in iterate_batches(split, idx, batch_size=batch_size):
        x = x.to(runtime.device, non_blocking=True).contiguous(memory_format=layout)
        if features:
            f = feats_fn(x)  # (B, D)
            feats.append(f.float().cpu())
            logits.append(head(f).float().cpu())  # (B, K)
        else:
            logits.append(model(x).float().cpu())
    model.to(memory_format=torch.contiguous_format)
    model.train(was_training)
    k, d = head.out_features, head.in_features
    lo = torch.cat(logits).numpy() if logits else np.zeros((0, k), np.float32)
    if not features:
        return lo, None
    fe = torch.cat(feats).numpy() if feats else np.zeros((0, d), np.float32)
    return lo, fe


__all__ = [
    "CPU_FP32", "DEVICES", "PRECISIONS", "LoopStats", "Runtime", "cpu_has_native_bf16", "infer",
    "model_parts", "resolve_device", "resolve_precision", "set_threads", "sgd_steps",
    "training_layout",
]
