"""Benchmark: unlearning time in float32 against bf16 autocast, and against retraining.

Runs every gradient-based method (and ``retrain``) on one PneumoniaMNIST model and one random
forget set twice: once with the recipe's precision forced to ``fp32`` and once with ``auto``
(bf16 autocast + channels-last where the CPU computes bf16 natively, as ``medunlearn train``
does). The two runs of a method are measured back to back, in alternating order, so drift on a
shared machine hits both. Reports wall seconds, the bf16/fp32 speedup, each method's speedup
against retraining *in the same precision*, and test / forget accuracy to show the precision
does not change what the method does. Replaces the ``unlearn`` section of BENCHMARKS.md.

Usage::

    .venv/bin/python bench/bench_unlearn.py                  # trains a model first (cached)
    .venv/bin/python bench/bench_unlearn.py --model runs/pneu --forget random:0.2
    .venv/bin/python bench/bench_unlearn.py --quick          # tiny smoke run, ~1 minute
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _report import command_line, model_parser, publish, stamp, work_and_model  # noqa: E402

METHODS = ("retrain", "finetune", "random-label", "salun", "salun-cra", "gradient-ascent",
           "neggrad-plus", "l1-sparse", "scrub", "boundary-shrink")


def measure(model_dir: Path, methods: list[str], *, forget: str, seed: int,
            data_root: str | None) -> tuple[list[dict], str]:
    from medunlearn.api import unlearn
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.forget_set import select_forget
    from medunlearn.methods.base import resolve_method
    from medunlearn.runs.unlearn import model_config, train_config
    from medunlearn.training import evaluate_split as split_eval
    from medunlearn.training import resolve_precision

    run, dataset = load_run_and_data(model_dir, data_root=data_root)
    fs = select_forget(dataset, forget=forget, seed=seed)
    native = resolve_precision("auto")
    rows = []
    for i, name in enumerate(methods):
        order = ("fp32", "auto") if i % 2 == 0 else ("auto", "fp32")
        row = {"method": name}
        for precision in order:
            recipe = dataclasses.replace(train_config(run), precision=precision)
            result = unlearn(run.model, dataset, forget=fs, seed=seed, device=None,
                             method=resolve_method(name, dataset=dataset.name),
                             train_config=recipe, model_factory=run.config["model"],
                             model_config=model_config(run))
            model, cost = result.model, result.record
            tag = "fp32" if precision == "fp32" else "auto"
            row[f"{tag}_seconds"] = cost["unlearn_seconds"]
            row[f"{tag}_test"] = split_eval(model, dataset.test)["accuracy"]
            row[f"{tag}_forget"] = split_eval(model, dataset.train, fs.forget)["accuracy"]
            print(f"{name:16s} {precision:5s} {cost['unlearn_seconds']:7.2f} s  test "
                  f"{row[f'{tag}_test']:.3f}  forget {row[f'{tag}_forget']:.3f}", file=sys.stderr)
        rows.append(row)
    return rows, native


def render(rows: list[dict], *, native: str, model: Path, forget: str, quick: bool) -> str:
    ref = next((r for r in rows if r["method"] == "retrain"), None)
    lines = [
        "## Unlearning time: float32 against bf16 autocast (`bench/bench_unlearn.py`)",
        "",
        stamp(command_line()).rstrip("\n")
        + ("\n- **--quick smoke run, not a measurement**" if quick else ""),
        f"- model: `{model}`; forget set `{forget}`; `auto` precision resolves to **{native}** "
        "on this CPU",
        "",
        "| method | fp32 s | auto s | auto speedup | vs retrain (fp32) | vs retrain (auto) "
        "| test acc fp32 / auto | forget acc fp32 / auto |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        vs = ["-", "-"]
        if ref and r is not ref:
            vs = [f"{ref[f'{t}_seconds'] / r[f'{t}_seconds']:.1f}x" for t in ("fp32", "auto")]
        lines.append(
            f"| {r['method']} | {r['fp32_seconds']:.2f} | {r['auto_seconds']:.2f} | "
            f"{r['fp32_seconds'] / r['auto_seconds']:.2f}x | {vs[0]} | {vs[1]} | "
            f"{r['fp32_test']:.3f} / {r['auto_test']:.3f} | "
            f"{r['fp32_forget']:.3f} / {r['auto_forget']:.3f} |")
    lines += ["", "Seconds are the method's wall time (`execute`: the update itself, no "
              "evaluation). `auto` is what `medunlearn unlearn` uses; `vs retrain` divides "
              "retraining time by the method's time in the same precision."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = model_parser(__doc__, "unlearn")
    p.add_argument("--forget", default="random:0.2", help="Forget spec (default random:0.2).")
    p.add_argument("--seed", type=int, default=0, help="Seeds the forget set and the methods.")
    p.add_argument("--methods", default=",".join(METHODS),
                   help="Comma-separated methods (default: the gradient-based ones + retrain).")
    args = p.parse_args(argv)
    work, model = work_and_model(args, "unlearn")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    rows, native = measure(model, methods, forget=args.forget, seed=args.seed,
                           data_root=args.data_root)
    publish("unlearn", render(rows, native=native, model=model, forget=args.forget,
                              quick=args.quick), args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
