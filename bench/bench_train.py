"""Training benchmark: accuracy over seeds, and throughput of the in-memory batched pipeline
against a torch DataLoader with per-image torchvision transforms, side by side.

    .venv/bin/python bench/bench_train.py            # full: 3 seeds x 2 datasets + throughput
    .venv/bin/python bench/bench_train.py --quick    # smoke test, nothing written

Writes the "train" section of BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _report import command_line, stamp, write_section  # noqa: E402

from medunlearn.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from medunlearn.data import iterate_batches, load_dataset  # noqa: E402
from medunlearn.runs import run_training  # noqa: E402
from medunlearn.training import (  # noqa: E402
    build_for,
    make_optimizer,
    resolve_epochs,
    resolve_precision,
)

BF16 = resolve_precision("auto") == "bf16"


def accuracy_runs(dataset: str, seeds: list[int], epochs: int | None,
                  limit: int | None) -> list[dict]:
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as tmp:
            m = run_training(DataConfig(dataset=dataset, view="binary", train_limit=limit),
                             ModelConfig(), TrainConfig(epochs=epochs, progress=False),
                             seed=seed, out=Path(tmp) / "run")
        t = m["splits"]["test"]
        rows.append({"seed": seed, "auc": t["auc"], "acc": t["accuracy"],
                     "seconds": m["train_seconds"], "recall": t["per_class_recall"]})
        print(f"{dataset} seed {seed}: test AUC {t['auc']:.4f} ACC {t['accuracy']:.4f} "
              f"in {m['train_seconds']:.1f} s", flush=True)
    return rows


def _step(model, opt, x, y, fast: bool = False):
    if fast:  # medunlearn's training step: channels-last layout, bf16 autocast where native
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast and BF16):
        logits = model(x).float()
    loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def ours_throughput(ds, model, opt, steps: int, bs: int, fast: bool) -> float:
    g = torch.Generator().manual_seed(0)
    it = iterate_batches(ds.train, batch_size=bs, shuffle=True, generator=g, augment="basic",
                         drop_last=True)
    model.train()
    if fast:
        model.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    for _ in range(steps):
        x, y, _ = next(it)
        _step(model, opt, x, y, fast)
    rate = steps * bs / (time.perf_counter() - t0)
    model.to(memory_format=torch.contiguous_format)
    return rate


def dataloader_throughput(ds, model, opt, steps: int, bs: int, workers: int) -> float:
    """The way public unlearning code feeds MedMNIST: medmnist's PIL dataset + per-image
    torchvision transforms + torch DataLoader."""
    import medmnist
    import torchvision.transforms as T

    mean, std = model.mean.flatten().tolist(), model.std.flatten().tolist()
    tf = T.Compose([T.RandomCrop(28, padding=2, padding_mode="reflect"),
                    T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(mean, std)])
    cls = getattr(medmnist, ds.info.python_class)
    data = cls(split="train", transform=tf, target_transform=lambda t: int(t[0]),
               root=str(ds.path.parent), download=False)
    loader = torch.utils.data.DataLoader(data, batch_size=bs, shuffle=True, num_workers=workers,
                                         drop_last=True, persistent_workers=workers > 0)
    # the model normalises internally; the loader already normalised, so bypass ours
    fwd_mean, fwd_std = model.mean.clone(), model.std.clone()
    model.mean.fill_(0.0)
    model.std.fill_(1.0)
    model.train()
    it = iter(loader)
    next(it)  # start workers outside the timed region
    t0 = time.perf_counter()
    for _ in range(steps):
        try:
            x, y = next(it)
        except StopIteration:
            it = iter(loader)
            x, y = next(it)
        _step(model, opt, x, y.long())
    rate = steps * bs / (time.perf_counter() - t0)
    model.mean.copy_(fwd_mean)
    model.std.copy_(fwd_std)
    del it, loader
    return rate


def train_step_flops(model, bs: int, channels: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(bs, channels, 28, 28)
    y = torch.zeros(bs, dtype=torch.long)
    with FlopCounterMode(display=False) as fc:
        F.cross_entropy(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    return float(fc.get_total_flops())


def matmul_peak(n: int = 2048, seconds: float = 1.5, dtype=torch.float32) -> float:
    a, b = torch.rand(n, n, dtype=dtype), torch.rand(n, n, dtype=dtype)
    a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def throughput(dataset: str, steps: int, rounds: int) -> dict:
    ds = load_dataset(DataConfig(dataset=dataset, view="binary"))
    torch.manual_seed(0)
    model, _ = build_for(ds, ModelConfig())
    opt, _ = make_optimizer(model.parameters(), TrainConfig(), 10**6)
    bs = TrainConfig().batch_size
    ours_throughput(ds, model, opt, 3, bs, True)  # warm-up
    ours_throughput(ds, model, opt, 3, bs, False)
    res = {"ours": [], "ours_fp32": [], "dataloader_w0": [], "dataloader_w2": []}
    for _ in range(rounds):  # interleave so all see the same machine load
        res["ours"].append(ours_throughput(ds, model, opt, steps, bs, True))
        res["ours_fp32"].append(ours_throughput(ds, model, opt, steps, bs, False))
        res["dataloader_w0"].append(dataloader_throughput(ds, model, opt, steps, bs, 0))
        res["dataloader_w2"].append(dataloader_throughput(ds, model, opt, steps, bs, 2))
    med = {k: statistics.median(v) for k, v in res.items()}
    flops = train_step_flops(model, bs, ds.in_channels)
    peak = matmul_peak()
    peak_bf16 = matmul_peak(dtype=torch.bfloat16)
    return {"median": med, "all": res, "flops_per_image": flops / bs, "peak": peak,
            "peak_bf16": peak_bf16,
            "achieved": flops / bs * med["ours"]}


def fmt_ms(rows: list[dict], key: str) -> str:
    v = [r[key] for r in rows]
    return f"{np.mean(v):.4f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="tiny smoke run; writes nothing")
    ap.add_argument("--seeds", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    if args.quick:
        accuracy_runs("breastmnist", [0], 1, 100)
        print(throughput("breastmnist", 3, 1)["median"])
        return
    seeds = list(range(args.seeds))
    t_all = time.perf_counter()
    tp = throughput("pneumoniamnist", 25, 3)
    acc = {"pneumoniamnist": accuracy_runs("pneumoniamnist", seeds, None, None),
           "breastmnist": accuracy_runs("breastmnist", seeds, None, None)}
    med = tp["median"]
    lines = [
        "## Training (issue: foundation)", "", stamp(command_line()),
        f"Default settings: binary view, ResNet-18 width {ModelConfig.width} (3x3 stem, no "
        f"max-pool), automatic epochs (PneumoniaMNIST {resolve_epochs(None, 4708)}, BreastMNIST "
        f"{resolve_epochs(None, 546)}), batch {TrainConfig.batch_size}, basic augmentation, "
        f"class-balanced loss, best validation-AUC checkpoint, precision "
        f"{'bf16 autocast' if BF16 else 'fp32'}.", "",
        "| dataset | seeds | test AUC (mean ± std) | test ACC (mean ± std) | train time s "
        "(mean) | published ResNet-18 (28 px) AUC / ACC |",
        "|---|---|---|---|---|---|",
    ]
    published = {"pneumoniamnist": "0.944 / 0.854", "breastmnist": "0.901 / 0.863"}
    for name, rows in acc.items():
        lines.append(f"| {name} | {len(rows)} | {fmt_ms(rows, 'auc')} | {fmt_ms(rows, 'acc')} "
                     f"| {np.mean([r['seconds'] for r in rows]):.1f} | {published[name]} |")
    lines += ["", "Per seed:", ""]
    for name, rows in acc.items():
        for r in rows:
            lines.append(f"- {name} seed {r['seed']}: AUC {r['auc']:.4f}, ACC {r['acc']:.4f}, "
                         f"{r['seconds']:.1f} s, per-class recall "
                         f"{', '.join(f'{v:.3f}' for v in r['recall'])}")
    lines += [
        "", "### Throughput (PneumoniaMNIST, default model, training steps, median of 3 "
        "interleaved rounds of 25 steps)", "",
        "| data pipeline | images/s | ratio ours / this |", "|---|---|---|",
        f"| medunlearn default: in-memory uint8 tensors, batched augmentation, channels-last"
        f"{', bf16 autocast' if BF16 else ''} | {med['ours']:.0f} | 1.00 |",
        f"| medunlearn data pipeline with plain fp32 NCHW steps | {med['ours_fp32']:.0f} | "
        f"{med['ours'] / med['ours_fp32']:.2f} |",
        f"| medmnist dataset + per-image torchvision transforms + DataLoader, 0 workers | "
        f"{med['dataloader_w0']:.0f} | {med['ours'] / med['dataloader_w0']:.2f} |",
        f"| same, DataLoader with 2 worker processes | {med['dataloader_w2']:.0f} | "
        f"{med['ours'] / med['dataloader_w2']:.2f} |",
        "",
        "The DataLoader rows run the same model with plain fp32 steps, as the public unlearning "
        "code does.",
        "",
        f"Training FLOPs per image (forward + backward, counted by torch.utils.flop_counter): "
        f"{tp['flops_per_image'] / 1e6:.1f} MFLOP. Achieved by the default step: "
        f"{tp['achieved'] / 1e9:.1f} GFLOP/s; fp32 matmul peak measured in the same run "
        f"(2048x2048): {tp['peak'] / 1e9:.1f} GFLOP/s, so {tp['achieved'] / tp['peak']:.1%} of "
        f"the fp32 peak (the bf16 peak: {tp['peak_bf16'] / 1e9:.1f} GFLOP/s, "
        f"{tp['achieved'] / tp['peak_bf16']:.1%}).",
        "", f"Whole benchmark: {time.perf_counter() - t_all:.0f} s.",
    ]
    write_section("train", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
