"""``medunlearn report``: tables with mean ± std and direction-aware best marks, figures, and a
self-contained HTML page checked in headless Chromium.

The results table here is synthetic (rows inserted directly), so every value and hence every
best mark is known; the real pipeline's report is exercised in test_experiment_integration.py.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

import pytest
from helpers import CHROMIUM, METHODS, N_FIGURES, report_row

from medunlearn.cli import main
from medunlearn.errors import MedUnlearnError
from medunlearn.experiments.report import write_report
from medunlearn.experiments.store import ResultsStore


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("results")
    with ResultsStore(folder) as store:
        for ratio in (0.2, 0.5):
            for augment in ("none", "basic"):
                for seed in range(3):
                    for m, (ua, fnr, secs, ok) in METHODS.items():
                        store.insert(report_row(m, ua, fnr, secs, ok, ratio=ratio,
                                                augment=augment, seed=seed))
    return folder


@pytest.fixture(scope="module")
def report(results, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("report")
    assert main(["report", str(results), "--out", str(out)]) == 0
    return out


def _table(md: str, title_part: str) -> dict[str, list[str]]:
    block = md.split(f"## {title_part}")[1].split("\n## ")[0]
    rows = [ln for ln in block.splitlines() if ln.startswith("| ") and "---" not in ln]
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return {r.strip("|").split("|")[0].strip(): dict(zip(header, [c.strip() for c in
                                                                  r.strip("|").split("|")],
                                                         strict=True))
            for r in rows[1:]}


def test_markdown_tables_mark_the_best_per_direction(report):
    md = (report / "report.md").read_text()
    # one table per dataset x augmentation x forget ratio
    assert md.count("## breastmnist (binary)") == 4
    t = _table(md, "breastmnist (binary), augmentation none, forget random:0.2")
    assert set(t) == set(METHODS)
    # mean ± std over the three seeds (UA jitter 0, 1, 2 pp)
    assert t["salun"]["UA %"] == "**29.0 ± 1.0**"  # closest to retrain's 31.0
    assert t["finetune"]["UA %"] == "11.0 ± 1.0"
    assert t["salun-cra"]["FNR %"].startswith("**")  # lower is better
    assert t["random-label"]["time (s)"].startswith("**")  # fastest
    assert t["random-label"]["speedup ×"].startswith("**")  # higher is better
    assert not any(v.startswith("**") for v in t["retrain"].values())  # the reference
    assert t["random-label"]["safety"].startswith("⚠ fails (3/3)")
    assert t["salun"]["safety"] == "pass"
    assert "ta_drop: FAIL" in md
    # figures are PNG files beside the Markdown, linked relatively
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    # per augmentation setting: risk, utility and difficulty against the ratio (2 x 3), then
    # Pareto, FNR change, pooled difficulty and the augmentation comparison
    assert len(links) == N_FIGURES
    assert sum("against forget ratio" in cap for cap in re.findall(r"!\[([^\]]*)\]", md)) == 6
    for link in links:
        png = (report / link).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000


def test_html_is_self_contained(report):
    page = (report / "report.html").read_text()
    assert page.count("<table class='results'") == 4
    assert page.count("<img ") == N_FIGURES
    assert page.count("src='data:image/png;base64,") == N_FIGURES
    assert not re.search(r"(src|href)=['\"](?!data:)", page)  # nothing fetched from elsewhere
    assert "class='best'" in page and "class='unsafe" in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed "
                    "(scripts/ci-system-deps.sh installs it)")
def test_html_renders_in_headless_chromium(report, tmp_path):
    # write the decoded size of every image into the DOM once the page has loaded
    probe = ("<script>window.addEventListener('load', function () {var s = [];"
             "for (const i of document.images) s.push(i.naturalWidth + 'x' + i.naturalHeight);"
             "var p = document.createElement('pre'); p.id = 'img-sizes';"
             "p.textContent = s.join(' '); document.body.appendChild(p);});</script>")
    page = (report / "report.html").read_text().replace("</body>", probe + "</body>")
    probe_file = tmp_path / "probe.html"
    probe_file.write_text(page)
    with tempfile.TemporaryDirectory() as profile:
        proc = subprocess.run(
            [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}",
             "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000",
             "--dump-dom", probe_file.as_uri()],
            capture_output=True, text=True, timeout=120)
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    sizes = re.search(r'<pre id="img-sizes">([^<]*)</pre>', dom)
    assert sizes, dom[-2000:]
    dims = [tuple(map(int, s.split("x"))) for s in sizes.group(1).split()]
    assert len(dims) == N_FIGURES and all(w > 100 and h > 100 for w, h in dims)
    # the tables were parsed: one row per method in each of the four tables
    assert len(re.findall(r'<tr class="[^"]*" data-method="', dom)) == 4 * len(METHODS)
    assert dom.count('class="best"') >= 4 * 8


def test_report_errors(tmp_path):
    with pytest.raises(MedUnlearnError, match="No results table"):
        write_report(tmp_path / "nothing", tmp_path / "out")
    ResultsStore(tmp_path / "empty").close()
    with pytest.raises(MedUnlearnError, match="no finished cells"):
        write_report(tmp_path / "empty", tmp_path / "out")
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")]) == 2


def test_compute_time_counts_shared_jobs_once(report):
    md = (report / "report.md").read_text()
    # 6 originals (augment x seed) x 60 s, 12 references (x ratio) x 40 s, 60 cells x (s + 2) s
    cells = 2 * 2 * 3 * sum(secs + 2.0 for _, _, secs, _ in METHODS.values())
    total = 6 * 60.0 + 12 * 40.0 + cells
    assert (f"Compute time on the machine that ran it: {total / 60:.1f} min (original models "
            f"{6:.1f}, retrained references {8:.1f}, unlearning + evaluation cells "
            f"{cells / 60:.1f})") in md


def test_report_of_one_study_in_a_shared_results_folder(tmp_path):
    from medunlearn.experiments.config import parse_experiment

    study = parse_experiment({
        "name": "small", "description": "Two methods.",
        "datasets": [{"dataset": "breastmnist", "view": "binary"}],
        "forget": ["random:0.2", "random:0.5"], "methods": ["retrain", "finetune"],
        "seeds": [0], "train": {"epochs": 1}}, source="small.yaml")
    cells = study.cells()
    with ResultsStore(tmp_path / "res") as store:
        for c in cells[:3]:  # three of the study's four cells, plus another study's rows
            r = report_row(c.method.name, *METHODS[c.method.name],
                           ratio=float(c.reference.forget[7:]), augment="basic", seed=0)
            store.insert(r | {"key": c.key, "experiment": "other"})
        for m, (ua, fnr, secs, ok) in METHODS.items():
            store.insert(report_row(m, ua, fnr, secs, ok, ratio=0.1, augment="basic", seed=0))
    paths = write_report(tmp_path / "res", tmp_path / "out", study=study)
    # missing: one method cell and the two do-nothing rows (one per reference)
    assert paths["rows"] == 3 and paths["missing"] == 3
    md = paths["markdown"].read_text()
    assert md.startswith("# Unlearning experiment: small")
    assert "Two methods. 3 cell(s) of the study are not in the results yet." in md
    assert "forget random:0.1" not in md and "salun" not in md
    # the CLI takes the study file; a study with no finished cell is a clear error
    study_file = tmp_path / "small.yaml"
    study_file.write_text("name: small\ndatasets: [{dataset: breastmnist, view: binary}]\n"
                          "forget: [random:0.2]\nmethods: [finetune]\nseeds: [0]\n"
                          "train: {epochs: 1}\n")
    assert main(["report", str(tmp_path / "res"), "--out", str(tmp_path / "o2"),
                 "--study", str(study_file)]) == 0
    assert "| finetune | 1 |" in (tmp_path / "o2" / "report.md").read_text()
    other = parse_experiment({"name": "none", "datasets": [{"dataset": "breastmnist"}],
                              "forget": ["random:0.3"], "methods": ["finetune"]})
    with pytest.raises(MedUnlearnError, match="None of the 2 cells of study 'none'"):
        write_report(tmp_path / "res", tmp_path / "o3", study=other)


def test_shared_cell_takes_the_reporting_study_label(tmp_path):
    """A cell computed by another study (stored under that study's label) is reported under
    the label this study gives the same method and options."""
    from medunlearn.experiments.config import parse_experiment
    from medunlearn.experiments.tables import study_rows

    study = parse_experiment({
        "name": "pinned", "datasets": [{"dataset": "breastmnist", "view": "binary"}],
        "forget": ["random:0.2"],
        "methods": ["retrain", {"name": "finetune", "options": {"lr": 0.05},
                                "label": "finetune-fast"}],
        "seeds": [0], "train": {"epochs": 1}}, source="pinned.yaml")
    cells = study.cells()
    with ResultsStore(tmp_path / "res") as store:
        for c in cells:
            r = report_row(c.method.name, *METHODS[c.method.name], ratio=0.2, augment="basic",
                           seed=0)
            # the other study called the finetune variant "finetune-lr05"
            label = "finetune-lr05" if c.method.name == "finetune" else c.method.name
            store.insert(r | {"key": c.key, "experiment": "other", "label": label})
        store.insert(report_row("salun", *METHODS["salun"], ratio=0.2, augment="basic", seed=0))
        stored = store.rows()
    rows = study_rows(stored, study)
    assert sorted(r["label"] for r in rows) == ["finetune-fast", "retrain"]
    assert {r["label"] for r in stored} >= {"finetune-lr05", "salun"}  # the table is unchanged
    md = write_report(tmp_path / "res", tmp_path / "out", study=study)["markdown"].read_text()
    assert "| finetune-fast | 1 |" in md and "finetune-lr05" not in md


def test_ratio_figures_keep_kinds_of_forget_set_apart(tmp_path):
    with ResultsStore(tmp_path / "res") as store:
        for kind in ("random", "positive"):
            for ratio in (0.2, 0.5):
                for m, (ua, fnr, secs, ok) in METHODS.items():
                    r = report_row(m, ua, fnr, secs, ok, ratio=ratio, augment="basic", seed=0)
                    store.insert(r | {"key": f"{r['key']}-{kind}", "forget": f"{kind}:{ratio}"})
    paths = write_report(tmp_path / "res", tmp_path / "out")
    md = paths["markdown"].read_text()
    caps = re.findall(r"!\[([^\]]*)\]", md)
    # risk, utility and difficulty against the ratio, once per kind of selection
    assert sum("against forget ratio" in c for c in caps) == 6
    assert sum("forget positive:" in c for c in caps) == 3
    assert paths["missing"] == 0


def test_degenerate_original_or_reference_is_flagged_not_ranked(tmp_path):
    """A reference that calls almost everyone one class (or has balanced accuracy < 0.6) is
    named under its table, and no method is marked best against it; older records without the
    prediction share are judged from their binary per-class recalls."""
    from medunlearn.evaluation.utility import degenerate_reason

    assert degenerate_reason(0.9, 0.6) is None
    assert "96%" in degenerate_reason(0.7, 0.96) and "0.55" in degenerate_reason(0.55, 0.5)
    folder = tmp_path / "results"
    with ResultsStore(folder) as store:
        for ratio in (0.2, 0.5):
            for m, (ua, fnr, secs, ok) in METHODS.items():
                row = report_row(m, ua, fnr, secs, ok, ratio=ratio, augment="none", seed=0)
                healthy = ratio == 0.2
                row["metrics"] |= {
                    "models.original.utility.balanced_accuracy": 0.85,
                    "models.original.utility.majority_prediction_share": 0.55,
                    "models.reference.utility.balanced_accuracy": 0.8 if healthy else 0.52,
                    # no share recorded: 96% of 100 recalls/counts -> derived as 0.96
                    "bias.per_class.test.reference.0.accuracy": 0.5 if healthy else 0.04,
                    "bias.per_class.test.reference.0.n": 50,
                    "bias.per_class.test.reference.1.accuracy": 0.9 if healthy else 1.0,
                    "bias.per_class.test.reference.1.n": 50}
                store.insert(row)
    out = tmp_path / "report"
    write_report(folder, out)
    md = (out / "report.md").read_text()
    bad = md.split("forget random:0.5")[1]
    good = md.split("forget random:0.2")[1].split("\n## ")[0]
    assert "Not ranked" in bad and "seed 0: the retrained reference predicts one class for " \
        "98% of the test images; has balanced accuracy 0.52 (< 0.6)" in bad
    assert "Not ranked" not in good and "**" in good
    assert "**" not in _table(md, "breastmnist (binary), augmentation none, forget random:0.5")[
        "salun"]["UA %"]
    assert "Not ranked" in (out / "report.html").read_text()


# -- issue 30: ties, glossary, chance, patient ids; issue 27: the do-nothing row ----------------
def _one_setting(tmp_path, rows: list[dict]) -> tuple[str, str]:
    """Write ``rows`` as one results table, report it, return (Markdown, HTML)."""
    with ResultsStore(tmp_path / "res") as store:
        for r in rows:
            store.insert(r)
    paths = write_report(tmp_path / "res", tmp_path / "out")
    return paths["markdown"].read_text(), paths["html"].read_text()


def _rows(**changes) -> list[dict]:
    """One seed of every synthetic method at 20%, with per-method field changes."""
    out = []
    for m, (ua, fnr, secs, ok) in METHODS.items():
        r = report_row(m, ua, fnr, secs, ok, ratio=0.2, augment="none", seed=0)
        out.append(r | changes.get(m, {}))
    return out


def _best_cells(page: str, metric: str) -> set[str]:
    marked = set()
    for row in re.findall(r"<tr class='[^']*' data-method='([^']*)'>(.*?)</tr>", page):
        if re.search(rf"<td data-metric='{metric}' class='best'>", row[1]):
            marked.add(row[0])
    return marked


def test_ties_at_the_displayed_precision_are_all_marked(tmp_path):
    """Attack AUC 0.452 for three methods (raw values differ below the third digit) and AUC
    99.3 for two: every tie is marked, in Markdown and HTML alike."""
    md, page = _one_setting(tmp_path, _rows(
        retrain={"attack_auc": 0.47},
        finetune={"attack_auc": 0.45204, "test_auc": 0.99312},
        salun={"attack_auc": 0.4518, "test_auc": 0.99268},
        **{"salun-cra": {"attack_auc": 0.452, "test_auc": 0.9901},
           "random-label": {"attack_auc": 0.40, "test_auc": 0.95}}))
    t = _table(md, "breastmnist (binary), augmentation none, forget random:0.2")
    assert [t[m]["attack AUC"] for m in ("finetune", "salun", "salun-cra")] == ["**0.452**"] * 3
    assert t["random-label"]["attack AUC"] == "0.400"
    assert t["finetune"]["AUC %"] == t["salun"]["AUC %"] == "**99.3**"
    assert t["salun-cra"]["AUC %"] == "99.0"
    assert _best_cells(page, "attack_auc") == {"finetune", "salun", "salun-cra"}
    assert _best_cells(page, "test_auc") == {"finetune", "salun"}
    # a tie of every ranked method marks nothing (the reference row is not ranked)
    md, _ = _one_setting(tmp_path / "all", _rows(**{m: {"fpr": 0.1001} for m in METHODS}))
    t = _table(md, "breastmnist (binary), augmentation none, forget random:0.2")
    assert not any(t[m]["FPR %"].startswith("**") for m in METHODS)


def test_glossary_is_the_cli_summary_text(tmp_path):
    from medunlearn.experiments.report import summary_text
    from medunlearn.experiments.tables import GLOSSARY, glossary_lines

    rows = _rows()
    md, page = _one_setting(tmp_path, rows)
    terms = {term for term, _ in GLOSSARY}
    assert {"UA", "RA", "TA", "MIA-efficacy", "gap", "FNR / FPR", "Global Risk"} <= terms
    glossary = md.split("## Glossary")[1].split("\n## ")[0]
    summary = summary_text(rows)
    for line in glossary_lines():
        assert f"- {line}" in glossary and f"- {line}" in summary
    assert "UA: unlearning accuracy: the error rate on the forgotten images" in md
    assert "<summary>Glossary</summary>" in page and "<dt>MIA-efficacy</dt>" in page


def test_do_nothing_row_and_methods_no_better_than_it(tmp_path):
    """The original scored like a method: shown, never marked best; a method whose gap is not
    below the original's is marked ∅ and named; a gate that passes the original is said."""
    from medunlearn.experiments.grid import ORIGINAL_LABEL, ORIGINAL_METHOD

    rows = _rows()
    nothing = report_row(ORIGINAL_METHOD, 0.25, 0.2, 1.0, True, ratio=0.2, augment="none",
                         seed=0)
    nothing |= {"key": "nothing", "label": ORIGINAL_LABEL, "average_gap_pp": 5.0,
                "unlearn_seconds": None, "speedup": None, "RA": 0.99}
    md, page = _one_setting(tmp_path, rows + [nothing])
    t = _table(md, "breastmnist (binary), augmentation none, forget random:0.2")
    # gaps: retrain 0, finetune 20, salun 2, salun-cra 10, random-label 20; doing nothing 5
    assert set(t) == {"retrain", ORIGINAL_LABEL, "finetune ∅", "salun", "salun-cra ∅",
                      "random-label ∅"}
    assert list(t)[:2] == ["retrain", ORIGINAL_LABEL]  # right after the reference
    row = t[ORIGINAL_LABEL]
    assert row["avg gap (pp)"] == "5.00" and row["time (s)"] == "–" and row["safety"] == "pass"
    assert not any(v.startswith("**") for v in row.values())  # RA 99.0 is the highest: unranked
    assert t["salun"]["RA %"] == "90.0"  # every method ties at 90.0: none is marked
    assert ("No better than doing nothing by the average gap (not more than 0.01 pp below the "
            "untouched original's 5.00 pp): finetune, random-label, salun-cra.") in md
    assert (f"The safety gate passed the untouched original ('{ORIGINAL_LABEL}') in 1 of 1 "
            "seed(s)") in md
    marked = re.findall(r"<tr class='[^']*\bnothing\b[^']*' data-method='([^']*)'", page)
    assert sorted(marked) == ["finetune", "random-label", "salun-cra"]
    assert f"data-method='{ORIGINAL_LABEL}'" in page and "baseline" in page
    # the CLI summary says the same
    from medunlearn.experiments.report import summary_text

    lines = {ln.split()[0]: ln for ln in summary_text(rows + [nothing]).splitlines()
             if ln.startswith("  ") and not ln.startswith("  -")}
    assert lines["finetune"].endswith("(no better than doing nothing)")
    assert not lines["salun"].endswith("(no better than doing nothing)")


def test_models_at_chance_and_data_without_patient_ids_are_said(tmp_path):
    """An original at chance (test AUC 0.52) is named in words and nothing is ranked against it;
    a method at chance is named; data without patient ids get the leakage note, data with
    them do not."""
    import json

    def original(name: str, dataset: dict) -> str:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"kind": "train", "dataset": dataset}))
        return str(folder)

    no_ids = original("nih-folder", {"source": "folder", "n_samples": {"train": 10}})
    rows = _rows(finetune={"test_auc": 0.53})
    for r in rows:
        r["original_dir"] = no_ids
        r["metrics"] |= {"models.original.utility.test_auc": 0.52}
    md, page = _one_setting(tmp_path / "a", rows)
    assert ("seed 0: the original model is at chance on the test set (test AUC 0.52, within "
            "0.05 of 0.5): it has not learned the task") in md
    t = _table(md, "breastmnist (binary), augmentation none, forget random:0.2")
    assert "Not ranked" in md
    assert not any(v.startswith("**") for r in t.values() for v in r.values())
    assert "finetune is at chance on the test set (test AUC 0.53" in md
    data = md.split("## Data")[1].split("\n## ")[0]
    assert ("breastmnist (binary): the data carry no patient ids (source 'folder'), so images of "
            "one patient may sit in more than one split (training and test) and patient leakage "
            "cannot be checked") in data
    assert "<h2 id='data'>Data</h2>" in page
    with_ids = original("nih-manifest", {"source": "manifest",
                                         "n_patients": {"train": 5, "val": 2, "test": 2}})
    md, _ = _one_setting(tmp_path / "b", [r | {"original_dir": with_ids} for r in _rows()])
    assert "## Data" not in md and "at chance" not in md


def test_log_axis_ticks_are_few_and_do_not_overlap(tmp_path):
    """Issue 30 saw "0.8 0.91.0" and "6.0 7.0 8.0 9.0 10.0" run together: at most six labelled
    ticks, no labelled minor ticks, and no two labels overlapping once drawn."""
    from medunlearn.plots import _pyplot, log_ticks, readable_log_axis

    assert log_ticks(0.8, 1.0) == [0.8, 0.9, 1.0]
    assert log_ticks(0.01, 300) == [0.01, 0.1, 1.0, 10.0, 100.0]
    assert len(log_ticks(0.001, 1e6)) <= 6
    plt = _pyplot()
    for lo, hi in ((0.8, 1.0), (6.0, 10.0), (0.02, 900.0), (0.5, 40.0), (6.2, 6.8)):
        fig, ax = plt.subplots(figsize=(10, 5))
        ax.plot([lo, hi], [1, 2], "o")
        readable_log_axis(ax, "x")
        fig.canvas.draw()
        labels = [t for t in ax.get_xticklabels(minor=False) if t.get_text()]
        lo_v, hi_v = sorted(ax.get_xlim())
        labels = [t for t in labels if lo_v <= t.get_position()[0] <= hi_v]
        assert 2 <= len(labels) <= 6, (lo, hi, [t.get_text() for t in labels])
        assert not [t for t in ax.get_xticklabels(minor=True) if t.get_text()]
        boxes = sorted((t.get_window_extent() for t in labels), key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:], strict=False)), (lo, hi)
        plt.close(fig)
