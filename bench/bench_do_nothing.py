"""Benchmark: how far each published default moves from the untouched original (issue 27).

For one original and its retrained reference (a ``retrain`` run folder), every method runs once
at its published default (``defaults/methods.toml`` for the dataset; ``newton`` also with the
registry's head-only scope) through ``medunlearn.runs.tune_method`` with a one-point grid, so
each row is measured exactly as ``tune`` measures a grid point:

* ``score``: the tuning criterion (closeness to the reference on validation + forget data;
  lower is better), beside the untouched original's own score (the do-nothing row);
* ``moved``: the mean shift of the logit-scaled true-class confidence from the original on the
  forget set, as a share of the reference's own shift (0 = the original's outputs; retraining
  = 1 by definition);
* agreement of predictions (validation + forget) with the original and with the reference;
* whether ``tune``'s do-nothing rule (``defaults/tuning.toml [do_nothing] min_move``) would
  reject the point.

Usage::

    .venv/bin/python bench/bench_do_nothing.py --original RUN --reference RETRAIN_RUN \\
        [--methods finetune,ssd] [--section do_nothing_pneumoniamnist] [--benchmarks FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from _report import command_line, stamp, write_section  # noqa: E402

NEWTON_HEAD = "newton (head, registry)"


def measure(original: Path, reference: Path, method: str, options: dict | None) -> dict:
    """One method at its published default, as ``tune`` scores a grid point."""
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.methods.base import config_dict, resolve_method
    from medunlearn.runs import tune_method
    from medunlearn.tuning import default_grid

    cfg = json.loads((reference / "config.json").read_text())
    spec, seed = cfg["forget"]["spec"], int(cfg["seed"])
    _, data = load_run_and_data(original)
    resolved = config_dict(resolve_method(method, dataset=data.name, options=options))
    keys = list(default_grid(method)) or list(resolved)
    grid = {keys[0]: [resolved[keys[0]]]} if keys else {}
    res = tune_method(original, method=method, forget=spec, reference=reference, seed=seed,
                      grid=grid, options=options)
    row = res["grid"][0]
    return {"options": {k: v for k, v in resolved.items() if k != "seed_offset"},
            "score": row["score"], "do_nothing": res["do_nothing"]["score"],
            "moved": row["moved"], "agreement_original": row["agreement_original"],
            "agreement_reference": row["agreement"], "rejected": row["rejected"],
            "seconds": row["seconds"], "min_move": res["min_move"]}


def table(rows: dict[str, dict]) -> str:
    lines = ["| method (published default) | score | moved | agreement with original | "
             "agreement with retraining | do-nothing rule |", "|---|---|---|---|---|---|"]
    first = next(iter(rows.values()))
    lines.append(f"| original (no unlearning) | {first['do_nothing']:.4f} | 0.00 | 1.000 | "
                 f"- | rejected |")
    for name, r in rows.items():
        lines.append(f"| {name} | {r['score']:.4f} | {r['moved']:.2f} | "
                     f"{r['agreement_original']:.3f} | {r['agreement_reference']:.3f} | "
                     f"{'rejected' if r['rejected'] else 'kept'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from medunlearn.methods import EXACT_METHODS, method_names

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--original", type=Path, required=True, help="The original run folder.")
    p.add_argument("--reference", type=Path, required=True,
                   help="A 'retrain' run folder of the original (its forget set is used).")
    p.add_argument("--methods", default="", help="Comma-separated (default: every approximate "
                   "method, plus newton with the registry's head scope).")
    p.add_argument("--section", default="do_nothing", help="BENCHMARKS.md section name.")
    p.add_argument("--benchmarks", type=Path, default=None, help="File to write the section "
                   "to (default: BENCHMARKS.md).")
    p.add_argument("--out", type=Path, default=None, help="Also write the rows as JSON here.")
    args = p.parse_args(argv)
    from medunlearn.methods.base import get_method_class
    from medunlearn.registry.steps import REQUEST_OPTIONS

    names = [m for m in args.methods.split(",") if m] or [
        m for m in method_names() if m not in EXACT_METHODS  # fold-based ones need RUN/kfold
        and (not getattr(get_method_class(m), "needs_folds", False)
             or (args.original / "kfold").is_dir())] + [NEWTON_HEAD]
    rows = {}
    t0 = time.perf_counter()
    for name in names:
        method, options = (("newton", REQUEST_OPTIONS["newton"]) if name == NEWTON_HEAD
                           else (name, None))
        rows[name] = measure(args.original, args.reference, method, options)
        r = rows[name]
        print(f"{name}: score {r['score']:.4f} (original {r['do_nothing']:.4f}) moved "
              f"{r['moved']:.2f} agree orig {r['agreement_original']:.3f} ref "
              f"{r['agreement_reference']:.3f}{' REJECTED' if r['rejected'] else ''}",
              file=sys.stderr)
    rejected = [n for n, r in rows.items() if r["rejected"]]
    below = [n for n, r in rows.items() if r["score"] >= r["do_nothing"]]
    cfg = json.loads((args.original / "config.json").read_text())
    name = (cfg.get("dataset") or {}).get("dataset") or cfg["data"].get("dataset")
    body = (f"## Do-nothing row of the published defaults: {name} "
            f"(issue 27)\n\n{stamp(command_line())}"
            f"- CPU with native bf16; original seed {cfg['seed']}; reference "
            f"`{args.reference.name}`; forget set of the reference; "
            f"{time.perf_counter() - t0:.0f} s in all.\n\n"
            "`moved`: mean |change of the logit-scaled true-class confidence| from the original "
            "on the forget set, over the reference's own (retraining = 1). `score`: the tuning "
            "criterion against the reference (lower = closer). The do-nothing rule of `tune` "
            f"rejects a point with moved < {next(iter(rows.values()))['min_move']:g}.\n\n"
            f"{table(rows)}\n\n"
            f"- Rejected as doing nothing: {', '.join(rejected) or 'none'}.\n"
            f"- Not closer to retraining than the untouched original (score >= its "
            f"{next(iter(rows.values()))['do_nothing']:.4f}): {', '.join(below) or 'none'}.\n")
    write_section(args.section, body, args.benchmarks or REPO / "BENCHMARKS.md")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1, default=str))
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
