"""Benchmark: per-example forgetting quality (issues 13 and 28) of unlearning methods, over
several training seeds, with the population view and the safety gate beside it.

For each training seed S (``--seeds``) the bench trains (or reuses) an original model with seed S
(``WORK/model-seed-S``, or ``--model``), then, for each method and each N (``--n``),
``medunlearn verify-forgetting`` trains (or reuses) N unlearned and N retrained models on the
random forget set drawn with seed S (all methods of one seed share the retrained models: one
folder ``WORK/fq-seed-S``), and scores forgetting per example as the NeurIPS 2023 unlearning
challenge did. A replicate S is therefore independent of the others in every respect: original
model, forget set, unlearning and retraining seeds.

Next to the score, the population view of the deployed model (unlearned seed S) against the first
retrained model: ``evaluate_run`` with the safety gate (its verdict; the loss attack's
``attack_auc`` check), MIA-efficacy and test FNR against the reference's (over-forgetting
check). ``original`` is a pseudo-method: the untouched original as all N "unlearned" models,
scored exactly like a method (by the challenge's rule N identical models score 0).

``--gate-runs`` gates every unlearned run of the named entries, not only the deployed one, and
with ``retrained`` the other N - 1 retrained models too: how often the gate accepts a request
served by the method, read against how often it accepts exact retraining. An entry
``NAME@key=value,...`` measures options other than the published defaults beside them.

Time / retraining is the mean unlearning time of the N runs over the mean of the N retrainings
(and over the fastest retraining: a conservative ratio when the CPU was shared). Each finished
row is kept in ``WORK/rows.json`` (keyed by everything it depends on), so the bench can run in
chunks (``--seeds 0``, then ``--seeds 0,1`` ...) and the last call renders every seed.

Usage::

    .venv/bin/python bench/bench_forgetting_quality.py                 # PneumoniaMNIST, N = 16
    .venv/bin/python bench/bench_forgetting_quality.py --seeds 0,1,2 \\
        --methods original,finetune,noise-repair,reinit-small-grad --section fq_seeds
    .venv/bin/python bench/bench_forgetting_quality.py --dataset ../shared/data/tb-cxr/labels.csv \\
        --size 64 --work runs/bench_fq_tb --seeds 0,1,2 --section forgetting_quality_seeds_tb
    .venv/bin/python bench/bench_forgetting_quality.py --dataset breastmnist --n 16,32 ...
    .venv/bin/python bench/bench_forgetting_quality.py --quick --n 3 --methods original,finetune

``--publish-figures src/medunlearn/defaults/published_figures.json`` writes the measured methods'
figures into the record certificates read (the figure of the method that served a request whose
own per-image check was not run), from the rows at the options the registry serves each method
with, averaged over ``--seeds``. That file is never edited by hand.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from _report import command_line, model_parser, publish, stamp  # noqa: E402

ORIGINAL = "original"  # pseudo-method: the untouched original, N times
METHODS = ("retrain", "finetune", "random-label", "gradient-ascent", "neggrad-plus",
           "l1-sparse", "salun", "salun-cra", "scrub", "boundary-shrink", "fisher", "newton",
           "ssd", "noise-repair", "reinit-small-grad", "oracle-match", ORIGINAL)
FAIL_RATIO = 0.5  # per-example "fail": score below this fraction of the permutation null
# Over-forgetting (issue 28): the deployed model's MIA-efficacy above the reference's by more
# than OVER_MIA, or its test FNR above the reference's by more than OVER_FNR.
OVER_MIA = 0.10
OVER_FNR = 0.02
ROWS_FILE = "rows.json"
# --gate-runs pseudo-entry: exact retraining gated like a method (the other N - 1 retrained
# models, each against the original and the first): the pass rate the gate's checks allow a
# model that forgot exactly, the yardstick of every other pass rate.
RETRAINED = "retrained"


def parse_entry(entry: str) -> tuple[str, dict]:
    """A --methods entry: ``NAME`` (the method's published defaults) or
    ``NAME@key=value,key=value`` (those options over them); the entry itself is the row's
    label and the folder of its unlearned runs, so variants of one method share the retrained
    models without replacing each other's runs."""
    from medunlearn.config import parse_option_pairs

    name, sep, opts = entry.partition("@")
    if not sep:
        return name, {}
    if not opts:
        raise SystemExit(f"--methods entry {entry!r}: give options after '@' (e.g. "
                         f"{name}@epochs=3,noise=0.5) or drop the '@'")
    return name, parse_option_pairs(opts.split(","))


def gated(entry: str, gate_runs: str) -> bool:
    """Whether ``--gate-runs`` names this --methods entry (or is 'all')."""
    sep = ";" if ";" in gate_runs else ","
    names = {x.strip() for x in gate_runs.split(sep) if x.strip()}
    return "all" in names or entry in names


def label_of(row: dict) -> str:
    """The row's label: its --methods entry (rows kept by older benches: the method)."""
    return row.get("label") or row["method"]


def parse_ints(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{what} must be comma-separated integers, got {text!r}") from None
    if not values:
        raise SystemExit(f"{what} is empty")
    return values


def original_for(args, work: Path, seed: int) -> Path:
    """The original of training seed ``seed``: ``--model`` (``{seed}`` is replaced) or one
    trained (or reused) in ``WORK/model-seed-S``."""
    if args.model is not None:
        return Path(str(args.model).format(seed=seed))
    from medunlearn.config import DataSource, ModelConfig, TrainConfig
    from medunlearn.runs import run_training

    out = work / f"model-seed-{seed}"
    if args.quick:
        data = DataSource(dataset=args.dataset, size=args.size, train_limit=400, eval_limit=200,
                          data_root=args.data_root)
        model, train = ModelConfig(width=8), TrainConfig(epochs=2, progress=False)
    else:
        data = DataSource(dataset=args.dataset, size=args.size, data_root=args.data_root)
        model, train = ModelConfig(), TrainConfig(progress=False)
    t0 = time.perf_counter()
    metrics = run_training(data, model, train, seed=seed, out=out)
    what = "reused" if metrics.get("reused") else f"trained in {time.perf_counter() - t0:.1f} s"
    print(f"original {out}: {what}", file=sys.stderr)
    return out


def _population(rec: dict, verdict) -> dict:
    """The population columns of one evaluation record and its gate verdict."""
    def get(role, *path):
        d = rec["models"].get(role) or {}
        for p in path:
            d = (d or {}).get(p)
        return d

    attack = next((c for c in verdict.checks if c["name"] == "attack_auc"), {})
    row = {"gate": bool(verdict.passed), "gate_reasons": list(verdict.reasons),
           "attack": attack.get("status", "-"),
           "mia": get("model", "privacy", "mia_efficacy"),
           "mia_ref": get("reference", "privacy", "mia_efficacy"),
           "fnr": get("model", "clinical", "test", "fnr"),
           "fnr_ref": get("reference", "clinical", "test", "fnr"),
           "fnr_orig": get("original", "clinical", "test", "fnr"),
           "ta": get("model", "utility", "TA")}
    over = []
    if row["mia"] is not None and row["mia_ref"] is not None \
            and row["mia"] - row["mia_ref"] > OVER_MIA:
        over.append("MIA")
    if row["fnr"] is not None and row["fnr_ref"] is not None \
            and row["fnr"] - row["fnr_ref"] > OVER_FNR:
        over.append("FNR")
    row["over"] = over
    return row


def _score_columns(r: dict) -> dict:
    return {"score": r["forgetting_quality"], "ci": r["forgetting_quality_ci"],
            "null": r.get("forgetting_quality_null"), "ratio": r.get("forgetting_quality_vs_null"),
            "eps_median": r["epsilon_median"], "capped": r["epsilon_capped_fraction"],
            "peaky": r.get("epsilon_peaky_fraction", 0.0), "ulira": r.get("ulira_accuracy"),
            "spread": r.get("spread_ratio"), "shift": r.get("confidence_shift"),
            "identical": r["identical_unlearned_models"], "forget_count": r["forget_count"]}


def method_row(model: Path, method: str, *, out: Path, forget: str, n: int, seed: int,
               data_root: str | None, backend: str, options: dict | None = None,
               label: str | None = None) -> tuple[dict, dict]:
    """verify-forgetting of one method (its published defaults, or ``options`` over them) and
    the gated evaluation of its deployed model."""
    import numpy as np

    from medunlearn.runs import verify_forgetting

    runs: list[dict] = []
    t0 = time.perf_counter()
    r = verify_forgetting(model, forget=forget, method=method, out=out, n=n, seed=seed,
                          options=options or None, label=label,
                          data_root=data_root, progress=True, backend=backend,
                          overwrite=True,  # runs of older code in OUT are replaced
                          on_runs_done=runs.extend)
    wall = time.perf_counter() - t0
    secs = {x["out"]: x["unlearn_seconds"] for x in runs}
    u_secs = [secs[p] for p in r["runs"]["unlearned"]]
    r_secs = [secs[p] for p in r["runs"]["retrained"]]
    rec, verdict = evaluate_deployed(Path(r["runs"]["unlearned"][0]), model,
                                     Path(r["runs"]["retrained"][0]), data_root=data_root,
                                     original=False)
    row = {**_score_columns(r), **_population(rec, verdict),
           "options": r["user_options"], "resolved": r["options"],
           "seconds_per_run": float(np.mean(u_secs)), "retrain_seconds": float(np.mean(r_secs)),
           "retrain_fastest": float(np.min(r_secs)), "u_secs": u_secs, "r_secs": r_secs,
           "reused": r["runs"]["reused"],
           "wall": wall}
    return row, r


def original_row(model: Path, *, out: Path, forget: str, n: int, seed: int,
                 data_root: str | None) -> tuple[dict, dict]:
    """The untouched original scored like a method: N copies of it against the N retrained
    models a method of this seed left in OUT (the same forget set and seeds as
    verify-forgetting), and the gate on the original against the first of them."""
    import numpy as np

    from medunlearn.checkpoint import METRICS_FILE, load_run, load_run_and_data, read_json
    from medunlearn.errors import ConfigError
    from medunlearn.evaluation import forgetting_quality as fq
    from medunlearn.evaluation.outputs import forget_confidences
    from medunlearn.loop import Runtime
    from medunlearn.runs.unlearn import forget_set_for

    t0 = time.perf_counter()
    run, dataset = load_run_and_data(model, data_root=data_root)
    fs, _ = forget_set_for(model, dataset, forget, seed=seed)
    f_idx = fs.forget.numpy()
    _, r_seeds = fq.seeds(seed, n)
    r_dirs = [out / "retrained" / f"seed-{s}" for s in r_seeds]
    missing = [str(d) for d in r_dirs if not (d / METRICS_FILE).is_file()]
    if missing:
        raise ConfigError(f"'{ORIGINAL}' is scored against the retrained models a method of the "
                          f"same run trains; {len(missing)} are missing (e.g. {missing[0]}). "
                          "List a real method before it in --methods.")
    rt = Runtime.create("cpu", "fp32", None)
    rec, verdict = evaluate_deployed(model, model, r_dirs[0], data_root=data_root,
                                     original=True)
    conf = forget_confidences(run.model, dataset.train, f_idx, runtime=rt)
    r_scores, r_ra, r_ta = [], [], []
    for d in r_dirs:
        r_scores.append(forget_confidences(load_run(d).model, dataset.train, f_idx, runtime=rt))
        m = read_json(d / METRICS_FILE)
        r_ra.append(m["retain_accuracy"])
        r_ta.append(m["test_accuracy"])
    ra = rec["models"]["model"]["utility"]["RA"]
    ta = rec["models"]["model"]["utility"]["TA"]
    result = fq.summarize(np.repeat(conf[None, :], n, axis=0), np.stack(r_scores), seed=seed,
                          accuracies={"unlearned": {"RA": [ra] * n, "TA": [ta] * n},
                                      "retrained": {"RA": r_ra, "TA": r_ta}})
    row = {**_score_columns(result), **_population(rec, verdict), "options": {}, "resolved": {},
           "seconds_per_run": 0.0, "retrain_seconds": None, "retrain_fastest": None,
           "u_secs": [], "r_secs": [],
           "reused": 0, "wall": time.perf_counter() - t0}
    return row, result


def evaluate_deployed(cand: Path, model: Path, ref: Path, *, data_root: str | None,
                      original: bool) -> tuple[dict, object]:
    """The evaluation record and gate verdict of one candidate run folder against the original
    ``model`` and the retrained ``ref``, as every row's gate columns are made (the untouched
    original, ``original=True``, is scored on ``ref``'s forget set: it has none of its own)."""
    from medunlearn.evaluation.gate import gate
    from medunlearn.runs import evaluate_run

    rec = evaluate_run(cand, original=model, reference=ref, data_root=data_root,
                       forget=ref / "forget.csv" if original else None)
    return rec, gate(rec)


def regate(model: Path, method: str, *, out: Path, n: int, seed: int,
           data_root: str | None, label: str | None = None) -> dict:
    """The population columns of a kept row recomputed with the current gate (``--regate``):
    the deployed model (the first unlearned run, or the original itself) against the original
    and the first retrained model, as when the row was made. The scores are not touched."""
    from datetime import UTC, datetime

    from medunlearn.evaluation import forgetting_quality as fq

    u_seeds, r_seeds = fq.seeds(seed, n)
    cand = model if method == ORIGINAL else out / (label or method) / f"seed-{u_seeds[0]}"
    rec, verdict = evaluate_deployed(cand, model, out / "retrained" / f"seed-{r_seeds[0]}",
                                     data_root=data_root, original=method == ORIGINAL)
    return _population(rec, verdict) | {
        "regated": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}


def gate_runs(model: Path, method: str, *, out: Path, n: int, seed: int,
              data_root: str | None, label: str | None = None) -> dict:
    """The gate on every one of the N unlearned runs (``--gate-runs``), each against the
    original and the first retrained model as the deployed one is: how often a request served
    by this method would be accepted, not one draw. The N copies of ``original`` are one model,
    gated once; ``retrained`` (:data:`RETRAINED`) gates the other N - 1 retrained models."""
    from collections import Counter

    from medunlearn.evaluation import forgetting_quality as fq

    u_seeds, r_seeds = fq.seeds(seed, n)
    ref = out / "retrained" / f"seed-{r_seeds[0]}"
    if method == RETRAINED:
        cands = [out / "retrained" / f"seed-{s}" for s in r_seeds[1:]]
    else:
        cands = [model] if method == ORIGINAL else \
            [out / (label or method) / f"seed-{s}" for s in u_seeds]
    passed, reasons = [], Counter()
    for cand in cands:
        _, verdict = evaluate_deployed(cand, model, ref, data_root=data_root,
                                       original=method == ORIGINAL)
        passed.append(bool(verdict.passed))
        reasons.update({x.split(":")[0] for x in verdict.reasons})
    return {"runs_gated": len(cands), "runs_passed": sum(passed),
            "runs_gate_reasons": dict(sorted(reasons.items()))}


def ensure_folds(model: Path, k: int) -> dict:
    """The K fold models a method such as ``oracle-match`` reads, trained once per original
    (``medunlearn shadows MODEL --kind kfold``, in ``MODEL/kfold``; reused when there) with
    their one-time cost: the members' summed training time and K."""
    from medunlearn.evaluation.companions import KFOLD
    from medunlearn.runs.shadows import companions_for_run, training_seconds

    t0 = time.perf_counter()
    cs = companions_for_run(model, kind=KFOLD, k=k, progress=True)
    secs = training_seconds(cs.path)
    print(f"fold models {cs.path}: {cs.k}, {sum(secs):.0f} s of training "
          f"({time.perf_counter() - t0:.0f} s now)", file=sys.stderr)
    return {"fold_k": cs.k, "fold_seconds": float(sum(secs)),
            "fold_fingerprint": cs.manifest["fingerprint"]}


def needs_folds(method: str) -> bool:
    from medunlearn.methods.base import get_method_class

    return method != ORIGINAL and get_method_class(method).needs_folds


def row_key(model: Path, method: str, *, forget: str, n: int, seed: int, dataset: str,
            folds: str | None = None, options: dict | None = None) -> str:
    """Everything a row depends on: the original's weights, the method's resolved options, the
    forget spec, N, the seed (and the fold models a method reads)."""
    from medunlearn.checkpoint import MODEL_FILE
    from medunlearn.fileio import fingerprint, sha256_file
    from medunlearn.methods.base import key_options, resolve_method

    options = {} if method == ORIGINAL else \
        key_options(resolve_method(method, dataset=dataset, options=options))
    return fingerprint({"original": sha256_file(model / MODEL_FILE), "method": method,
                        "options": options, "forget": forget, "n": n, "seed": seed}
                       | ({"folds": folds} if folds else {}))


def measure(args, work: Path, *, seeds: list[int], ns: list[int], methods: list[str]
            ) -> list[dict]:
    from medunlearn.checkpoint import load_run
    from medunlearn.fileio import atomic_write_json, read_json

    cache_path = work / ROWS_FILE
    cache = read_json(cache_path) if cache_path.is_file() and not args.recompute else {}
    rows = []
    for seed in seeds:
        model = original_for(args, work, seed)
        run = load_run(model)
        dataset = run.config["dataset"].get("dataset") or run.config["dataset"].get("name")
        precision = (run.config.get("runtime") or {}).get("precision")
        out = work / f"fq-seed-{seed}"
        for n in ns:
            results = {}
            for entry in methods:
                name, options = parse_entry(entry)
                label = entry if options else None
                folds = ensure_folds(model, args.folds_k) if needs_folds(name) else {}
                key = row_key(model, name, forget=args.forget, n=n, seed=seed, dataset=dataset,
                              folds=folds.get("fold_fingerprint"), options=options)
                if key in cache:
                    row = cache[key]
                    _backfill_seconds(row, out)
                    _backfill_spread(row, out)
                    print(f"seed {seed} N {n} {entry}: cached", file=sys.stderr)
                    if args.regate:
                        row |= regate(model, name, out=out, n=n, seed=seed,
                                      data_root=args.data_root, label=label)
                        atomic_write_json(cache_path, cache)
                elif args.regate:
                    raise SystemExit(f"--regate re-evaluates kept rows only; seed {seed} N {n} "
                                     f"{name} has none in {cache_path} (run without --regate "
                                     "to compute it)")
                else:
                    if name == ORIGINAL:
                        row, result = original_row(model, out=out, forget=args.forget, n=n,
                                                   seed=seed, data_root=args.data_root)
                    else:
                        row, result = method_row(model, name, out=out, forget=args.forget, n=n,
                                                 seed=seed, data_root=args.data_root,
                                                 backend=args.backend, options=options,
                                                 label=label)
                    results[entry] = result
                    row |= {"method": name, "label": entry, "seed": seed, "n": n,
                            "dataset": dataset, "model": str(model), "precision": precision,
                            **folds}
                    cache[key] = row
                    atomic_write_json(cache_path, cache)
                if gated(entry, args.gate_runs) and (args.regate or "runs_gated" not in row):
                    row |= gate_runs(model, name, out=out, n=n, seed=seed,
                                     data_root=args.data_root, label=label)
                    atomic_write_json(cache_path, cache)
                rows.append(row)
                print(f"seed {seed} N {n} {entry:18s} score {row['score']:.3f} (null "
                      f"{_f(row['null'])}) U-LiRA {_f(row['ulira'])} gate "
                      f"{'pass' if row['gate'] else 'FAIL'} {row['wall']:.0f} s", file=sys.stderr)
            if gated(RETRAINED, args.gate_runs):
                from medunlearn.checkpoint import MODEL_FILE
                from medunlearn.fileio import fingerprint, sha256_file

                key = fingerprint({"original": sha256_file(model / MODEL_FILE),
                                   "kind": RETRAINED, "forget": args.forget, "n": n,
                                   "seed": seed})
                if key not in cache or args.regate:
                    cache[key] = {"kind": RETRAINED, "method": RETRAINED, "seed": seed, "n": n,
                                  "dataset": dataset, **gate_runs(
                                      model, RETRAINED, out=out, n=n, seed=seed,
                                      data_root=args.data_root)}
                    atomic_write_json(cache_path, cache)
                rows.append(cache[key])
            if results and args.figures:
                from medunlearn.plots import forgetting_quality_figure

                fig = forgetting_quality_figure(
                    results, args.figures / f"forgetting_quality-n{n}-seed{seed}.png")
                print(f"figure: {fig}", file=sys.stderr)
    return rows


def _f(v, d=3):
    return "-" if v is None else f"{v:.{d}f}"


def _pct(v, d=1):
    return "-" if v is None else f"{100 * v:.{d}f}"


def _time_ratios(r: dict) -> tuple[float | None, float | None]:
    """Unlearning over retraining time: median over median, and fastest over fastest (both
    robust to bursts of CPU contention, which hit single runs)."""
    if r["method"] == ORIGINAL or not r.get("r_secs"):
        return None, None
    u, t = r["u_secs"], r["r_secs"]
    return statistics.median(u) / statistics.median(t), min(u) / min(t)


def _backfill_seconds(row: dict, out: Path) -> None:
    """Per-run times of a row kept by an older bench (its run folders' metrics.json)."""
    from medunlearn.evaluation.forgetting_quality import seeds
    from medunlearn.fileio import read_json

    if "u_secs" in row:
        return
    u_seeds, r_seeds = seeds(row["seed"], row["n"])
    row["u_secs"] = [] if row["method"] == ORIGINAL else \
        [read_json(out / label_of(row) / f"seed-{s}" / "metrics.json")["unlearn_seconds"]
         for s in u_seeds]
    row["r_secs"] = [] if row["method"] == ORIGINAL else \
        [read_json(out / "retrained" / f"seed-{s}" / "metrics.json")["unlearn_seconds"]
         for s in r_seeds]


def _backfill_spread(row: dict, out: Path) -> None:
    """Spread ratio and confidence shift of a row kept by an older bench, from the scores its
    verify-forgetting folder kept (the row's first N models per side)."""
    import numpy as np

    from medunlearn.evaluation.forgetting_quality import spread_and_shift

    if "spread" in row:
        return
    path = out / label_of(row) / "scores.npz"
    row["spread"] = row["shift"] = None
    if row["method"] != ORIGINAL and path.is_file():
        with np.load(path) as z:
            sh = spread_and_shift(z["unlearned"][:row["n"]], z["retrained"][:row["n"]])
        row["spread"], row["shift"] = sh["spread_ratio"], sh["confidence_shift"]


def _runs_gated(r: dict) -> str:
    """`` (k/N runs)``: how many of the row's unlearned runs the gate passed (--gate-runs)."""
    if "runs_gated" not in r:
        return ""
    if r["method"] == ORIGINAL:
        return " (one model)"
    return f" ({r['runs_passed']}/{r['runs_gated']} runs)"


def _runs_gated_sum(group: list[dict]) -> str:
    gated = [r for r in group if "runs_gated" in r and r["method"] != ORIGINAL]
    if not gated or len(gated) < len(group):
        return ""
    return (f" ({sum(r['runs_passed'] for r in gated)}/{sum(r['runs_gated'] for r in gated)} "
            "runs)")


def _spread(r: dict) -> str:
    """The spread ratio and confidence shift of a row ("-" on rows kept from before the
    column, and on kept rows of the original, whose scores no folder keeps)."""
    if r.get("spread") is None:
        return "-"
    return f"{r['spread']:.2f}; {r['shift']:+.2f}"


def _mean_sd(values: list[float], d: int = 2) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{d}f}"
    return f"{statistics.mean(values):.{d}f} ± {statistics.stdev(values):.{d}f}"


def render(rows: list[dict], *, args, work: Path, seeds: list[int], ns: list[int]) -> str:
    retrained = [r for r in rows if r.get("kind") == RETRAINED]
    rows = [r for r in rows if r.get("kind") != RETRAINED]
    total = sum(r["wall"] for r in rows)
    datasets = sorted({r["dataset"] for r in rows})
    precisions = sorted({str(r.get("precision")) for r in rows})
    forget_counts = sorted({r["forget_count"] for r in rows})
    regated = sorted({r["regated"] for r in rows if r.get("regated")})
    n_regated = sum(bool(r.get("regated")) for r in rows)
    lines = [
        f"## Per-example forgetting quality over training seeds "
        f"(`bench/bench_forgetting_quality.py`), {', '.join(datasets)}",
        "",
        stamp(command_line()).rstrip("\n")
        + ("\n- **--quick smoke run (tiny model), not a measurement**" if args.quick else ""),
        f"- Originals, retraining and unlearning ran in {'/'.join(precisions)}"
        + (" autocast (this CPU computes bf16 natively)" if "bf16" in precisions else "")
        + "; the forget-set scores in fp32.",
        f"- Originals: training seeds {', '.join(map(str, seeds))} "
        f"({'`' + str(args.model) + '`' if args.model else f'`{work}/model-seed-S`'}); forget "
        f"set `{args.forget}` drawn with the same seed ({'/'.join(map(str, forget_counts))} "
        f"images); N = {', '.join(map(str, ns))} unlearned + N retrained models per method and "
        f"seed; wall time of the rows {total / 60:.1f} min (summed over the calls that computed "
        f"them: the bench keeps finished rows in WORK/{ROWS_FILE})",
        *([f"- {args.note}"] if args.note else []),
        *([f"- The gate, attack_auc, MIA-efficacy and FNR columns of {n_regated} of the "
           f"{len(rows)} rows were re-evaluated with `--regate` "
           f"({' to '.join(dict.fromkeys([regated[0], regated[-1]]))}), with the gate of the "
           "code that ran then; the scores are those of the kept runs"] if regated else []),
        "",
        "| N | seed | method | forgetting quality [95% CI] | retrain null | score / null "
        "| U-LiRA acc | spread; shift | at cap (point-mass) | s / run (median) "
        "| time / retraining (median; fastest) "
        "| gate | attack_auc | MIA-eff. (ref.) | test FNR % (ref.; original) | over-forgets |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lo, hi = r["ci"]
        t_mean, t_fast = _time_ratios(r)
        ratio = _f(r["ratio"], 2) + (" (identical models)" if r["identical"] else "")
        lines.append(
            f"| {r['n']} | {r['seed']} | {label_of(r)} | {_f(r['score'])} [{_f(lo)}, {_f(hi)}] "
            f"| {_f(r['null'])} | {ratio} | {_f(r['ulira'])} | {_spread(r)} | {r['capped']:.0%} "
            f"({r['peaky']:.0%}) | {statistics.median(r['u_secs'] or [0]):.1f} | "
            f"{_pct(t_mean)}%; {_pct(t_fast)}% | {'pass' if r['gate'] else 'FAIL'}"
            f"{_runs_gated(r)} | "
            f"{r['attack']} | {_f(r['mia'])} ({_f(r['mia_ref'])}) | {_pct(r['fnr'])} "
            f"({_pct(r['fnr_ref'])}; {_pct(r['fnr_orig'])}) | {', '.join(r['over']) or 'no'} |")
    lines += [
        "",
        "Over the seeds (mean ± sd; sd over training seeds):",
        "",
        "| N | method | seeds | score / null | U-LiRA acc | spread; shift "
        "| time / retraining % (median; fastest) "
        "| gate passes | over-forgets | score / null >= 0.5 in |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in ns:
        for name in dict.fromkeys(label_of(r) for r in rows):
            group = [r for r in rows if r["n"] == n and label_of(r) == name]
            if not group:
                continue
            tm = [_time_ratios(r)[0] for r in group]
            tf = [_time_ratios(r)[1] for r in group]
            k = len(group)
            lines.append(
                f"| {n} | {name} | {k} | {_mean_sd([r['ratio'] for r in group])} | "
                f"{_mean_sd([r['ulira'] for r in group], 3)} | "
                f"{_mean_sd([r.get('spread') for r in group])}; "
                f"{_mean_sd([r.get('shift') for r in group])} | "
                f"{_mean_sd([None if v is None else 100 * v for v in tm], 1)}; "
                f"{_mean_sd([None if v is None else 100 * v for v in tf], 1)} | "
                f"{sum(r['gate'] for r in group)}/{k}{_runs_gated_sum(group)} | "
                f"{sum(bool(r['over']) for r in group)}/{k} "
                f"| {sum((r['ratio'] or 0) >= FAIL_RATIO for r in group)}/{k} |")
    lines += [
        "",
        "Forgetting quality is the challenge's score (1 = every forget image indistinguishable "
        "from retraining); with few models even retraining scores well below 1, so each score "
        "is read against the permutation null (`retrain null`: the same outputs re-split at "
        "random, the ceiling a perfect unlearner reaches with this N). Each seed is an "
        "independent replicate: original trained with that seed, forget set drawn with it, "
        "unlearning seeds S..S+N-1, retraining seeds S+100000... `original` is the untouched "
        "model as all N unlearned models: identical models get the cap epsilon on every image "
        "by the challenge's rule, so it scores 0 (its null is computed like any method's, from "
        "its own pooled outputs). Spread; shift (medians over the forget images): the N "
        "unlearned runs' standard deviation over the N retrained models' (1 = as varied as "
        "retraining, 0 = one model), and how far their mean sits from retraining's in "
        "retraining's standard deviations (> 0: more confident on the forgotten images, as a "
        "model that remembers them; < 0: less); `-` on rows kept from before the column. "
        "The gate, MIA-efficacy and FNR are the deployed model's "
        "(unlearned seed S) against the original and the first retrained model; with "
        "--gate-runs, `(k/N runs)` says how many of the N unlearned runs the same gate passed. "
        "Over-forgets: "
        f"MIA-efficacy more than {OVER_MIA:g} above the reference's, or test FNR more than "
        f"{100 * OVER_FNR:g} points above it. Time: median unlearning time of the N runs over "
        "the median of the N retrainings of the same seed (and fastest over fastest): other "
        "jobs outside the heavy-job lock slowed single runs by up to several times, which a mean "
        "would carry; runs reused from earlier work keep the time they were trained in.",
    ]
    if retrained:
        lines += ["", "Exact retraining gated the same way (`--gate-runs retrained`): the other "
                  "N - 1 retrained models of each seed, each against the original and the first "
                  "retrained model. A method's pass rate reads against this one: the gate's "
                  "clinical and utility checks compare with the original, and retraining itself "
                  "can fail them.", "",
                  "| N | seed | retrained models the gate passes | failing checks (models) |",
                  "|---|---|---|---|"]
        for r in retrained:
            why = ", ".join(f"{k} {v}" for k, v in r["runs_gate_reasons"].items()) or "-"
            lines.append(f"| {r['n']} | {r['seed']} | {r['runs_passed']}/{r['runs_gated']} | "
                         f"{why} |")
    folded = [r for r in rows if r.get("fold_seconds") and r.get("r_secs")]
    if folded:
        lines += ["", "Methods that read K fold models (trained once per original before the "
                  "request; every member but one saw each forgotten image, so the set must be "
                  "rebuilt after every request):", "",
                  "| N | seed | method | K | fold training s | fold training / retraining "
                  "| request + fold rebuild / retraining |", "|---|---|---|---|---|---|---|"]
        for r in folded:
            t = statistics.median(r["r_secs"])
            u = statistics.median(r["u_secs"])
            lines.append(f"| {r['n']} | {r['seed']} | {label_of(r)} | {r['fold_k']} | "
                         f"{r['fold_seconds']:.0f} | {100 * r['fold_seconds'] / t:.0f}% | "
                         f"{100 * (r['fold_seconds'] + u) / t:.0f}% |")
    return "\n".join(lines) + "\n"


# Other names under which registries know a benchmark dataset (the figures record maps them).
DATASET_ALIASES = {"tb-cxr": ("tb",)}


def _options_text(resolved: dict) -> str:
    def text(v):
        return "none" if v is None else json.dumps(v) if isinstance(v, bool) else str(v)
    return ", ".join(f"{k}={text(v)}" for k, v in sorted(resolved.items()))


def publish_figures(path: Path, rows: list[dict], *, section: str, forget: str, n: int
                    ) -> list[str]:
    """Merge the figures of ``rows`` into the published-figures record at ``path`` (written
    atomically, keys sorted: the same rows give the same bytes). A method is published only from
    rows at the options the registry serves it with (``registry.steps.REQUEST_OPTIONS``; for
    most methods their defaults), averaged over the rows' training seeds; the untouched original
    and exact retraining are not published. Returns the published methods."""
    from medunlearn.fileio import atomic_write_text, read_json
    from medunlearn.registry.steps import REQUEST_OPTIONS

    record = read_json(path) if path.is_file() else {}
    record.setdefault("datasets", {})
    record.setdefault("figures", {})
    chosen: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        if r.get("kind") == RETRAINED or r["method"] == ORIGINAL or r["n"] != n \
                or r.get("ratio") is None:
            continue
        if dict(r.get("options") or {}) != REQUEST_OPTIONS.get(r["method"], {}):
            continue
        group = chosen.setdefault((r["dataset"], r["method"]), [])
        if any(x["seed"] == r["seed"] for x in group):
            raise SystemExit(f"--publish-figures: two rows of {r['method']} on {r['dataset']} "
                             f"for training seed {r['seed']} (an entry given twice?); list "
                             "each method once")
        group.append(r)
    for (dataset, method), group in sorted(chosen.items()):
        group.sort(key=lambda r: r["seed"])
        per_seed = [{"seed": r["seed"], "ratio": round(r["ratio"], 4),
                     "score": round(r["score"], 4), "ci": [round(c, 4) for c in r["ci"]],
                     "null": round(r["null"], 4), "gate": bool(r["gate"]),
                     **({"runs_passed": r["runs_passed"], "runs_gated": r["runs_gated"]}
                        if "runs_gated" in r else {})} for r in group]
        for name in (dataset, *DATASET_ALIASES.get(dataset.lower(), ())):
            record["datasets"][name.lower()] = dataset.lower()
        kept = record["figures"].get(dataset.lower(), {}).get(method)
        if kept and len(kept.get("seeds", [])) > len(per_seed):
            print(f"note: {method} on {dataset}: the published figure over "
                  f"{len(kept['seeds'])} seeds is replaced by one over {len(per_seed)}",
                  file=sys.stderr)
        record["figures"].setdefault(dataset.lower(), {})[method] = {
            "ratio": round(statistics.mean(x["ratio"] for x in per_seed), 4),
            "n": n, "forget": forget,
            "options": _options_text(group[0].get("resolved") or {}) or "the defaults",
            "section": section, "seeds": per_seed}
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"
    atomic_write_text(path, text)
    return sorted({m for _, m in chosen})


def main(argv: list[str] | None = None) -> int:
    p = model_parser(__doc__, "forgetting_quality")
    p.add_argument("--dataset", default="pneumoniamnist",
                   help="Data of the originals the bench trains: a MedMNIST flag or a CSV "
                        "manifest (default pneumoniamnist).")
    p.add_argument("--size", type=int, default=None, help="Image size (e.g. 64 for TB).")
    p.add_argument("--forget", default="random:0.1", help="Forget spec (default random:0.1).")
    p.add_argument("--seed", type=int, default=0, help="One training seed (see --seeds).")
    p.add_argument("--seeds", default=None,
                   help="Comma-separated training seeds, e.g. 0,1,2 (default: --seed). Each "
                        "seeds its original, its forget set and its runs.")
    p.add_argument("--n", default="16", help="Models per side; several: 16,32 (default 16).")
    p.add_argument("--methods", default=",".join(METHODS),
                   help=f"Comma-separated methods (default: all, retrain first); "
                        f"'{ORIGINAL}' is the untouched original (after a real method). "
                        "NAME@key=value,key=value measures options other than the published "
                        "defaults (in their own folder, beside the defaults' runs); separate "
                        "such entries with ';'.")
    p.add_argument("--figures", type=Path, default=None,
                   help="Folder for forgetting_quality-nN-seedS.png (default: no figure).")
    p.add_argument("--section", default="forgetting_quality",
                   help="BENCHMARKS.md section to replace (default: forgetting_quality).")
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="Run the models one after another (local) or as Ray tasks.")
    p.add_argument("--note", default=None, help="A line to add to the section's header.")
    p.add_argument("--folds-k", type=int, default=5,
                   help="K of the fold models that methods such as oracle-match read (trained "
                        "once per original in MODEL/kfold; default 5).")
    p.add_argument("--regate", action="store_true",
                   help="Re-evaluate the gate columns of the kept rows with the current gate "
                        "(the deployed model against the original and the first retrained "
                        "model; the scores are kept).")
    p.add_argument("--gate-runs", default="", metavar="ENTRIES",
                   help="Also gate every one of the N unlearned runs of these --methods entries "
                        "(comma- or ';'-separated, or 'all') against the original and the first "
                        "retrained model, and report how many pass; 'retrained' also gates the "
                        "other N - 1 retrained models (exact retraining's pass rate, the "
                        "yardstick). Kept rows gain it without rerunning.")
    p.add_argument("--recompute", action="store_true",
                   help=f"Ignore the rows kept in WORK/{ROWS_FILE} (the runs are still reused).")
    p.add_argument("--publish-figures", type=Path, default=None, metavar="JSON",
                   help="Write the measured methods' figures into this record of published "
                        "figures (src/medunlearn/defaults/published_figures.json: what "
                        "certificates show for a method whose request was not checked per "
                        "image). Each method is published at the options the registry serves "
                        "it with, averaged over --seeds, at the first --n; other methods and "
                        "datasets in the file are kept.")
    args = p.parse_args(argv)
    if args.publish_figures and args.quick:
        raise SystemExit("--publish-figures publishes measurements; a --quick smoke run is not one")
    seeds = parse_ints(args.seeds, "--seeds") if args.seeds else [args.seed]
    ns = parse_ints(args.n, "--n")
    sep = ";" if ";" in args.methods else ","  # entries with several options hold commas
    methods = [m.strip() for m in args.methods.split(sep) if m.strip()]
    if args.model is not None and len(seeds) > 1 and "{seed}" not in str(args.model):
        raise SystemExit("--model names one original; with several --seeds write it with "
                         "{seed} (e.g. runs/pneu-s{seed}), or leave it out to train them.")
    from medunlearn.evaluation.forgetting_quality import check_n
    from medunlearn.methods.base import method_names

    for n in ns:
        check_n(n)
    unknown = [m for m in methods
               if m != ORIGINAL and parse_entry(m)[0] not in method_names()]
    if unknown:
        raise SystemExit(f"unknown method(s) {', '.join(unknown)}; choose from "
                         f"{', '.join(method_names())} or {ORIGINAL}")
    if methods and methods[0] == ORIGINAL and len(methods) > 1:
        methods = methods[1:] + [ORIGINAL]  # it needs a method's retrained models
    work = args.work or REPO / "runs" / ("bench_forgetting_quality_quick" if args.quick
                                         else "bench_forgetting_quality")
    work.mkdir(parents=True, exist_ok=True)
    rows = measure(args, work, seeds=seeds, ns=ns, methods=methods)
    publish(args.section, render(rows, args=args, work=work, seeds=seeds, ns=ns), args, work)
    if args.publish_figures:
        done = publish_figures(args.publish_figures, rows, section=args.section,
                               forget=args.forget, n=ns[0])
        print(f"published figures of {', '.join(done) or 'no method'} in "
              f"{args.publish_figures}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
