"""Reports of an experiment: tables (mean ± std over seeds) and figures, as HTML and Markdown.

``write_report(results, out)`` reads the results table and writes

* ``report.html``: one self-contained page (CSS inline, figures embedded as base64 PNG);
* ``report.md``: the same tables in Markdown, with the PNGs in ``figures/`` beside it.

Tables: one per dataset, augmentation and forget selection; one row per method. The best value
of each column is marked, taking each metric's direction into account: for UA, RA, TA,
MIA-efficacy and attack AUC the best is the one *closest to the retrained reference* (the goal
of unlearning is to behave as if the data had never been seen); for FNR, FPR, Global Risk,
average gap, FNR change and time lower is better; for AUC and speedup higher is better. The
``retrain`` row is the reference itself and is not ranked. Methods whose safety verdict failed
for any seed are flagged.
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunlearn.evaluation.directions import DIRECTIONS, HIGHER, LOWER
from medunlearn.evaluation.directions import REFERENCE as CLOSEST
from medunlearn.evaluation.utility import DEGENERATE_BALANCED_ACCURACY, DEGENERATE_SHARE
from medunlearn.experiments.store import ResultsStore
from medunlearn.fileio import atomic_write_text
from medunlearn.plots import _pyplot, save_figure


@dataclass(frozen=True)
class Column:
    """A table column: row field, header, display scale and digits. Its direction (which value
    is best) comes from the one table of metric directions, ``evaluation.directions``."""

    field: str
    header: str
    scale: float = 100.0  # fractions are shown in percent
    digits: int = 1

    @property
    def direction(self) -> str:
        return DIRECTIONS[self.field]


COLUMNS = (
    Column("UA", "UA %"),
    Column("RA", "RA %"),
    Column("TA", "TA %"),
    Column("test_auc", "AUC %"),
    Column("mia_efficacy", "MIA-eff. %"),
    Column("attack_auc", "attack AUC", 1.0, 3),
    Column("average_gap_pp", "avg gap (pp)", 1.0, 2),
    Column("fnr", "FNR %"),
    Column("fpr", "FPR %"),
    Column("global_risk", "Global Risk", 1.0, 3),
    Column("fnr_change", "ΔFNR vs orig. (pp)"),
    Column("unlearn_seconds", "time (s)", 1.0, 2),
    Column("speedup", "speedup ×", 1.0, 1),
)
#: Shown only when a study ran the per-example check (``evaluation: {forgetting_quality: N}``).
FQ_COLUMN = Column("forgetting_quality", "forgetting quality", 1.0, 3)
FQ_PATH = "models.model.forgetting_quality."


def columns_for(rows: list[dict]) -> tuple[Column, ...]:
    """The table columns of these rows: the fixed ones, plus forgetting quality when present."""
    has_fq = any((r.get("metrics") or {}).get(FQ_PATH + "forgetting_quality") is not None
                 for r in rows)
    return COLUMNS + ((FQ_COLUMN,) if has_fq else ())


def _fq_value(r: dict) -> float | None:
    v = (r.get("metrics") or {}).get(FQ_PATH + "forgetting_quality")
    return float(v) if isinstance(v, (int, float)) else None


REFERENCE_METHOD = "retrain"
# Figures are drawn at least this wide (inches; at 110 dpi about 1100 px), so that in a 1400 px
# window they are read at their drawn size, not as ~400 px thumbnails.
MIN_FIG_WIDTH = 10.0
DIFFICULTY = ("easy", "medium", "hard")


# -- aggregation ----------------------------------------------------------------------------------
def _finite(values) -> list[float]:
    return [float(v) for v in values
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    v = _finite(values)
    if not v:
        return None, None, 0
    return float(np.mean(v)), (float(np.std(v, ddof=1)) if len(v) > 1 else 0.0), len(v)


def _method_order(labels: list[str], methods: dict[str, str]) -> list[str]:
    from medunlearn.methods import CANONICAL_ORDER

    rank = {m: i for i, m in enumerate(CANONICAL_ORDER)}
    return sorted(labels, key=lambda lab: (rank.get(methods.get(lab, lab), len(rank)), lab))


@dataclass
class Table:
    """One table: a (dataset, augmentation, forget) setting, one row per method."""

    title: str
    dataset: str
    augment: str
    forget: str
    rows: list[dict]  # {label, method, n, stats: {field: (mean, std)}, gate_failed, reasons}
    best: dict[str, set[str]]  # field -> labels marked best
    degenerate: tuple[str, ...] = ()  # why the original or a reference is not a basis to rank
    columns: tuple[Column, ...] = COLUMNS


def _difficulty_bias(row: dict) -> dict[str, float]:
    """Forget accuracy minus the reference's per difficulty tercile, in percentage points."""
    m = row.get("metrics") or {}
    out = {}
    for d in DIFFICULTY:
        a = m.get(f"bias.difficulty.forget.model.{d}.accuracy")
        r = m.get(f"bias.difficulty.forget.reference.{d}.accuracy")
        if isinstance(a, (int, float)) and isinstance(r, (int, float)):
            out[d] = 100.0 * (a - r)
    return out


def _dataset_name(r: dict) -> str:
    return f"{r['dataset']} ({r['view']})"


def _majority_share(m: dict, role: str) -> float | None:
    """A model's majority prediction share from a flattened record; for records written before
    it was recorded, derived from the binary per-class recalls and counts."""
    v = m.get(f"models.{role}.utility.majority_prediction_share")
    if isinstance(v, (int, float)):
        return float(v)
    pc = f"bias.per_class.test.{role}"
    try:
        r0, r1 = float(m[f"{pc}.0.accuracy"]), float(m[f"{pc}.1.accuracy"])
        n0, n1 = float(m[f"{pc}.0.n"]), float(m[f"{pc}.1.n"])
    except (KeyError, TypeError, ValueError):
        return None
    if f"{pc}.2.n" in m or not n0 + n1:
        return None
    positive = (r1 * n1 + (1 - r0) * n0) / (n0 + n1)
    return max(positive, 1 - positive)


def degenerate_models(rows: list[dict]) -> dict[tuple, list[str]]:
    """Table setting -> one line per degenerate original or reference model behind it
    (:func:`medunlearn.evaluation.utility.degenerate_reason`), once per model and seed."""
    from medunlearn.evaluation.utility import degenerate_reason

    out: dict[tuple, list[str]] = defaultdict(list)
    seen: set[tuple] = set()
    for r in rows:
        m = r.get("metrics") or {}
        setting = (_dataset_name(r), r["augment"], r["forget"])
        for role, folder in (("original", r.get("original_dir")),
                             ("reference", r.get("reference_dir"))):
            key = (setting, role, folder or r["seed"])
            if key in seen:
                continue
            seen.add(key)
            why = degenerate_reason(m.get(f"models.{role}.utility.balanced_accuracy"),
                                    _majority_share(m, role))
            if why:
                name = "original model" if role == "original" else "retrained reference"
                out[setting].append(f"seed {r['seed']}: the {name} {why}")
    return out


def build_tables(rows: list[dict]) -> list[Table]:
    """Group rows by (dataset, augmentation, forget) and aggregate each method over seeds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    bad = degenerate_models(rows)
    cols = columns_for(rows)
    rows = [r | {"forgetting_quality": _fq_value(r)} for r in rows]
    for r in rows:
        groups[(_dataset_name(r), r["augment"], r["forget_ratio"] is None, r["forget_ratio"] or 0,
                r["forget"])].append(r)
    tables = []
    for (ds, aug, _, _, forget), grp in sorted(groups.items(), key=lambda kv: kv[0]):
        by_label: dict[str, list[dict]] = defaultdict(list)
        for r in grp:
            by_label[r["label"]].append(r)
        methods = {lab: rs[0]["method"] for lab, rs in by_label.items()}
        out_rows = []
        for lab in _method_order(list(by_label), methods):
            rs = by_label[lab]
            full = {c.field: mean_std([r.get(c.field) for r in rs]) for c in cols}
            stats = {f: v[:2] for f, v in full.items()}
            counts = {f: v[2] for f, v in full.items()}
            failed = [r for r in rs if r.get("gate_passed") is False]
            reasons = sorted({x for r in failed for x in r.get("gate_reasons") or []})
            out_rows.append({"label": lab, "method": methods[lab], "n": len(rs),
                             "seeds": sorted(r["seed"] for r in rs), "stats": stats,
                             "counts": counts,
                             "gate_failed": len(failed), "reasons": reasons})
        flagged = tuple(bad.get((ds, aug, forget), ()))
        # methods are not ranked against a degenerate original or reference
        tables.append(Table(title=f"{ds}, augmentation {aug}, forget {forget}", dataset=ds,
                            augment=aug, forget=forget, rows=out_rows,
                            best={} if flagged else _best(out_rows, cols), degenerate=flagged,
                            columns=cols))
    return tables


def _best(rows: list[dict], cols: tuple[Column, ...] = COLUMNS) -> dict[str, set[str]]:
    ref = next((r for r in rows if r["method"] == REFERENCE_METHOD and r["label"] ==
                REFERENCE_METHOD), None)
    best: dict[str, set[str]] = {}
    for c in cols:
        cands = [(r["label"], r["stats"][c.field][0]) for r in rows
                 if r is not ref and r["stats"][c.field][0] is not None]
        if not cands:
            continue
        if c.direction == CLOSEST:
            target = ref["stats"][c.field][0] if ref else (0.5 if "auc" in c.field else None)
            if target is None:
                continue
            score = {lab: abs(v - target) for lab, v in cands}
        elif c.direction == HIGHER:
            score = {lab: -v for lab, v in cands}
        else:
            score = dict(cands)
        top = min(score.values())
        marked = {lab for lab, s in score.items() if math.isclose(s, top, abs_tol=1e-12)}
        if len(marked) < len(score) or len(score) == 1:  # a tie of every method marks nothing
            best[c.field] = marked
    return best


def _fmt_parts(mean: float | None, std: float | None, c: Column, n: int) -> tuple[str, str]:
    """``("29.0", "± 1.0")``; no spread for a single seed (a standard deviation of one value
    says nothing) and none for a missing value."""
    if mean is None:
        return "–", ""
    m = f"{mean * c.scale:.{c.digits}f}"
    if n < 2 or std is None:
        return m, ""
    return m, f"± {std * c.scale:.{c.digits}f}"


def _fmt(mean: float | None, std: float | None, c: Column, n: int = 2) -> str:
    return " ".join(p for p in _fmt_parts(mean, std, c, n) if p)


# -- figures --------------------------------------------------------------------------------------
def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    g: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        g[tuple(r[k] for k in keys)].append(r)
    return g


def _field(name: str, scale: float = 1.0) -> Callable[[dict], float | None]:
    def value(r: dict) -> float | None:
        v = r.get(name)
        return None if v is None else scale * v
    return value


def _bias(tercile: str) -> Callable[[dict], float | None]:
    return lambda r: _difficulty_bias(r).get(tercile)


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


class _Figures:
    """Draws the report's figures for one results table, with one colour per method."""

    def __init__(self, rows: list[dict], folder: Path) -> None:
        self.plt = _pyplot()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        labels = _method_order(sorted({r["label"] for r in rows}),
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
                pts = _by([r for r in rows if r["label"] == lab], "forget_ratio")
                keep = []
                for (x,) in sorted(pts):
                    m, s, _ = mean_std([value(r) for r in pts[(x,)]])
                    if m is not None:
                        keep.append((100 * x, m, s))
                if keep:
                    x, m, s = map(np.asarray, zip(*keep, strict=True))
                    ax.errorbar(x, m, yerr=s, marker="o", ms=4, capsize=2, label=lab,
                                color=self.colors[lab],
                                ls="--" if lab == REFERENCE_METHOD else "-")
            ax.set_xlabel("forget set (% of training data)")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=8, ncol=2)
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
            from matplotlib.ticker import ScalarFormatter

            ax.set_xscale("log")
            for axis in (ax.xaxis,):
                axis.set_major_formatter(ScalarFormatter())
                axis.set_minor_formatter(ScalarFormatter())
        ax.set_xlabel("unlearning time (s, log scale)")
        ax.set_ylabel("average gap to retraining (pp)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncol=2)
        ax.set_title(f"{ds}: quality against cost (lower left is better)")
        self.save(fig, f"{ds}: average gap against unlearning time (Pareto view)",
                  f"pareto_{ds}")


def make_figures(rows: list[dict], folder: Path) -> list[tuple[str, Path]]:
    """Write every figure as PNG into ``folder``; returns ``(caption, path)`` pairs."""
    f = _Figures(rows, folder)
    by_ds = _by([r | {"_ds": _dataset_name(r)} for r in rows], "_ds")
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
        for col, levels in _subgroup_levels(drows).items():
            fig, ax = f.plt.subplots(figsize=(min(16, max(MIN_FIG_WIDTH, 0.8 * len(labs))), 4.6))
            f.grouped_bars(ax, drows, labs, [(lv, lambda r, c=col, v=lv: None if
                                              (x := _sub(c, "model", v, "accuracy")(r)) is None
                                              else 100 * x, {}) for lv in levels])
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


def _forgetting_quality_figures(f: _Figures, drows: list[dict], ds: str) -> None:
    """Score per method with its interval and the per-example epsilon histogram, one figure
    per setting (augmentation, forget set) from the first seed's ``verify-forgetting`` results
    (read from the files the records name; settings whose files are gone are skipped)."""
    import json

    from medunlearn.plots import forgetting_quality_figure

    fq = [r for r in drows if isinstance((r.get("metrics") or {}).get(FQ_PATH + "result_file"),
                                         str)]
    for (aug, forget), srows in sorted(_by(fq, "augment", "forget").items()):
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


# -- subgroups (metadata columns such as sex and age band) ---------------------------------------
SUBGROUP_PREFIX = "bias.subgroups."
SUBGROUP_STATS = (("accuracy", "acc"), ("fnr", "FNR"), ("fpr", "FPR"), ("auc", "AUC"))


def _subgroup_levels(rows: list[dict]) -> dict[str, list[str]]:
    """Metadata column -> its levels, from the flattened test-set subgroup metrics."""
    out: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        for k in (r.get("metrics") or {}):
            if k.startswith(SUBGROUP_PREFIX) and k.endswith(".accuracy") and ".test.model." in k:
                col, rest = k[len(SUBGROUP_PREFIX):].split(".test.model.", 1)
                out[col].add(rest[: -len(".accuracy")])
    # bands read in order: "<40", "40-60", ">60"
    def order(level: str) -> tuple:
        return (0 if level.startswith("<") else 2 if level.startswith(">") else 1, level)
    return {c: sorted(v, key=order) for c, v in sorted(out.items())}


def _sub(col: str, role: str, level: str, stat: str) -> Callable[[dict], float | None]:
    key = f"{SUBGROUP_PREFIX}{col}.test.{role}.{level}.{stat}"

    def value(r: dict) -> float | None:
        v = (r.get("metrics") or {}).get(key)
        return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None
    return value


def _gap_change(col: str) -> Callable[[dict], float | None]:
    """The model's accuracy gap between the column's levels minus the original's (pp)."""

    def value(r: dict) -> float | None:
        m = r.get("metrics") or {}
        x = m.get(f"{SUBGROUP_PREFIX}{col}.test.model.spread")
        y = m.get(f"{SUBGROUP_PREFIX}{col}.test.original.spread")
        ok = all(isinstance(v, (int, float)) and np.isfinite(v) for v in (x, y))
        return 100.0 * (x - y) if ok else None
    return value


def subgroup_tables(rows: list[dict]) -> list[dict]:
    """Per dataset, forget setting and metadata column: test accuracy, FNR, FPR and AUC per
    level for the original model and every method (mean ± std over seeds), the accuracy gap
    between levels and its change against the original (percentage points)."""
    out = []
    labels = _method_order(sorted({r["label"] for r in rows}),
                           {r["label"]: r["method"] for r in rows})
    for (ds, aug, forget), srows in sorted(_by([r | {"_ds": _dataset_name(r)} for r in rows],
                                               "_ds", "augment", "forget").items()):
        for col, levels in _subgroup_levels(srows).items():
            lines = []
            for lab, role in [("original", "original")] + [(x, "model") for x in labels]:
                rs = srows if role == "original" else [r for r in srows if r["label"] == lab]
                if role == "original":  # the same original model in every cell of a seed
                    rs = list({r["seed"]: r for r in srows}.values())
                if not rs:
                    continue
                cells = {(lv, st): mean_std([_sub(col, role, lv, st)(r) for r in rs])
                         for lv in levels for st, _ in SUBGROUP_STATS}
                spread = mean_std([(r.get("metrics") or {}).get(
                    f"{SUBGROUP_PREFIX}{col}.test.{role}.spread") for r in rs])
                change = mean_std([_gap_change(col)(r) for r in rs]) if role == "model" \
                    else (None, None, 0)
                lines.append({"label": lab, "n": len(rs), "cells": cells, "spread": spread,
                              "change": change})
            out.append({"title": f"{ds}, augmentation {aug}, forget {forget}: by {col} "
                                 "(test set)", "column": col, "levels": levels,
                        "lines": lines})
    return out


def _ms(stat: tuple, scale: float = 1.0, digits: int = 1) -> str:
    m, s, n = stat
    if m is None:
        return "–"
    return f"{scale * m:.{digits}f}" + (f" ± {scale * s:.{digits}f}" if n > 1 and s else "")


def _subgroup_row(line: dict, levels: list[str]) -> list[str]:
    cells = [line["label"], str(line["n"])]
    for lv in levels:
        c = line["cells"]
        cells.append(" / ".join([_ms(c[(lv, "accuracy")], 100), _ms(c[(lv, "fnr")], 100),
                                 _ms(c[(lv, "fpr")], 100), _ms(c[(lv, "auc")], 1, 3)]))
    cells += [_ms(line["spread"], 100), _ms(line["change"], 1)]
    return cells


def _subgroup_header(t: dict) -> list[str]:
    return (["model", "seeds"] + [f"{t['column']} = {lv}: acc / FNR / FPR (%) / AUC"
                                  for lv in t["levels"]]
            + ["accuracy gap (pp)", "gap − original's (pp)"])


SUBGROUP_NOTE = ("Per subgroup of the test set: accuracy, false-negative and false-positive "
                 "rates (%) and AUC; the accuracy gap is the largest minus the smallest group "
                 "accuracy; its change against the original model is above 0 when unlearning "
                 "widened the gap. Mean ± std over seeds.")


# -- writers --------------------------------------------------------------------------------------
def legend(tables: list[Table]) -> str:
    """What the tables show, true for these tables: the spread is mentioned only when some
    row has several seeds, the reference row only when there is one."""
    many = any(r["n"] > 1 for t in tables for r in t.rows)
    cols = tables[0].columns if tables else COLUMNS
    has_ref = any(r["method"] == REFERENCE_METHOD for t in tables for r in t.rows)
    parts = ["Mean ± standard deviation over seeds (one seed: the value alone)." if many else
             "One seed per method: single values, no spread."]
    closest = [c.header for c in cols if c.direction == CLOSEST]
    higher = [c.header for c in cols if c.direction == HIGHER]
    lower = [c.header for c in cols if c.direction == LOWER]
    if has_ref:
        parts.append(f"**Bold** (HTML: green) = best in the column among the unlearning "
                     f"methods: closest to the retrained model (the {REFERENCE_METHOD} row, "
                     f"which is not ranked) for {', '.join(closest)}; higher for "
                     f"{', '.join(higher)}; lower for {', '.join(lower)}.")
    else:
        auc = [c.header for c in cols if c.direction == CLOSEST and "auc" in c.field]
        parts.append(f"**Bold** (HTML: green) = best in the column: higher for "
                     f"{', '.join(higher)}; lower for {', '.join(lower)}; closest to 0.5 for "
                     f"{', '.join(auc)}. These results have no {REFERENCE_METHOD} row, so "
                     f"{', '.join(h for h in closest if h not in auc)} (best = closest to the "
                     "retrained model) are not ranked; add the method "
                     f"'{REFERENCE_METHOD}' to the study to rank them.")
    parts.append("⚠ = the safety gate failed for at least one seed.")
    return " ".join(parts)


DEGENERATE_NOTE = (f"Not ranked: a model behind this table is degenerate (one class predicted "
                   f"for at least {DEGENERATE_SHARE:.0%} of the test images, or balanced accuracy "
                   f"below {DEGENERATE_BALANCED_ACCURACY:g}), so closeness to it says nothing "
                   "about unlearning.")


def _markdown(title: str, tables: list[Table], figs: list[tuple[str, Path]], out: Path,
              meta: str, rows: list[dict] | None = None) -> str:
    rows = rows or []
    lines = [f"# {title}", "", meta, "", legend(tables), ""]
    for t in tables:
        lines += [f"## {t.title}", ""]
        head = ["method", "seeds", "safety"] + [c.header for c in t.columns]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in t.rows:
            cells = [r["label"], str(r["n"]),
                     f"⚠ fails ({r['gate_failed']}/{r['n']})" if r["gate_failed"] else "pass"]
            for c in t.columns:
                txt = _fmt(*r["stats"][c.field], c, r["counts"][c.field])
                cells.append(f"**{txt}**" if r["label"] in t.best.get(c.field, ()) else txt)
            lines.append("| " + " | ".join(cells) + " |")
        failing = [r for r in t.rows if r["gate_failed"]]
        if failing:
            lines += ["", "Safety verdict failures:", ""]
            lines += [f"- {r['label']}: {'; '.join(r['reasons'])}" for r in failing]
        if t.degenerate:
            lines += ["", f"**{DEGENERATE_NOTE}**", ""]
            lines += [f"- {why}" for why in t.degenerate]
        lines.append("")
    subs = subgroup_tables(rows)
    if subs:
        lines += ["## Subgroups", "", SUBGROUP_NOTE, ""]
    for t in subs:
        head = _subgroup_header(t)
        lines += [f"### {t['title']}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(_subgroup_row(x, t["levels"])) + " |" for x in t["lines"]]
        lines.append("")
    lines += ["## Figures", ""]
    for cap, p in figs:
        lines += [f"![{cap}]({os.path.relpath(p, out)})", "", f"*{cap}*", ""]
    return "\n".join(lines)


# Tables fit a 1400 px window: headers wrap, the spread sits under the mean in small type, and
# the safety verdict comes right after the method. Figures are shown at their drawn size (up to
# the page width), never shrunk to a thumbnail.
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em;box-sizing:border-box}
table.results{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
table.results th,table.results td{border:1px solid #ccc;padding:3px 6px;text-align:right}
table.results td{white-space:nowrap}
table.results th{background:#f0f0f0;white-space:normal;max-width:6.5em;vertical-align:bottom}
table.results td.method{text-align:left;font-weight:600}
table.results span.sd{display:block;font-size:0.8em;color:#666}
td.best{background:#d7f5dc;font-weight:700}
tr.unsafe td.method::after{content:" ⚠";color:#b00}
tr.reference td{color:#555;font-style:italic}
td.unsafe{color:#b00}
div.scroll{overflow-x:auto}
figure{margin:1.5em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555;max-width:70em}
.legend{font-size:0.85em;color:#444;max-width:70em}
p.degenerate{color:#b00;max-width:70em}
"""


def _html(title: str, tables: list[Table], figs: list[tuple[str, Path]], meta: str,
          rows: list[dict] | None = None) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{e(meta)}</p>",
             f"<p class='legend'>{e(legend(tables)).replace('**Bold** (HTML: green)', 'Green')}"
             "</p>"]
    for i, t in enumerate(tables):
        parts.append(f"<h2 id='table-{i}'>{e(t.title)}</h2>")
        parts.append("<div class='scroll'>")
        parts.append(f"<table class='results' data-dataset='{e(t.dataset)}' "
                     f"data-augment='{e(t.augment)}' data-forget='{e(t.forget)}'><thead><tr>"
                     "<th>method</th><th>seeds</th><th>safety</th>"
                     + "".join(f"<th>{e(c.header)}</th>" for c in t.columns)
                     + "</tr></thead><tbody>")
        for r in t.rows:
            cls = []
            if r["gate_failed"]:
                cls.append("unsafe")
            if r["method"] == REFERENCE_METHOD:
                cls.append("reference")
            tds = [f"<td class='method'>{e(r['label'])}</td><td>{r['n']}</td>"]
            if r["gate_failed"]:
                tds.append(f"<td class='unsafe' data-metric='safety' "
                           f"title='{e('; '.join(r['reasons']))}'>fails "
                           f"({r['gate_failed']}/{r['n']})</td>")
            else:
                tds.append("<td data-metric='safety'>pass</td>")
            for c in t.columns:
                best = " class='best'" if r["label"] in t.best.get(c.field, ()) else ""
                mean, sd = _fmt_parts(*r["stats"][c.field], c, r["counts"][c.field])
                tds.append(f"<td data-metric='{c.field}'{best}>{e(mean)}"
                           + (f"<span class='sd'>{e(sd)}</span>" if sd else "") + "</td>")
            parts.append(f"<tr class='{' '.join(cls)}' data-method='{e(r['label'])}'>"
                         + "".join(tds) + "</tr>")
        parts.append("</tbody></table></div>")
        if t.degenerate:
            parts.append(f"<p class='degenerate'><b>{e(DEGENERATE_NOTE)}</b></p><ul>"
                         + "".join(f"<li>{e(why)}</li>" for why in t.degenerate) + "</ul>")
        failing = [r for r in t.rows if r["gate_failed"]]
        if failing:
            parts.append("<details><summary>Safety verdict failures</summary><ul>"
                         + "".join(f"<li><b>{e(r['label'])}</b>: {e('; '.join(r['reasons']))}"
                                   "</li>" for r in failing) + "</ul></details>")
    subs = subgroup_tables(rows or [])
    if subs:
        parts += ["<h2 id='subgroups'>Subgroups</h2>", f"<p class='legend'>{e(SUBGROUP_NOTE)}</p>"]
    for t in subs:
        parts.append(f"<h3>{e(t['title'])}</h3><div class='scroll'><table class='results "
                     f"subgroups' data-column='{e(t['column'])}'><thead><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in _subgroup_header(t))
                     + "</tr></thead><tbody>")
        for x in t["lines"]:
            cells = _subgroup_row(x, t["levels"])
            parts.append("<tr><td class='method'>" + e(cells[0]) + "</td>"
                         + "".join(f"<td>{e(c)}</td>" for c in cells[1:]) + "</tr>")
        parts.append("</tbody></table></div>")
    parts.append("<h2>Figures</h2>")
    for cap, p in figs:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{e(cap)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# The columns of the summary printed at the end of 'medunlearn experiment'.
SUMMARY_FIELDS = ("UA", "TA", "fnr", "global_risk", "average_gap_pp", "speedup")


def summary_text(rows: list[dict]) -> str:
    """A plain-text table per setting: one line per method with its key metrics (mean over
    seeds) and its safety verdict; ``*`` marks the best per column, as in the report."""
    cols = [c for c in COLUMNS if c.field in SUMMARY_FIELDS]
    widths = [max(len(c.header), 5) + 1 for c in cols]
    lines = []
    for t in build_tables(rows):
        mw = max(len("method"), *(len(r["label"]) for r in t.rows)) + 2
        lines += ["", t.title]
        if t.degenerate:
            lines += ["  " + DEGENERATE_NOTE] + [f"    - {why}" for why in t.degenerate]
        lines.append(f"  {'method':<{mw}}{'seeds':>5}" + "".join(
            f"{c.header:>{w}}" for c, w in zip(cols, widths, strict=True)) + "  safety")
        for r in t.rows:
            vals = []
            for c, w in zip(cols, widths, strict=True):
                txt = _fmt(r["stats"][c.field][0], None, c, 1)
                vals.append(f"{txt + ('*' if r['label'] in t.best.get(c.field, ()) else ''):>{w}}")
            safety = (f"fails {r['gate_failed']}/{r['n']}" if r["gate_failed"] else "pass")
            ref = " (reference)" if r["method"] == REFERENCE_METHOD else ""
            lines.append(f"  {r['label']:<{mw}}{r['n']:>5}" + "".join(vals) + f"  {safety}{ref}")
    return "\n".join(lines)


def compute_time(rows: list[dict]) -> dict[str, float]:
    """Seconds of work behind ``rows``: each original and reference counted once, plus cells.

    Shared jobs (one original model serves every forget set; one reference every method) are
    counted once per run folder, so the total is the grid's cost on one machine, whichever
    study computed a job first.
    """
    # rows without a folder (written by other tools) count on their own
    originals = {r.get("original_dir") or id(r): r.get("original_train_seconds") for r in rows}
    references = {r.get("reference_dir") or id(r): r.get("retrain_seconds") for r in rows}
    out = {"originals": sum(_finite(originals.values())),
           "references": sum(_finite(references.values())),
           "cells": sum(_finite(r.get("cell_seconds") for r in rows))}
    out["total"] = sum(out.values())
    return out


def study_labels(study) -> dict[str, str]:
    """Results-table key -> the method label this study gives it, for every cell of a parsed
    study (an ``ExperimentConfig``).

    A cell's key holds what determines its result (reference and resolved options), not its
    label, so a cell computed by another study (or under an earlier default, when the study
    now pins that value) is shared, and its stored label is the first study's. Reports must
    use the study's own labels."""
    labels: dict[str, str] = {}
    for c in study.cells():
        labels.setdefault(c.key, c.method.display)
    return labels


def study_rows(rows: list[dict], study, labels: dict[str, str] | None = None) -> list[dict]:
    """The rows of a study's cells, each labelled as *this* study names its method
    (``labels``: :func:`study_labels`, computed when not given)."""
    labels = study_labels(study) if labels is None else labels
    return [{**r, "label": labels[r["key"]]} for r in rows if r["key"] in labels]


def write_report(results: str | os.PathLike, out: str | os.PathLike, *,
                 title: str | None = None, study=None) -> dict:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/``) into ``out``.

    Args:
        results: An experiment's results folder (or its ``results.sqlite``).
        out: The report folder.
        title: Page title (default: the study's or the experiments' names).
        study: An ``ExperimentConfig``: report only its cells (a results folder can hold
            several studies that share cells); missing cells are counted in the report.

    Returns:
        ``{"html": Path, "markdown": Path, "figures": [Path], "tables": int, "rows": int,
        "missing": int, "compute_seconds": {...}}``.

    Raises:
        ResultsStoreError: no results table at ``results``.
        MedUnlearnError: the table has no (matching) rows yet.
    """
    from medunlearn.errors import MedUnlearnError

    out = Path(out)
    with ResultsStore(results, create=False) as store:
        rows = store.rows()
        failures = store.failures()
    missing = 0
    if study is not None:
        labels = study_labels(study)  # resolves every cell's options once
        keys = set(labels)
        rows = study_rows(rows, study, labels)
        failures = [f for f in failures if f.get("key") in keys]
        missing = len(keys) - len(rows) - len({f.get("key") for f in failures})
        if not rows:
            raise MedUnlearnError(
                f"None of the {len(keys)} cells of study '{study.name}' is in {results} yet; "
                f"run 'medunlearn experiment {study.source or 'STUDY'} --out {results}' first.")
    if not rows:
        raise MedUnlearnError(f"The results table in {results} has no finished cells yet; run "
                              "'medunlearn experiment' first (or wait for it to finish a cell).")
    names = [study.name] if study is not None else sorted({r["experiment"] for r in rows})
    title = title or f"Unlearning experiment: {', '.join(names)}"
    seeds = sorted({r["seed"] for r in rows})
    cost = compute_time(rows)
    meta = (f"{len(rows)} finished cells, {len({r['label'] for r in rows})} methods, "
            f"seeds {', '.join(map(str, seeds))}; source {Path(results)}."
            + (f" {study.description}" if study is not None and study.description else "")
            + (f" {missing} cell(s) of the study are not in the results yet."
               if missing else "")
            + (f" {len(failures)} cell(s) failed and are missing (rerun the experiment)."
               if failures else "")
            + f" Compute time on the machine that ran it: {cost['total'] / 60:.1f} min "
            f"(original models {cost['originals'] / 60:.1f}, retrained references "
            f"{cost['references'] / 60:.1f}, unlearning + evaluation cells "
            f"{cost['cells'] / 60:.1f}).")
    tables = build_tables(rows)
    figs = make_figures(rows, out / "figures")
    md = atomic_write_text(out / "report.md", _markdown(title, tables, figs, out, meta, rows))
    page = atomic_write_text(out / "report.html", _html(title, tables, figs, meta, rows))
    return {"html": page, "markdown": md, "figures": [p for _, p in figs],
            "tables": len(tables), "rows": len(rows), "missing": missing,
            "compute_seconds": cost}
