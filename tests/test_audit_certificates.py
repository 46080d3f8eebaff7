"""What an auditor relies on: a certificate whose every statement is checked against the ledger,
per-image check files the ledger vouches for, readers that see one consistent snapshot (and
refuse a tampered registry), a read-only copy that can be audited, and ``forget`` output that
says each check's outcome and flags a worse attack in words."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3

import pytest

from medunlearn.cli import main
from medunlearn.evaluation.gate import gate
from medunlearn.registry import (
    Verification,
    audit_registry,
    export_manifest,
    forget,
    init_registry,
    ledger,
    proof_records,
    reading,
    status,
    steps,
    store,
    write_certificate,
)
from medunlearn.registry.db import connect
from medunlearn.registry.errors import AuditError
from medunlearn.testing import fake_steps, fake_unlearn, untrained_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth_root):
    return untrained_run(tmp_path_factory.mktemp("model") / "model", data_root=synth_root,
                         verify_md5=False)


@pytest.fixture
def reg(model_dir, tmp_path):
    path = tmp_path / "reg"
    init_registry(model_dir, path, methods=["newton", "salun-cra", "retrain"], data_root="/data",
                  warm=False)
    forget(path, {"id": "R1", "subject": "s-R1", "indices": [3, 4, 5]}, **fake_steps())
    return path


def issue(reg, tmp_path, rid="R1"):
    write_certificate(reg, rid, tmp_path / f"cert-{rid}")
    return tmp_path / f"cert-{rid}" / "certificate.json"


def verify_cli(reg, *args):
    return main(["audit", "verify", str(reg), *args])


# --------------------------------------------------------------------------- forged certificates

FORGERIES = [
    ("subject", lambda c: c["request"].update(subject="someone else"), "request.subject"),
    ("forgotten image", lambda c: c["forgotten"][0].update(sha256="0" * 64),
     "forgotten[0].sha256"),
    ("one image fewer", lambda c: c["forgotten"].pop(), "forgotten"),
    ("method", lambda c: c.update(method="retrain"), "method"),
    ("model after", lambda c: c["model_after"].update(method="retrain"), "model_after.method"),
    ("a check's outcome", lambda c: c["attempts"][0]["checks"].append(
        {"check": "Accuracy", "outcome": "passed"}) or c["attempts"][0].update(status="x"),
     "attempts[0].status"),
    ("completed time", lambda c: c["request"].update(completed="2020-01-01T00:00:00+00:00"),
     "request.completed"),
    ("summary", lambda c: c["summary"].update(evidence="forgotten"), "summary.evidence"),
    ("dataset", lambda c: c.update(dataset="pneumoniamnist"), "dataset"),
    ("an added statement", lambda c: c.update(verified_by="the hospital"), "verified_by"),
]


@pytest.mark.parametrize("what,edit,field", FORGERIES, ids=[f[0] for f in FORGERIES])
def test_every_statement_of_a_certificate_is_checked(reg, tmp_path, capsys, what, edit, field):
    path = issue(reg, tmp_path)
    assert verify_cli(reg, "--certificate", str(path)) == 0
    cert = json.loads(path.read_text())
    edit(cert)
    path.write_text(json.dumps(cert))
    capsys.readouterr()
    assert verify_cli(reg, "--certificate", str(path)) == 1
    err = capsys.readouterr().err
    assert f"certificate {path}: {field} reads" in err, err


def test_a_request_id_set_to_another_request_fails(reg, tmp_path, capsys):
    forget(reg, {"id": "R2", "subject": "s-R2", "indices": [10]}, **fake_steps())
    path = issue(reg, tmp_path)
    cert = json.loads(path.read_text())
    cert["request"]["id"] = "R2"
    cert["ledger"]["entries"] = cert["ledger"]["entries"][:1]  # only a genuine entry kept
    path.write_text(json.dumps(cert))
    assert not audit_registry(reg, certificate_files=[path]).ok
    cert["request"]["id"] = "NOPE"
    path.write_text(json.dumps(cert))
    report = audit_registry(reg, certificate_files=[path])
    assert any("has no request" in p for p in report.problems)


def test_an_untouched_certificate_verifies_later_and_on_a_copy(reg, tmp_path):
    path = issue(reg, tmp_path)
    forget(reg, {"id": "R2", "subject": "s-R2", "indices": [10]}, **fake_steps())
    assert audit_registry(reg, certificate_files=[path]).ok  # later entries do not matter
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(reg, copy)
    report = audit_registry(copy, certificate_files=[path])
    assert report.ok, report.problems


def test_bad_certificate_and_anchor_inputs_are_clear_errors(reg, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    for bad in (tmp_path, deep):
        capsys.readouterr()
        assert verify_cli(reg, "--certificate", str(bad)) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and "certificate" in err
    big = "9" * 5000
    assert verify_cli(reg, "--anchor", f"{big}:{'a' * 64}") == 2
    err = capsys.readouterr().err
    assert "not SEQ:HASH" in err and big not in err and "Traceback" not in err
    cert = json.loads(issue(reg, tmp_path).read_text())
    cert["ledger"]["head_seq"] = 10 ** 30
    (tmp_path / "big.json").write_text(json.dumps(cert))
    assert verify_cli(reg, "--certificate", str(tmp_path / "big.json")) == 2


# --------------------------------------------------------------------------- per-image check files


def record_check(reg, rid="R1"):
    """Record a per-image check of ``rid`` as the proof does (record, scratch run, entry),
    without its trainings."""
    work = proof_records.folder(reg, rid)
    (work / "unlearned" / "seed-0").mkdir(parents=True)
    (work / "unlearned" / "seed-0" / "model.safetensors").write_bytes(b"weights")
    final = work / proof_records.RECORD_FILE
    final.write_text(json.dumps({"n": 3, "examples": [], "forgetting_quality": 0.2,
                                 "forgetting_quality_ci": [0.1, 0.3]}))
    conn = connect(reg)
    with store.write(reg, conn):
        ledger.append(conn, proof_records.ENTRY_KIND, {
            "n": 3, "method": "newton", "from_version": 1, "to_version": 2, "score": 0.2,
            "ci": [0.1, 0.3], "null": 0.25, "result_sha256": proof_records.sha256_file(final),
            "files": proof_records.work_files(work)}, request_id=rid)
    conn.close()
    return work


def test_per_image_check_files_are_vouched_for(reg, tmp_path):
    work = record_check(reg)
    assert audit_registry(reg).ok
    cert = write_certificate(reg, "R1", tmp_path / "c")
    assert cert["forgetting_quality"]["run"]
    assert cert["summary"]["evidence"] == "forgotten"  # 0.2 >= half of the null 0.25
    nxt = work / (proof_records.RECORD_FILE + proof_records.NEXT_SUFFIX)
    cases = [
        ("planted pending check", lambda: nxt.write_text("{}"), lambda: nxt.unlink(),
         "pending result"),
        ("scratch weights replaced",
         lambda: (work / "unlearned/seed-0/model.safetensors").write_bytes(b"other"),
         lambda: (work / "unlearned/seed-0/model.safetensors").write_bytes(b"weights"),
         "scratch run of the check was changed"),
        ("record deleted", lambda: (work / proof_records.RECORD_FILE).rename(tmp_path / "r"),
         lambda: (tmp_path / "r").rename(work / proof_records.RECORD_FILE), "is missing"),
    ]
    for what, damage, undo, message in cases:
        damage()
        report = audit_registry(reg)
        assert not report.ok and any(message in p for p in report.problems), (what, report)
        with pytest.raises(AuditError):
            write_certificate(reg, "R1", tmp_path / f"c-{what}")
        undo()
        assert audit_registry(reg).ok, what
    # scratch runs purged (gone) are not a problem: derived data
    shutil.rmtree(work / "unlearned")
    assert audit_registry(reg).ok


def test_a_result_planted_for_a_request_without_a_check_fails(reg, tmp_path):
    forget(reg, {"id": "R2", "subject": "s-R2", "indices": [10]}, **fake_steps())
    for name in (proof_records.RECORD_FILE, proof_records.RECORD_FILE + ".next"):
        work = proof_records.folder(reg, "R2")
        work.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(json.dumps({"n": 16, "forgetting_quality": 1.0}))
        report = audit_registry(reg)
        assert not report.ok and any("planted" in p for p in report.problems)
        (work / name).unlink()
    assert audit_registry(reg).ok


# --------------------------------------------------------------------------- readers


def test_status_never_reports_tampering_while_a_writer_commits(reg):
    seen = {}

    def hook(name):
        if name in ("before-commit", "after-commit-before-head"):
            st = status(reg)
            seen[name] = (st["audit"]["ok"], st["audit"]["problems"])

    store.set_stage_hook(hook)
    try:
        forget(reg, {"id": "R2", "subject": "s-R2", "indices": [10]}, **fake_steps())
    finally:
        store.set_stage_hook(None)
    assert seen and all(ok for ok, _ in seen.values()), seen


def test_manifest_is_refused_for_a_tampered_registry(reg, tmp_path):
    export_manifest(reg, tmp_path / "ok.csv")
    conn = sqlite3.connect(reg / "registry.db")
    conn.execute("UPDATE samples SET forgotten_in = NULL WHERE idx = 4")
    conn.commit()
    conn.close()
    with pytest.raises(AuditError, match="No manifest was written"):
        export_manifest(reg, tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
    assert main(["registry", "manifest", str(reg), "--out", str(tmp_path / "bad.csv")]) == 2


def test_a_read_only_copy_can_be_audited(reg, tmp_path, monkeypatch, capsys):
    path = issue(reg, tmp_path)
    copy = tmp_path / "ro"
    shutil.copytree(reg, copy)
    (copy / "lock").unlink()
    before = sorted(p.name for p in copy.rglob("*"))
    monkeypatch.setattr(reading, "_writable", lambda reg: False)  # root may write anywhere
    for p in [copy, *copy.rglob("*")]:
        os.chmod(p, 0o555 if p.is_dir() else 0o444)
    try:
        assert verify_cli(copy, "--certificate", str(path)) == 0
        assert main(["registry", "status", str(copy)]) == 0
        assert sorted(p.name for p in copy.rglob("*")) == before  # no lock, journal or shm
    finally:
        for p in [copy, *copy.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)


# --------------------------------------------------------------------------- the forget command

METRICS = {"models": {
    "model": {"utility": {"TA": 0.75, "forget_accuracy": 1.0}, "clinical": {"test": {
        "fnr": 0.2, "global_risk": 1.2}}, "privacy": {
        "attack_auc_val": 0.674, "attack_auc_val_se": 0.02}},
    "original": {"utility": {"TA": 0.75, "forget_accuracy": 1.0}, "clinical": {"test": {
        "fnr": 0.2, "global_risk": 1.2}}, "privacy": {"attack_auc_val": 0.626}},
    "reference": {"privacy": {"attack_auc_val": 0.575}}},
    "fidelity": {"average_gap_pp": 8.85, "second_retraining_gap_pp": 2.5}}


def _verify(run_dir, *, original, data_root=None):
    verdict = gate(METRICS)
    return Verification(True, list(verdict.reasons), list(verdict.checks), METRICS)


def test_forget_prints_each_check_and_flags_a_stronger_attack(reg, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setattr(steps, "unlearn_candidate", fake_unlearn)
    monkeypatch.setattr(steps, "gate_candidate", _verify)
    req = tmp_path / "r.json"
    req.write_text(json.dumps({"id": "R9", "subject": "s", "indices": [20, 21]}))
    capsys.readouterr()
    assert main(["forget", str(reg), "--request", str(req)]) == 0
    out = capsys.readouterr().out
    assert "None" not in out
    assert "  Accuracy: passed (measured 0; accepted" in out
    assert "  Membership attack: " in out
    assert ("warning: the membership attack (loss) got stronger after unlearning: its score on "
            "the forgotten images rose from 0.626 (original model) to 0.674 (a model retrained "
            "without them: 0.575)") in out
    assert "8.85 points away from the model retrained without the images, more than a second " \
           "retraining differs (2.50 points)" in out
