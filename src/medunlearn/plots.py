"""Matplotlib figures written next to run artefacts (Agg backend, no display needed)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from medunlearn.io import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike, *, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically and close it."""
    plt = _pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def training_curve(history: list[dict], path: str | os.PathLike, *, title: str = "") -> Path:
    """Loss and validation accuracy/AUC per epoch."""
    plt = _pyplot()
    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.4))
    a1.plot(ep, [h["train_loss"] for h in history], marker="o", label="train")
    a1.plot(ep, [h["val_loss"] for h in history], marker="o", label="validation")
    a1.set_xlabel("epoch")
    a1.set_ylabel("cross-entropy")
    a1.legend()
    a2.plot(ep, [h["val_acc"] for h in history], marker="o", label="val accuracy")
    a2.plot(ep, [h["val_auc"] for h in history], marker="o", label="val AUC")
    a2.set_xlabel("epoch")
    a2.set_ylim(0.5, 1.0)
    a2.legend()
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)
