"""Data-source benchmark: loading a CSV manifest of real chest X-rays (TB set, 1,000 PNG files of
512 px) resized to 128 px, first load (decode + resize + cache write) against a cached load
(hash the files + read the cache), and training throughput on those images against the 28 px
PneumoniaMNIST pipeline, measured side by side in the same run.

    .venv/bin/python bench/bench_data.py              # full: TB set at 128 px
    .venv/bin/python bench/bench_data.py --quick      # 100 images at 64 px, nothing written

Writes the "data" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _report import REPO, command_line, stamp, write_section  # noqa: E402

sys.path.insert(0, str(REPO / "src"))

from medunlearn.config import DataConfig, ModelConfig  # noqa: E402
from medunlearn.data import iterate_batches, load_dataset  # noqa: E402
from medunlearn.data.manifest import load_manifest  # noqa: E402
from medunlearn.training import (  # noqa: E402
    build_for,
    resolve_precision,
    training_layout,
)

TB = REPO.parent / "shared" / "data" / "tb-cxr" / "labels.csv"


def timed_load(manifest: Path, size: int, cache: Path, name: str) -> tuple[float, object]:
    t0 = time.perf_counter()
    ds = load_manifest(manifest, size=size, cache_dir=str(cache), metadata_columns=None,
                       name=name)
    return time.perf_counter() - t0, ds


def hash_seconds(manifest: Path) -> float:
    from medunlearn.fileio import sha256_file

    rows = list(csv.DictReader(open(manifest)))
    t0 = time.perf_counter()
    for r in rows:
        sha256_file(manifest.parent / r["path"])
    return time.perf_counter() - t0


def throughput(ds, steps: int, bs: int) -> tuple[float, str]:
    """Images/s of medunlearn's training step (as in training.fit) over ``steps`` batches."""
    bs = min(bs, len(ds.train))
    torch.manual_seed(0)
    model, spec = build_for(ds, ModelConfig())
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    layout = training_layout(model)
    bf16 = resolve_precision("auto") == "bf16"
    model.to(memory_format=layout).train()
    g = torch.Generator().manual_seed(0)

    def batches():
        while True:
            yield from iterate_batches(ds.train, batch_size=bs, shuffle=True, generator=g,
                                       augment="basic", drop_last=True)

    it = batches()

    def step():
        x, y, _ = next(it)
        x = x.contiguous(memory_format=layout)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up outside the timed region
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * bs / (time.perf_counter() - t0), spec["arch"]


def flops_per_image(ds) -> float:
    """Training FLOPs (forward + backward) per image of the default model for ``ds``."""
    from torch.utils.flop_counter import FlopCounterMode

    model, _ = build_for(ds, ModelConfig())
    x = torch.rand(2, ds.in_channels, ds.size, ds.size)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(x), torch.zeros(2, dtype=torch.long)).backward()
    return fc.get_total_flops() / 2


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", type=Path, default=TB, help="CSV manifest (default: TB set).")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2).")
    p.add_argument("--steps", type=int, default=4, help="Timed training steps per round.")
    p.add_argument("--rounds", type=int, default=3, help="Interleaved throughput rounds.")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--data-root", default=None, help="MedMNIST folder (default: $MEDMNIST_ROOT).")
    p.add_argument("--quick", action="store_true", help="100 images at 64 px; writes nothing "
                   "unless --benchmarks is given.")
    p.add_argument("--benchmarks", type=Path, default=None,
                   help="Markdown file whose data section is replaced (default: BENCHMARKS.md).")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shared = REPO.parent / "shared" / "data" / "medmnist"
    if args.data_root is None and not os.environ.get("MEDMNIST_ROOT") and shared.is_dir():
        args.data_root = str(shared)
    manifest = args.manifest
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.quick:
            rows = list(csv.DictReader(open(manifest)))[::10]
            manifest = tmp / "quick.csv"
            with open(manifest, "w", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows({**r, "path": str(args.manifest.parent / r["path"])} for r in rows)
            args.size, args.steps, args.rounds = 64, 2, 1
        cache = tmp / "cache"
        name = args.manifest.parent.name
        first, ds = timed_load(manifest, args.size, cache, name)
        cached = [timed_load(manifest, args.size, cache, name)[0] for _ in range(3)]
        hashing = hash_seconds(manifest)
        cache_mb = sum(f.stat().st_size for f in cache.rglob("*.npz")) / 2**20
    n = sum(len(ds.splits[s]) for s in ("train", "val", "test"))
    print(f"{ds.name}: {n} images, first load {first:.1f} s, cached {min(cached):.2f} s "
          f"(hashing {hashing:.2f} s)", flush=True)
    t0 = time.perf_counter()
    pneu = load_dataset(DataConfig(dataset="pneumoniamnist", view="binary",
                                   data_root=args.data_root))
    pneu_load = time.perf_counter() - t0
    rates: dict[str, list[float]] = {"files": [], "medmnist": []}
    arch = {}
    for r in range(args.rounds):
        for key, data in (("files", ds), ("medmnist", pneu)):
            rate, arch[key] = throughput(data, args.steps, args.batch_size)
            rates[key].append(rate)
            print(f"round {r + 1}: {key} {rate:.0f} images/s ({arch[key]})", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    flops = {"files": flops_per_image(ds), "medmnist": flops_per_image(pneu)}
    body = (
        f"## Data sources: CSV manifest of real X-rays (issue #11)\n\n"
        f"{stamp(command_line())}\n"
        f"Data: `{args.manifest.relative_to(REPO.parent) if args.manifest.is_relative_to(REPO.parent) else args.manifest}`"  # noqa: E501
        f"{' (every 10th row)' if args.quick else ''}, {n} images, resized to {args.size} px "
        f"(Pillow bilinear), channels auto -> {ds.in_channels}; "
        f"{args.threads} torch thread(s).\n\n"
        "| load | seconds | what it does |\n|---|---|---|\n"
        f"| first (empty cache) | {first:.1f} | hash every file, decode, resize, write the "
        f"cache ({cache_mb:.1f} MiB) |\n"
        f"| cached (best of 3) | {min(cached):.2f} | hash every file ({hashing:.2f} s of it), "
        "read the cache |\n"
        f"| PneumoniaMNIST 28 px `.npz` | {pneu_load:.2f} | for comparison |\n\n"
        f"### Training throughput (median of {args.rounds} interleaved round(s) of "
        f"{args.steps} steps, batch {args.batch_size}, basic augmentation, default model)\n\n"
        "| data | model | training GFLOP / image | images/s | GFLOP/s |\n|---|---|---|---|---|\n"
        f"| {ds.name} {args.size} px, {ds.in_channels} ch | {arch['files']} | "
        f"{flops['files'] / 1e9:.2f} | {med['files']:.1f} | "
        f"{med['files'] * flops['files'] / 1e9:.1f} |\n"
        f"| PneumoniaMNIST 28 px | {arch['medmnist']} | {flops['medmnist'] / 1e9:.2f} | "
        f"{med['medmnist']:.1f} | {med['medmnist'] * flops['medmnist'] / 1e9:.1f} |\n\n"
        f"The default model at {args.size} px is `{arch['files']}` (the automatic choice: "
        "`resnet18` up to 32 px, `resnet18-s2` up to 96 px, torchvision's above) and each "
        f"image holds {(args.size / 28) ** 2:.0f}x the pixels of a 28 px one: training takes "
        f"{med['medmnist'] / med['files']:.1f}x longer per image than on PneumoniaMNIST "
        f"({flops['files'] / flops['medmnist']:.1f}x the FLOPs). Per-round rates: "
        f"{', '.join(f'{r:.1f}' for r in rates['files'])} (files) and "
        f"{', '.join(f'{r:.1f}' for r in rates['medmnist'])} (PneumoniaMNIST) images/s; the "
        "machine is shared, so absolute rates vary between runs and the ratio is the figure.\n"
    )
    print(body)
    if args.quick and args.benchmarks is None:
        return
    write_section("data", body, args.benchmarks or REPO / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
