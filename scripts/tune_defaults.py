"""Publish the method defaults: tune every method on every bundled dataset, then write
src/medunlearn/defaults/tuning.json (the record) and methods.toml (rendered from it).

The recipe and the search spaces are in src/medunlearn/defaults/tuning.toml. For each dataset
the original model and the retrained reference are trained with the tuning seed through
``medunlearn experiment`` (one ``retrain`` cell; resumable, into --work), then ``tune_method``
searches each method's grid, scoring only validation and forget predictions. A dataset whose
reference is degenerate (one class for >= 95% of validation images, or balanced accuracy < 0.6)
is skipped with the reason: tuning towards it would teach the methods to collapse. Methods the
recipe lists under ``also_forget`` are searched on those forget sets too (one more reference
each) and each grid point counts with its worst score (``tuning.worst_case``). Per-method
results are kept in --work, so an interrupted run resumes.

Usage (from the repository root, with ../shared beside it)::

    .venv/bin/python scripts/tune_defaults.py                    # everything (~1 h on 2 cores)
    .venv/bin/python scripts/tune_defaults.py --datasets pneumoniamnist --methods ssd,newton
    .venv/bin/python scripts/tune_defaults.py --render-only      # methods.toml from the record
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

DEFAULTS = REPO / "src" / "medunlearn" / "defaults"
FOLDS_K = 5  # fold models per original for methods that read them (oracle-match)


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--", "src"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def prepare(entry: dict, recipe: dict, forgets: list[str], work: Path, wanted: set[str] | None,
            ) -> tuple[str, Path, dict[str, Path]] | None:
    """Train (or reuse) the original and one reference per forget spec of one dataset; returns
    (flag, original folder, {forget spec: reference folder}), or None for a dataset not in
    ``wanted``."""
    from medunlearn.experiments import run_experiment
    from medunlearn.experiments.config import parse_experiment

    raw = {"name": "tuning", "datasets": [entry], "forget": forgets,
           "methods": ["retrain"], "seeds": [recipe["seed"]], "augment": ["basic"]}
    cfg = parse_experiment(raw, source="defaults/tuning.toml")
    if wanted is not None and cfg.datasets[0].defaults_flag not in wanted:
        return None
    out = work / "models"
    summary = run_experiment(cfg, out, progress=True)
    if getattr(summary, "failed", None):
        raise SystemExit(f"training the tuning models failed: {summary.failed}")
    originals, references, _ = cfg.plan()
    if len(references) != len(forgets):
        raise SystemExit(f"expected {len(forgets)} references, the plan has {len(references)}")
    return (cfg.datasets[0].defaults_flag, out / originals[0].folder,
            {spec: out / ref.folder for spec, ref in zip(forgets, references, strict=True)})


def _slug(spec: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in spec)


def degenerate(reference: Path) -> str | None:
    """Why the reference is degenerate on the validation split, or None."""
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.evaluation.utility import (
        balanced_accuracy,
        degenerate_reason,
        majority_prediction_share,
    )
    from medunlearn.training import predict_logits

    run, data = load_run_and_data(reference)
    scores = predict_logits(run.model, data.val)  # argmax of logits = argmax of probabilities
    labels = data.val.labels.numpy()
    why = degenerate_reason(balanced_accuracy(scores, labels), majority_prediction_share(scores))
    return why.replace("test images", "validation images") if why else None


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _options(o: dict | None) -> str:
    return "-" if o is None else ", ".join(f"{k}={v}" for k, v in o.items()) or "(none)"


def compare(new: dict, old: dict) -> str:
    """How far each published default moves from the original, before and after a retune:
    ``moved`` (the shift of the forgotten images' confidence from the original, over the
    reference's own shift), prediction agreement with the original and with the reference on
    validation + forget images, and whether the point is rejected (as doing nothing, or as
    damaging the model: :func:`medunlearn.tuning.rejection`). The old
    default is looked up in the new record's grid (same grid: measured by the same run)."""
    from medunlearn.tuning import rejection

    lines = ["| dataset | method | default (old -> new) | moved | agreement with the original "
             "| agreement with the reference | rejected |",
             "|---|---|---|---|---|---|---|"]
    for flag, res in new["results"].items():
        if "skipped" in res:
            lines.append(f"| {flag} | all | skipped: {res['skipped']} | | | | |")
            continue
        dn = next((m["do_nothing"] for m in res["methods"].values() if "do_nothing" in m),
                  None)
        if dn is not None:
            lines.append(f"| {flag} | original (no unlearning) | - | 0.00 | 1.00 | "
                         f"{_fmt(dn.get('agreement'))} | does nothing |")
        for method, m in res["methods"].items():
            grid = m["grid"]
            min_move = m.get("min_move")
            now = next(r for r in grid if r["options"] == m["chosen"])
            was_opts = ((old.get("results", {}).get(flag) or {}).get("methods", {})
                        .get(method, {}).get("chosen"))
            was = next((r for r in grid if r["options"] == was_opts), None)

            def cell(key, was=was, now=now):
                a, b = (was or {}).get(key), now.get(key)
                return _fmt(b) if was is None or was is now else f"{_fmt(a)} -> {_fmt(b)}"

            def rejected(r, min_move=min_move):
                if r is None or min_move is None:
                    return "-"
                why = rejection(r, min_move)
                return "no" if not why else ("damages" if "damages" in why else "does nothing")

            changed = was is not None and was is not now
            lines.append(
                f"| {flag} | {method} | "
                + (f"{_options(was_opts)} -> **{_options(m['chosen'])}**" if changed
                   else f"{_options(m['chosen'])}" + ("" if was is not None else
                                                      f" (old: {_options(was_opts)})"))
                + f" | {cell('moved')} | {cell('agreement_original')} | {cell('agreement')} | "
                + (f"{rejected(was)} -> {rejected(now)}" if changed else rejected(now))
                + (" (every point rejected)" if m.get("warning") else "") + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=REPO / "runs" / "tuning",
                   help="Scratch folder for models and per-method results (default: runs/tuning).")
    p.add_argument("--datasets", default=None, help="Comma-separated flags to (re)tune; the "
                   "others keep their results from the record (default: all).")
    p.add_argument("--methods", default=None, help="Comma-separated methods (default: all).")
    p.add_argument("--render-only", action="store_true",
                   help="Only render methods.toml from the existing tuning.json.")
    p.add_argument("--compare", type=Path, default=None, metavar="OLD_JSON",
                   help="Print a Markdown table of how far each default moves from the original "
                        "(tuning.json against an older record, e.g. from git show) and exit.")
    args = p.parse_args(argv)
    os.chdir(REPO)  # the recipe's manifest paths are relative to the repository root

    from medunlearn.evaluation.companions import KFOLD
    from medunlearn.fileio import atomic_write_json, atomic_write_text
    from medunlearn.methods import EXACT_METHODS, get_method_class, method_names
    from medunlearn.methods.base import DEFAULTS_VERSION
    from medunlearn.runs import tune_method
    from medunlearn.runs.shadows import companions_for_run
    from medunlearn.tuning import (
        TUNE_CRITERION,
        TUNE_RULES,
        do_nothing_min_move,
        is_current,
        judged,
        load_tuning_record,
        load_tuning_spec,
        render_methods_toml,
        summarize,
        worst_case,
    )

    sizes: dict[Path, int] = {}

    def n_val(original: Path) -> int:
        """Validation images of an original's data (the damage rule's sample size)."""
        if original not in sizes:
            from medunlearn.checkpoint import load_run_and_data

            sizes[original] = len(load_run_and_data(original)[1].val)
        return sizes[original]

    record_path = DEFAULTS / "tuning.json"
    if args.compare is not None:
        print(compare(load_tuning_record(record_path), json.loads(args.compare.read_text())))
        return 0
    if args.render_only:
        record = load_tuning_record(record_path)
        if record is None:
            raise SystemExit(f"{record_path} does not exist; run without --render-only first.")
        atomic_write_text(DEFAULTS / "methods.toml", render_methods_toml(record))
        return 0
    spec = load_tuning_spec()
    recipe = spec["recipe"]
    wanted = set(args.datasets.split(",")) if args.datasets else None
    methods = ([m.strip() for m in args.methods.split(",")] if args.methods
               else [m for m in method_names() if m not in EXACT_METHODS])
    old = load_tuning_record(record_path) or {}
    results = dict(old.get("results", {}))
    args.work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    also = {m: list(v) for m, v in recipe.get("also_forget", {}).items() if m in methods}
    forgets = [recipe["forget"]] + sorted({f for v in also.values() for f in v}
                                          - {recipe["forget"]})
    for entry in recipe["datasets"]:
        prepared = prepare(entry, recipe, forgets, args.work, wanted)
        if prepared is None:
            continue
        flag, original, references = prepared
        why = degenerate(references[recipe["forget"]])
        if why:
            print(f"{flag}: skipped, the reference {why}", file=sys.stderr)
            results[flag] = {"skipped": f"the retrained reference {why}", "dataset": entry}
            continue
        unusable = {f: f"the retrained reference for {f} {why}"
                    for f in forgets[1:] if (why := degenerate(references[f]))}
        for note in unusable.values():
            print(f"{flag}: {note}; methods scored on it are tuned without it", file=sys.stderr)
        done = dict(results.get(flag, {}).get("methods", {}))
        for method in methods:
            specs = [recipe["forget"]] + [f for f in also.get(method, [])
                                          if f != recipe["forget"] and f not in unusable]
            per_forget = []
            for fspec in specs:
                name = (f"{flag}-{method}.json" if fspec == recipe["forget"]
                        else f"{flag}-{method}-{_slug(fspec)}.json")
                cache = args.work / "results" / name
                result = json.loads(cache.read_text()) if cache.is_file() else None
                if result is not None:
                    if is_current(result | {"rule": TUNE_RULES}, method):
                        # the stored grid stands; the rules and the choice are applied again
                        # (a pure function of its rows), so the record always follows them
                        before = result.get("chosen")
                        result = judged(result, n_val=n_val(original))
                        atomic_write_json(cache, result)
                        if result["chosen"] != before:
                            print(f"{flag} {method} ({fspec}): re-judged, {result['chosen']}",
                                  file=sys.stderr)
                    else:
                        result = None  # another grid or an earlier revision of the method
                if result is None:
                    t0 = time.perf_counter()
                    if get_method_class(method).needs_folds:
                        # the out-of-fold predictions it matches: K fold models of the
                        # original, trained once (reused when there), as a user's run has
                        companions_for_run(original, kind=KFOLD, k=FOLDS_K, progress=False)
                    result = tune_method(original, method=method, forget=fspec,
                                         reference=references[fspec], seed=int(recipe["seed"]),
                                         tolerance=float(recipe["tolerance"]))
                    atomic_write_json(cache, result)
                    print(f"{flag} {method} ({fspec}): {result['chosen']} "
                          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
                per_forget.append(result)
            combined = (per_forget[0] if len(per_forget) == 1
                        else worst_case(per_forget, float(recipe["tolerance"]),
                                        min_move=do_nothing_min_move()))
            done[method] = summarize(combined)
            skipped = [unusable[f] for f in also.get(method, []) if f in unusable]
            if skipped:
                done[method]["not_scored_on"] = skipped
        results[flag] = {"dataset": entry, "original": str(original.relative_to(args.work)),
                         "reference": str(references[recipe["forget"]].relative_to(args.work)),
                         "methods": done}
    record = {
        "version": 1, "defaults_version": DEFAULTS_VERSION,
        "command": "python scripts/tune_defaults.py" + (
            " " + shlex.join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "commit": commit(), "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "recipe": {k: v for k, v in recipe.items() if k != "datasets"},
        "criterion": TUNE_CRITERION, "grids": spec.get("grid", {}), "results": results,
        "wall_seconds": round(time.perf_counter() - t_all, 1),
    }
    atomic_write_json(record_path, record)
    atomic_write_text(DEFAULTS / "methods.toml", render_methods_toml(record))
    print(f"wrote {record_path} and {DEFAULTS / 'methods.toml'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
