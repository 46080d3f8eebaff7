"""Benchmark: the fidelity/time frontier of every method against retraining (issue 14).

Runs (or resumes) one study grid: PneumoniaMNIST (binary), random forgetting of 10% and 20%,
every method with its published defaults (defaults/methods.toml), seeds 0-2, through
``medunlearn experiment`` into ``--results`` (default results/studies, the folder the three
studies share, so their common cells are computed once). Each cell's wall time is divided by
the retraining time of the same forget set and seed, measured in the same run and precision.

Writes the ``frontier`` section of BENCHMARKS.md: per forget fraction and method, average gap
(pp) and time / retraining (mean +- std over seeds), Global Risk and FNR against the retrained
model's, and safety-gate passes; then the two targets of issue 14 checked against the numbers,
and a figure (average gap against time / retraining, log x) in --figures.

The grid also holds one *independent retraining* per forget set and seed (``retrain`` with
``seed_offset`` 1000, row "retrain, other seed"): its average gap to the reference is the seed
noise of the metric itself, the floor below which no method can be told apart from retraining.
``--no-floor`` leaves it out.

Every grid also scores the untouched original like a method (row "original (no unlearning)",
added by the runner with no unlearning job): its average gap is what doing nothing scores, and
a method whose gap is not below it is reported as no better than doing nothing.

Usage::

    .venv/bin/python bench/bench_frontier.py                       # full grid (~1 h, 2 cores)
    .venv/bin/python bench/bench_frontier.py --quick               # tiny smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from _report import command_line, stamp, write_section  # noqa: E402

from medunlearn.experiments.grid import ORIGINAL_LABEL  # noqa: E402
from medunlearn.methods import method_names  # noqa: E402

METHODS = tuple(m for m in method_names() if m != "sisa")  # sisa: sharded models only
FORGET = ("random:0.1", "random:0.2")
SEEDS = (0, 1, 2)
# issue 14's targets
GAP_PP, TIME_RATIO, GR_SLACK = 1.0, 0.05, 0.01
CRA_GAP_PP, CRA_TIME_RATIO, CRA_FNR_SLACK = 1.5, 0.10, 0.01
FLOOR = "retrain, other seed"  # label of the independent retraining (noise floor)
FLOOR_SEED_OFFSET = 1000


def study(forget: tuple[str, ...], seeds: tuple[int, ...], methods: tuple[str, ...],
          quick: bool, floor: bool = True) -> dict:
    entries: list = list(methods)
    if floor:
        entries.append({"name": "retrain", "options": {"seed_offset": FLOOR_SEED_OFFSET},
                        "label": FLOOR})
    raw = {"name": "frontier", "description": "Fidelity/time frontier (bench_frontier.py).",
           "datasets": [{"dataset": "pneumoniamnist", "view": "binary"}],
           "forget": list(forget), "methods": entries, "augment": ["basic"],
           "seeds": list(seeds), "model": {"width": 16}}
    if quick:
        raw |= {"data": {"train_limit": 300, "eval_limit": 150}, "model": {"width": 8},
                "train": {"epochs": 2}}
    return raw


def _ms(values: list[float]) -> tuple[float, float]:
    v = [x for x in values if x is not None and math.isfinite(x)]
    if not v:
        return math.nan, math.nan
    return statistics.fmean(v), (statistics.stdev(v) if len(v) > 1 else 0.0)


def _forgets(items: list[dict]) -> list[str]:
    """The forget specs of rows or summary entries, smallest fraction first."""
    return sorted({x["forget"] for x in items}, key=lambda f: float(f.split(":")[1]))


def _entry(summary: list[dict], forget: str, method: str) -> dict | None:
    return next((s for s in summary if s["forget"] == forget and s["method"] == method), None)


def fold_seconds(row: dict) -> float | None:
    """The one-time training time of the K fold models a cell's method read (``oracle-match``;
    the grid builds them in ``ORIGINAL/kfold``), else None. Every member but one trained on each
    forgotten image, so a deployment rebuilds them after every request: their time belongs to
    the request's cost."""
    from medunlearn.methods.base import get_method_class
    from medunlearn.runs.shadows import training_seconds

    if row["method"] == ORIGINAL_LABEL or row["method"] not in METHODS \
            or not get_method_class(row["method"]).needs_folds:
        return None
    return sum(training_seconds(Path(row["original_dir"]) / "kfold")) or None


def summarize(rows: list[dict]) -> list[dict]:
    """One entry per (forget, method): mean/std over seeds and the per-seed checks. A method
    that reads fold models is timed with their rebuild (``fold_ratio``, see
    :func:`fold_seconds`)."""
    ref = {(r["forget"], r["seed"]): r for r in rows if r["label"] == "retrain"}
    out = []
    for forget in _forgets(rows):
        for method in (*METHODS, ORIGINAL_LABEL, FLOOR):
            cells = [r for r in rows if r["forget"] == forget and r["label"] == method]
            if not cells:
                continue
            gaps = [r["average_gap_pp"] for r in cells]
            # doing nothing takes no time (its unlearn_seconds is None: not a 0 to divide by)
            ratios = [0.0 if method == ORIGINAL_LABEL else
                      r["unlearn_seconds"] / r["retrain_seconds"] if r.get("retrain_seconds")
                      else math.nan for r in cells]
            folds = [fold_seconds(r) for r in cells]
            fold_ratios = [f / r["retrain_seconds"] for f, r in zip(folds, cells, strict=True)
                           if f is not None and r.get("retrain_seconds")]
            d_gr = [r["global_risk"] - ref[r["forget"], r["seed"]]["global_risk"] for r in cells]
            d_fnr = [r["fnr"] - ref[r["forget"], r["seed"]]["fnr"] for r in cells]
            g, gs = _ms(gaps)
            t, ts = _ms(ratios)
            out.append({
                "forget": forget, "method": method, "n": len(cells), "gap": g, "gap_std": gs,
                "ratio": t, "ratio_std": ts,
                "fold_ratio": _ms(fold_ratios)[0] if fold_ratios else None,
                "seconds": _ms([r["unlearn_seconds"] or 0.0
                                                             for r in cells])[0],
                "retrain_seconds": _ms([r["retrain_seconds"] for r in cells])[0],
                "d_gr": _ms(d_gr)[0], "d_gr_max": max(d_gr), "d_fnr": _ms(d_fnr)[0],
                "d_fnr_max": max(d_fnr), "gate": sum(bool(r["gate_passed"]) for r in cells),
                "reasons": sorted({x.split(":")[0] for r in cells for x in r["gate_reasons"]}),
            })
    return out


def is_retraining(s: dict) -> bool:
    return s["method"] in ("retrain", FLOOR)


def is_baseline(s: dict) -> bool:
    """Retraining and doing nothing: rows to compare with, never candidates for a target."""
    return is_retraining(s) or s["method"] == ORIGINAL_LABEL


def no_better_than_nothing(summary: list[dict], forget: str) -> list[str]:
    """The methods whose mean gap is not below the untouched original's by more than its
    spread over seeds (at least 0.01 pp)."""
    base = _entry(summary, forget, ORIGINAL_LABEL)
    if base is None or not math.isfinite(base["gap"]):
        return []
    margin = max(base["gap_std"], 0.005)
    return [s["method"] for s in summary if s["forget"] == forget and not is_baseline(s)
            and s["gap"] > base["gap"] - margin]


def request_ratio(s: dict) -> float:
    """Time / retraining of a request: the method's, plus its fold models' rebuild."""
    return s["ratio"] + (s.get("fold_ratio") or 0.0)


def meets_main(s: dict) -> bool:
    return (not is_baseline(s) and s["gap"] <= GAP_PP and s["d_gr_max"] <= GR_SLACK
            and s["gate"] == s["n"] and request_ratio(s) <= TIME_RATIO)


def meets_cra(s: dict) -> bool:
    return (s["gap"] <= CRA_GAP_PP and request_ratio(s) <= CRA_TIME_RATIO
            and s["d_fnr_max"] <= CRA_FNR_SLACK)


def figure(summary: list[dict], path: Path, y_cap: float = 6.0) -> Path:
    """Average gap against time / retraining per forget fraction; methods beyond ``y_cap`` pp
    are drawn as a triangle on the top edge with their value, so one collapse does not squash
    the rest."""
    from medunlearn.plots import _pyplot, readable_log_axis, save_figure

    plt = _pyplot()
    forgets = _forgets(summary)
    fig, axes = plt.subplots(1, len(forgets), figsize=(6.2 * len(forgets), 5.0), squeeze=False)
    cmap = plt.get_cmap("tab20")
    for ax, forget in zip(axes[0], forgets, strict=True):
        floor = _entry(summary, forget, FLOOR)
        if floor is not None:  # the seed noise of retraining itself, as a band
            ax.axhspan(max(floor["gap"] - floor["gap_std"], 0), floor["gap"] + floor["gap_std"],
                       color="grey", alpha=0.15, label="independent retraining (mean ± std)")
            ax.axhline(floor["gap"], color="grey", lw=1.2)
        base = _entry(summary, forget, ORIGINAL_LABEL)
        if base is not None and base["gap"] <= y_cap:  # doing nothing takes no time: a line
            ax.axhline(base["gap"], color="black", ls=":", lw=1.5,
                       label=f"{ORIGINAL_LABEL}: {base['gap']:.2f} pp")
        shown = [x for x in summary if x["forget"] == forget and not is_baseline(x)]
        top = min(y_cap, max([s["gap"] + s["gap_std"] for s in shown if s["gap"] <= y_cap]
                             + [GAP_PP] + ([base["gap"]] if base else [])) * 1.1)
        for i, s in enumerate(shown):
            color = cmap(i % 20)
            if s["gap"] > y_cap:  # off the scale: a marker on the top edge, value in the label
                ax.plot(request_ratio(s) * 100, top * 0.97, marker="^", ls="none", color=color,
                        label=f"{s['method']} ({s['gap']:.0f} pp, off scale)")
                continue
            ax.errorbar(request_ratio(s) * 100, s["gap"], xerr=s["ratio_std"] * 100,
                        yerr=s["gap_std"], fmt="o" if s["gate"] == s["n"] else "x",
                        color=color, capsize=3, label=s["method"])
        ax.axvline(TIME_RATIO * 100, color="grey", ls="--", lw=0.8)
        ax.axhline(GAP_PP, color="grey", ls="--", lw=0.8)
        ax.set_ylim(0, top)
        readable_log_axis(ax, "x")
        ax.set_xlabel("time / retraining (%, log)")
        ax.set_ylabel("average gap to retraining (pp)")
        ax.set_title(f"{forget}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", ncol=2)
    fig.suptitle("PneumoniaMNIST fidelity/time frontier, mean ± std over seeds "
                 "(o: safety gate passed in every seed, x: not; dashed: 1 pp and 5%)")
    fig.tight_layout()
    return save_figure(fig, path)


def _f(v: float, d: int = 2) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{d}f}"


def render(summary: list[dict], *, results: Path, seeds, wall: float, quick: bool,
           figure_path: Path | None) -> str:
    lines = ["## Fidelity/time frontier (`bench/bench_frontier.py`)", "",
             stamp(command_line()).rstrip("\n")
             + ("\n- **--quick smoke run (tiny model), not a measurement**" if quick else ""),
             f"- PneumoniaMNIST (binary), width-16 ResNet-18, published defaults "
             f"(src/medunlearn/defaults/methods.toml); seeds {', '.join(map(str, seeds))}; "
             f"results folder `{results}`; wall time of this run {wall / 60:.1f} min "
             "(cells already in the folder are reused, not retimed)", ""]
    for forget in _forgets(summary):
        ref = _entry(summary, forget, "retrain")
        rt = f"{ref['seconds']:.1f} s" if ref else "-"
        lines += [f"### {forget} (retraining {rt})", "",
                  "| method | avg gap pp (mean ± std) | time / retrain % (mean ± std) | time s "
                  "| ΔGlobal Risk vs retrain (max) | ΔFNR pp vs retrain (max) | gate passed "
                  "| gate failures |",
                  "|---|---|---|---|---|---|---|---|"]
        for s in (x for x in summary if x["forget"] == forget):
            lines.append(
                f"| {s['method']} | {_f(s['gap'])} ± {_f(s['gap_std'])} | "
                f"{_f(s['ratio'] * 100, 1)} ± {_f(s['ratio_std'] * 100, 1)}"
                + (f" (+ {_f(s['fold_ratio'] * 100, 0)}% fold models)" if s.get("fold_ratio")
                   else "") + " | "
                f"{_f(s['seconds'], 1)} | {_f(s['d_gr'], 3)} ({_f(s['d_gr_max'], 3)}) | "
                f"{_f(s['d_fnr'] * 100, 1)} ({_f(s['d_fnr_max'] * 100, 1)}) | "
                f"{s['gate']}/{s['n']} | {', '.join(s['reasons']) or '-'} |")
        main = [s["method"] for s in summary if s["forget"] == forget and meets_main(s)]
        floor = _entry(summary, forget, FLOOR)
        cra = _entry(summary, forget, "salun-cra")
        lines += ["", f"- Target 1 (avg gap <= {GAP_PP:g} pp, Global Risk <= retrain + "
                  f"{GR_SLACK:g} in every seed, gate passed in every seed, time <= "
                  f"{TIME_RATIO:.0%} of retraining): "
                  + (", ".join(f"**{m}**" for m in main) if main else "**no method**") + "."]
        if cra:
            lines.append(
                f"- Target 2 (SalUn-CRA avg gap <= {CRA_GAP_PP:g} pp at <= "
                f"{CRA_TIME_RATIO:.0%} of retraining, FNR <= retrain + {CRA_FNR_SLACK * 100:g} "
                f"pt in every seed): {'**met**' if meets_cra(cra) else '**missed**'} "
                f"({_f(cra['gap'])} pp at {_f(cra['ratio'] * 100, 1)}%, ΔFNR max "
                f"{_f(cra['d_fnr_max'] * 100, 1)} pt).")
        base = _entry(summary, forget, ORIGINAL_LABEL)
        if base:
            same = no_better_than_nothing(summary, forget)
            lines.append(
                f"- Doing nothing: the untouched original is {_f(base['gap'])} ± "
                f"{_f(base['gap_std'])} pp from the reference, and the safety gate passed it in "
                f"{base['gate']}/{base['n']} seeds"
                + (" (a passed gate there does not show that anything was forgotten)"
                   if base["gate"] else "")
                + ". No better than doing nothing by the average gap: "
                + (", ".join(same) if same else "none") + ".")
        if floor:
            within = [s["method"] for s in summary if s["forget"] == forget
                      and not is_baseline(s) and s["gap"] <= floor["gap"]
                      and s["gate"] == s["n"]]
            lines.append(
                f"- Noise floor: a second retraining with another seed is {_f(floor['gap'])} ± "
                f"{_f(floor['gap_std'])} pp from the reference. Methods at or below it (gate "
                "passed in every seed): "
                + (", ".join(f"{m}" for m in within) if within else "none") + ".")
        lines.append("")
    if any(s.get("fold_ratio") for s in summary):
        lines.append("A method that reads K fold models (`oracle-match`) is timed twice: the "
                     "request itself, and in brackets the rebuild of the fold models it needs "
                     "after every request (each member but one trained on every forgotten "
                     "image). The targets and the figure count both.")
        lines.append("")
    if figure_path is not None:
        lines.append(f"Figure: `{figure_path}` (average gap against time / retraining).")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=None,
                   help="Study results folder (default: results/studies; --quick: "
                        "runs/bench_frontier_quick).")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    p.add_argument("--forget", default=",".join(FORGET))
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--figures", type=Path, default=REPO / "docs" / "results" / "frontier",
                   help="Folder for frontier.png (default: docs/results/frontier).")
    p.add_argument("--quick", action="store_true", help="Tiny data and model (smoke test).")
    p.add_argument("--no-floor", action="store_true",
                   help="Leave out the independent retraining (the metric's noise floor).")
    p.add_argument("--benchmarks", type=Path, default=None,
                   help="Markdown file whose frontier section is replaced (default: "
                        "BENCHMARKS.md; --quick: RESULTS/BENCHMARKS.md).")
    args = p.parse_args(argv)
    import time

    from medunlearn.experiments import run_experiment
    from medunlearn.experiments.config import parse_experiment
    from medunlearn.experiments.store import DB_FILE, ResultsStore
    from medunlearn.experiments.tables import study_rows

    seeds = tuple(int(s) for s in args.seeds.split(","))
    forget = tuple(f.strip() for f in args.forget.split(","))
    methods = tuple(m.strip() for m in args.methods.split(","))
    if "retrain" not in methods:
        methods = ("retrain", *methods)
    results = args.results or REPO / ("runs/bench_frontier_quick" if args.quick
                                      else "results/studies")
    cfg = parse_experiment(study(forget, seeds, methods, args.quick, floor=not args.no_floor),
                           source="bench_frontier")
    t0 = time.perf_counter()
    summary_run = run_experiment(cfg, results, progress=True)
    wall = time.perf_counter() - t0
    if summary_run.failed:
        print(f"{len(summary_run.failed)} cells failed; see {results}/logs", file=sys.stderr)
    with ResultsStore(results / DB_FILE, create=False) as store:
        rows = study_rows(store.rows(), cfg)
    summary = summarize(rows)
    fig_dir = args.figures if not args.quick else results
    fig = figure(summary, fig_dir / "frontier.png")
    try:
        fig_shown = fig.relative_to(REPO)
    except ValueError:
        fig_shown = fig
    text = render(summary, results=results, seeds=seeds, wall=wall, quick=args.quick,
                  figure_path=fig_shown)
    target = args.benchmarks or ((results / "BENCHMARKS.md") if args.quick else None)
    if target is None:
        write_section("frontier", text)
    else:
        write_section("frontier", text, target)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
