"""The front door: medunlearn.unlearn / medunlearn.evaluate on a user's own nn.Module and
in-memory arrays, device handling, option validation at creation, reproducible model files."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import tiny_arrays, train_quickly, user_model
from torch import nn

import medunlearn as mu
from medunlearn.errors import ConfigError, ForgetSetError


def test_readme_example_unlearn_and_evaluate_any_module():
    # the README's Python example, on a user's nn.Sequential and arrays held in memory
    data = tiny_arrays()
    model = train_quickly(user_model(), data)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    result = mu.unlearn(model, data, forget={"patients": ["P3", "P7"]}, method="finetune",
                        options={"epochs": 1}, device="cpu")
    reference = mu.unlearn(model, data, forget=result.forget, method="retrain",
                           train_config={"epochs": 3, "batch_size": 32, "lr": 0.05},
                           device="cpu")
    report = mu.evaluate(result.model, data, forget=result.forget, original=model,
                         reference=reference.model, device="cpu")

    # the user's module type comes back, the original is untouched
    assert isinstance(result.model, nn.Sequential)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sorted(result.forget.tolist()) == [6, 7, 14, 15]  # two images per patient
    rec = result.record
    assert rec["method"] == "finetune" and rec["options"]["epochs"] == 1
    assert rec["forget"]["count"] == 4 and rec["retain_count"] == 92
    assert rec["runtime"]["device"] == "cpu" and rec["runtime"]["precision"] in ("fp32", "bf16")
    assert rec["steps"] > 0 and rec["unlearn_seconds"] > 0
    r = report.record
    assert r["counts"]["forget"] == 4
    assert 0 <= r["fidelity"]["average_gap_pp"] <= 100
    assert "sex" in r["bias"]["subgroups"]  # metadata columns reach the bias section
    assert report.verdict is not None and isinstance(report.verdict.passed, bool)
    assert r["gate"]["passed"] == report.verdict.passed


def test_retrain_of_a_plain_module_never_reads_forgotten_images_and_reinitialises():
    data = tiny_arrays()
    model = train_quickly(user_model(), data)
    seen: list[int] = []
    res = mu.unlearn(model, data, forget=[0, 1, 2, 3], method="retrain", device="cpu",
                     train_config={"epochs": 1, "batch_size": 32}, on_batch=lambda b:
                     seen.extend(b.tolist()))
    assert seen and not set(seen) & {0, 1, 2, 3}
    assert type(res.model) is nn.Sequential
    # a fresh model, not a fine-tuned copy: the first layer moved far from the original's
    w0, w1 = model[0].weight, res.model[0].weight
    assert not torch.allclose(w0, w1, atol=1e-3)


def test_model_factory_by_callable_is_used_by_retrain():
    data = tiny_arrays()
    model = train_quickly(user_model(), data, epochs=1)
    built = []

    def factory():
        built.append(1)
        return user_model(seed=5)

    mu.unlearn(model, data, forget=[1], method="retrain", model_factory=factory, device="cpu",
               train_config={"epochs": 1, "batch_size": 32})
    assert built == [1]


def test_hash_forgetting_takes_every_identical_copy_and_lists_unknown_hashes():
    data = tiny_arrays()
    data.train.images[5] = data.train.images[9]  # a byte-identical copy
    data.train._hashes = None
    h = data.train.hashes[9]
    fs = mu.api.resolve_forget(data, {"hashes": [h]})
    assert sorted(fs.forget.tolist()) == [5, 9]
    with pytest.raises(ForgetSetError, match="match no training"):
        mu.api.resolve_forget(data, {"hashes": ["0" * 64]})
    with pytest.raises(ForgetSetError, match="PX"):
        mu.api.resolve_forget(data, {"patients": ["PX"]})


def test_unavailable_or_unknown_devices_are_clear_errors():
    data = tiny_arrays()
    model = user_model()
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no usable CUDA"):
            mu.unlearn(model, data, forget=[0], method="finetune", device="cuda")
    with pytest.raises(ConfigError, match="Unknown device 'tpu'"):
        mu.unlearn(model, data, forget=[0], method="finetune", device="tpu")
    from medunlearn.loop import resolve_device, resolve_precision

    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    assert resolve_precision("auto", "cpu") in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="GPUs only"):
        resolve_precision("fp16", "cpu")


def test_method_options_are_validated_when_the_method_is_created():
    from medunlearn.methods import create_method

    with pytest.raises(ConfigError, match="lr"):
        create_method("finetune", {"lr": -1.0})
    with pytest.raises(ConfigError, match="alpha"):
        create_method("neggrad-plus", {"alpha": 2.0})
    with pytest.raises(ConfigError, match="solver"):
        create_method("newton", {"solver": "magic"})


def test_same_weights_give_the_same_model_file_bytes(tmp_path):
    from medunlearn.checkpoint import save_weights

    model = user_model()
    digests = set()
    for i in range(5):
        p = save_weights(tmp_path / f"m{i}.safetensors", model,
                         {"fingerprint": "f", "kind": "unlearn", "b": 1, "a": 2, "c": 3})
        digests.add(hashlib.sha256(p.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_from_arrays_rejects_bad_inputs():
    good = {"images": np.zeros((4, 8, 8), np.uint8), "labels": [0, 1, 0, 1]}
    with pytest.raises(Exception, match="'val' split"):
        mu.from_arrays({"train": good})
    with pytest.raises(Exception, match="fractional"):
        mu.from_arrays({"train": {"images": good["images"], "labels": [0, 0.5, 1, 1]},
                        "val": good, "test": good})
    with pytest.raises(Exception, match="one entry per image"):
        mu.from_arrays({"train": {"images": good["images"], "labels": [0, 1]},
                        "val": good, "test": good})
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        mu.from_arrays({"train": {"images": np.full((4, 8, 8), 3.0), "labels": [0, 1, 0, 1]},
                        "val": good, "test": good})


# --------------------------------------------------------------------------- device audit

FACTORIES = {"zeros", "ones", "full", "empty", "tensor", "arange", "randn", "rand", "randint",
             "eye", "linspace", "as_tensor"}
# modules whose tensors meet model tensors: every factory call there must say where it lives
AUDITED = ["loop.py", "training.py", "methods", "evaluation/outputs.py"]


def _factory_calls_without_device(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    bad = []
    lines = path.read_text().splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch" \
                and node.func.attr in FACTORIES:
            kws = {k.arg for k in node.keywords}
            line = lines[node.lineno - 1]
            if "device" not in kws and "# cpu:" not in line:
                bad.append(f"{path.name}:{node.lineno}: {line.strip()}")
        if isinstance(node, ast.Constant) and node.value == "cpu":
            bad.append(f"{path.name}:{node.lineno}: hard-coded 'cpu'")
    return bad


def test_no_loop_method_or_output_code_hard_codes_the_cpu():
    """Every tensor a loop or method creates follows the model's device: factory calls pass
    ``device=`` (or carry a ``# cpu:`` comment saying why the tensor belongs on the CPU, e.g.
    index tensors over the in-memory data), and no code names the CPU except the runtime."""
    root = Path(mu.__file__).parent
    files = []
    for entry in AUDITED:
        p = root / entry
        files += sorted(p.glob("*.py")) if p.is_dir() else [p]
    bad = [b for f in files for b in _factory_calls_without_device(f)]
    # the runtime module itself decides about the CPU
    bad = [b for b in bad if not b.startswith("loop.py")]
    assert not bad, "tensors created without a device:\n" + "\n".join(bad)


def test_readme_python_example_runs_as_written():
    """The README's Python example (section "Python: any model, any data, any device")."""
    readme = Path(__file__).resolve().parents[1] / "README.md"
    text = readme.read_text()
    start = text.index("### Python: any model, any data, any device")
    block = text[text.index("```python", start) + len("```python"):]
    block = block[:block.index("```")]
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102
    result, report = namespace["result"], namespace["report"]
    assert len(result.forget) == 4
    rec = report.record
    # the verdict printed is the one recorded, and it judged against the reference it was given
    assert report.verdict.passed == rec["gate"]["passed"]
    checks = {c["name"]: c["status"] for c in rec["gate"]["checks"]}
    assert checks["fnr_vs_reference"] != "skipped" and checks["ta_drop"] != "skipped"
    # the printed gap is the unlearned model's distance to that reference, in percentage points
    m, r = rec["models"]["model"], rec["models"]["reference"]
    gap = [abs(m[sec][k] - r[sec][k]) for sec, k in (("utility", "UA"), ("utility", "RA"),
                                                     ("utility", "TA"),
                                                     ("privacy", "mia_efficacy"))]
    assert rec["fidelity"]["average_gap_pp"] == pytest.approx(100 * sum(gap) / 4)


def test_random_patients_forgets_whole_patients():
    from medunlearn.forget_set import select_forget

    data = tiny_arrays()  # 48 patients, two images each
    fs = select_forget(data, forget="random-patients:0.25", seed=1)
    pids = data.train.patients
    chosen = set(pids[fs.forget.numpy()].tolist())
    assert len(chosen) == 12 and len(fs.forget) == 24
    for p in chosen:  # every image of each chosen patient
        assert set(np.flatnonzero(pids == p).tolist()) <= set(fs.forget.tolist())
    again = select_forget(data, forget="random-patients:0.25", seed=1)
    assert torch.equal(fs.forget, again.forget)  # seeded


def test_progress_in_logs_is_plain_periodic_lines(capsys):
    """Written to a file or a pipe, progress is a line per tenth of the work, never a
    carriage-return bar (pytest's captured stderr is not a terminal)."""
    from medunlearn.progress import progress_bar

    bar = progress_bar(50, "train", unit="step")
    for _ in range(50):
        bar.update(1)
    bar.set_postfix(loss="0.1")
    bar.close()
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("train: 50/50 steps (100%)")
