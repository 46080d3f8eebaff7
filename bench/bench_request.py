"""Benchmark: one patient's deletion request, end to end, on a trained model.

Measures validate + unlearn + verify + promote through ``medunlearn.registry.forget`` with the
registry's default method (target: at most ``--target`` seconds on a 2-core CPU), and the same
request by retraining for comparison, with the model's test AUC before and after. Each path gets
its own fresh registry of the same model. The results replace the ``--section`` section of
BENCHMARKS.md (machine, command and date included).

Usage::

    .venv/bin/python bench/bench_request.py                 # trains a PneumoniaMNIST model first
    .venv/bin/python bench/bench_request.py --model runs/pneu
    .venv/bin/python bench/bench_request.py --model runs/tb64-s0 --images 1 --target 5 \
        --section request_tb                                # one TB patient (one image)
    .venv/bin/python bench/bench_request.py --quick         # tiny smoke run, ~1 minute
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from _report import command_line, model_parser, publish, stamp, work_and_model  # noqa: E402

TARGET_SECONDS = 10.0


def test_auc(run_dir: Path, data_root: str | None) -> float:
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.training import evaluate_split

    run, data = load_run_and_data(run_dir, data_root=data_root)
    return evaluate_split(run.model, data.test)["auc"]


def patient_request(model: Path, n_images: int, seed: int, rid: str, method: str | None) -> dict:
    """A request for ``n_images`` training images (a stand-in for one patient's studies)."""
    import csv

    with open(model / "manifest.csv") as fh:
        hashes = [r["sha256"] for r in csv.DictReader(fh)]
    chosen = random.Random(seed).sample(range(len(hashes)), n_images)
    body = {"id": rid, "subject": f"bench-patient-{seed}", "images": [hashes[i] for i in chosen]}
    if method:
        body["method"] = method
    return body


def run_path(model: Path, work: Path, *, method: str | None, n_images: int, seed: int,
             data_root: str | None) -> dict:
    from medunlearn.registry import forget, init_registry

    reg = work / f"registry-{method or 'default'}-{n_images}"
    shutil.rmtree(reg, ignore_errors=True)
    t_init = time.perf_counter()
    init_registry(model, reg, data_root=data_root)  # also warms REG/cache (features of v1)
    init_seconds = time.perf_counter() - t_init
    request = patient_request(model, n_images, seed, f"BENCH-{method or 'default'}-{n_images}",
                              method)
    t0 = time.perf_counter()
    result = forget(reg, request, data_root=data_root,
                    log=lambda m: print(m, file=sys.stderr))
    wall = time.perf_counter() - t0
    after = reg / "versions" / str(result.get("to_version")) if result.get("to_version") else None
    return result | {"wall_seconds": wall, "path": method or "default", "images": n_images,
                     "init_seconds": init_seconds,
                     "auc_after": test_auc(after, data_root) if after else None}


def _f(v) -> str:
    return f"{v:.2f}" if isinstance(v, (int, float)) else "-"


def _f4(v) -> str:
    return f"{v:.4f}" if isinstance(v, (int, float)) else "-"


def render(results: list[dict], *, model: Path, n_images: int, quick: bool, target: float,
           auc_before: float, title: str) -> str:
    lines = [
        f"## {title} (`bench/bench_request.py`)",
        "",
        stamp(command_line()).rstrip("\n")
        + ("\n- **--quick smoke run, not a measurement**" if quick else ""),
        f"- model: `{model}`; a request names training images of one (simulated) patient by "
        f"SHA-256 (target: {n_images} image(s)); test AUC before: {auc_before:.4f}",
        "",
        "| images | path | method promoted | attempts | validate s | unlearn s | verify s "
        "| promote s | end to end s | test AUC after | outcome |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        attempts = " -> ".join(f"{a['method']} ({a['status']})" for a in r["attempts"])
        lines.append(f"| {r['images']} | {r['path']} | {r.get('method') or '-'} | {attempts} | "
                     f"{_f(r.get('validate_seconds'))} | {_f(r.get('unlearn_seconds'))} | "
                     f"{_f(r.get('verify_seconds'))} | {_f(r.get('promote_seconds'))} | "
                     f"{_f(r['wall_seconds'])} | "
                     f"{_f4(r.get('auc_after'))} | "
                     f"{r['status']} |")
    default = next((r for r in results if r["path"] == "default" and r["images"] == n_images),
                   None)
    retrain = next((r for r in results if r["path"] == "retrain" and r["images"] == n_images),
                   None)
    lines.append("")
    if default:
        met = "met" if default["wall_seconds"] <= target else "NOT met"
        lines.append(f"Target: default path end to end <= {target:g} s: **{met}** "
                     f"({default['wall_seconds']:.1f} s).")
        if default.get("auc_after") is not None:
            lines.append(f"Test AUC change on the default path: "
                         f"{100 * (default['auc_after'] - auc_before):+.2f} points.")
    if default and retrain and default["wall_seconds"] > 0:
        lines.append(f"Retraining path / default path: "
                     f"{retrain['wall_seconds'] / default['wall_seconds']:.1f}x.")
    for size in sorted({r["images"] for r in results} - {n_images}):
        d = next((r for r in results if r["path"] == "default" and r["images"] == size), None)
        rt = next((r for r in results if r["path"] == "retrain" and r["images"] == size), None)
        if d and rt:
            ratio = rt["wall_seconds"] / d["wall_seconds"]
            lines.append(f"{size} images: default path {d['wall_seconds']:.1f} s, retraining "
                         f"{rt['wall_seconds']:.1f} s ({ratio:.1f}x), promoted "
                         f"{d.get('method') or '-'}.")
    if default:
        lines.append(f"Registry init (copy, manifest, ledger, and the active model's features on "
                     f"the verification images into `REG/cache`): "
                     f"{default['init_seconds']:.1f} s, once per registry.")
    lines += ["", "End to end = `medunlearn.registry.forget` wall time: lock, recovery check, "
              "validation, unlearning from the active version (the registry's Newton step "
              "updates the head: `registry.steps.REQUEST_OPTIONS`), evaluation against it with "
              "the safety gate (the active model's features come from `REG/cache`; the "
              "candidate's are computed once and shared by unlearning and verification), "
              "promotion (rename + one SQLite transaction with the ledger entries)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = model_parser(__doc__, "request")
    p.add_argument("--images", type=int, default=10,
                   help="Images in the request the target applies to (default 10).")
    p.add_argument("--more", default="",
                   help="Further request sizes to measure the same way, e.g. 7,35,70.")
    p.add_argument("--seed", type=int, default=0, help="Chooses the patient's images.")
    p.add_argument("--skip-retrain", action="store_true", help="Only the default path.")
    p.add_argument("--target", type=float, default=TARGET_SECONDS,
                   help="Target end-to-end seconds of the default path (default 10).")
    p.add_argument("--section", default="request",
                   help="BENCHMARKS.md section to replace (default: request).")
    p.add_argument("--title", default="Deletion request end to end",
                   help="Heading of the section.")
    args = p.parse_args(argv)
    work, model = work_and_model(args, args.section)
    auc_before = test_auc(model, args.data_root)
    results = []
    for size in [args.images] + [int(x) for x in args.more.split(",") if x.strip()]:
        results.append(run_path(model, work, method=None, n_images=size, seed=args.seed,
                                data_root=args.data_root))
        if not args.skip_retrain:
            results.append(run_path(model, work, method="retrain", n_images=size,
                                    seed=args.seed, data_root=args.data_root))
    publish(args.section, render(results, model=model, n_images=args.images, quick=args.quick,
                                 target=args.target, auc_before=auc_before, title=args.title),
            args, work)
    return 0 if all(r["status"] == "completed" for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
