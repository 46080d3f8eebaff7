"""Certificates in plain words: rounded numbers, no command-line jargon, and 'cannot say' where
a check has no power for so few images."""

from __future__ import annotations

import json
import re

import pytest

from medunlearn.evaluation.gate import gate
from medunlearn.registry import Verification, forget, init_registry
from medunlearn.registry.certificate import write_certificate
from medunlearn.testing import fake_unlearn, untrained_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth_root):
    """An untrained (randomly initialised) but complete run folder: the fakes need no training."""
    return untrained_run(tmp_path_factory.mktemp("model") / "model", data_root=synth_root,
                         verify_md5=False)

METRICS = {"models": {
    "model": {"utility": {"TA": 0.7512345678901234}, "clinical": {"test": {
        "fnr": 0.2, "global_risk": 1.2}}, "privacy": {
        "attack_auc_val": 0.5085470085470085, "attack_auc_val_se": 0.1717446399016817},
        "representation": {"probe_auc": None}},
    "original": {"utility": {"TA": 0.75}, "clinical": {"test": {"fnr": 0.2,
                                                                "global_risk": 1.2}}}}}


def gate_verify(run_dir, *, original, data_root=None):
    verdict = gate(METRICS)
    return Verification(bool(verdict.passed), list(verdict.reasons), list(verdict.checks),
                        METRICS)


def test_certificate_for_three_images_says_what_a_check_cannot_show(model_dir, tmp_path):
    reg = tmp_path / "reg"
    init_registry(model_dir, reg, methods=["newton", "retrain"])
    forget(reg, {"id": "DR-3", "subject": "ref-3", "indices": [3, 4, 5]}, unlearn=fake_unlearn,
           verify=gate_verify)
    cert = write_certificate(reg, "DR-3", tmp_path / "cert")
    checks = {c["check"]: c for c in cert["attempts"][0]["checks"]}
    assert checks["Membership attack"]["outcome"] == "cannot say"  # +-0.34 has no power
    assert checks["Missed diagnoses vs exact retraining"]["outcome"] == "not run"
    assert checks["Accuracy"]["outcome"] == "passed"
    html = (tmp_path / "cert" / "certificate.html").read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    assert "--reference" not in text and "?)" not in text and "skipped" not in text
    assert not re.search(r"\d\.\d{4,}", text)  # every number rounded
    assert "per-example forgetting-quality" in text and "between 0.157 and 0.843" in text
    assert "word-break:break-all" not in html
    data = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    floats = re.findall(r"\d\.\d+", json.dumps(data["attempts"]))
    assert floats and all(len(f.split(".")[1]) <= 3 for f in floats)


def test_the_summary_says_what_is_certified_in_words(model_dir, tmp_path):
    reg = tmp_path / "reg"
    init_registry(model_dir, reg, methods=["newton", "retrain"])
    forget(reg, {"id": "DR-3", "subject": "ref-3", "indices": [3, 4, 5]}, unlearn=fake_unlearn,
           verify=gate_verify)
    cert = write_certificate(reg, "DR-3", tmp_path / "cert")
    summ = cert["summary"]
    assert summ["evidence"] == "cannot say" and summ["model_change"] == "approximate-final-layer"
    para = summ["paragraph"]
    assert "one Newton step on the final layer" in para
    assert "Every weight but the final layer was left as it was" in para
    assert "per-image" in para and f"medunlearn audit forgetting-quality {reg} DR-3" in para
    assert "forgetting_quality.json" in para  # the exact path the check writes
    assert "does not mean the images were forgotten" in para
    html = (tmp_path / "cert" / "certificate.html").read_text()
    text = re.sub(r"<[^>]+>", " ", html)
    assert "COMPLETED" not in text and "weights SHA-256" not in text
    assert "fingerprint of the model file" in text and "cost units" not in text
    assert not re.search(r"\d{2}:\d{2}:\d{2}\.\d{3}", text)  # no milliseconds
    assert re.search(r"\d{1,2} \w+ \d{4}, \d{2}:\d{2}:\d{2} UTC", text)
    assert "Measures that changed: Test accuracy." in text  # 0.75 -> 0.751; the rest equal
    from medunlearn.registry.wording import nothing_changed

    same = [{"metric": "Accuracy on the forgotten images", "before": 1.0, "after": 1.0}]
    assert nothing_changed(same).startswith("Nothing measurable changed")


def test_limits_are_clipped_to_the_scale_and_rounded_alike():
    from medunlearn.registry.wording import plain_check

    wide = plain_check({"name": "attack_auc", "status": "pass", "value": 0.54,
                        "compare_to": 0.5, "tolerance": 0.596, "limit": 1.096}, 1)
    assert wide["limit_text"] == "anything from 0 to 1 (the whole scale)"
    assert "0.596" not in wide["explanation"] and wide["range"] == [0.0, 1.0]
    fnr = plain_check({"name": "fnr_vs_original", "status": "pass", "value": 0.04,
                       "compare_to": 0.035, "tolerance": 0.06, "limit": 0.095}, 3)
    assert "within 0.06" in fnr["question"] and fnr["limit_text"] == "at most 0.095 (0.035 + 0.06)"


def test_a_published_figure_is_shown_for_the_method_not_the_request(monkeypatch):
    import importlib

    from medunlearn.registry.certificate import model_change, published_figure

    certificate = importlib.import_module("medunlearn.registry.certificate")

    seeds = [{"seed": 0, "ratio": 0.6, "score": 0.11, "ci": [0.1, 0.12], "null": 0.18,
              "gate": True, "runs_passed": 15, "runs_gated": 16},
             {"seed": 1, "ratio": 0.5, "score": 0.09, "ci": [0.08, 0.1], "null": 0.18,
              "gate": False, "runs_passed": 9, "runs_gated": 16}]
    fig = {"ratio": 0.55, "n": 16, "forget": "random:0.1", "options": "noise=0.5",
           "section": "fq", "seeds": seeds}
    record = {"datasets": {"pneumoniamnist": "pneumoniamnist"},
              "figures": {"pneumoniamnist": {"noise-repair": fig,
                                             "newton": fig | {"seeds": seeds[:1]}}}}
    monkeypatch.setattr(certificate, "_published", lambda: record)
    cert = {"model_change": model_change("noise-repair"),
            "forgetting_quality": {"run": False, "applies": True}}
    shown = published_figure(cert, "PneumoniaMNIST")
    words = shown["in_words"]
    assert shown["ratio"] == 0.55 and "not for this request" in words
    assert "mean over 2 training seeds, 0.50 to 0.60" in words and "10%" in words
    same = certificate.figure_entry(fig | {"seeds": [seeds[0], seeds[0] | {"seed": 1}]},
                                    cert["model_change"], "pneumoniamnist")["in_words"]
    assert "mean over 2 training seeds, each 0.60" in same
    broken = record | {"figures": {"pneumoniamnist": {"noise-repair": fig | {"seeds": []}}}}
    monkeypatch.setattr(certificate, "_published", lambda: broken)
    assert published_figure(cert, "pneumoniamnist") is None  # supplementary: never a crash
    monkeypatch.setattr(certificate, "_published", lambda: record)
    assert "the safety gate accepted 24 of the 32 runs (BENCHMARKS.md section fq)" in words
    del seeds[1]["runs_gated"]
    assert "accepted 15 of the 16 runs of training seed 0 and the deployed model of 0 of the 1 " \
        "other seed" in published_figure(cert, "pneumoniamnist")["in_words"]
    newton = published_figure(cert | {"model_change": model_change("newton")}, "pneumoniamnist")
    assert "training seed 0" in newton["in_words"] and "final layer" in newton["in_words"]
    assert published_figure(cert | {"model_change": model_change("retrain")},
                            "pneumoniamnist") is None
    assert published_figure(cert, "breastmnist") is None
    cert["forgetting_quality"]["run"] = True
    assert published_figure(cert, "pneumoniamnist") is None


def test_the_packaged_figures_are_the_benchmarks():
    """Every figure in the packaged record names a section of BENCHMARKS.md, and its headline
    ratio is the mean of its seeds' ratios."""
    from pathlib import Path

    from medunlearn.registry.certificate import _published

    record = _published()
    bench = (Path(__file__).resolve().parents[1] / "BENCHMARKS.md").read_text("utf-8")
    assert record["figures"]
    for dataset, methods in record["figures"].items():
        assert record["datasets"][dataset] == dataset
        for method, fig in methods.items():
            assert f"<!-- bench:{fig['section']}:start -->" in bench, (dataset, method)
            assert fig["seeds"] and abs(fig["ratio"] - sum(s["ratio"] for s in fig["seeds"])
                                        / len(fig["seeds"])) < 1e-3


def test_a_refreshed_figure_does_not_contradict_an_issued_certificate(model_dir, tmp_path,
                                                                      monkeypatch):
    """The published figure comes from the installed package, not from the registry: a release
    with refreshed figures leaves earlier certificates verifiable; an edited request id does
    not."""
    import importlib

    from medunlearn.registry import audit_registry
    from medunlearn.registry.db import get_meta

    certificate = importlib.import_module("medunlearn.registry.certificate")
    reg = tmp_path / "reg"
    init_registry(model_dir, reg, methods=["newton", "retrain"])
    forget(reg, {"id": "DR-4", "subject": "ref-4", "indices": [3, 4, 5]}, unlearn=fake_unlearn,
           verify=gate_verify)
    from medunlearn.registry.db import connect

    conn = connect(reg)
    try:
        dataset = get_meta(conn, "dataset")
    finally:
        conn.close()

    def record(ratio):
        seeds = [{"seed": 0, "ratio": ratio, "score": 0.1, "ci": [0.0, 0.2], "null": 0.2,
                  "gate": True}]
        return {"datasets": {dataset.lower(): "d"}, "figures": {"d": {"newton": {
            "ratio": ratio, "n": 16, "forget": "random:0.1", "options": "scope=head",
            "section": "fq", "seeds": seeds}}}}

    monkeypatch.setattr(certificate, "_published", lambda: record(0.1))
    cert = write_certificate(reg, "DR-4", tmp_path / "cert")
    assert cert["published_figure"]["ratio"] == 0.1
    assert cert["summary"]["paragraph"].endswith(" " + cert["published_figure"]["in_words"])
    path = tmp_path / "cert" / "certificate.json"
    monkeypatch.setattr(certificate, "_published", lambda: record(0.3))
    assert audit_registry(reg, certificate_files=[path]).ok  # a release refreshed the figure

    def verified(edit) -> bool:
        data = json.loads(json.dumps(cert))
        edit(data)
        path.write_text(json.dumps(data))
        return audit_registry(reg, certificate_files=[path]).ok

    def paragraph(d, text):
        d["summary"]["paragraph"] = text

    fig = cert["published_figure"]
    head = cert["summary"]["paragraph"][:-len(fig["in_words"]) - 1]
    assert verified(lambda d: (d.pop("published_figure"), paragraph(d, head)))  # issued earlier
    # words of the figure's own (forged) numbers, as this package words them: only the numbers
    # are not the registry's to check
    forged = certificate.figure_entry(fig | {"ratio": 0.9}, cert["model_change"],
                                      cert["dataset"])
    assert verified(lambda d: (d.update(published_figure=forged),
                               paragraph(d, head + " " + forged["in_words"])))
    # the earlier wording of the same numbers still verifies
    old_words = certificate._earlier_figure_words(fig, cert["model_change"], cert["dataset"])
    assert verified(lambda d: (d["published_figure"].update(in_words=old_words),
                               paragraph(d, head + " " + old_words)))
    # text slipped into the summary under a made-up figure fails
    slipped = "The images were deleted from every backup."
    assert not verified(lambda d: (d["published_figure"].update(in_words=slipped),
                                   paragraph(d, head + " " + slipped)))
    assert not verified(lambda d: paragraph(
        d, slipped + " " + cert["summary"]["paragraph"]))
    # a figure for another method, or not at the end of the summary, fails
    assert not verified(lambda d: d["published_figure"].update(method="retrain"))
    assert not verified(lambda d: paragraph(d, " ".join([fig["in_words"], head])))
    data = json.loads(json.dumps(cert))
    data["request"]["subject"] = "someone else"
    path.write_text(json.dumps(data))
    assert not audit_registry(reg, certificate_files=[path]).ok


def test_a_figure_on_an_exact_request_fails_the_audit(model_dir, tmp_path, monkeypatch):
    import importlib

    from medunlearn.registry import audit_registry

    certificate = importlib.import_module("medunlearn.registry.certificate")
    reg = tmp_path / "reg"
    init_registry(model_dir, reg, methods=["retrain"])
    forget(reg, {"id": "DR-5", "subject": "ref-5", "indices": [3, 4, 5]}, unlearn=fake_unlearn,
           verify=gate_verify)
    cert = write_certificate(reg, "DR-5", tmp_path / "cert")
    assert cert["published_figure"] is None
    seeds = [{"seed": 0, "ratio": 1.0, "score": 0.2, "ci": [0.1, 0.3], "null": 0.2,
              "gate": True}]
    fig = certificate.figure_entry({"ratio": 1.0, "n": 16, "forget": "random:0.1",
                                    "options": "-", "section": "fq", "seeds": seeds},
                                   {"kind": "approximate", "method": "retrain"},
                                   cert["dataset"])
    cert["published_figure"] = fig
    cert["summary"]["paragraph"] += " " + fig["in_words"]
    path = tmp_path / "cert" / "certificate.json"
    path.write_text(json.dumps(cert))
    report = audit_registry(reg, certificate_files=[path])
    assert not report.ok and any("published_figure" in p for p in report.problems)
