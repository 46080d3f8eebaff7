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
    assert "per-example forgetting-quality" in text and "0.5 ± 0.343" in text
    assert "word-break:break-all" not in html
    data = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    floats = re.findall(r"\d\.\d+", json.dumps(data["attempts"]))
    assert floats and all(len(f.split(".")[1]) <= 3 for f in floats)
