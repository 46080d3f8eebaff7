"""Benchmark: sharded training (SISA) against the monolithic model; one-patient exact forgetting.

For each dataset and seed it trains the monolithic model and the sharded models of every
S x R asked for (``medunlearn.runs.run_sharded_training``; finished folders are reused), then
measures, side by side in the same run:

* test AUC, accuracy, FNR (1 - recall of the disease class) and per-class recall (the minority
  class of the training split above all) of each sharded model against the monolithic one;
* the cost of exact forgetting: ``retrain`` of the whole sharded model (every shard from scratch)
  for one patient, then ``sisa`` for each of ``--patients`` patients (one request each), as
  method time and end to end (``run_unlearning`` as a registry request's unlearning step calls
  it: load, unlearn, evaluate val/test/forget and RA on the registry's seeded 1000-image retain
  subset, write); and that ``sisa`` gave the same checkpoint bytes as ``retrain`` for the first
  patient;
* the inference cost of the ensemble against the monolithic model (test split, logits).

The results replace the ``shards`` section of BENCHMARKS.md (machine, command and date included)
and are written to ``WORK/results.json``. With ``--merge`` the rows of earlier runs in the same
``WORK`` folder (other datasets, S or R) are kept and reported too, so a long grid can run in
chunks (one dataset per acquisition of a shared machine's lock); the section lists every
command that contributed.

Usage::

    .venv/bin/python bench/bench_shards.py --quick                 # smoke run, a few minutes
    .venv/bin/python bench/bench_shards.py --datasets pneumoniamnist,tb64 --shards 4 \
        --slices 1,4 --seeds 0,1,2                                  # the issue-25 targets
    .venv/bin/python bench/bench_shards.py                          # the full grid (hours)

Datasets: ``pneumoniamnist``, ``breastmnist`` (28 px MedMNIST), ``tb64`` (TB chest X-rays at
64 px, one image per patient) and ``nih64`` (NIH ChestX-ray14 subset at 64 px, patient ids,
patient-grouped resplit). Run it under ``flock /work/heavy.lock`` on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "src"))
from _report import command_line, publish, stamp  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
DATASETS = {
    "pneumoniamnist": {"label": "PneumoniaMNIST 28 px", "medmnist": "pneumoniamnist"},
    "breastmnist": {"label": "BreastMNIST 28 px", "medmnist": "breastmnist"},
    "tb64": {"label": "TB 64 px", "manifest": SHARED / "tb-cxr" / "labels.csv",
             "options": {"size": 64}},
    "nih64": {"label": "NIH 64 px", "manifest": SHARED / "nih-cxr-1000" / "metadata.csv",
              "options": {"size": 64, "split_column": "source_split", "resplit": True}},
}
# issue 25's targets at S = 4 on PneumoniaMNIST and TB
AUC_PP, MINORITY_PP, TIME_R1, TIME_SLICED = 1.0, 3.0, 0.15, 0.08


def load(name: str, seed: int, quick: bool, data_root: str | None):
    """``(DataConfig, Dataset)`` of a benchmark dataset."""
    from medunlearn.config import DataConfig
    from medunlearn.data import load_dataset
    from medunlearn.data.manifest import load_files

    spec = DATASETS[name]
    limits = {"train_limit": 400, "eval_limit": 200} if quick else {}
    if "medmnist" in spec:
        cfg = DataConfig(dataset=spec["medmnist"], data_root=data_root, **limits)
        return cfg, load_dataset(cfg, seed=seed)
    return DataConfig(), load_files(spec["manifest"], seed=seed, **spec["options"], **limits)


def groups_to_forget(dataset, k: int, seed: int) -> list[list[int]]:
    """``k`` patients chosen with ``seed``: the training indices of each, every byte-identical
    copy included (images without a patient id are one patient each)."""
    from medunlearn.forget_set import hash_indices, patient_indices

    train = dataset.train
    if train.patient_ids is not None:
        people = sorted(set(train.patient_ids.tolist()))
        chosen = random.Random(seed).sample(people, k)
        return [patient_indices(dataset, [p]).tolist() for p in chosen]
    hashes = sorted(set(train.hashes))
    return [hash_indices(dataset, [h]).tolist() for h in random.Random(seed).sample(hashes, k)]


def inference_seconds(model, dataset, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds to compute the logits of the test split."""
    from medunlearn.loop import infer

    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        infer(model, dataset.test)
        best = min(best, time.perf_counter() - t0)
    return best


def scores(metrics: dict, dataset) -> dict:
    """Test AUC, accuracy, FNR and per-class recall from a run's metrics."""
    import numpy as np

    test = metrics["splits"]["test"]
    recall = test["per_class_recall"]
    counts = np.bincount(dataset.train.labels.numpy(), minlength=dataset.num_classes)
    minority = int(np.argmin(counts))
    pos = (dataset.view.positive_labels or (1,))[0]
    return {"auc": test["auc"], "accuracy": test["accuracy"], "fnr": 1 - recall[pos],
            "recall": recall, "minority": minority, "minority_recall": recall[minority]}


def warm_up(threads: int) -> None:
    """One tiny training, so the first measured one does not carry the process's one-time
    costs (kernel selection, allocator growth)."""
    import numpy as np

    import medunlearn as mu
    from medunlearn.config import ModelConfig, TrainConfig
    from medunlearn.training import train_model

    rng = np.random.default_rng(0)
    part = {"images": rng.random((64, 28, 28)).astype("float32"), "labels": np.arange(64) % 2}
    data = mu.from_arrays({"train": part, "val": part, "test": part})
    train_model(data, ModelConfig(width=8), TrainConfig(epochs=1, threads=threads,
                                                        progress=False), seed=0)


def measure(name: str, seed: int, args, work: Path) -> list[dict]:
    from medunlearn.checkpoint import load_run
    from medunlearn.config import ModelConfig, TrainConfig
    from medunlearn.registry.steps import VERIFY_OPTIONS
    from medunlearn.runs import run_sharded_training, run_training, run_unlearning
    from medunlearn.sharding import shard_recipe

    # a registry request's unlearning step reports RA on a seeded retain subset of this size
    retain_limit = VERIFY_OPTIONS["retain_limit"]

    data_cfg, dataset = load(name, seed, args.quick, args.data_root)
    model_cfg = ModelConfig(width=8 if args.quick else 16)
    train_cfg = TrainConfig(epochs=2 if args.quick else None, threads=args.threads,
                            progress=False, batch_size=args.batch_size)
    base = work / name / f"seed-{seed}"
    t0 = time.perf_counter()
    mono = run_training(data_cfg, model_cfg, train_cfg, seed=seed, out=base / "monolithic",
                        overwrite=False, dataset=dataset)
    print(f"{name} seed {seed}: monolithic {'reused' if mono.get('reused') else 'trained'} "
          f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    mono_model = load_run(base / "monolithic").model
    rows = [{"dataset": name, "seed": seed, "S": 0, "R": 0, "n_test": len(dataset.test),
             **scores(mono, dataset),
             "train_seconds": mono["train_seconds"],
             "infer_seconds": inference_seconds(mono_model, dataset)}]
    forget_sets = groups_to_forget(dataset, args.patients, seed)
    for shards in args.shards:
        for slices in args.slices:
            folder = base / f"S{shards}-R{slices}"
            t0 = time.perf_counter()
            m = run_sharded_training(data_cfg, model_cfg, train_cfg, seed=seed, out=folder,
                                     shards=shards, slices=slices, dataset=dataset)
            print(f"{name} seed {seed} S={shards} R={slices}: "
                  f"{'reused' if m.get('reused') else 'trained'} "
                  f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
            run = load_run(folder)
            row = {"dataset": name, "seed": seed, "S": shards, "R": slices,
                   "shard_batch": shard_recipe(train_cfg, shards).batch_size,
                   **scores(m, dataset), "train_seconds": m["train_seconds"],
                   "infer_seconds": inference_seconds(run.model, dataset)}
            if shards == 1 and slices == 1:
                from torch import equal

                a, b = run.model.members[0].state_dict(), mono_model.state_dict()
                row["equals_monolithic"] = all(equal(a[k], b[k]) for k in b)
            scratch = work / "scratch"
            shutil.rmtree(scratch, ignore_errors=True)
            # side by side: the full retraining of the sharded model, then one sisa request per
            # patient (all with the training seed, so sisa must give retrain's bytes)
            t0 = time.perf_counter()
            full = run_unlearning(folder, method="retrain", forget=forget_sets[0], seed=seed,
                                  out=scratch / "retrain", progress=False,
                                  retain_limit=retain_limit)
            row["retrain_wall"] = time.perf_counter() - t0
            row["retrain_seconds"] = full["unlearn_seconds"]
            sisa = []
            for i, fs in enumerate(forget_sets):
                t0 = time.perf_counter()
                res = run_unlearning(folder, method="sisa", forget=fs, seed=seed,
                                     out=scratch / f"sisa-{i}", progress=False,
                                     retain_limit=retain_limit)
                sisa.append({"images": len(fs), "seconds": res["unlearn_seconds"],
                             "wall": time.perf_counter() - t0,
                             "shards": res["details"]["retrained_shards"],
                             "from_slice": list(res["details"]["from_slice"].values()),
                             "stages": res["details"]["retrained_stages"]})
            row["sisa"] = sisa
            same = all((scratch / "sisa-0" / f).read_bytes() == (scratch / "retrain" / f)
                       .read_bytes() for f in _checkpoint_files(scratch / "retrain"))
            row["sisa_equals_retrain"] = same
            shutil.rmtree(scratch, ignore_errors=True)
            rows.append(row)
    return rows


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in (folder / "shards").rglob("*.safetensors"))


def _ms(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.mean(vals) if vals else None


def summarize(rows: list[dict]) -> dict:
    """Per (dataset, S, R): means over seeds, with differences to the monolithic model of the
    same seed."""
    mono = {(r["dataset"], r["seed"]): r for r in rows if r["S"] == 0}
    out: dict = {}
    for r in rows:
        key = (r["dataset"], r["S"], r["R"])
        m = mono[(r["dataset"], r["seed"])]
        e = out.setdefault(key, {"rows": [], "d_auc": [], "d_minority": [], "ratio": [],
                                 "ratio_wall": [], "ratio_mono": [], "infer_ratio": []})
        e["rows"].append(r)
        e["d_auc"].append(100 * (r["auc"] - m["auc"]))
        e["d_minority"].append(100 * (r["minority_recall"] - m["minority_recall"]))
        e["infer_ratio"].append(r["infer_seconds"] / m["infer_seconds"])
        for s in r.get("sisa", []):
            e["ratio"].append(s["seconds"] / r["retrain_seconds"])
            e["ratio_wall"].append(s["wall"] / r["retrain_wall"])
            e["ratio_mono"].append(s["wall"] / m["train_seconds"])
    return out


def render(rows: list[dict], args, commands: list[str]) -> str:
    summ = summarize(rows)
    names = list(dict.fromkeys(r["dataset"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    earlier = [c for c in commands[:-1] if c != commands[-1]]
    batches = sorted({(r["S"], r["shard_batch"]) for r in rows if "shard_batch" in r})
    lines = [
        f"## {args.title} (`bench/bench_shards.py`)",
        "",
        stamp(commands[-1]).rstrip("\n")
        + "".join(f"\n- Earlier command merged (--merge): `{c}`" for c in earlier)
        + ("\n- **--quick smoke run (400 training images, width 8, 2 epochs): not a measurement**"
           if args.quick else ""),
        f"- seeds {', '.join(map(str, seeds))}; monolithic batch size {args.batch_size}; "
        f"{args.threads} torch threads; this CPU computes "
        "bf16 natively (training runs in bf16 autocast, inference in fp32); shards train one "
        "after another (local backend)",
        "- shard recipe (`medunlearn.sharding.shard_recipe`): every constituent trains the "
        "recipe's epochs E on its shard (R slices: round(2E/(R+1)) epochs per slice stage) at "
        "batch max(16, round(B/S)) ("
        + ", ".join(f"S = {k}: {b}" for k, b in batches)
        + "), i.e. as many optimiser steps per epoch as the monolithic model, and keeps its "
        "last epoch (no per-epoch validation); so a sharded training processes as many "
        "samples as one monolithic training; mean ± sd over seeds; differences are in points "
        "against the monolithic model of the same seed",
        "",
        "### Utility against the monolithic model",
        "",
        "| dataset | S | R | test AUC | ΔAUC pp | accuracy | FNR | minority recall "
        "| Δ minority pp | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for key in sorted(k for k in summ if k[0] == name):
            e = summ[key]
            rs = e["rows"]
            s_label = "monolithic" if key[1] == 0 else str(key[1])
            r_label = "-" if key[1] == 0 else str(key[2])
            minority = rs[0]["minority"]
            lines.append(
                f"| {DATASETS[name]['label']} | {s_label} | {r_label} | "
                f"{_ms([r['auc'] for r in rs], digits=4)} | "
                f"{'-' if key[1] == 0 else _ms(e['d_auc'])} | "
                f"{_ms([r['accuracy'] for r in rs], digits=4)} | "
                f"{_ms([r['fnr'] for r in rs], digits=4)} | "
                f"class {minority}: {_ms([r['minority_recall'] for r in rs], digits=4)} | "
                f"{'-' if key[1] == 0 else _ms(e['d_minority'])} | "
                f"{_ms([r['train_seconds'] for r in rs], digits=1)} |")
    same = [r["equals_monolithic"] for r in rows if "equals_monolithic" in r]
    if same:
        lines += ["", f"S = 1, R = 1 gave the monolithic model's weights bit for bit: "
                  f"{'yes' if all(same) else 'NO'} ({sum(same)}/{len(same)})."]
    lines += [
        "", "### Exact forgetting of one patient: sisa against retraining the sharded model",
        "",
        "Per sharded model: `retrain` (every shard from scratch, the model without the "
        "patient) once, then `sisa` for each patient, side by side. Method = the method's own "
        "time; end to end = `run_unlearning` as a registry request's unlearning step calls it "
        "(load the run and data, unlearn, evaluate val/test/forget and RA on the registry's "
        "seeded 1000-image retain subset, write the folder); fixed = end to end minus method. "
        "The last ratio is against training the monolithic model (its run's train_seconds).",
        "",
        "| dataset | S | R | retrain s | sisa s (mean) | sisa fixed s | sisa / retrain (method) "
        "| sisa / retrain (end to end) | sisa end to end / monolithic training "
        "| shards retrained | from slice | sisa == retrain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        for key in sorted(k for k in summ if k[0] == name and k[1] > 0):
            e = summ[key]
            rs = e["rows"]
            sisa = [s for r in rs for s in r["sisa"]]
            lines.append(
                f"| {DATASETS[name]['label']} | {key[1]} | {key[2]} | "
                f"{_ms([r['retrain_seconds'] for r in rs], digits=1)} | "
                f"{_ms([s['seconds'] for s in sisa], digits=1)} | "
                f"{_ms([s['wall'] - s['seconds'] for s in sisa], digits=1)} | "
                f"{_ms(e['ratio'], 100, 1)} % | {_ms(e['ratio_wall'], 100, 1)} % | "
                f"{_ms(e['ratio_mono'], 100, 1)} % | "
                f"{_mean(len(s['shards']) for s in sisa):.2f} | "
                f"{_mean(_mean(s['from_slice']) for s in sisa):.2f} | "
                f"{'yes' if all(r['sisa_equals_retrain'] for r in rs) else 'NO'} |")
    lines += [
        "", "### Inference cost of the ensemble", "",
        "| dataset | S | test images | monolithic ms | ensemble ms | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for name in names:
        mono = [r for r in rows if r["dataset"] == name and r["S"] == 0]
        for shards in sorted({k[1] for k in summ if k[0] == name and k[1] > 0}):
            ens = [r for r in rows if r["dataset"] == name and r["S"] == shards]
            ratios = [x for k, e in summ.items() if k[0] == name and k[1] == shards
                      for x in e["infer_ratio"]]
            lines.append(f"| {DATASETS[name]['label']} | {shards} | {mono[0]['n_test']}"
                         f" | {_ms([r['infer_seconds'] for r in mono], 1000, 1)} | "
                         f"{_ms([r['infer_seconds'] for r in ens], 1000, 1)} | "
                         f"{_ms(ratios, 1, 2)}x |")
    lines += ["", "### Issue 25 targets (S = 4, mean over seeds)", ""]
    for name in names:
        for slices in sorted({k[2] for k in summ if k[0] == name and k[1] == 4}):
            e = summ[(name, 4, slices)]
            d_auc, d_min = _mean(e["d_auc"]), _mean(e["d_minority"])
            ratio = _mean(e["ratio_wall"])
            limit = TIME_R1 if slices == 1 else TIME_SLICED
            checks = [
                (f"ΔAUC {d_auc:+.2f} pp (>= -{AUC_PP:g})", d_auc >= -AUC_PP),
                (f"Δ minority recall {d_min:+.2f} pp (>= -{MINORITY_PP:g})",
                 d_min >= -MINORITY_PP),
                (f"one-patient sisa end to end {100 * ratio:.1f} % of retraining "
                 f"(<= {100 * limit:g} %)", ratio <= limit),
            ]
            text = "; ".join(f"{c} **{'met' if ok else 'missed'}**" for c, ok in checks)
            lines.append(f"- {DATASETS[name]['label']}, R = {slices}: {text}.")
    lines += ["", f"### Which S each dataset supports (mean over seeds: test AUC within "
              f"{AUC_PP:g} pp of the monolithic model and minority-class recall within "
              f"{MINORITY_PP:g} pp)", ""]
    for name in names:
        for slices in sorted({k[2] for k in summ if k[0] == name and k[1] > 0}):
            parts, ok = [], []
            for shards in sorted({k[1] for k in summ if k[0] == name and k[1] > 0
                                  and k[2] == slices}):
                e = summ[(name, shards, slices)]
                d_auc, d_min = _mean(e["d_auc"]), _mean(e["d_minority"])
                good = d_auc >= -AUC_PP and d_min >= -MINORITY_PP
                ok += [shards] if good else []
                parts.append(f"S = {shards}: ΔAUC {d_auc:+.2f}, Δ minority {d_min:+.2f} "
                             f"({len(e['rows'])} seed(s)) {'ok' if good else '**no**'}")
            lines.append(f"- {DATASETS[name]['label']}, R = {slices}: supports S in "
                         f"{{{', '.join(map(str, ok))}}} of those measured ({'; '.join(parts)}).")
    lines += [
        "", "Expected cost of a one-patient request without fixed costs: retraining one of S "
        "shards is 1/S of a full retraining; with R slices and the patient in a uniformly "
        "random slice, (2R + 1) / (3R) of that (0.75 for R = 4), i.e. 25 % (R = 1) and "
        "18.75 % (R = 4) at S = 4. These are floors of exact one-shard retraining: the 15 % "
        "and 8 % targets need S >= 7 (R = 1) and S >= 10 (R = 4) even with no fixed cost. "
        "The request's fixed costs (loading, evaluating, writing) do not shrink with the "
        "shard.",
        "", "Time cuts against the previous section (docs/results/sharding.md): constituents "
        "keep their last epoch and skip the per-epoch validation pass over the whole "
        "validation split, which a one-shard retraining paid in full whatever the shard size "
        "(`shard_recipe`, `fit(validate=False)`; same weights as validating with "
        "select='last'); and the request's RA is measured on the registry's seeded 1000-image "
        "retain subset, as a registry request's unlearning step does, not on every retain "
        "image (4 constituents on 4,708 images cost ~8 s on PneumoniaMNIST). Neither changes "
        "what is retrained, so sisa == retrain byte for byte still holds.",
    ]
    return "\n".join(lines) + "\n"


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="pneumoniamnist,breastmnist,tb64,nih64",
                   help=f"Comma-separated, from {', '.join(DATASETS)}.")
    p.add_argument("--shards", default="1,2,4,8", help="S values (default 1,2,4,8).")
    p.add_argument("--slices", default="1,4", help="R values (default 1,4).")
    p.add_argument("--seeds", default="0,1,2", help="Seeds (default 0,1,2).")
    p.add_argument("--patients", type=int, default=3,
                   help="One-patient sisa requests per sharded model (default 3).")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2).")
    p.add_argument("--batch-size", type=int, default=128,
                   help="Batch size of every model, monolithic and sharded (default: the "
                        "recipe's 128).")
    p.add_argument("--work", type=Path, default=None,
                   help="Scratch folder (default: runs/bench_shards[_quick]); finished runs "
                        "in it are reused.")
    p.add_argument("--data-root", default=None, help="MedMNIST folder (default: $MEDMNIST_ROOT).")
    p.add_argument("--quick", action="store_true",
                   help="Tiny models on 400 training images, 2 epochs, for a smoke test; "
                        "writes to WORK/BENCHMARKS.md unless --benchmarks is given.")
    p.add_argument("--benchmarks", type=Path, default=None,
                   help="Markdown file whose section is replaced (default: BENCHMARKS.md at "
                        "the repository root).")
    p.add_argument("--section", default="shards",
                   help="BENCHMARKS.md section to replace (default: shards).")
    p.add_argument("--merge", action="store_true",
                   help="Keep the rows of earlier runs in WORK/results.json that this run does "
                        "not redo, and report them too (run a long grid in chunks).")
    p.add_argument("--report-only", action="store_true",
                   help="Measure nothing: rewrite the section from WORK/results.json (the "
                        "date is then the rewrite's; the commands are those that measured).")
    p.add_argument("--title", default="Sharded training (SISA) and one-patient exact "
                   "forgetting", help="Heading of the section.")
    args = p.parse_args(argv)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = [n for n in names if n not in DATASETS]
    if unknown:
        p.error(f"unknown dataset(s) {unknown}; choose from {', '.join(DATASETS)}")
    args.shards, args.slices, seeds = _ints(args.shards), _ints(args.slices), _ints(args.seeds)
    work = args.work or REPO / "runs" / ("bench_shards_quick" if args.quick else "bench_shards")
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    if args.report_only:
        rows = json.loads((work / "results.json").read_text())
        commands = json.loads((work / "commands.json").read_text())
        publish(args.section, render(rows, args, commands), args, work)
        return 0
    warm_up(args.threads)
    commands_file = work / "commands.json"
    commands = json.loads(commands_file.read_text()) if args.merge and \
        commands_file.is_file() else []
    commands.append(command_line())
    kept = json.loads((work / "results.json").read_text()) if args.merge and \
        (work / "results.json").is_file() else []
    rows: list[dict] = []

    def save() -> list[dict]:
        done = {(r["dataset"], r["seed"], r["S"], r["R"]) for r in rows}
        merged = [r for r in kept if (r["dataset"], r["seed"], r["S"], r["R"]) not in done]
        (work / "results.json").write_text(json.dumps(merged + rows, indent=1))
        return merged + rows

    for name in names:
        for seed in seeds:
            rows += measure(name, seed, args, work)
            save()
    everything = save()
    commands_file.write_text(json.dumps(commands, indent=1))
    publish(args.section, render(everything, args, commands), args, work)
    ok = all(r.get("sisa_equals_retrain", True) and r.get("equals_monolithic", True)
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
