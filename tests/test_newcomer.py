"""A newcomer's first hour (issue #12): the README's commands exist and run as written after the
quick start, help is readable at 80 columns, messages say what happened and what to do next,
the setup scripts install what each needs, and reports fit a 1400 px window."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import typer

from medunlearn.cli import app, bundled_data_root, main
from medunlearn.commands.evaluate import (
    GATE_ADVICE,
    gate_failures_in_words,
    time_against_retraining,
)
from medunlearn.experiments.store import ResultsStore

sys.path.insert(0, str(Path(__file__).parent))
from helpers import CHROMIUM, METHODS, report_row  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


# -- the README's commands ----------------------------------------------------------------------
def readme_commands() -> list[list[str]]:
    """Every ``medunlearn ...`` command line in the README's bash blocks, as argv lists."""
    cmds = []
    for block in re.findall(r"```bash\n(.*?)```", README, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("medunlearn "):
                cmds.append(shlex.split(line)[1:])
    return cmds


def _resolve(argv: list[str]):
    cmd = typer.main.get_command(app)
    rest = list(argv)
    while hasattr(cmd, "commands") and rest and rest[0] in cmd.commands:
        cmd = cmd.commands[rest.pop(0)]
    return cmd, rest


def test_every_readme_command_and_flag_exists():
    cmds = readme_commands()
    assert len(cmds) >= 12
    for argv in cmds:
        cmd, rest = _resolve(argv)
        assert not hasattr(cmd, "commands"), f"no such command: medunlearn {' '.join(argv)}"
        known = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        for tok in rest:
            if tok.startswith("-"):
                assert tok.split("=")[0] in known, f"{tok} is not an option of {argv}"


def test_readme_says_how_to_get_medunlearn_on_path():
    first_cmd = README.index("```bash\nsource .venv/bin/activate")
    # the activation comes before the first command block that calls medunlearn directly
    assert first_cmd < README.index("\nmedunlearn train ")
    assert "--method retrain" in README  # how to make the reference for evaluate --reference


@pytest.fixture
def bundled(monkeypatch, tmp_path):
    """No MEDMNIST_ROOT, as in a fresh shell; the bundled folder next to the checkout."""
    root = bundled_data_root()
    if root is None or not (root / "pneumoniamnist.npz").is_file():
        pytest.skip("no bundled ../shared/data/medmnist next to this checkout")
    monkeypatch.delenv("MEDMNIST_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    return root


def test_readme_workflow_runs_as_written_with_the_bundled_data(bundled, tmp_path, capsys):
    """train -> retrain reference -> unlearn -> evaluate --gate, as the README writes them (only
    the training made tiny), run from a shell without MEDMNIST_ROOT."""
    cmds: dict = {}
    for a in readme_commands():  # the main workflow: the first command of each kind
        cmds.setdefault(tuple(a[:1]), a)
    tiny = ["--train-limit", "200", "--eval-limit", "100", "--epochs", "1", "--width", "4",
            "--quiet"]
    train = cmds[("train",)]
    model = train[train.index("--out") + 1]
    unlearns = [a for a in readme_commands() if a[0] == "unlearn" and model in a]
    retrain = next(a for a in unlearns if "retrain" in a)
    method = next(a for a in unlearns if "retrain" not in a)
    evaluate = cmds[("evaluate",)]
    assert main(train + tiny) == 0
    for argv in (retrain, method):
        assert main(argv + ["--quiet"]) == 0
    code = main(evaluate)
    out = capsys.readouterr()
    assert code in (0, 3), out.err  # a tiny model may fail the gate; it must not be an error
    assert "metrics written to" in out.out
    assert os.environ.get("MEDMNIST_ROOT") is None  # the default is not leaked

    # evaluate --reference with anything but the exact retrain is refused before any work
    run_dir, ref_dir = Path(method[method.index("--out") + 1]), Path(
        retrain[retrain.index("--out") + 1])
    code = main(["evaluate", "--model", str(run_dir), "--reference", str(run_dir),
                 "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and "is not a retrained reference" in err and "--method retrain" in err
    assert "Traceback" not in err and not (tmp_path / "x.json").exists()
    # a retrain without another forget set (one image fewer): refused, with the right command
    other = tmp_path / "runs" / "other-retrain"
    shutil.copytree(ref_dir, other)
    rows = (other / "forget.csv").read_text().splitlines()
    (other / "forget.csv").write_text("\n".join(rows[:-1]) + "\n")
    code = main(["evaluate", "--model", str(run_dir), "--reference", str(other),
                 "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and "different set of samples" in err
    assert "--method retrain --forget random:0.2 --seed 0" in " ".join(err.split())
    # an --original that is not the run's original: a clear warning (checked before loading)
    from medunlearn.runs.checks import check_original

    orig = Path(train[train.index("--out") + 1])
    assert check_original(run_dir, orig) is None
    warning = check_original(run_dir, ref_dir)
    assert "is not the model" in warning and str(orig.resolve()) in warning


def test_datasets_says_what_is_here(bundled, capsys):
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert f"data folder: {bundled}" in out and "bundled" in out
    rows = {ln.split()[0]: ln for ln in out.splitlines() if ln.split()
            and ln.split()[0].endswith("mnist")}
    assert len(rows) == 12
    assert " 28 " in rows["pneumoniamnist"]
    assert re.search(r"\s-\s", rows["octmnist"])  # not present locally
    assert "downloads a missing file" in " ".join(out.split())


def test_methods_shows_the_per_dataset_values(capsys, monkeypatch):
    import medunlearn.methods.base as unlearning

    # the published values come from tuning and may agree across datasets: use a fixed table
    table = {"version": 1, "default": {"finetune": {"epochs": 2}},
             "breastmnist": {"finetune": {"epochs": 5}}}
    monkeypatch.setattr(unlearning, "load_defaults", lambda: table)
    assert main(["methods"]) == 0
    generic = capsys.readouterr().out
    assert main(["methods", "--dataset", "breastmnist"]) == 0
    own = capsys.readouterr().out
    assert "epochs=5*" in own and "epochs=5" not in generic and "epochs=2" in generic
    assert "pass --dataset" in generic
    assert main(["methods", "--dataset", "nosuchmnist"]) == 2


# -- help at 80 columns -------------------------------------------------------------------------
def _all_commands(cmd=None, path=()):
    cmd = cmd or typer.main.get_command(app)
    yield path
    if hasattr(cmd, "commands"):  # a group (typer vendors its own click)
        for name, sub in cmd.commands.items():
            yield from _all_commands(sub, path + (name,))


def test_help_is_readable_at_80_columns(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "80")
    for path in _all_commands():
        assert main([*path, "--help"]) == 0
        text = capsys.readouterr().out
        assert max(len(ln) for ln in text.splitlines()) <= 80, path
        assert "<bool>" not in text and "│" not in text, path
        if path == ("unlearn",):
            flat = " ".join(text.split())
            assert ("random:0.2, random:0.2:stratified, class:K, positive:0.3, negative:0.3, "
                    "indices:FILE or hashes:FILE") in flat
            assert "--overwrite " in text and "--no-overwrite" not in text


# -- honest messages ----------------------------------------------------------------------------
def test_time_against_retraining_says_slower_when_slower():
    assert "slower" in time_against_retraining(1.027)
    assert "faster" not in time_against_retraining(1.027)
    assert "4.0x faster" in time_against_retraining(0.25)
    assert time_against_retraining(None) == ""


def test_every_gate_check_is_explained_with_a_next_step():
    from medunlearn.evaluation.gate import gate

    names = {c["name"] for c in gate({"models": {"model": {}}}).checks}
    assert names == set(GATE_ADVICE)
    checks = [{"name": n, "status": "fail", "value": 0.3, "limit": 0.2} for n in names]
    lines = gate_failures_in_words(checks + [{"name": "ta_drop", "status": "pass"}])
    assert len(lines) == len(names)
    assert all("Next:" in ln and "(0.3000, limit 0.2000)" in ln for ln in lines)
    fnr = next(ln for ln in lines if ln.startswith("fnr_vs_original"))
    assert "misses more disease" in fnr and "salun-cra" in fnr


# -- setup scripts ------------------------------------------------------------------------------
@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_quickstart_installs_no_ray_and_tests_get_what_they_need(tmp_path):
    """scripts/setup.sh with a stand-in python that records the pip calls."""
    (tmp_path / "scripts").mkdir()
    for name in ("setup.sh", "test.sh", "quickstart.sh"):
        shutil.copy(REPO / "scripts" / name, tmp_path / "scripts" / name)
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    fake = tmp_path / ".venv" / "bin" / "python"
    fake.parent.mkdir(parents=True)
    fake.write_text('#!/bin/sh\necho "$*" >> "$(dirname "$0")/calls.log"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = fake.parent / "calls.log"

    def setup(extras=None):
        env = {k: v for k, v in os.environ.items() if k != "MEDUNLEARN_EXTRAS"}
        if extras is not None:
            env["MEDUNLEARN_EXTRAS"] = extras
        subprocess.run(["bash", "scripts/setup.sh"], cwd=tmp_path, env=env, check=True,
                       capture_output=True)
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return [c for c in calls if "install" in c and "-e" in c]

    assert setup() == ["-m pip install --quiet -e ."]  # the quick start: no extras, no Ray
    assert setup() == []  # nothing to do the second time
    assert setup("dev,ray") == ["-m pip install --quiet -e .[dev,ray]"]
    assert setup("ray") == [] and setup() == []  # extras installed earlier are kept
    assert 'MEDUNLEARN_EXTRAS:-dev,ray' in (REPO / "scripts" / "test.sh").read_text()
    assert "MEDUNLEARN_EXTRAS" not in (REPO / "scripts" / "quickstart.sh").read_text().split(
        "set -euo pipefail")[1]


# -- experiment summary and reports --------------------------------------------------------------
def _store(folder: Path, *, seeds: int, methods: dict, ratios=(0.2,)) -> Path:
    with ResultsStore(folder) as store:
        for ratio in ratios:
            for seed in range(seeds):
                for m, (ua, fnr, secs, ok) in methods.items():
                    store.insert(report_row(m, ua, fnr, secs, ok, ratio=ratio,
                                            augment="basic", seed=seed))
    return folder


def test_experiment_prints_a_per_method_summary(tmp_path, capsys):
    from medunlearn.commands.experiment import _print_summary
    from medunlearn.experiments.config import parse_experiment

    study = parse_experiment({
        "name": "small", "datasets": [{"dataset": "breastmnist", "view": "binary"}],
        "forget": ["random:0.2"], "methods": ["retrain", "finetune", "random-label"],
        "seeds": [0], "train": {"epochs": 1}}, source="small.yaml")
    with ResultsStore(tmp_path / "res") as store:
        for c in study.cells():
            store.insert(report_row(c.method.name, *METHODS[c.method.name], ratio=0.2,
                                    augment="basic", seed=0) | {"key": c.key})
        store.insert(report_row("salun", *METHODS["salun"], ratio=0.2, augment="basic", seed=0))
    _print_summary(study, tmp_path / "res")
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.startswith("  ")}
    assert set(lines) == {"method", "retrain", "finetune", "random-label"}  # this study only
    assert "FNR %" in lines["method"] and "speedup" in lines["method"]
    assert "fails 1/1" in lines["random-label"] and "(reference)" in lines["retrain"]
    assert "13.3*" in lines["random-label"]  # fastest: best speedup, marked as in the report
    assert "medunlearn report" in out and max(len(ln) for ln in lines.values()) <= 100


def test_one_seed_report_without_retrain_row(tmp_path):
    from medunlearn.experiments.report import write_report

    methods = {m: v for m, v in METHODS.items() if m != "retrain"}
    paths = write_report(_store(tmp_path / "res", seeds=1, methods=methods), tmp_path / "out")
    md = paths["markdown"].read_text()
    assert "±" not in md  # no "± 0.0" for a single seed, in tables or captions
    assert "dashed = retrained reference" not in md  # no reference line is drawn
    assert "One seed per method" in md
    assert "retrain row is the reference" not in md and "no retrain row" in md
    page = paths["html"].read_text()
    assert "class='sd'" not in page


def test_pareto_front_is_named_only_when_drawn(tmp_path, monkeypatch):
    from medunlearn.experiments import figures as rep

    assert rep.pareto_front([(1.0, 5.0), (2.0, 3.0), (3.0, 4.0)]) == [(1.0, 5.0), (2.0, 3.0)]
    assert rep.pareto_front([(1.0, 1.0), (2.0, 3.0)]) == [(1.0, 1.0)]
    labels = []

    def keep(self, fig, caption, name):
        labels.append(fig.axes[0].get_legend_handles_labels()[1])
        self.plt.close(fig)

    monkeypatch.setattr(rep.Figures, "save", keep)
    rows = [report_row(m, *METHODS[m], ratio=0.2, augment="basic", seed=0)
            for m in ("finetune", "salun")]
    figs = rep.Figures(rows, tmp_path)
    figs.pareto(rows, "ds")  # finetune: faster but farther; salun: slower and closer -> a front
    figs.pareto(rows[1:], "ds")  # one method: no front
    assert any("Pareto front" in lab for lab in labels[0])
    assert not any("Pareto front" in lab for lab in labels[1])


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(scripts/ci-system-deps.sh installs it)")
def test_report_fits_a_1400px_window(tmp_path):
    """Every table column (speedup and safety included) is visible without scrolling at
    1400 px, and figures are shown large, not as thumbnails."""
    from medunlearn.experiments.report import write_report

    paths = write_report(_store(tmp_path / "res", seeds=3, methods=METHODS, ratios=(0.2, 0.5)),
                         tmp_path / "out")
    probe = ("<script>window.addEventListener('load', function () {var s = [];"
             "for (const t of document.querySelectorAll('table.results')) {"
             "var last = 0; for (const c of t.querySelectorAll('td,th'))"
             " last = Math.max(last, c.getBoundingClientRect().right);"
             "s.push('T' + Math.round(last));}"
             "for (const i of document.images) s.push('I' + Math.round(i.width));"
             "s.push('W' + document.documentElement.clientWidth);"
             "var p = document.createElement('pre'); p.id = 'probe';"
             "p.textContent = s.join(' '); document.body.appendChild(p);});</script>")
    page = tmp_path / "probe.html"
    page.write_text(paths["html"].read_text().replace("</body>", probe + "</body>"))
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--window-size=1400,2000",
             "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">([^<]*)</pre>', proc.stdout)
    assert found, proc.stderr[-2000:]
    vals = found.group(1).split()
    width = int(next(v for v in vals if v.startswith("W"))[1:])
    tables = [int(v[1:]) for v in vals if v.startswith("T")]
    images = [int(v[1:]) for v in vals if v.startswith("I")]
    assert width <= 1400 and len(tables) == 2
    assert all(right <= width for right in tables), (tables, width)
    assert images and min(images) >= 800, images


# -- forget: the checks and the certificate -----------------------------------------------------
def test_forget_prints_the_gate_checks_and_the_certificate(medmnist_root, tmp_path, capsys):
    from medunlearn.config import DataConfig, ModelConfig, TrainConfig
    from medunlearn.registry import init_registry
    from medunlearn.runs import run_training
    from medunlearn.testing import fake_registry_steps

    model = tmp_path / "model"
    run_training(DataConfig(dataset="breastmnist", train_limit=120, eval_limit=60,
                            data_root=str(medmnist_root)),
                 ModelConfig(width=4), TrainConfig(epochs=1, progress=False), seed=0, out=model)
    reg = tmp_path / "reg"
    init_registry(model, reg, data_root=str(medmnist_root), methods=["salun-cra", "retrain"])
    hashes = [ln.split(",")[1] for ln in (model / "manifest.csv").read_text().splitlines()[1:]]
    unique = [h for h in hashes if hashes.count(h) == 1][:2]
    request = tmp_path / "r.json"
    request.write_text(json.dumps({"id": "DR-1", "subject": "s", "images": unique}))
    with fake_registry_steps(fail=["salun-cra"]):
        assert main(["forget", str(reg), "--request", str(request)]) == 0
    out = capsys.readouterr().out
    assert "attempt 1 (salun-cra): did not pass the safety gate" in out
    assert "attempt 2 (retrain): passed the safety gate" in out
    assert "version 2 is active" in out
    assert f"medunlearn audit show {reg} DR-1 --out DIR" in out
    # every method fails: the next step is named
    request.write_text(json.dumps({"id": "DR-2", "subject": "s", "images": [
        h for h in hashes if hashes.count(h) == 1][2:4]}))
    with fake_registry_steps(fail=["salun-cra", "retrain"]):
        assert main(["forget", str(reg), "--request", str(request)]) == 1
    out = capsys.readouterr()
    assert "attempt 2 (retrain): did not pass the safety gate" in out.out
    assert f"medunlearn registry consolidate {reg}" in out.out
    assert "no method passed the safety gate" in out.err and "certificate:" in out.out
