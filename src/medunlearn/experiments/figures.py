"""The figures of an experiment report (PNG): clinical risk, utility and difficulty bias
against the forget-set size, the quality-against-cost Pareto view, FNR change, subgroups,
augmentation and per-example forgetting quality."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from medunlearn.experiments.grid import ORIGINAL_LABEL
from medunlearn.experiments.tables import (
    DIFFICULTY,
    FQ_PATH,
    REFERENCE_METHOD,
    dataset_name,
    difficulty_bias,
    group_by,
    mean_std,
    method_order,
    subgroup_levels,
    subgroup_stat,
)
from medunlearn.plots import _pyplot, readable_log_axis, save_figure

# Figures are drawn at least this wide (inches; at 110 dpi about 1100 px), so that in a 1400 px
# window they are read at their drawn size, not as ~400 px thumbnails.
MIN_FIG_WIDTH = 10.0


# -- figures --------------------------------------------------------------------------------------
def _field(name: str, scale: float = 1.0) -> Callable[[dict], float | None]:
    def value(r: dict) -> float | None:
        v = r.get(name)
        return None if v is None else scale * v
    return value


def _bias(tercile: str) -> Callable[[dict], float | None]:
    return lambda r: difficulty_bias(r).get(tercile)


def _values(rows: list[dict], lab: str, value: Callable, **match) -> list:
    """``value(row)`` for the rows of one method label that match every ``field=value``."""
    return [value(r) for r in rows if r["label"] == lab
            and all(r[k] == v for k, v in match.items())]


def _family(forget: str) -> str:
    """A forget spec without its fraction: ``random:0.2`` -> ``random``,
    ``random:0.2:stratified`` -> ``random:stratified``."""
    parts = forget.split(":")
    return ":".join([parts[0]] + parts[2:])


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (time, gap) points that no other point beats on both, fastest first."""
    front, best_gap = [], math.inf
    for t, g in sorted(points):
        if g < best_gap:
            front.append((t, g))
            best_gap = g
    return front


class Figures:
    """Draws the report's figures for one results table, with one colour per method."""

    def __init__(self, rows: list[dict], folder: Path) -> None:
        self.plt = _pyplot()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        labels = method_order(sorted({r["label"] for r in rows}),
                               {r["label"]: r["method"] for r in rows})
        self.labels = labels
        self.colors = {lab: self.plt.get_cmap("tab20")(i % 20) for i, lab in enumerate(labels)}
        self.out: list[tuple[str, Path]] = []

    def save(self, fig, caption: str, name: str) -> None:
        self.out.append((caption, save_figure(fig, self.folder / f"{_slug(name)}.png")))

    def against_ratio(self, rows: list[dict], panels: list[tuple[Callable, str]], title: str,
                      caption: str, name: str) -> None:
        """One line per method over the forget ratio, one panel per metric (mean ± std)."""
        fig, axes = self.plt.subplots(1, len(panels), figsize=(max(MIN_FIG_WIDTH,
                                                                   5 * len(panels)), 4.2),
                                      squeeze=False)
        for ax, (value, ylabel) in zip(axes[0], panels, strict=True):
            for lab in self.labels:
                pts = group_by([r for r in rows if r["label"] == lab], "forget_ratio")
                keep = []
                for (x,) in sorted(pts):
                    m, s, _ = mean_std([value(r) for r in pts[(x,)]])
                    if m is not None:
                        keep.append((100 * x, m, s))
                if keep:
                    x, m, s = map(np.asarray, zip(*keep, strict=True))
                    ax.errorbar(x, m, yerr=s, marker="o", ms=4, capsize=2, label=lab,
                                color=self.colors[lab],
                                ls={REFERENCE_METHOD: "--", ORIGINAL_LABEL: ":"}.get(lab, "-"))
            ax.set_xlabel("forget set (% of training data)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        handles, labels = next((h for h in (ax.get_legend_handles_labels() for ax in axes[0])
                                if h[0]), ([], []))
        if handles:  # panels without data (e.g. no difficulty terciles) draw no legend
            axes[0][-1].legend(handles, labels, fontsize=8, ncol=2)
        fig.suptitle(title)
        self.save(fig, caption, name)

    def grouped_bars(self, ax, rows: list[dict], labs: list[str],
                     series: list[tuple[str, Callable, dict]]) -> None:
        """Bars per method (mean ± std), one bar per ``(name, value, match)`` series: the
        values of the method's rows that match every ``field: value`` of ``match``."""
        width = 0.8 / max(1, len(series))
        for j, (name, value, match) in enumerate(series):
            stats = [mean_std(_values(rows, lab, value, **match)) for lab in labs]
            ax.bar(np.arange(len(labs)) + j * width,
                   [np.nan if m is None else m for m, _, _ in stats], width,
                   yerr=[0 if s is None else s for _, s, _ in stats], capsize=2, label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.set_xticks(np.arange(len(labs)) + width * (len(series) - 1) / 2)
        ax.set_xticklabels(labs, rotation=30, ha="right", fontsize=8)

    def pareto(self, rows: list[dict], ds: str) -> None:
        fig, ax = self.plt.subplots(figsize=(MIN_FIG_WIDTH, 5.0))
        pts = []
        for lab in self.labels:
            rs = [r for r in rows if r["label"] == lab]
            t, _, _ = mean_std([r.get("unlearn_seconds") for r in rs])
            g, gs, _ = mean_std([r.get("average_gap_pp") for r in rs])
            if lab == ORIGINAL_LABEL and g is not None:  # no time: a line at its gap
                ax.axhline(g, color="black", ls=":", lw=1.5,
                           label=f"{lab}: {g:.2f} pp (on or above: no better)")
                continue
            if t is None or g is None:
                continue
            pts.append((t, g, lab))
            ax.errorbar([t], [g], yerr=[gs], marker="o", capsize=3, color=self.colors[lab],
                        label=lab)
        front = pareto_front([(t, g) for t, g, _ in pts])
        if len(front) >= 2:  # one point is no front: nothing drawn, nothing in the legend
            ax.step(*zip(*front, strict=True), where="post", color="grey", ls="--", lw=1,
                    label="Pareto front (no method both faster and closer)")
        if pts and all(t > 0 for t, _, _ in pts):
            readable_log_axis(ax, "x")
        ax.set_xlabel("unlearning time (s, log scale)")
        ax.set_ylabel("average gap to retraining (pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title(f"{ds}: quality against cost (lower left is better)")
        self.save(fig, f"{ds}: average gap against unlearning time (Pareto view)",
                  f"pareto_{ds}")


def make_figures(rows: list[dict], folder: Path) -> list[tuple[str, Path]]:
    """Write every figure as PNG into ``folder``; returns ``(caption, path)`` pairs."""
    f = Figures(rows, folder)
    by_ds = group_by([r | {"_ds": dataset_name(r)} for r in rows], "_ds")
    for (ds,), drows in sorted(by_ds.items()):
        labs = [lab for lab in f.labels if any(r["label"] == lab for r in drows)]
        augs = sorted({r["augment"] for r in drows})

        # 1-3. against the forget ratio, per augmentation and kind of selection (random,
        # positive, ...), when the grid has at least two ratios of that kind
        families = sorted({_family(r["forget"]) for r in drows if r["forget_ratio"] is not None})
        for aug, fam in [(a, f) for a in augs for f in families]:
            ratio_rows = [r for r in drows if r["forget_ratio"] is not None
                          and r["augment"] == aug and _family(r["forget"]) == fam]
            if len({r["forget_ratio"] for r in ratio_rows}) < 2:
                continue
            where = ", ".join([ds] + ([f"augmentation {aug}"] if len(augs) > 1 else [])
                              + ([f"forget {fam}"] if len(families) > 1 else []))
            f.against_ratio(ratio_rows, [(_field("global_risk"), "Global Risk (test)"),
                                         (_field("fnr", 100), "FNR (test, %)")],
                            f"{where}: clinical risk against forget-set size",
                            f"{where}: Global Risk and FNR against forget ratio ("
                            + ("mean ± std over seeds" if len({r["seed"] for r in ratio_rows}) > 1
                               else "one seed")
                            + ("; dashed = retrained reference" if any(
                                r["method"] == REFERENCE_METHOD for r in ratio_rows) else "")
                            + ")", f"risk_vs_ratio_{where}")
            f.against_ratio(ratio_rows, [(_field("TA", 100), "test accuracy (%)"),
                                         (_field("UA", 100), "UA = forget-set error (%)"),
                                         (_field("average_gap_pp"),
                                          "average gap to retraining (pp)")],
                            f"{where}: generalisation and forgetting against forget-set size",
                            f"{where}: test accuracy, UA (forget-set error) and average gap "
                            "against forget ratio", f"utility_vs_ratio_{where}")
            f.against_ratio(ratio_rows, [(_bias(d), f"{d}: forget acc. − retrained (pp)")
                                         for d in DIFFICULTY],
                            f"{where}: forgetting by sample difficulty against forget-set size",
                            f"{where}: easy/medium/hard bias against forget ratio (forget-set "
                            "accuracy minus the retrained model's, terciles of the original "
                            "model's loss; 0 = as retraining)", f"difficulty_vs_ratio_{where}")
        # 4. Pareto view: average gap against unlearning time
        f.pareto(drows, ds)
        # 5. FNR change against the original model, per method and forget selection
        forgets = [fg for _, fg in sorted({(r["forget_ratio"] or 0, r["forget"]) for r in drows})]
        # wide enough for the bars, but never wider than a page
        fig, ax = f.plt.subplots(figsize=(min(16, max(MIN_FIG_WIDTH,
                                                      0.3 * len(labs) * (1 + len(forgets)))),
                                          4.6))
        f.grouped_bars(ax, drows, labs, [(f"forget {fg}", _field("fnr_change", 100), {"forget": fg})
                                        for fg in forgets])
        ax.set_ylabel("FNR − original FNR (pp)")
        ax.set_title(f"{ds}: change in missed-disease rate (above 0 = more missed)")
        ax.legend(fontsize=8)
        f.save(fig, f"{ds}: FNR change against the original model", f"fnr_change_{ds}")
        # 6. easy / medium / hard bias, pooled over the grid's settings
        fig, ax = f.plt.subplots(figsize=(min(16, max(MIN_FIG_WIDTH, 0.8 * len(labs))), 4.6))
        f.grouped_bars(ax, drows, labs, [(d, _bias(d), {}) for d in DIFFICULTY])
        ax.set_ylabel("forget accuracy − retrained (pp)")
        ax.set_title(f"{ds}: forgetting by sample difficulty (0 = as retraining)")
        ax.legend(fontsize=8, title="difficulty (original loss)")
        f.save(fig, f"{ds}: easy/medium/hard bias (forget-set accuracy against the retrained "
               "model, terciles of the original model's loss; all settings pooled)",
               f"difficulty_{ds}")
        # 7. subgroups: test accuracy per level of each metadata column (sex, age band, ...)
        for col, levels in subgroup_levels(drows).items():
            fig, ax = f.plt.subplots(figsize=(min(16, max(MIN_FIG_WIDTH, 0.8 * len(labs))), 4.6))
            f.grouped_bars(ax, drows, labs, [
                (lv, lambda r, c=col, v=lv: None
                 if (x := subgroup_stat(c, "model", v, "accuracy")(r)) is None else 100 * x, {})
                for lv in levels])
            ax.set_ylabel("test accuracy (%)")
            ax.set_title(f"{ds}: test accuracy by {col} after unlearning")
            ax.legend(fontsize=8, title=col)
            f.save(fig, f"{ds}: test accuracy per {col} group for every method (all forget "
                   "settings pooled; mean ± std)", f"subgroups_{col}_{ds}")
        # 8. augmentation on/off (only when the grid varies it)
        if len(augs) > 1:
            fig, axes = f.plt.subplots(1, 2, figsize=(min(16, max(MIN_FIG_WIDTH,
                                                                  1.4 * len(labs))), 4.6))
            for ax, (value, ylabel) in zip(axes, ((_field("average_gap_pp"),
                                                   "average gap to retraining (pp)"),
                                                  (_field("TA", 100), "test accuracy (%)")),
                                           strict=True):
                f.grouped_bars(ax, drows, labs, [(f"augment {a}", value, {"augment": a})
                                                for a in augs])
                ax.set_ylabel(ylabel)
            axes[1].legend(fontsize=8)
            fig.suptitle(f"{ds}: effect of data augmentation"
                         + (" (mean ± std over seeds)" if len({r["seed"] for r in drows}) > 1
                            else ""))
            f.save(fig, f"{ds}: average gap and test accuracy with and without augmentation",
                   f"augmentation_{ds}")

        # 7. per-example forgetting quality (studies run with evaluation.forgetting_quality)
        _forgetting_quality_figures(f, drows, ds)
    return f.out


def _forgetting_quality_figures(f: Figures, drows: list[dict], ds: str) -> None:
    """Score per method with its interval and the per-example epsilon histogram, one figure
    per setting (augmentation, forget set) from the first seed's ``verify-forgetting`` results
    (read from the files the records name; settings whose files are gone are skipped)."""
    import json

    from medunlearn.plots import forgetting_quality_figure

    fq = [r for r in drows if isinstance((r.get("metrics") or {}).get(FQ_PATH + "result_file"),
                                         str)]
    for (aug, forget), srows in sorted(group_by(fq, "augment", "forget").items()):
        seed = min(r["seed"] for r in srows)
        results = {}
        for lab in f.labels:
            for r in srows:
                path = Path(r["metrics"][FQ_PATH + "result_file"])
                if r["label"] == lab and r["seed"] == seed and path.is_file():
                    results[lab] = json.loads(path.read_text())
        if not results:
            continue
        name = f"forgetting_quality_{ds}_{aug}_{forget}"
        path = forgetting_quality_figure(results, f.folder / f"{_slug(name)}.png")
        n = next(iter(results.values())).get("n")
        f.out.append((f"{ds}, augmentation {aug}, forget {forget} (seed {seed}): per-example "
                      f"forgetting quality with its 95% interval, N = {n} unlearned and {n} "
                      "retrained models per method (grey: what retraining itself scores at this "
                      "N), and the per-example epsilon histogram", path))
