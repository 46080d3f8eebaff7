"""Benchmark: per-image membership evidence from shadow models (issue 27).

Can the safety gate fail a model that forgot nothing and pass exact retraining? Per dataset
(PneumoniaMNIST, TB 64 px) and seed (0, 1, 2):

1. the original is trained (``medunlearn train``) and K = 16 shadow models on balanced random
   halves of its training split, once (``medunlearn.runs.shadows.shadows_for_run``; its cost as a
   multiple of one training run);
2. a random 10% is forgotten by exact retraining with the seed (the reference), by an
   independent retraining (seed offset 1000), by the head-only Newton step (the registry's
   default) and by the other methods with their published defaults (``medunlearn unlearn``);
3. every model, the untouched original included ("original (no unlearning)"), is evaluated
   against the original and the reference with the shadows (``evaluate_run(..., shadows=)``)
   and gated: the ``membership`` check's status, z, power, and the whole verdict.

Calibration checks, from the same shadows: each shadow in turn plays a candidate (the others
are its shadows), on random 10% subsets of the images it never saw (a null: should fail at the
test's 5% level) and of those it trained on (its power); and the naive reading that compares a
candidate's confidences with the half-data shadows' OUT distributions directly (offline LiRA
without calibration), which calls exact retraining a member.

Single-image requests (seed 0; PneumoniaMNIST has no patient ids and the TB set has one image
per patient, so a request is one image): 50 per dataset, the 10 images the original fits least
well (lowest true-class confidence), the 10 the shadows memorise most (largest gap between
their IN and OUT mean confidence) and 30 at random. "Exact retraining" is one model retrained
without all 50 (it never saw any of them); the head-only Newton step unlearns each image from
the original. Reported: the share of requests the check fails, passes and cannot say, and the
cost per request (the membership test on outputs the verification computes anyway).

With ``--oracle DATASET=DIR`` (N exact retrainings of the seed-0 original without its forget
set), the original's distance from retraining's own spread, and the calibration of the gate on
exact retraining: each of the N retrainings is gated like a candidate, and the paired test's
per-image "looks remembered" rate over all of them is its false-alarm rate on single images.

Writes the ``membership`` section of BENCHMARKS.md and ``WORK/results.json``. Resumable: runs,
shadows and evaluations already in ``--work`` are reused.

Usage::

    .venv/bin/python bench/bench_membership.py                        # both datasets, 3 seeds
    .venv/bin/python bench/bench_membership.py --datasets pneumoniamnist --seeds 0 \\
        --methods newton                                              # a smaller run
    .venv/bin/python bench/bench_membership.py --quick                # tiny smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from _report import command_line, publish, stamp  # noqa: E402

ALL_METHODS = ("finetune", "gradient-ascent", "neggrad-plus", "random-label", "boundary-shrink",
               "l1-sparse", "salun", "salun-cra", "scrub", "ssd", "fisher", "newton",
               "noise-repair", "reinit-small-grad")
DATASETS = {
    "pneumoniamnist": ["--dataset", "pneumoniamnist"],
    "tb": ["--dataset", str(REPO.parent / "shared" / "data" / "tb-cxr" / "labels.csv"),
           "--size", "64"],
}
ORIGINAL, REFERENCE, OTHER, NEWTON = ("original (no unlearning)", "retrain (the reference)",
                                      "retrain, other seed", "newton (head)")


def cli(*argv: str) -> None:
    from medunlearn.cli import main

    code = main(list(argv))
    if code:
        raise SystemExit(f"medunlearn {' '.join(argv)} exited with {code}")


def train(ds: str, seed: int, out: Path, quick: bool) -> None:
    if (out / "metrics.json").is_file():
        return
    if ds == "tb" and not Path(DATASETS["tb"][1]).is_file():
        raise SystemExit(f"{DATASETS['tb'][1]} not found: pass --tb-csv PATH")
    extra = ["--train-limit", "400", "--eval-limit", "200", "--width", "8", "--epochs", "3"] \
        if quick else []
    cli("train", *DATASETS[ds], "--seed", str(seed), "--out", str(out), "-q", *extra)


def unlearn(original: Path, out: Path, method: str, forget: str, seed: int,
            options: dict | None = None) -> None:
    """``medunlearn unlearn``'s run folder: reused when it holds this configuration (the
    method's current published defaults, or ``options`` over them), replaced when it holds a
    run of another one (e.g. of defaults retuned since)."""
    from medunlearn.runs import run_unlearning

    run_unlearning(original, method=method, forget=forget, seed=seed, out=out,
                   options=options, replace_stale=True, progress=False)


def evaluation_key(cand: Path, original: Path, reference: Path, shadows: Path) -> dict:
    """What a kept evaluation depends on: the three models' weights, the shadows and the
    gate's settings. A candidate rerun with other options, or a retuned gate, makes it stale."""
    from medunlearn.checkpoint import MODEL_FILE
    from medunlearn.fileio import sha256_file
    from medunlearn.runs.shadows import MANIFEST_FILE as SHADOWS_MANIFEST

    gate_toml = REPO / "src" / "medunlearn" / "defaults" / "gate.toml"
    return {"candidate": sha256_file(cand / MODEL_FILE),
            "original": sha256_file(original / MODEL_FILE),
            "reference": sha256_file(reference / MODEL_FILE),
            "shadows": sha256_file(shadows / SHADOWS_MANIFEST),
            "gate": sha256_file(gate_toml)}


def evaluate(cand: Path, original: Path, reference: Path, shadows: Path, out: Path,
             forget: Path | None = None) -> dict:
    """The candidate's membership section, the gate's membership check and verdict."""
    from medunlearn.evaluation.gate import gate
    from medunlearn.fileio import atomic_write_json, read_json
    from medunlearn.runs.evaluate import evaluate_run

    key = evaluation_key(cand, original, reference, shadows)
    if out.is_file() and read_json(out).get("key") == key:
        return read_json(out)
    t0 = time.perf_counter()
    rec = evaluate_run(cand, original=original, reference=reference, shadows=shadows,
                       forget=forget)
    verdict = gate(rec)
    m = rec["models"]["model"]["membership"]
    check = next(c for c in verdict.checks if c["name"] == "membership")
    eff = rec["models"]["model"].get("forget_effect") or {}
    eff_check = next(c for c in verdict.checks if c["name"] == "forget_effect")
    row = {"status": m["status"], "z": m.get("z"), "p_value": m.get("p_value"),
           "power": m.get("power"), "n": m.get("n_tested"), "check": check["status"],
           "effect": eff.get("status"), "share": eff.get("share"),
           "share_upper": eff.get("share_upper"), "effect_check": eff_check["status"],
           "effect_reason": eff.get("reason"),
           "moved": ((rec.get("changes") or {}).get("vs_original") or {}).get("forget_moved"),
           "verdict": verdict.status, "failed_checks": [c["name"] for c in verdict.checks
                                                        if c["status"] == "fail"],
           "undecided_checks": [c["name"] for c in verdict.checks
                                if c["status"] == "cannot_say"],
           "gap_pp": (rec.get("fidelity") or {}).get("average_gap_pp"),
           "membership_seconds": rec["membership"]["seconds"],
           "evaluate_seconds": time.perf_counter() - t0, "key": key}
    atomic_write_json(out, row)
    return row


def shadow_cost(original: Path, shadows: Path) -> dict:
    from medunlearn.fileio import read_json
    from medunlearn.runs.shadows import training_seconds

    secs = training_seconds(shadows)
    train = read_json(original / "metrics.json")["train_seconds"]
    return {"k": len(secs), "shadow_seconds": sum(secs), "train_seconds": train,
            "multiple": sum(secs) / train}


def self_test(cs, seed: int, frac: float = 0.1) -> dict:
    """Held-out shadows as candidates: random ``frac`` of their OUT images (null) and of their
    IN images (power), each tested with the other K - 1 shadows."""
    import numpy as np

    from medunlearn.evaluation import membership as M
    from medunlearn.evaluation.membership import pseudo_member

    ctr, cv, mem = cs.confidences("train"), cs.confidences("val"), cs.membership
    ytr, yv = cs.labels("train"), cs.labels("val")
    pm = pseudo_member(cs, "val")
    rng = np.random.default_rng(seed)
    n_req = max(1, int(frac * mem.shape[1]))
    res = {"OUT": [], "IN": []}
    for k in range(cs.k):
        keep = np.arange(cs.k) != k
        g = M.Globals.from_confidences(ctr[keep], mem[keep])
        ink, outk = np.flatnonzero(mem[k]), np.flatnonzero(~mem[k])
        for side, pool in (("OUT", outk), ("IN", ink)):
            f = np.sort(rng.choice(pool, min(n_req, len(pool)), replace=False))
            kin = np.setdiff1d(ink, f)
            r = M.membership_evidence(
                target=ctr[k, f], target_conf=ctr[keep][:, f], target_member=mem[keep][:, f],
                known_out=cv[k], known_out_conf=cv[keep], known_out_member=pm[keep],
                known_in=ctr[k, kin], known_in_conf=ctr[keep][:, kin],
                known_in_member=mem[keep][:, kin], globals_=g, labels=(ytr[f], yv, ytr[kin]),
                num_classes=int(cs.logits["train"].shape[2]))
            res[side].append(r)
    out = {}
    for side, rs in res.items():
        z = [r["z"] for r in rs if r["z"] is not None]
        out[side] = {"z_mean": statistics.fmean(z) if z else None,
                     "z_sd": statistics.pstdev(z) if z else None,
                     "p_below_alpha": sum(r["p_value"] < r["alpha"] for r in rs
                                          if r["p_value"] is not None) / len(rs),
                     "status": {s: sum(r["status"] == s for r in rs)
                                for s in ("fail", "pass", "cannot say")}}
    return out


def naive_z(cs, original: Path, cand: Path, forget) -> float:
    """Offline LiRA without calibration: each forgotten image's confidence standardised by its
    OUT shadows' mean and standard deviation, summed over the request (about N(0, 1) if the
    candidate were a half-data shadow that never saw the images)."""
    import numpy as np

    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.evaluation import membership as M
    from medunlearn.evaluation.outputs import split_outputs
    from medunlearn.evaluation.privacy import logit_confidence

    run, data = load_run_and_data(cand)
    o = split_outputs(run.model, data.train, forget)
    phi = logit_confidence(o.probs, o.labels)
    st = M.image_stats(cs.confidences("train", forget), cs.membership[:, forget])
    g = M.Globals.from_confidences(cs.confidences("train"), cs.membership)
    sd = np.sqrt(M.shrunk_variance(st.var_out, st.n_out - 1, g.var_out))
    z = (phi - st.mu_out) / sd
    return float(z.sum() / np.sqrt(len(z)))


def oracle(original: Path, retrains: list[Path], reference: Path,
           shadows: Path | None = None) -> dict:
    """How far the original sits from N exact retrainings on its forgotten images, relative to
    retained images (where all are trained on: model-level differences cancel): the membership
    signal any per-image test could use, and the spread of retraining itself. With
    ``shadows``, each retraining is also gated like a candidate (:func:`calibrate`)."""
    import numpy as np

    from medunlearn.checkpoint import load_run, load_run_and_data
    from medunlearn.evaluation.outputs import split_outputs
    from medunlearn.evaluation.privacy import logit_confidence

    forget = read_forget(reference)
    for r in retrains:
        if not np.array_equal(read_forget(r), forget):
            raise SystemExit(f"{r} forgot another set than {reference}")
    run, data = load_run_and_data(original)
    retain = np.setdiff1d(np.arange(len(data.train)), forget)
    ctrl = np.sort(np.random.default_rng(0).choice(retain, len(forget), replace=False))

    def phi(m, idx):
        o = split_outputs(m, data.train, idx)
        return logit_confidence(o.probs, o.labels)

    models = [load_run(r).model for r in retrains]
    f = np.stack([phi(m, forget) for m in models])
    c = np.stack([phi(m, ctrl) for m in models])
    z_f = (phi(run.model, forget) - f.mean(0)) / f.std(0, ddof=1)
    z_c = (phi(run.model, ctrl) - c.mean(0)) / c.std(0, ddof=1)
    loo = []
    for k in range(len(models)):
        keep = np.arange(len(models)) != k
        a = (f[k] - f[keep].mean(0)) / f[keep].std(0, ddof=1)
        b = (c[k] - c[keep].mean(0)) / c[keep].std(0, ddof=1)
        loo.append(float((a.mean() - b.mean()) * np.sqrt(len(forget))))
    return {"n_retrains": len(models), "n_forget": len(forget),
            "did_per_image": float(z_f.mean() - z_c.mean()),
            "did_z": float((z_f.mean() - z_c.mean()) * np.sqrt(len(forget))),
            "retrain_did_z_mean": statistics.fmean(loo), "retrain_did_z_sd": statistics.pstdev(loo),
            "logit_gap_forget": float(np.mean(phi(run.model, forget) - f.mean(0))),
            "logit_gap_retained": float(np.mean(phi(run.model, ctrl) - c.mean(0))),
            "seed_sd": float(np.median(f.std(0, ddof=1))),
            "calibration": calibrate(original, retrains, reference, shadows)
            if shadows is not None else None}


def calibrate(original: Path, retrains: list[Path], reference: Path, shadows: Path) -> dict:
    """The calibration of the gate on exact retraining: every one of N retrainings (other
    seeds, same forget set) is gated against the original and the reference like a candidate.
    Counts the request-level ``forget_effect`` and whole-gate verdicts, and the per-image
    statuses of the paired test over all N x forgotten images (the per-image false-alarm rate:
    "looks remembered" on an image exact retraining forgot)."""
    from medunlearn.evaluation.gate import gate
    from medunlearn.fileio import atomic_write_json, read_json
    from medunlearn.runs.evaluate import evaluate_run

    rows = []
    for r in retrains:
        out = reference.parent / "eval" / "calibration" / f"{r.name}.json"
        key = evaluation_key(r, original, reference, shadows)
        if not out.is_file() or read_json(out).get("key") != key:
            rec = evaluate_run(r, original=original, reference=reference, shadows=shadows)
            verdict = gate(rec)
            eff = rec["models"]["model"].get("forget_effect") or {}
            atomic_write_json(out, {
                "verdict": verdict.status, "effect": eff.get("status"),
                "failed_checks": [c["name"] for c in verdict.checks if c["status"] == "fail"],
                "membership": next(c["status"] for c in verdict.checks
                                   if c["name"] == "membership"),
                "membership_section": rec["models"]["model"]["membership"]["status"],
                "share": eff.get("share"),
                "images": [i["status"] for i in eff.get("images") or []], "key": key})
        rows.append(read_json(out))
    images = [s for r in rows for s in r["images"]]

    def tally(key):
        return {v: sum(r[key] == v for r in rows) for v in sorted({r[key] for r in rows})}

    failed = [name for r in rows for name in r.get("failed_checks", [])]
    return {"n": len(rows), "verdict": tally("verdict"), "effect": tally("effect"),
            "failed_checks": {c: failed.count(c) for c in sorted(set(failed))},
            "membership": tally("membership"), "n_images": len(images),
            "images": {v: images.count(v) for v in sorted(set(images))}}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``k / n``."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * ((p * (1 - p) + z * z / (4 * n)) / n) ** 0.5 / (1 + z * z / n)
    return mid - half, mid + half


def read_forget(run: Path):
    import csv

    import numpy as np

    with open(run / "forget.csv") as fh:
        return np.array([int(r["index"]) for r in csv.DictReader(fh)], dtype=np.int64)


def single_requests(ds: str, base: Path, n: int, n_least: int, seed: int) -> dict:
    """Single-image requests against the original, one exact retraining without all of them
    and a head-only Newton step per image."""
    import numpy as np

    import medunlearn as mu
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.evaluation.membership import membership_section
    from medunlearn.evaluation.membership_paired import paired_section
    from medunlearn.evaluation.outputs import model_outputs, split_outputs
    from medunlearn.evaluation.privacy import logit_confidence
    from medunlearn.fileio import atomic_write_json, read_json
    from medunlearn.runs.shadows import load_companions

    out_file = base / "single.json"
    if out_file.is_file():
        return read_json(out_file)
    original = base / "original"
    run, data = load_run_and_data(original)
    t0 = time.perf_counter()
    cs = load_companions(base / "shadows", data=data)
    load_seconds = time.perf_counter() - t0
    from medunlearn.evaluation.membership import image_stats

    tr = split_outputs(run.model, data.train)
    phi = logit_confidence(tr.probs, tr.labels)
    least = np.argsort(phi)[:n_least]
    # the shadows' own view of memorisation: the largest IN - OUT gap in mean confidence
    st = image_stats(cs.confidences("train"), cs.membership)
    gap = np.where(np.isfinite(st.mu_in - st.mu_out), st.mu_in - st.mu_out, -np.inf)
    gap[least] = -np.inf
    most = np.argsort(-gap)[:n_least]
    rest = np.setdiff1d(np.arange(len(phi)), np.concatenate([least, most]))
    chosen = np.concatenate([least, most, np.random.default_rng(seed).choice(
        rest, n - 2 * n_least, replace=False)])
    idx_file = base / "single_indices.txt"
    idx_file.write_text("".join(f"{i}\n" for i in sorted(chosen.tolist())))
    unlearn(original, base / "retrain-single", "retrain", f"indices:{idx_file}", seed)
    ret = load_run_and_data(base / "retrain-single")[0].model
    retain = np.setdiff1d(np.arange(len(data.train)), chosen)
    rows = []
    outs = {name: model_outputs(m, data, forget=chosen, retain=retain)
            for name, m in ((ORIGINAL, run.model), ("exact retraining", ret))}
    times = []
    for j, i in enumerate(chosen.tolist()):
        row = {"index": i, "least_fit": bool(j < n_least),
               "most_memorised": bool(n_least <= j < 2 * n_least),
               "confidence": float(phi[i]), "shadow_gap": float(gap[i])}
        def only(o, j=j):
            return {s: (o[s].subset(np.array([j])) if s == "forget" else o[s]) for s in o}

        orig_one = only(outs[ORIGINAL])
        for name, o in outs.items():
            one = only(o)
            t = time.perf_counter()
            sec = membership_section(cs, one, forget=np.array([i]), retain=retain)
            eff = paired_section(cs, one, orig_one, forget=np.array([i]), retain=retain)
            times.append(time.perf_counter() - t)
            row[name] = {"status": sec["status"], "z": sec.get("z"), "power": sec.get("power"),
                         "effect": eff["status"]}
        res = mu.unlearn(run.model, data, forget=[i], method="newton",
                         options={"scope": "head"}, seed=seed, device="cpu")
        o = model_outputs(res.model, data, forget=np.array([i]), retain=retain)
        sec = membership_section(cs, o, forget=np.array([i]), retain=retain)
        eff = paired_section(cs, o, orig_one, forget=np.array([i]), retain=retain)
        row[NEWTON] = {"status": sec["status"], "z": sec.get("z"), "power": sec.get("power"),
                       "effect": eff["status"]}
        rows.append(row)
    result = {"dataset": ds, "n": n, "n_least_fit": n_least, "rows": rows,
              "seconds_per_request": statistics.median(times),
              "seconds_per_request_max": max(times), "shadow_load_seconds": load_seconds}
    atomic_write_json(out_file, result)
    return result


def run_seed(ds: str, seed: int, work: Path, methods: list[str], k: int, quick: bool) -> dict:
    from medunlearn.runs.shadows import load_companions, shadows_for_run

    base = work / ds / f"seed-{seed}"
    original = base / "original"
    train(ds, seed, original, quick)
    t0 = time.perf_counter()
    shadows_for_run(original, k=k, out=base / "shadows", seed=seed, progress=True)
    print(f"{ds} seed {seed}: shadows ready ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    forget = "random:0.1"
    unlearn(original, base / "retrain", "retrain", forget, seed)
    unlearn(original, base / "retrain-other", "retrain", forget, seed, {"seed_offset": 1000})
    unlearn(original, base / "newton-head", "newton", forget, seed, {"scope": "head"})
    cands = {ORIGINAL: original, REFERENCE: base / "retrain", OTHER: base / "retrain-other",
             NEWTON: base / "newton-head"}
    for m in methods:
        if m != "newton":
            unlearn(original, base / m, m, forget, seed)
            cands[f"{m} (defaults)"] = base / m
        else:
            unlearn(original, base / "newton-all", "newton", forget, seed)
            cands["newton (defaults)"] = base / "newton-all"
    rows = {}
    for name, cand in cands.items():
        slug = name.split(" (")[0].replace(" ", "-").replace(",", "")
        rows[name] = evaluate(cand, original, base / "retrain", base / "shadows",
                              base / "eval" / f"{slug}.json",
                              forget=base / "retrain" / "forget.csv" if cand == original
                              else None)
        print(f"{ds} seed {seed}: {name}: {rows[name]['status']} (z {rows[name]['z']}, "
              f"power {rows[name]['power']}), gate {rows[name]['verdict']}", file=sys.stderr)
    cs = load_companions(base / "shadows")
    fset = read_forget(base / "retrain")
    return {"rows": rows, "cost": shadow_cost(original, base / "shadows"),
            "self_test": self_test(cs, seed),
            "naive_z": {ORIGINAL: naive_z(cs, original, original, fset),
                        REFERENCE: naive_z(cs, original, base / "retrain", fset)}}


def fmt(x, d=2):
    return "-" if x is None else f"{x:.{d}f}"


STATUS = {"fail": "FAIL", "pass": "pass", "cannot say": "cannot say"}


def report(results: dict, single: dict, args, oracles: dict | None = None) -> str:
    lines = ["## Membership evidence from shadow models (issue 27)", "",
             stamp(command_line()).rstrip(),
             "- CPU with native bf16: models and shadows train in bf16 (`--precision auto`); "
             "evaluation runs in fp32.", "",
             f"K = {args.k} shadow models per original (balanced random halves), random 10% "
             "forgotten, seeds " + ", ".join(map(str, args.seeds)) + ". The check is the "
             "gate's `membership` check (alpha 0.05, minimum power 0.8); *cannot say* is never "
             "a pass. Cells: status (z, power); the gate's verdict over all checks in the "
             "last columns.", ""]
    for ds, by_seed in results.items():
        seeds = sorted(by_seed)
        names = list(next(iter(by_seed.values()))["rows"])
        lines += [f"### {ds}", "",
                  "| model | " + " | ".join(f"seed {s}" for s in seeds) + " | gate verdicts |",
                  "|---|" + "---|" * (len(seeds) + 1)]
        for name in names:
            cells, verdicts = [], []
            for s in seeds:
                r = by_seed[s]["rows"].get(name)
                if r is None:
                    cells.append("-")
                    continue
                cells.append(f"{STATUS.get(r['status'], r['status'])} ({fmt(r['z'])}, "
                             f"{fmt(r['power'])})")
                verdicts.append(r["verdict"])
            lines.append(f"| {name} | " + " | ".join(cells) + " | "
                         + ", ".join(verdicts) + " |")
        lines += ["", "The paired test against the original (`forget_effect`; the share of "
                  "exact retraining's expected drop the model made on the forgotten images, "
                  "with its upper confidence bound; fail below 0.5) and the shift from the "
                  "original as a share of the reference's (`moved`, the `forget_changed` "
                  "rule: fail below 0.25):", "",
                  "| model | " + " | ".join(f"seed {s}" for s in seeds) + " |",
                  "|---|" + "---|" * len(seeds)]
        for name in names:
            cells = []
            for s in seeds:
                r = by_seed[s]["rows"].get(name)
                cells.append("-" if r is None or "effect" not in r else
                             f"{STATUS.get(r['effect'], r['effect'])} ({fmt(r['share'])}, "
                             f"<= {fmt(r['share_upper'])}); moved {fmt(r['moved'])}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        reasons = {by_seed[s]["rows"][ORIGINAL].get("effect_reason") for s in seeds
                   if by_seed[s]["rows"][ORIGINAL].get("effect") == "cannot say"}
        if reasons:
            lines += ["", "Why the paired test cannot say on the original: "
                      + "; ".join(sorted(r for r in reasons if r)) + "."]

        def count(name, key, value, by_seed=by_seed, seeds=seeds):
            return sum(by_seed[s]["rows"].get(name, {}).get(key) == value for s in seeds)

        unchanged = sum("forget_changed" in by_seed[s]["rows"][ORIGINAL]["failed_checks"]
                        for s in seeds)
        lines += ["", f"Targets (issue 27): the gate fails the untouched original in "
                  f"{count(ORIGINAL, 'verdict', 'failed')}/{len(seeds)} seeds (by the "
                  f"membership check: {count(ORIGINAL, 'check', 'fail')}/{len(seeds)}; by the "
                  f"paired forget_effect check: {count(ORIGINAL, 'effect_check', 'fail')}/"
                  f"{len(seeds)}; by forget_changed: {unchanged}/{len(seeds)}); the "
                  f"forget_effect check passes exact retraining in "
                  f"{count(REFERENCE, 'effect_check', 'pass')}/{len(seeds)} (the reference) and "
                  f"{count(OTHER, 'effect_check', 'pass')}/{len(seeds)} (another seed) and "
                  f"fails it in {count(REFERENCE, 'effect_check', 'fail')} and "
                  f"{count(OTHER, 'effect_check', 'fail')}; the gate passes exact retraining in "
                  f"{count(REFERENCE, 'verdict', 'passed')}/{len(seeds)} seeds (the reference) "
                  f"and {count(OTHER, 'verdict', 'passed')}/{len(seeds)} (another seed); the "
                  "membership check passes them in "
                  f"{count(REFERENCE, 'check', 'pass')}/{len(seeds)} and "
                  f"{count(OTHER, 'check', 'pass')}/{len(seeds)}."]
        costs = [by_seed[s]["cost"] for s in seeds]
        secs = statistics.fmean(c["shadow_seconds"] for c in costs)
        mult = statistics.fmean(c["multiple"] for c in costs)
        one = statistics.fmean(c["train_seconds"] for c in costs)
        lines += ["", f"One-time shadow training: {secs:.0f} s per original, {mult:.1f}x one "
                  f"training run ({one:.0f} s).", ""]
        st = [by_seed[s]["self_test"] for s in seeds]
        lines += ["Held-out shadows as candidates (each tested with the other K - 1 on random "
                  "10% subsets): "
                  + "; ".join(f"seed {s}: never-seen images z {fmt(t['OUT']['z_mean'])} +- "
                              f"{fmt(t['OUT']['z_sd'])}, p < 0.05 in "
                              f"{t['OUT']['p_below_alpha']:.0%}; trained-on images z "
                              f"{fmt(t['IN']['z_mean'])}, fail {t['IN']['status']['fail']}/"
                              f"{sum(t['IN']['status'].values())}"
                              for s, t in zip(seeds, st, strict=True)) + ".", ""]
        nz = [by_seed[s]["naive_z"] for s in seeds]
        lines += ["Uncalibrated reading (the candidate's confidences against the half-data "
                  "shadows' OUT Gaussians, summed z): original "
                  + ", ".join(fmt(n[ORIGINAL]) for n in nz) + "; exact retraining "
                  + ", ".join(fmt(n[REFERENCE]) for n in nz)
                  + " (a full-data model is more confident on images it never saw than a "
                  "half-data shadow: without calibration, retraining looks like a member).", ""]
    if single:
        lines += [f"### Single-image requests (seed {args.seeds[0]})", "",
                  f"| dataset | model | all {args.single}: fail / pass / cannot say | "
                  f"{args.least_fit} least-fit | {args.least_fit} most memorised by the "
                  "shadows |", "|---|---|---|---|---|"]
        for ds, s in single.items():
            for name in (ORIGINAL, "exact retraining", NEWTON):
                for key, label in (("status", "membership"), ("effect", "forget_effect")):
                    def share(rows, name=name, key=key):
                        n = len(rows)
                        c = {k: sum(r[name].get(key) == k for r in rows) for k in
                             ("fail", "pass", "cannot say")}
                        return " / ".join(f"{c[k] / n:.0%}"
                                          for k in ("fail", "pass", "cannot say"))
                    least = [r for r in s["rows"] if r["least_fit"]]
                    most = [r for r in s["rows"] if r.get("most_memorised")]
                    lines.append(f"| {ds} | {name} ({label}) | {share(s['rows'])} | "
                                 f"{share(least)} | {share(most)} |")
        lines += ["", "Cost per request (the membership test on outputs the verification "
                  "computes anyway; the shadow set is loaded once): "
                  + "; ".join(f"{ds} median {s['seconds_per_request'] * 1000:.0f} ms (max "
                              f"{s['seconds_per_request_max'] * 1000:.0f} ms), loading the "
                              f"shadows {s['shadow_load_seconds']:.2f} s"
                              for ds, s in single.items()) + ".", ""]
    if oracles:
        lines += [f"### How far the original is from exact retraining (seed {args.seeds[0]})", "",
                  "N exact retrainings without the same 10% (different seeds) give each "
                  "forgotten image a retraining distribution; the original's standardised "
                  "distance from it on the forgotten images, minus the same on as many retained "
                  "images (trained on by all, so model-level differences cancel), is the "
                  "membership signal any per-image test has to work with. Each retraining "
                  "scored the same way against the others shows retraining's own spread.", "",
                  "| dataset | N | forgotten images | signal per image (sd units) | summed z of "
                  "the original | retraining's own summed z (mean +- sd) | logit gap forgotten "
                  "/ retained | retraining seed sd (logit) |", "|---|---|---|---|---|---|---|---|"]
        for ds, o in oracles.items():
            lines.append(f"| {ds} | {o['n_retrains']} | {o['n_forget']} | "
                         f"{fmt(o['did_per_image'], 3)} | {fmt(o['did_z'])} | "
                         f"{fmt(o['retrain_did_z_mean'])} +- {fmt(o['retrain_did_z_sd'])} | "
                         f"{fmt(o['logit_gap_forget'])} / {fmt(o['logit_gap_retained'])} | "
                         f"{fmt(o['seed_sd'])} |")
        lines.append("")
        cal = {ds: o["calibration"] for ds, o in oracles.items() if o.get("calibration")}
        if cal:
            lines += ["The same N retrainings gated like candidates (against the original and "
                      "the reference, with the shadows): how often the gate, its paired "
                      "`forget_effect` check and its `membership` check (as the gate reads it: "
                      "below its minimum power it cannot say) fail exact retraining "
                      "(the false-alarm rate the 5% level promises), and the paired test's "
                      "per-image statuses over every retraining x forgotten image (a \"looks "
                      "remembered\" there is a false alarm on one image; 95% Wilson interval):",
                      "", "| dataset | N | gate: passed / cannot say / failed (failing checks) "
                      "| forget_effect: pass / cannot say / fail | membership: pass / cannot say "
                      "/ fail | image trials | looks forgotten | cannot say | looks remembered "
                      "[95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
            for ds, c in cal.items():
                def three(t, a, b, f):
                    return " / ".join(str(t.get(k, 0)) for k in (a, b, f))
                im, n = c["images"], c["n_images"]
                bad = im.get("looks remembered", 0)
                lo, hi = wilson(bad, n)
                why = ", ".join(f"{k} {v}" for k, v in c.get("failed_checks", {}).items())
                rate = (f"{bad} ({100 * bad / n:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}])" if n
                        else "- (no image tested)")
                lines.append(
                    f"| {ds} | {c['n']} | {three(c['verdict'], 'passed', 'cannot say', 'failed')}"
                    + (f" ({why})" if why else "") +
                    f" | {three(c['effect'], 'pass', 'cannot say', 'fail')} | "
                    f"{three(c['membership'], 'pass', 'cannot_say', 'fail')}"
                    + (f" ({c['membership']['skipped']} settled by forget_effect)"
                       if c["membership"].get("skipped") else "") + f" | {n} | "
                    f"{im.get('looks forgotten', 0)} | {im.get('cannot say', 0)} | {rate} |")
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="pneumoniamnist,tb")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--methods", default=",".join(ALL_METHODS),
                   help="Methods besides the head-only Newton step (default: every method).")
    p.add_argument("--method-seeds", default=None,
                   help="Seeds that run --methods (default: all of --seeds).")
    p.add_argument("--single", type=int, default=50, help="Single-image requests (0: none).")
    p.add_argument("--least-fit", type=int, default=10)
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--quick", action="store_true", help="Tiny data, K = 4, one method.")
    p.add_argument("--benchmarks", type=Path, default=None)
    p.add_argument("--oracle", action="append", default=[], metavar="DATASET=DIR",
                   help="N exact retrainings of the seed-0 original without the seed-0 forget "
                   "set ('medunlearn verify-forgetting ... --out DIR' makes them in "
                   "DIR/retrained): how far the original sits from retraining's own spread.")
    p.add_argument("--tb-csv", type=Path, default=None,
                   help="The TB set's labels.csv (default ../shared/data/tb-cxr/labels.csv).")
    args = p.parse_args(argv)
    if args.tb_csv is not None:
        DATASETS["tb"][1] = str(args.tb_csv.resolve())
    args.seeds = [int(s) for s in args.seeds.split(",")]
    if args.quick:
        args.k, args.methods, args.single, args.least_fit = 4, "finetune", 6, 2
    import torch

    torch.set_num_threads(2)
    work = args.work or REPO / "runs" / ("bench_membership_quick" if args.quick
                                         else "bench_membership")
    methods = [m for m in args.methods.split(",") if m]
    results: dict = {}
    single: dict = {}
    for ds in args.datasets.split(","):
        method_seeds = set(args.seeds if args.method_seeds is None else
                           (int(x) for x in args.method_seeds.split(",")))
        results[ds] = {s: run_seed(ds, s, work, methods if s in method_seeds else [], args.k,
                                   args.quick) for s in args.seeds}
        if args.single:
            single[ds] = single_requests(ds, work / ds / f"seed-{args.seeds[0]}", args.single,
                                         args.least_fit, args.seeds[0])
    oracles = {}
    for spec in args.oracle:
        ds, folder = spec.split("=", 1)
        base = work / ds / f"seed-{args.seeds[0]}"
        runs = sorted(p for p in Path(folder).glob("seed-*") if (p / "metrics.json").is_file())
        if len(runs) < 3:
            print(f"--oracle {spec}: fewer than 3 finished retrainings, skipped",
                  file=sys.stderr)
            continue
        oracles[ds] = oracle(base / "original", runs, base / "retrain", base / "shadows")
    from medunlearn.fileio import atomic_write_json

    atomic_write_json(work / "results.json", {"results": results, "single": single,
                                              "oracle": oracles})
    publish("membership", report(results, single, args, oracles), args, work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
