"""Matplotlib figures written next to run artefacts (Agg backend, no display needed)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from medunlearn.fileio import atomic_write_bytes


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


def log_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[float]:
    """At most ``max_ticks`` readable tick positions for a log axis spanning ``[lo, hi]``
    (both > 0): the 1-2-5 values of each decade inside the span, or every 1..9 multiple when the
    span is too narrow for two of those, thinned evenly (the ends kept) to ``max_ticks``."""
    import math

    if not (0 < lo <= hi and math.isfinite(hi)):
        raise ValueError(f"log_ticks needs 0 < lo <= hi, got {lo}, {hi}")
    decades = range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1)
    for steps in ((1,), (1, 2, 5), tuple(range(1, 10))):
        ticks = [float(f"{m * 10.0 ** d:.12g}") for d in decades for m in steps]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) >= 3 or (steps[-1] == 9 and ticks):
            break
    if len(ticks) < 2:  # a span inside one step (e.g. 6.2 to 6.8): its two ends
        ticks = sorted({float(f"{lo:.2g}"), float(f"{hi:.2g}")})
    if len(ticks) > max_ticks:
        idx = sorted({round(i * (len(ticks) - 1) / (max_ticks - 1)) for i in range(max_ticks)})
        ticks = [ticks[i] for i in idx]
    return ticks


def readable_log_axis(ax, axis: str = "x", max_ticks: int = 6) -> None:
    """Put ``ax``'s ``axis`` ("x" or "y"; call it once the data are drawn) on a log scale with
    at most ``max_ticks`` labelled ticks inside its limits (:func:`log_ticks`, written like
    ``0.5``, ``2``, ``10``) and no labelled minor ticks, so that labels never overlap."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter, NullLocator

    which = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
    lo, hi = sorted(ax.get_xlim() if axis == "x" else ax.get_ylim())
    which.set_major_locator(FixedLocator(log_ticks(lo, hi, max_ticks)))
    which.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    which.set_minor_locator(NullLocator())
    which.set_minor_formatter(NullFormatter())


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


def forgetting_quality_figure(results: dict[str, dict], path: str | os.PathLike) -> Path:
    """Per-example forgetting quality of several methods (``verify-forgetting`` results by
    method): the score with its interval and the permutation null (left), the histogram of
    per-example epsilon with capped examples in the last bin (right)."""
    import numpy as np

    plt = _pyplot()
    names = list(results)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8))
    score = [results[m]["forgetting_quality"] for m in names]
    lo = [results[m]["forgetting_quality_ci"][0] for m in names]
    hi = [results[m]["forgetting_quality_ci"][1] for m in names]
    x = np.arange(len(names))
    a1.errorbar(x, score, yerr=[np.subtract(score, lo), np.subtract(hi, score)], fmt="o",
                capsize=4, label="score (95% CI)")
    null = [results[m].get("forgetting_quality_null") for m in names]
    if all(v is not None for v in null):
        a1.plot(x, null, "_", markersize=18, color="grey", label="retraining at this N (null)")
    a1.set_xticks(x, names, rotation=45, ha="right")
    a1.set_ylabel("forgetting quality")
    a1.set_ylim(-0.02, max(0.5, max(hi) + 0.05))
    a1.legend(fontsize=8)
    top = 4.0
    bins = np.append(np.arange(0, top + 0.25, 0.25), top + 0.5)
    for m in names:
        eps = np.minimum(np.asarray(results[m]["per_example"]["epsilon"]), top + 0.25)
        a2.hist(eps, bins=bins, histtype="step", label=m)
    a2.set_xlabel(f"per-example epsilon (last bin: > {top:g}, incl. the cap)")
    a2.set_ylabel("forget images")
    a2.legend(fontsize=7, ncol=2)
    n = results[names[0]]["n_models"]["unlearned"] if names else 0
    fig.suptitle(f"Per-example forgetting quality, N = {n} unlearned + {n} retrained models")
    return save_figure(fig, path)
