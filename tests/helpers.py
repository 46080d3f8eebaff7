"""Helpers shared by several test files (not a test file: test files import from here, never
from each other)."""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from torch import nn

import medunlearn as mu

# --------------------------------------------------------------------------- in-memory models


def tiny_arrays(n_train=96, n_eval=40, seed=0, with_patients=True):
    """Two classes told apart by image brightness; 8x8 grey images; two images per patient."""
    rng = np.random.default_rng(seed)

    def part(n, prefix):
        y = rng.integers(0, 2, n)
        x = rng.normal(0.35 + 0.3 * y[:, None, None], 0.12, (n, 8, 8)).clip(0, 1)
        out = {"images": x.astype(np.float32), "labels": y}
        if with_patients:
            out["patient_ids"] = [f"{prefix}{i // 2}" for i in range(n)]
            out["metadata"] = {"sex": ["F" if i % 3 else "M" for i in range(n)]}
        return out

    return mu.from_arrays({"train": part(n_train, "P"), "val": part(n_eval, "V"),
                           "test": part(n_eval, "T")}, name="toy", augment="none")


def user_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
                         nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))


def train_quickly(model, data, epochs=3):
    from medunlearn.training import fit

    fit(model, data, None, mu.TrainConfig(epochs=epochs, batch_size=32, lr=0.05,
                                          progress=False, device="cpu"), seed=0)
    return model


# --------------------------------------------------------------------------- registry requests


def distinct(manifest, k, start=0):
    """``k`` training indices whose images are unique in the manifest (hash <-> one index)."""
    counts = {}
    for h in manifest:
        counts[h] = counts.get(h, 0) + 1
    return [i for i, h in enumerate(manifest) if counts[h] == 1][start:start + k]


def req(rid, manifest, idx, **extra):
    """A deletion request for the training images ``idx`` (by hash)."""
    return {"id": rid, "subject": f"subj-{rid}", "images": [manifest[i] for i in idx]} | extra


# --------------------------------------------------------------------------- synthetic results


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or (
    "/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)

N_FIGURES = 10
# method -> (UA, FNR, unlearn seconds, gate passes); retrain is the reference (UA 0.30)
METHODS = {
    "retrain": (0.30, 0.20, 40.0, True),
    "finetune": (0.10, 0.25, 4.0, True),
    "salun": (0.28, 0.35, 6.0, True),  # UA closest to retrain
    "salun-cra": (0.40, 0.15, 7.0, True),  # lowest FNR
    "random-label": (0.50, 0.45, 3.0, False),  # fastest, but fails the safety gate
}


def report_row(method, ua, fnr, secs, passed, *, ratio, augment, seed):
    jitter = 0.01 * seed
    return {
        "key": f"{method}-{ratio}-{augment}-{seed}", "experiment": "synthetic",
        "dataset": "breastmnist", "view": "binary", "augment": augment,
        "forget": f"random:{ratio}", "forget_ratio": ratio, "method": method, "label": method,
        "seed": seed, "UA": ua + jitter, "RA": 0.9, "TA": 0.8, "test_auc": 0.85,
        "mia_efficacy": ua, "attack_auc": 0.5 + ua / 10, "average_gap_pp": 100 * abs(ua - 0.3),
        "fnr": fnr + ratio / 10, "fpr": 0.1, "global_risk": 5 * fnr * 0.3 + 0.07,
        "original_fnr": 0.2, "fnr_change": fnr + ratio / 10 - 0.2, "unlearn_seconds": secs,
        "retrain_seconds": 40.0, "speedup": 40.0 / secs, "cell_seconds": secs + 2.0,
        "original_train_seconds": 60.0, "original_dir": f"orig-{augment}-{seed}",
        "reference_dir": f"ref-{augment}-{ratio}-{seed}", "gate_passed": passed,
        "gate_reasons": [] if passed else ["ta_drop: FAIL - TA dropped 0.2 (limit 0.03)"],
        "metrics": {f"bias.difficulty.forget.{role}.{d}.accuracy": acc
                    for role, accs in (("model", (0.9, 0.7, 0.4)), ("reference", (0.8, 0.6, 0.3)))
                    for d, acc in zip(("easy", "medium", "hard"), accs, strict=True)},
    }


def load_bench(name: str):
    """A script of ``bench/`` (e.g. ``bench_frontier``) imported as a module, to test its pure
    functions."""
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
