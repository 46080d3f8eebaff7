"""The per-image forgetting proof of a deletion request: ``audit forgetting-quality`` records
it in the ledger, the certificate shows it, and ``audit verify`` catches an edited result.

The requests themselves use the fast fake steps; the check runs the real ``verify_forgetting``
(N = 3 finetune + 3 retrain runs of a tiny BreastMNIST model, a few seconds)."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from helpers import distinct, req

from medunlearn.cli import main
from medunlearn.errors import DataError
from medunlearn.fileio import sha256_file
from medunlearn.registry import (
    Verification,
    audit_registry,
    forget,
    init_registry,
    write_certificate,
)
from medunlearn.registry import ledger as ledger_mod
from medunlearn.registry.db import connect
from medunlearn.registry.proof_records import HOW_TO_READ, RECORD_FILE, folder
from medunlearn.testing import fake_unlearn, fake_verify


def _failing(run_dir, *, original, data_root=None):
    return Verification(False, ["test: refused"], [], {})


def _no_data(model_dir, **kw):
    raise DataError("test: the data went away")


@pytest.fixture(scope="module")
def fq_reg(tiny_model, manifest, tmp_path_factory, medmnist_root):
    """R1 and R2 completed (finetune), R3 failed, R4 pending; the check run on R2."""
    reg = tmp_path_factory.mktemp("fq") / "reg"
    # the check unlearns again from the version a request started from: keep those weights
    init_registry(tiny_model, reg, data_root=str(medmnist_root), methods=["finetune", "retrain"],
                  warm=False, keep_superseded=5)
    images = {"R1": distinct(manifest, 2), "R2": distinct(manifest, 2, start=10),
              "R3": distinct(manifest, 1, start=20), "R4": distinct(manifest, 1, start=30)}
    for rid in ("R1", "R2"):
        forget(reg, req(rid, manifest, images[rid]), unlearn=fake_unlearn, verify=fake_verify)
    forget(reg, req("R3", manifest, images["R3"]), unlearn=fake_unlearn, verify=_failing)
    with pytest.raises(DataError):
        forget(reg, req("R4", manifest, images["R4"]), unlearn=_no_data, verify=fake_verify)
    assert main(["audit", "forgetting-quality", str(reg), "R2", "--n", "3", "--quiet"]) == 0
    return reg, images


def _fq_entries(reg):
    conn = connect(reg)
    try:
        return [e for e in ledger_mod.entries(conn) if e["kind"] == "forgetting_quality"]
    finally:
        conn.close()


def test_check_is_recorded_in_the_ledger_and_keeps_earlier_images_out(fq_reg, manifest):
    reg, images = fq_reg
    path = folder(reg, "R2") / RECORD_FILE
    rec = json.loads(path.read_text())
    # the request's images, scored with the promoted method from the version it started from
    assert sorted(x["index"] for x in rec["examples"]) == sorted(images["R2"])
    assert [x["sha256"] for x in rec["examples"]] == [manifest[i] for i in sorted(images["R2"])]
    assert rec["method"] == "finetune" and rec["from_version"] == 2 and rec["to_version"] == 3
    assert rec["n"] == 3 and rec["verify_result"]["n_models"] == {"unlearned": 3, "retrained": 3}
    # R1's images (withdrawn before R2) were in neither the forget nor the retain set of any run
    assert rec["exclude_count"] == 2
    assert rec["verify_result"]["forget"]["excluded_count"] == 2
    (entry,) = _fq_entries(reg)
    body = entry["body"]
    assert entry["request_id"] == "R2" and body["result_sha256"] == sha256_file(path)
    assert body["n"] == 3 and body["method"] == "finetune" and body["from_version"] == 2
    assert body["score"] == rec["forgetting_quality"]
    report = audit_registry(reg)
    assert report.ok, report.problems


def test_certificate_shows_the_per_image_check(fq_reg, manifest, tmp_path):
    reg, images = fq_reg
    cert = write_certificate(reg, "R2", tmp_path / "c2")
    sec = cert["forgetting_quality"]
    assert sec["run"] and sec["n"] == 3 and len(sec["ci"]) == 2 and sec["null"] is not None
    assert [x["sha256"] for x in sec["images"]] == [manifest[i] for i in sorted(images["R2"])]
    assert all(x["epsilon"] is not None and x["epsilon"] >= 0 for x in sec["images"])
    assert "forgetting_quality" in [e["kind"] for e in cert["ledger"]["entries"]]
    page = (tmp_path / "c2" / "certificate.html").read_text()
    text = re.sub(r"<[^>]+>", " ", page)
    assert "Per-image forgetting check" in text and HOW_TO_READ.split(":")[0] in text
    section = page.split("Per-image forgetting check")[1].split("<h2>")[0]
    assert section.count("<tr>") == 1 + len(images["R2"])  # header + one row per image
    for i in images["R2"]:
        assert manifest[i][:16] in section
    assert not re.search(r"\d\.\d{4,}", text)  # every number rounded
    # a request without the check says so and names the command
    c1 = write_certificate(reg, "R1", tmp_path / "c1")
    assert not c1["forgetting_quality"]["run"]
    page1 = (tmp_path / "c1" / "certificate.html").read_text()
    assert "was not run" in page1 and f"medunlearn audit forgetting-quality {reg} R1" in page1


def test_rerun_reuses_the_trained_models(fq_reg, capsys):
    reg, _ = fq_reg
    assert main(["audit", "forgetting-quality", str(reg), "R2", "--n", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "forgetting quality" in out and "recorded in ledger entry" in out
    assert "against retraining: " in out
    rec = json.loads((folder(reg, "R2") / RECORD_FILE).read_text())
    assert rec["verify_result"]["runs"]["reused"] == 6
    entries = _fq_entries(reg)
    assert len(entries) == 2 and entries[-1]["body"]["result_sha256"] == sha256_file(
        folder(reg, "R2") / RECORD_FILE)
    assert audit_registry(reg).ok


def test_an_edited_result_fails_the_audit(fq_reg, tmp_path, capsys):
    reg = tmp_path / "reg"
    shutil.copytree(fq_reg[0], reg)
    path = folder(reg, "R2") / RECORD_FILE
    rec = json.loads(path.read_text())
    rec["examples"][0]["epsilon"] = 0.0
    path.write_text(json.dumps(rec))
    report = audit_registry(reg)
    assert not report.ok
    assert any("forgetting-quality result was changed" in p for p in report.problems)
    assert main(["audit", "verify", str(reg)]) == 1
    assert main(["audit", "show", str(reg), "R2", "--out", str(tmp_path / "c")]) == 2
    assert "fails its audit" in capsys.readouterr().err


@pytest.mark.parametrize("args, message", [
    (["NOPE"], "known requests: R1, R2, R3, R4"),
    (["R4"], "is pending, not completed"),
    (["R3"], "is failed, not completed"),
    (["R2", "--n", "2"], "too few models"),
])
def test_clear_errors(fq_reg, capsys, args, message):
    reg, _ = fq_reg
    before = len(_fq_entries(reg))
    assert main(["audit", "forgetting-quality", str(reg), *args, "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err
    assert len(_fq_entries(reg)) == before


def test_missing_data_is_named(fq_reg, tmp_path, capsys):
    reg, _ = fq_reg
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["audit", "forgetting-quality", str(reg), "R1", "--n", "3", "--data-root",
                 str(empty), "--no-download", "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "breastmnist" in err and "was not found" in err and "--data-root" in err


def test_a_purged_start_model_is_named_with_the_fix(tiny_model, manifest, tmp_path, capsys,
                                                    medmnist_root):
    """By default the model a request started from is purged when it completes (it was trained
    on the forgotten images), so the check that unlearns again from it cannot run: the error
    says why and how to keep that model."""
    reg = tmp_path / "reg"
    init_registry(tiny_model, reg, data_root=str(medmnist_root), methods=["finetune", "retrain"],
                  warm=False)
    forget(reg, req("P1", manifest, distinct(manifest, 1)), unlearn=fake_unlearn,
           verify=fake_verify)
    assert main(["audit", "forgetting-quality", str(reg), "P1", "--n", "3", "--quiet"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "were purged" in err and "--keep-superseded 1" in err
