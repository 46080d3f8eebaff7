"""An experiment's results as tables: one per dataset, augmentation and forget selection,
one row per method, aggregated over seeds (mean ± std), with the best value of each column
marked by the metric's direction (closest to the retrained reference for UA, RA, TA,
MIA-efficacy and attack AUC; lower for FNR, FPR, Global Risk, gap and time; higher for AUC and
speedup, compared at the displayed precision so that ties are all marked), the do-nothing row
("original (no unlearning)") and the methods no better than it, the glossary of the column
names, plus per-subgroup tables and the selection of a study's rows."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from medunlearn.evaluation.directions import DIRECTIONS, HIGHER
from medunlearn.evaluation.directions import REFERENCE as CLOSEST
from medunlearn.experiments.grid import ORIGINAL_LABEL, ORIGINAL_METHOD


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

#: What the short names of the tables and the CLI summary mean: the one text both print.
GLOSSARY = (
    ("UA", "unlearning accuracy: the error rate on the forgotten images (1 - accuracy on them); "
           "best when closest to the retrained model's, not when highest"),
    ("RA", "retain accuracy: accuracy on the training images that were kept"),
    ("TA", "test accuracy: accuracy on the held-out test images"),
    ("AUC", "test AUC: how well the model ranks diseased above healthy test images (0.5 = "
            "chance)"),
    ("MIA-efficacy", "share of the forgotten images that a membership-inference attack (an SVC "
                     "on the model's confidence) calls 'not trained on'; best when closest to "
                     "the retrained model's"),
    ("attack AUC", "AUC of a loss-threshold attack telling forgotten from test images (0.5 = "
                   "cannot tell); best when closest to the retrained model's"),
    ("gap", "average gap: mean absolute difference from the retrained model over UA, RA, TA "
            "and MIA-efficacy, in percentage points (pp); lower is better"),
    ("FNR / FPR", "false-negative rate (missed disease) and false-positive rate (false alarm) "
                  "on the test images"),
    ("Global Risk", "(5 x missed diseases + 1 x false alarms) / test images, by default: a "
                    "missed disease costs five false alarms"),
    ("ΔFNR", "FNR minus the original model's, in pp (above 0: more disease missed)"),
    ("time / speedup", "unlearning wall time in seconds, and retraining time divided by it"),
    ("safety", "the safety gate's verdict (pass, or fails in k of n seeds)"),
    (ORIGINAL_LABEL, "the original model itself, scored like a method: what doing nothing "
                     "scores"),
    ("retrain", "the original retrained from scratch without the forgotten images: the "
                "reference every method is compared with"),
)


def glossary_lines() -> list[str]:
    """The glossary as ``term: meaning`` lines (the report and the CLI summary print these)."""
    return [f"{term}: {meaning}." for term, meaning in GLOSSARY]


def columns_for(rows: list[dict]) -> tuple[Column, ...]:
    """The table columns of these rows: the fixed ones, plus forgetting quality when present."""
    has_fq = any((r.get("metrics") or {}).get(FQ_PATH + "forgetting_quality") is not None
                 for r in rows)
    return COLUMNS + ((FQ_COLUMN,) if has_fq else ())


def _fq_value(r: dict) -> float | None:
    v = (r.get("metrics") or {}).get(FQ_PATH + "forgetting_quality")
    return float(v) if isinstance(v, (int, float)) else None


REFERENCE_METHOD = "retrain"
DIFFICULTY = ("easy", "medium", "hard")
#: A model whose test AUC is within this of 0.5 is at chance: it has not learned the task.
CHANCE_AUC_MARGIN = 0.05
NO_BETTER = "no better than doing nothing"


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


def method_order(labels: list[str], methods: dict[str, str]) -> list[str]:
    from medunlearn.methods import CANONICAL_ORDER

    rank = {m: i for i, m in enumerate(CANONICAL_ORDER)}
    rank[ORIGINAL_METHOD] = rank.get(REFERENCE_METHOD, -1) + 0.5  # right after the reference
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
    no_better: tuple[str, ...] = ()  # method labels whose gap is no better than doing nothing
    notes: tuple[str, ...] = ()  # what the do-nothing row and models at chance say, in words


def difficulty_bias(row: dict) -> dict[str, float]:
    """Forget accuracy minus the reference's per difficulty tercile, in percentage points."""
    m = row.get("metrics") or {}
    out = {}
    for d in DIFFICULTY:
        a = m.get(f"bias.difficulty.forget.model.{d}.accuracy")
        r = m.get(f"bias.difficulty.forget.reference.{d}.accuracy")
        if isinstance(a, (int, float)) and isinstance(r, (int, float)):
            out[d] = 100.0 * (a - r)
    return out


def dataset_name(r: dict) -> str:
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


def at_chance(auc: float | None) -> bool:
    """A test AUC within :data:`CHANCE_AUC_MARGIN` of 0.5: the model ranks no better than a
    coin."""
    return isinstance(auc, (int, float)) and math.isfinite(auc) \
        and abs(auc - 0.5) <= CHANCE_AUC_MARGIN


def chance_reason(auc: float | None) -> str | None:
    if not at_chance(auc):
        return None
    return (f"is at chance on the test set (test AUC {auc:.2f}, within {CHANCE_AUC_MARGIN:g} of "
            "0.5): it has not learned the task")


def degenerate_models(rows: list[dict]) -> dict[tuple, list[str]]:
    """Table setting -> one line per degenerate original or reference model behind it
    (:func:`medunlearn.evaluation.utility.degenerate_reason`, or a test AUC at chance), once
    per model and seed."""
    from medunlearn.evaluation.utility import degenerate_reason

    out: dict[tuple, list[str]] = defaultdict(list)
    seen: set[tuple] = set()
    for r in rows:
        m = r.get("metrics") or {}
        setting = (dataset_name(r), r["augment"], r["forget"])
        for role, folder in (("original", r.get("original_dir")),
                             ("reference", r.get("reference_dir"))):
            key = (setting, role, folder or r["seed"])
            if key in seen:
                continue
            seen.add(key)
            why = "; ".join(w for w in (
                degenerate_reason(m.get(f"models.{role}.utility.balanced_accuracy"),
                                  _majority_share(m, role)),
                chance_reason(m.get(f"models.{role}.utility.test_auc"))) if w)
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
        groups[(dataset_name(r), r["augment"], r["forget_ratio"] is None, r["forget_ratio"] or 0,
                r["forget"])].append(r)
    tables = []
    for (ds, aug, _, _, forget), grp in sorted(groups.items(), key=lambda kv: kv[0]):
        by_label: dict[str, list[dict]] = defaultdict(list)
        for r in grp:
            by_label[r["label"]].append(r)
        methods = {lab: rs[0]["method"] for lab, rs in by_label.items()}
        out_rows = []
        for lab in method_order(list(by_label), methods):
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
        no_better, notes = do_nothing_notes(out_rows)
        # methods are not ranked against a degenerate original or reference
        tables.append(Table(title=f"{ds}, augmentation {aug}, forget {forget}", dataset=ds,
                            augment=aug, forget=forget, rows=out_rows,
                            best={} if flagged else _best(out_rows, cols), degenerate=flagged,
                            columns=cols, no_better=no_better, notes=notes))
    return tables


def _is_baseline(r: dict) -> bool:
    """The reference row and the do-nothing row: shown, never ranked."""
    return (r["method"] == REFERENCE_METHOD and r["label"] == REFERENCE_METHOD) \
        or r["method"] == ORIGINAL_METHOD


def do_nothing_notes(rows: list[dict]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What the do-nothing row says about a table's methods, in words.

    A method is *no better than doing nothing* when its mean average gap to the reference is
    not below the untouched original's by more than the original's spread over seeds (one
    seed: by more than the displayed 0.01 pp). Also said: a gate that passes the untouched
    original (it then cannot tell forgetting from doing nothing), and a method at chance.

    Returns:
        ``(labels no better than doing nothing, notes)``.
    """
    notes = []
    for r in rows:
        auc = r["stats"].get("test_auc", (None,))[0]
        if at_chance(auc) and r["method"] != ORIGINAL_METHOD:
            notes.append(f"{r['label']} {chance_reason(auc)} (mean over seeds).")
    base = next((r for r in rows if r["method"] == ORIGINAL_METHOD), None)
    if base is None:
        return (), tuple(notes)
    gap, spread = base["stats"]["average_gap_pp"]
    passed = base["n"] - base["gate_failed"]
    if passed:
        notes.append(f"The safety gate passed the untouched original ('{ORIGINAL_LABEL}') in "
                     f"{passed} of {base['n']} seed(s): in those seeds a passed gate does not "
                     "show that anything was forgotten.")
    if gap is None:
        return (), tuple(notes)
    margin = max(spread or 0.0, 0.005)
    same = tuple(r["label"] for r in rows if not _is_baseline(r)
                 and r["stats"]["average_gap_pp"][0] is not None
                 and r["stats"]["average_gap_pp"][0] > gap - margin)
    if same:
        notes.append(f"{NO_BETTER.capitalize()} by the average gap (not more than "
                     f"{margin:.2f} pp below the untouched original's {gap:.2f} pp): "
                     f"{', '.join(same)}. By this metric they are no closer to retraining than "
                     "the untouched original.")
    return same, tuple(notes)


def shown(value: float, c: Column) -> float:
    """A value as the table displays it (scaled and rounded), so that equal-looking values
    compare equal."""
    return float(f"{value * c.scale:.{c.digits}f}")


def _best(rows: list[dict], cols: tuple[Column, ...] = COLUMNS) -> dict[str, set[str]]:
    """Column -> the labels marked best: every method whose displayed value ties for best (the
    reference and do-nothing rows are not ranked); nothing when every method ties."""
    ref = next((r for r in rows if r["method"] == REFERENCE_METHOD and r["label"] ==
                REFERENCE_METHOD), None)
    best: dict[str, set[str]] = {}
    for c in cols:
        cands = [(r["label"], shown(r["stats"][c.field][0], c)) for r in rows
                 if not _is_baseline(r) and r["stats"][c.field][0] is not None]
        if not cands:
            continue
        if c.direction == CLOSEST:
            target = ref["stats"][c.field][0] if ref else (0.5 if "auc" in c.field else None)
            if target is None:
                continue
            target = shown(target, c)
            # distances of displayed values, rounded again: 0.1 + 0.2 must tie with 0.3
            score = {lab: round(abs(v - target), c.digits + 2) for lab, v in cands}
        elif c.direction == HIGHER:
            score = {lab: -v for lab, v in cands}
        else:
            score = dict(cands)
        top = min(score.values())
        marked = {lab for lab, s in score.items() if s == top}
        if len(marked) < len(score) or len(score) == 1:  # a tie of every method marks nothing
            best[c.field] = marked
    return best


def format_parts(mean: float | None, std: float | None, c: Column, n: int) -> tuple[str, str]:
    """``("29.0", "± 1.0")``; no spread for a single seed (a standard deviation of one value
    says nothing) and none for a missing value."""
    if mean is None:
        return "–", ""
    m = f"{mean * c.scale:.{c.digits}f}"
    if n < 2 or std is None:
        return m, ""
    return m, f"± {std * c.scale:.{c.digits}f}"


def format_stat(mean: float | None, std: float | None, c: Column, n: int = 2) -> str:
    return " ".join(p for p in format_parts(mean, std, c, n) if p)


def group_by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    g: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        g[tuple(r[k] for k in keys)].append(r)
    return g



# -- subgroups (metadata columns such as sex and age band) ---------------------------------------
SUBGROUP_PREFIX = "bias.subgroups."
SUBGROUP_STATS = (("accuracy", "acc"), ("fnr", "FNR"), ("fpr", "FPR"), ("auc", "AUC"))


def subgroup_levels(rows: list[dict]) -> dict[str, list[str]]:
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


def subgroup_stat(col: str, role: str, level: str, stat: str) -> Callable[[dict], float | None]:
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
    # the do-nothing row is the "original" line below
    labels = method_order(sorted({r["label"] for r in rows if r["method"] != ORIGINAL_METHOD}),
                          {r["label"]: r["method"] for r in rows})
    for (ds, aug, forget), srows in sorted(group_by([r | {"_ds": dataset_name(r)} for r in rows],
                                               "_ds", "augment", "forget").items()):
        for col, levels in subgroup_levels(srows).items():
            lines = []
            for lab, role in [("original", "original")] + [(x, "model") for x in labels]:
                rs = srows if role == "original" else [r for r in srows if r["label"] == lab]
                if role == "original":  # the same original model in every cell of a seed
                    rs = list({r["seed"]: r for r in srows}.values())
                if not rs:
                    continue
                cells = {(lv, st): mean_std([subgroup_stat(col, role, lv, st)(r) for r in rs])
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


def subgroup_row(line: dict, levels: list[str]) -> list[str]:
    cells = [line["label"], str(line["n"])]
    for lv in levels:
        c = line["cells"]
        cells.append(" / ".join([_ms(c[(lv, "accuracy")], 100), _ms(c[(lv, "fnr")], 100),
                                 _ms(c[(lv, "fpr")], 100), _ms(c[(lv, "auc")], 1, 3)]))
    cells += [_ms(line["spread"], 100), _ms(line["change"], 1)]
    return cells


def subgroup_header(t: dict) -> list[str]:
    return (["model", "seeds"] + [f"{t['column']} = {lv}: acc / FNR / FPR (%) / AUC"
                                  for lv in t["levels"]]
            + ["accuracy gap (pp)", "gap − original's (pp)"])


SUBGROUP_NOTE = ("Per subgroup of the test set: accuracy, false-negative and false-positive "
                 "rates (%) and AUC; the accuracy gap is the largest minus the smallest group "
                 "accuracy; its change against the original model is above 0 when unlearning "
                 "widened the gap. Mean ± std over seeds.")


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
    for c in study.baselines() + study.cells():
        labels.setdefault(c.key, c.method.display)
    return labels


def study_rows(rows: list[dict], study, labels: dict[str, str] | None = None) -> list[dict]:
    """The rows of a study's cells, each labelled as *this* study names its method
    (``labels``: :func:`study_labels`, computed when not given)."""
    labels = study_labels(study) if labels is None else labels
    return [{**r, "label": labels[r["key"]]} for r in rows if r["key"] in labels]
