"""Shared helpers of the benchmark scripts: machine facts and BENCHMARKS.md sections."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = REPO / "BENCHMARKS.md"
HEADER = (
    "# Benchmarks\n\n"
    "Each section is written by the command it names; rerun that command to refresh it. "
    "Timings on a shared 2-core machine are noisy, so speed comparisons are ratios measured "
    "side by side in the same run.\n"
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GiB RAM"
    except (OSError, ValueError, IndexError):
        pass
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()
    return (f"{cpu}, {os.cpu_count()} cores{mem}; Python {platform.python_version()}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads); commit {commit}")


def stamp(command: str) -> str:
    date = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"- Date: {date}\n- Machine: {machine()}\n- Command: `{command}`\n"


def command_line() -> str:
    return " ".join([".venv/bin/python", os.path.relpath(sys.argv[0], REPO), *sys.argv[1:]])


def write_section(name: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace (or append) the section ``name`` of BENCHMARKS.md (or ``path``), atomically."""
    sys.path.insert(0, str(REPO / "src"))
    from medunlearn.fileio import atomic_write_text

    text = path.read_text() if path.exists() else HEADER
    start, end = f"<!-- bench:{name}:start -->", f"<!-- bench:{name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else \
        text.rstrip() + "\n\n" + block + "\n"
    atomic_write_text(path, text)


# -- shared by the benchmarks that need a trained PneumoniaMNIST model --------------------------
def model_parser(doc: str, name: str) -> argparse.ArgumentParser:
    """An argument parser with the options every model benchmark takes: --model, --work,
    --data-root, --quick and --benchmarks (``name`` is the BENCHMARKS.md section)."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--model", type=Path, help="Run folder of a PneumoniaMNIST model "
                   "(default: train one into WORK/model).")
    p.add_argument("--work", type=Path, default=None,
                   help=f"Scratch folder (default: runs/bench_{name}[_quick]).")
    p.add_argument("--data-root", default=None, help="MedMNIST folder (default: $MEDMNIST_ROOT).")
    p.add_argument("--quick", action="store_true",
                   help="Tiny model (400 images, width 8, 2 epochs) for a smoke test; writes to "
                        "WORK/BENCHMARKS.md unless --benchmarks is given.")
    p.add_argument("--benchmarks", type=Path, default=None,
                   help=f"Markdown file whose {name} section is replaced (default: "
                        "BENCHMARKS.md at the repository root).")
    return p


def work_and_model(args: argparse.Namespace, name: str) -> tuple[Path, Path]:
    """The scratch folder (created) and the model: ``--model`` or one trained (cached) there."""
    work = args.work or REPO / "runs" / (f"bench_{name}_quick" if args.quick else f"bench_{name}")
    work.mkdir(parents=True, exist_ok=True)
    model = args.model or train_model(work / "model", quick=args.quick, data_root=args.data_root)
    return work, model


def train_model(out: Path, *, quick: bool, data_root: str | None) -> Path:
    """Train (or reuse) the PneumoniaMNIST model the benchmarks run on."""
    sys.path.insert(0, str(REPO / "src"))
    from medunlearn.config import DataConfig, ModelConfig, TrainConfig
    from medunlearn.runs import run_training

    if quick:
        data = DataConfig(dataset="pneumoniamnist", train_limit=400, eval_limit=200,
                          data_root=data_root)
        model, train = ModelConfig(width=8), TrainConfig(epochs=2, progress=False)
    else:
        data = DataConfig(dataset="pneumoniamnist", data_root=data_root)
        model, train = ModelConfig(), TrainConfig(progress=False)
    t0 = time.perf_counter()
    metrics = run_training(data, model, train, seed=0, out=out)
    what = "reused" if metrics.get("reused") else f"trained in {time.perf_counter() - t0:.1f} s"
    print(f"model {out}: {what}", file=sys.stderr)
    return out


def publish(name: str, section: str, args: argparse.Namespace, work: Path) -> Path:
    """Write ``section`` into BENCHMARKS.md (``WORK/BENCHMARKS.md`` for --quick runs unless
    --benchmarks is given) and print it."""
    target = args.benchmarks or (work / "BENCHMARKS.md" if args.quick else BENCHMARKS)
    write_section(name, section, target)
    print(section)
    print(f"wrote the {name} section of {target}", file=sys.stderr)
    return target
