"""Training loop shared by ``train``, the ``retrain`` reference and fine-tuning methods.

Data live in memory as tensors; each step takes a batch of indices, converts and augments the
whole batch at once, and runs SGD with a one-cycle learning-rate schedule. The checkpoint kept is
the best one on the validation split (``TrainConfig.select``).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medunlearn.config import DataConfig, ModelConfig, TrainConfig
from medunlearn.data import Dataset, Split, iterate_batches
from medunlearn.errors import ConfigError
from medunlearn.evaluation.utility import softmax, summarize
from medunlearn.loop import (
    CPU_FP32,
    Runtime,
    infer,
    resolve_device,
    resolve_precision,
    set_threads,
    sgd_steps,
    training_layout,
)
from medunlearn.models import Classifier, build_model, resolve_arch
from medunlearn.progress import progress_bar

MedDataset = Dataset
SELECT = ("val_auc", "val_acc", "val_loss", "last")
SCHEDULES = ("onecycle", "cosine", "constant")

BatchHook = Callable[[torch.Tensor], None]


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch and numpy globally and return a generator for data order and augmentation."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    return torch.Generator().manual_seed(seed)


def predict_logits(model: nn.Module, split: Split, indices: torch.Tensor | None = None,
                   *, batch_size: int = 512, runtime: Runtime = CPU_FP32, cache=None
                   ) -> np.ndarray:
    """Logits (N, K) of ``model`` on a split (or the ``indices`` subset), in eval mode
    (``cache``: see :func:`medunlearn.loop.infer`)."""
    return infer(model, split, indices, runtime=runtime, batch_size=batch_size, cache=cache)[0]


def evaluate_split(model: nn.Module, split: Split, indices: torch.Tensor | None = None, *,
                   runtime: Runtime = CPU_FP32, cache=None) -> dict:
    """Accuracy, AUC, loss and per-class recall of ``model`` on a split or subset."""
    probs = softmax(predict_logits(model, split, indices, runtime=runtime, cache=cache))
    labels = split.labels.numpy() if indices is None else split.labels[indices].numpy()
    return summarize(probs, labels)


def build_for(dataset: MedDataset, model_cfg: ModelConfig) -> tuple[Classifier, dict]:
    """Build a fresh model for a dataset; return it and its resolved, saveable description."""
    mean, std = dataset.channel_stats()
    spec = {
        "arch": resolve_arch(model_cfg.arch, dataset.size), "width": model_cfg.width,
        "in_channels": dataset.in_channels, "num_classes": dataset.num_classes,
        "size": dataset.size, "mean": mean, "std": std,
    }
    return model_from_spec(spec), spec


def model_from_spec(spec: dict) -> Classifier:
    """Rebuild a model from the ``model`` section of a run's ``config.json``."""
    return build_model(spec["arch"], in_channels=spec["in_channels"],
                       num_classes=spec["num_classes"], size=spec["size"], width=spec["width"],
                       mean=spec["mean"], std=spec["std"])


MIN_EPOCHS = 10
MIN_SAMPLES_SEEN = 20_000


def resolve_epochs(epochs: int | None, n_train: int) -> int:
    """``None`` means ``max(10, ceil(20000 / n_train))``: at least 10 epochs, and on small
    datasets enough of them for the optimiser to see ~20k samples (BreastMNIST: 37)."""
    if epochs is not None:
        return epochs
    return max(MIN_EPOCHS, -(-MIN_SAMPLES_SEEN // max(n_train, 1)))


def validate_train_config(cfg: TrainConfig) -> None:
    if cfg.epochs is not None and cfg.epochs < 1:
        raise ConfigError(f"epochs must be at least 1, got {cfg.epochs}.")
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {cfg.batch_size}.")
    if cfg.lr <= 0:
        raise ConfigError(f"lr must be positive, got {cfg.lr}.")
    if cfg.select not in SELECT:
        raise ConfigError(f"Unknown checkpoint selection {cfg.select!r}; choose one of {SELECT}.")
    if cfg.schedule not in SCHEDULES:
        raise ConfigError(f"Unknown schedule {cfg.schedule!r}; choose one of {SCHEDULES}.")
    resolve_precision(cfg.precision, resolve_device(cfg.device))


def one_cycle(step: int, total: int, *, warmup: float = 0.25, start: float = 0.1,
              end: float = 0.01) -> float:
    """Learning-rate factor of a linear one-cycle schedule: ``start`` -> 1 over the first
    ``warmup`` fraction of ``total`` steps, then 1 -> ``end``. Defined for any ``total >= 1``.
    """
    up = max(1, round(warmup * total))
    if step < up:
        return start + (1 - start) * step / up
    down = max(1, total - up)
    return max(end, 1 - (1 - end) * (step - up) / down)


def make_optimizer(params, cfg: TrainConfig, total_steps: int):
    """SGD with Nesterov momentum and the configured learning-rate schedule."""
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)
    total = max(total_steps, 1)
    if cfg.schedule == "onecycle":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: one_cycle(step, total))
    elif cfg.schedule == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total)
    else:
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    return opt, sched


def class_weights(labels: torch.Tensor, num_classes: int, mode: str) -> torch.Tensor | None:
    """Loss weights per class: ``balanced`` gives each class the same total weight
    (``n / (K * n_k)``, as scikit-learn's ``class_weight="balanced"``); ``none`` gives ``None``.
    """
    if mode == "none":
        return None
    if mode != "balanced":
        raise ConfigError(f"Unknown class weighting {mode!r}; choose 'none' or 'balanced'.")
    counts = torch.bincount(labels, minlength=num_classes).double()
    w = torch.where(counts > 0, counts.sum() / (num_classes * counts.clamp_min(1)), 0.0)
    return w.float()


def _score(metrics: dict, select: str) -> float:
    if select == "val_auc":
        v = metrics["auc"]
        return v if np.isfinite(v) else metrics["accuracy"]
    if select == "val_acc":
        return metrics["accuracy"]
    if select == "val_loss":
        return -metrics["loss"]
    return 0.0


@dataclass
class FitResult:
    model: Classifier
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    steps: int = 0
    seconds: float = 0.0


def fit(model: nn.Module, dataset: Dataset, train_indices: torch.Tensor | None,
        cfg: TrainConfig, *, seed: int, augment: str | None = None, desc: str = "train",
        on_batch: BatchHook | None = None, runtime: Runtime | None = None,
        validate: bool = True) -> FitResult:
    """Train ``model`` in place on ``train_indices`` of the training split.

    Args:
        model: The network; its weights are changed in place and set to the selected checkpoint.
        dataset: Data in memory; validation uses ``dataset.val``.
        train_indices: Training-split indices to learn from (None: all of them).
        cfg: Optimisation recipe.
        seed: Seeds data order and augmentation (not weight initialisation; seed before building).
        augment: Augmentation policy; defaults to the dataset's.
        desc: Label of the progress bar.
        on_batch: Called with each batch's training-split indices (used to audit data access).
        runtime: Device and arithmetic (default: from ``cfg.device``/``cfg.precision``).
        validate: Score the validation split after every epoch (recorded in the history).
            False skips it (no ``val_*`` columns in the history) and needs ``select="last"``,
            which has nothing to choose between: the constituents of a sharded model
            (:func:`medunlearn.sharding.shard_recipe`) train so, to save a whole validation pass
            per epoch; the weights are the same either way.

    Raises:
        ConfigError: a bad recipe, no training index, or ``validate=False`` with a ``select``
            other than ``last``.
    """
    validate_train_config(cfg)
    if not validate and cfg.select != "last":
        raise ConfigError(f"Checkpoint selection {cfg.select!r} needs the per-epoch validation; "
                          "use select='last' to train without it.")
    cfg = dataclasses.replace(cfg, epochs=resolve_epochs(cfg.epochs, len(dataset.train)))
    rt = runtime or Runtime.create(cfg.device, cfg.precision, cfg.threads)
    g = torch.Generator().manual_seed(seed)
    augment = dataset.augment if augment is None else augment
    idx = (torch.arange(len(dataset.train))  # cpu: indices into the in-memory data
           if train_indices is None else torch.as_tensor(train_indices, dtype=torch.long))  # cpu:
    if len(idx) == 0:
        raise ConfigError("Nothing to train on: the training index set is empty.")
    bs = min(cfg.batch_size, len(idx))
    weight = class_weights(dataset.train.labels[idx], dataset.num_classes, cfg.class_weights)
    weight = weight.to(rt.device) if weight is not None else None
    steps_per_epoch = max(1, len(idx) // bs)
    opt, sched = make_optimizer(model.parameters(), cfg, cfg.epochs * steps_per_epoch)
    scaler = rt.grad_scaler()
    best_state, best_score, best_epoch = None, -np.inf, 0
    layout = rt.prepare(model)
    history: list[dict] = []
    t0 = time.perf_counter()
    bar = progress_bar(cfg.epochs * steps_per_epoch, desc, enabled=cfg.progress)
    steps = 0
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        correct = torch.zeros((), dtype=torch.long, device=rt.device)

        def loss_fn(batch):
            nonlocal correct
            x, y, b = batch
            if on_batch is not None:
                on_batch(b)
            y = y.to(rt.device)
            logits = rt.forward(model, rt.batch(x, layout))
            correct = correct + (logits.argmax(1) == y).sum()
            return F.cross_entropy(logits, y, weight=weight, label_smoothing=cfg.label_smoothing)

        batches = iterate_batches(dataset.train, idx, batch_size=bs, shuffle=True, generator=g,
                                  augment=augment, drop_last=True)
        stats = sgd_steps(model, batches, loss_fn, optimizer=opt, scheduler=sched, runtime=rt,
                          scaler=scaler, on_step=lambda *_: bar.update(1))
        steps += stats.steps
        row = {"epoch": epoch, "train_loss": stats.mean_loss,
               "train_acc": int(correct) / max(stats.seen, 1)}
        if not validate:
            history.append(row | {"lr": opt.param_groups[0]["lr"],
                                  "seconds": time.perf_counter() - t0})
            bar.set_postfix(loss=f"{row['train_loss']:.3f}")
            best_epoch = epoch
            continue
        val = evaluate_split(model, dataset.val, runtime=rt)
        rt.prepare(model)  # inference left the default layout
        row |= {"val_loss": val["loss"], "val_acc": val["accuracy"], "val_auc": val["auc"],
                "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0}
        history.append(row)
        bar.set_postfix(loss=f"{row['train_loss']:.3f}", val_acc=f"{val['accuracy']:.3f}")
        score = _score(val, cfg.select)
        if cfg.select == "last" or score > best_score:
            best_score, best_epoch = score, epoch
            best_state = copy.deepcopy(model.state_dict())
    bar.close()
    rt.release(model)
    if validate:
        model.load_state_dict(best_state)
    model.eval()
    return FitResult(model, history, best_epoch, steps, time.perf_counter() - t0)


def train_model(dataset: Dataset, model_cfg: ModelConfig, train_cfg: TrainConfig, *,
                seed: int, train_indices: torch.Tensor | None = None, desc: str = "train",
                on_batch: BatchHook | None = None, runtime: Runtime | None = None
                ) -> tuple[FitResult, dict]:
    """Build a model from ``seed`` and train it; return the fit result and the model spec."""
    seed_everything(seed)
    model, spec = build_for(dataset, model_cfg)
    return fit(model, dataset, train_indices, train_cfg, seed=seed, desc=desc,
               on_batch=on_batch, runtime=runtime), spec


__all__ = [
    "DataConfig", "FitResult", "Runtime", "build_for", "evaluate_split", "fit", "make_optimizer",
    "model_from_spec", "predict_logits", "resolve_precision", "seed_everything", "set_threads",
    "train_model", "training_layout",
]
