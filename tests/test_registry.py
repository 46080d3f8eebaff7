"""Deletion-request registry: init, request validation, workflow, fallback, audit, certificates.

These tests use the fast fake unlearn/verify steps (``medunlearn.testing``) on a tiny
BreastMNIST model; ``test_end_to_end_with_real_unlearning_and_gate`` runs the real ones.
"""

from __future__ import annotations

import csv
import json
import pickle
import shutil
import sqlite3

import pytest
from helpers import distinct, req

from medunlearn.cli import main
from medunlearn.errors import CheckpointError
from medunlearn.fileio import sha256_file
from medunlearn.registry import (
    RegistryError,
    RequestError,
    Verification,
    audit_registry,
    certificate,
    forget,
    init_registry,
    retain_indices,
    status,
    write_certificate,
)
from medunlearn.registry.ledger import chain_problems
from medunlearn.testing import fake_registry_steps, fake_steps, fake_unlearn, fake_verify


@pytest.fixture
def reg(tiny_model, tmp_path, medmnist_root):
    path = tmp_path / "reg"
    # the workflow tests pin the chain; test_default_chain_* checks the recommendation
    init_registry(tiny_model, path, data_root=str(medmnist_root), methods=["salun-cra", "retrain"])
    return path


def fake(reg, request, *, fail=(), **kw):
    """Process a request with the fake steps (``fail``: methods the fake gate fails)."""
    return forget(reg, request, **fake_steps(fail=fail), **kw)


def snapshot(reg):
    """Everything a refused request must leave unchanged."""
    conn = sqlite3.connect(reg / "registry.db")
    try:
        return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall()
                for t in ("meta", "samples", "versions", "requests", "request_items", "attempts",
                          "ledger")}
    finally:
        conn.close()


# --------------------------------------------------------------------------- init / status


def test_default_chain_is_the_recommendation(tiny_model, tmp_path, medmnist_root):
    from medunlearn.registry.versions import RECOMMENDED

    init_registry(tiny_model, tmp_path / "r", data_root=str(medmnist_root))
    # BreastMNIST is a binary clinical view: Newton step, then SalUn-CRA, then retraining
    assert status(tmp_path / "r")["methods"] == RECOMMENDED["binary"]
    assert RECOMMENDED["binary"] == ["newton", "salun-cra", "retrain"]


def test_init_records_model_and_manifest(reg, tiny_model, manifest):
    st = status(reg)
    assert st["active_version"]["n"] == 1
    assert st["active_version"]["weights_sha256"] == sha256_file(tiny_model / "model.safetensors")
    assert st["methods"] == ["salun-cra", "retrain"]
    assert st["samples"] == {"total": len(manifest), "forgotten": 0, "withdrawn": 0}
    assert (reg / "versions" / "1" / "model.safetensors").is_file()
    conn = sqlite3.connect(reg / "registry.db")
    assert [r[0] for r in conn.execute("SELECT sha256 FROM samples ORDER BY idx")] == manifest
    init = json.loads(conn.execute("SELECT body FROM ledger WHERE seq = 1").fetchone()[0])
    assert init["train"]["epochs"] == 1 and init["manifest"]["count"] == len(manifest)
    assert audit_registry(reg).ok


def test_init_refuses_existing_registry_and_bad_model(reg, tiny_model, tmp_path):
    with pytest.raises(Exception, match="already holds"):
        init_registry(tiny_model, reg)
    with pytest.raises(RegistryError, match="valid methods"):
        init_registry(tiny_model, tmp_path / "reg1", methods=["salun-cra", "retrian"])
    bad = tmp_path / "bad"
    shutil.copytree(tiny_model, bad)
    (bad / "model.safetensors").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        init_registry(bad, tmp_path / "reg2")
    assert not (tmp_path / "reg2").exists()


def test_models_are_loaded_without_pickle(tiny_model, tmp_path, monkeypatch):
    import torch

    def refuse(*a, **k):
        raise AssertionError("pickle must never be used to load models")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    init_registry(tiny_model, tmp_path / "reg")
    assert audit_registry(tmp_path / "reg", load_models=True).ok


def test_init_from_an_unlearning_run_keeps_its_forgotten_images(tiny_model, tmp_path, manifest):
    run = tmp_path / "unlearned"
    fake_unlearn(tiny_model, method="finetune", forget=[4, 9], exclude=[], out=run)
    init_registry(run, tmp_path / "reg")
    assert status(tmp_path / "reg")["samples"]["forgotten"] == 2
    assert not {4, 9} & set(retain_indices(tmp_path / "reg"))
    assert audit_registry(tmp_path / "reg").ok
    r = fake(tmp_path / "reg", req("DR-1", manifest, [4]))  # already forgotten: a no-op
    assert r["already_forgotten"] == 1 and r["to_version"] == 1
    chained = tmp_path / "chained"
    fake_unlearn(run, method="finetune", forget=[5], exclude=[4, 9], out=chained)
    with pytest.raises(RegistryError, match="Register the original training run"):
        init_registry(chained, tmp_path / "reg2")


# --------------------------------------------------------------------------- validation


def test_unknown_hashes_are_listed_and_nothing_changes(reg, manifest):
    before = snapshot(reg)
    unknown = ["ab" * 32, "cd" * 32]
    with pytest.raises(RequestError) as exc:
        fake(reg, {"id": "R1", "subject": "s", "images": [manifest[0], *unknown]})
    assert all(h in str(exc.value) for h in unknown) and "nothing changed" in str(exc.value)
    assert snapshot(reg) == before


@pytest.mark.parametrize("body,message", [
    ({"id": "R1", "subject": "s", "images": []}, "names no images"),
    ({"id": "R1", "subject": "s"}, "names no images"),
    ({"subject": "s", "images": ["ab" * 32]}, "needs an 'id'"),
    ({"id": "R1", "images": ["ab" * 32]}, "'subject' must be an opaque reference"),
    ({"id": "R1", "subject": "s", "images": ["not-a-hash"]}, "not a 64-character SHA-256"),
    ({"id": "R1", "images": ["ab" * 32], "colour": "red"}, "unknown key"),
    ({"id": "R1", "subject": "s", "indices": [10_000]}, "out of range"),
    ({"id": "R1", "subject": "s", "indices": [-1]}, "non-negative"),
    (["ab" * 32], "must be a JSON object"),
    ({"id": "R1", "subject": "s", "indices": [1], "method": "salun-craa"}, "valid methods"),
])
def test_bad_requests_are_refused(reg, body, message):
    before = snapshot(reg)
    with pytest.raises(RequestError, match=message):
        fake(reg, body)
    assert snapshot(reg) == before


def test_malformed_file_gets_a_clear_message(reg, tmp_path, capsys):
    bad = tmp_path / "r.json"
    bad.write_text('{"id": "R1", "images": [')
    before = snapshot(reg)
    assert main(["forget", str(reg), "--request", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "not valid JSON" in err and "line 1" in err
    assert main(["forget", str(reg), "--request", str(tmp_path / "missing.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert snapshot(reg) == before


def test_not_a_registry(tmp_path):
    with pytest.raises(Exception, match="not a medunlearn registry"):
        status(tmp_path)


# --------------------------------------------------------------------------- workflow


def test_forget_promotes_a_new_version_and_is_idempotent(reg, manifest, tmp_path, capsys):
    idx = distinct(manifest, 3)
    request = tmp_path / "r.json"
    request.write_text(json.dumps(req("DR-1", manifest, idx)))
    r = fake(reg, request)
    assert r["status"] == "completed" and (r["from_version"], r["to_version"]) == (1, 2)
    assert r["method"] == "salun-cra" and r["forgotten"] == 3 and not r["reused"]
    st = status(reg)
    assert st["active_version"]["n"] == 2 and st["samples"]["forgotten"] == 3
    assert st["active_version"]["weights_sha256"] != st["versions"][0]["weights_sha256"]
    assert [x["id"] for x in st["requests"]["completed"]] == ["DR-1"]
    # the same request again: a no-op that reports the existing result
    before = snapshot(reg)
    again = fake(reg, request)
    assert again["reused"] and again["to_version"] == 2
    assert snapshot(reg) == before
    # the same id with different content: an error, nothing changes
    with pytest.raises(RequestError, match="different content"):
        fake(reg, req("DR-1", manifest, distinct(manifest, 2, start=10)))
    assert snapshot(reg) == before
    # via the CLI: status and the no-op
    assert main(["registry", "status", str(reg)]) == 0
    out = capsys.readouterr().out
    assert "active version: 2" in out and "DR-1" in out
    assert main(["forget", str(reg), "--request", str(request)]) == 0
    assert "already completed" in capsys.readouterr().out


def test_already_forgotten_images_are_a_noop(reg, manifest):
    first = distinct(manifest, 3)
    fake(reg, req("DR-1", manifest, first))
    # entirely forgotten already: completes without a new version
    r = fake(reg, req("DR-2", manifest, first[:2]))
    assert r["status"] == "completed" and r["from_version"] == r["to_version"] == 2
    assert r["forgotten"] == 0 and r["already_forgotten"] == 2
    # partly forgotten: only the new image is unlearned
    calls = []

    def recording(model_dir, **kw):
        calls.append(kw)
        return fake_unlearn(model_dir, **kw)

    extra = distinct(manifest, 1, start=20)
    r = forget(reg, req("DR-3", manifest, first[:1] + extra), unlearn=recording,
               verify=fake_verify)
    assert r["forgotten"] == 1 and r["already_forgotten"] == 1 and r["to_version"] == 3
    assert calls[0]["forget"] == extra and set(calls[0]["exclude"]) == set(first)
    assert audit_registry(reg).ok


def test_indices_and_explicit_method(reg, manifest):
    r = fake(reg, {"id": "DR-9", "subject": "s", "indices": [5, 6], "method": "retrain"})
    assert r["method"] == "retrain" and r["forgotten"] == 2
    cert = certificate(reg, "DR-9")
    assert [f["index"] for f in cert["forgotten"]] == [5, 6]
    assert cert["forgotten"][0]["sha256"] == manifest[5]


def test_fallback_chain_records_every_attempt(reg, manifest):
    r = fake(reg, req("DR-1", manifest, distinct(manifest, 2)), fail=["salun-cra"])
    assert r["status"] == "completed" and r["method"] == "retrain"
    assert [(a["method"], a["status"]) for a in r["attempts"]] == [("salun-cra", "failed"),
                                                                   ("retrain", "passed")]
    cert = certificate(reg, "DR-1")
    assert cert["attempts"][0]["reasons"] == ["fake gate: salun-cra is configured to fail"]
    assert cert["model_after"]["method"] == "retrain"
    assert not list((reg / "staging").iterdir())  # the failed candidate was removed
    assert audit_registry(reg).ok


def test_method_errors_fall_back_too(reg, manifest):
    def broken(model_dir, *, method, **kw):
        if method == "salun-cra":
            raise RuntimeError("NaN loss")
        return fake_unlearn(model_dir, method=method, **kw)

    r = forget(reg, req("DR-1", manifest, distinct(manifest, 2)), unlearn=broken,
               verify=fake_verify)
    assert [a["status"] for a in r["attempts"]] == ["error", "passed"]
    assert "NaN loss" in r["attempts"][0]["reasons"][0]


def test_all_attempts_failing_keeps_the_model_and_withdraws_the_images(reg, manifest, tmp_path,
                                                                        capsys):
    idx = distinct(manifest, 2)
    (tmp_path / "r.json").write_text(json.dumps(req("DR-1", manifest, idx)))
    with fake_registry_steps(fail=["salun-cra", "retrain"]):
        assert main(["forget", str(reg), "--request", str(tmp_path / "r.json")]) == 1
    out = capsys.readouterr()
    assert "no method passed the safety gate" in out.err
    # each attempt's checks, as the certificate words them
    assert "attempt 2 (retrain): did not pass the safety gate\n  fake: failed" in out.out
    st = status(reg)
    assert st["active_version"]["n"] == 1 and [x["id"] for x in st["requests"]["failed"]] == [
        "DR-1"]
    assert st["samples"] == {"total": 120, "forgotten": 0, "withdrawn": 2}
    assert not set(idx) & set(retain_indices(reg))
    assert audit_registry(reg).ok
    # resubmitting the same request retries the chain once the problem is fixed
    with fake_registry_steps():
        r = forget(reg, tmp_path / "r.json")
    assert r["status"] == "completed" and [a["n"] for a in r["attempts"]] == [1, 2, 3]
    assert audit_registry(reg).ok


def test_forgotten_images_never_come_back_to_a_retrain(reg, manifest):
    calls = []

    def recording(model_dir, **kw):
        calls.append(kw)
        return fake_unlearn(model_dir, **kw)

    a, b = distinct(manifest, 3), distinct(manifest, 4, start=10)
    forget(reg, req("DR-A", manifest, a, method="retrain"), unlearn=recording, verify=fake_verify)
    forget(reg, req("DR-B", manifest, b, method="retrain"), unlearn=recording, verify=fake_verify)
    second = calls[-1]
    assert second["method"] == "retrain" and second["forget"] == b
    assert set(a) <= set(second["exclude"]) and not set(b) & set(second["exclude"])
    # the retrained version's run folder records what it was given
    call = json.loads((reg / "versions" / "3" / "fake_call.json").read_text())
    assert call["forget"] == b and call["exclude"] == a
    with open(reg / "versions" / "3" / "excluded.csv") as fh:
        assert [(int(r["index"]), r["sha256"]) for r in csv.DictReader(fh)] == [
            (i, manifest[i]) for i in a]
    # the registry's retain set for any later (re)training excludes both requests
    keep = set(retain_indices(reg))
    assert not keep & (set(a) | set(b)) and len(keep) == len(manifest) - 7
    # the exported manifest marks both sets forgotten, with the version that forgot them
    assert main(["registry", "manifest", str(reg), "--out", str(reg.parent / "m.csv")]) == 0
    with open(reg.parent / "m.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {int(r["index"]) for r in rows if r["forgotten_in"]} == set(a) | set(b)
    assert {r["forgotten_in"] for r in rows if int(r["index"]) in b} == {"3"}
    # a third request again excludes both earlier sets
    forget(reg, req("DR-C", manifest, distinct(manifest, 1, start=30)), unlearn=recording,
           verify=fake_verify)
    assert set(a) | set(b) <= set(calls[-1]["exclude"])


def test_consolidation_retrains_exactly_without_every_withdrawn_image(reg, manifest, capsys,
                                                                     tmp_path):
    calls = []

    def recording(model_dir, **kw):
        calls.append(kw)
        return fake_unlearn(model_dir, **kw)

    # nothing forgotten yet: the registered model is exact, so a consolidation is a recorded
    # no-op (a monthly job must not fail or retrain for nothing)
    assert status(reg)["exactness"] == {"approximate_steps": 0, "withdrawn_not_forgotten": 0,
                                        "exact": True}
    noop = forget(reg, {"id": "C-0", "subject": "ops", "consolidate": True}, unlearn=recording,
                  verify=fake_verify)
    assert noop["status"] == "completed" and noop["to_version"] == 1 and not calls
    assert noop["noop_reason"] == "the active model is exact already"
    # two approximate steps, then a request whose every method fails (images stay in the model)
    a, b, c = distinct(manifest, 2), distinct(manifest, 3, start=10), distinct(manifest, 2,
                                                                               start=20)
    forget(reg, req("DR-A", manifest, a), unlearn=recording, verify=fake_verify)
    forget(reg, req("DR-B", manifest, b), unlearn=recording, verify=fake_verify)
    failing = fake_steps(fail=["salun-cra", "retrain"])["verify"]
    assert forget(reg, req("DR-C", manifest, c), unlearn=recording,
                  verify=failing)["status"] == "failed"
    x = status(reg)["exactness"]
    assert x == {"approximate_steps": 2, "withdrawn_not_forgotten": 2, "exact": False}
    assert main(["registry", "status", str(reg)]) == 0
    assert "2 approximate unlearning step(s)" in capsys.readouterr().out
    # consolidate: one retraining from scratch that leaves out all seven images
    with fake_registry_steps():
        assert main(["registry", "consolidate", str(reg), "--id", "CONS-1", "--note",
                     "monthly"]) == 0
    assert "retrained without the 7 image(s)" in capsys.readouterr().out
    call = json.loads((reg / "versions" / "4" / "fake_call.json").read_text())
    assert call["method"] == "retrain" and call["forget"] == sorted(a + b + c)
    assert call["exclude"] == []
    st = status(reg)
    assert st["active_version"]["n"] == 4 and st["active_version"]["method"] == "retrain"
    assert st["exactness"] == {"approximate_steps": 0, "withdrawn_not_forgotten": 0,
                               "exact": True}
    assert st["samples"] == {"total": 120, "forgotten": 7, "withdrawn": 7}
    # earlier images keep the version and request that forgot them; DR-C's are forgotten now
    conn = sqlite3.connect(reg / "registry.db")
    rows = dict(((i, (v, r)) for i, v, r in conn.execute(
        "SELECT idx, forgotten_in, request_id FROM samples WHERE forgotten_in IS NOT NULL")))
    conn.close()
    assert {i: rows[i] for i in a} == {i: (2, "DR-A") for i in a}
    assert {i: rows[i] for i in c} == {i: (4, "DR-C") for i in c}
    assert audit_registry(reg).ok
    cert = certificate(reg, "CONS-1")
    assert [f["index"] for f in cert["consolidated"]] == sorted(a + b + c)
    assert cert["request"]["body"]["consolidate"] is True and cert["method"] == "retrain"
    write_certificate(reg, "CONS-1", tmp_path / "cert")
    assert "Consolidation: exact retraining without the 7 images" in (
        tmp_path / "cert" / "certificate.html").read_text()
    # the same id again is a no-op; a later deletion request excludes everything as before
    with fake_registry_steps():
        again = forget(reg, {"id": "CONS-1", "subject": "scheduled-consolidation",
                             "note": "monthly", "consolidate": True})
    assert again["reused"] and status(reg)["active_version"]["n"] == 4
    forget(reg, req("DR-D", manifest, distinct(manifest, 1, start=40)), unlearn=recording,
           verify=fake_verify)
    assert set(a + b + c) == set(calls[-1]["exclude"])


def test_exact_retraining_also_forgets_failed_requests_images(reg, manifest):
    a, b = distinct(manifest, 2), distinct(manifest, 2, start=10)
    assert fake(reg, req("DR-A", manifest, a), fail=["salun-cra", "retrain"])["status"] == \
        "failed"
    assert status(reg)["exactness"]["withdrawn_not_forgotten"] == 2
    # the next request falls back to retraining, which leaves out DR-A's images as well
    r = fake(reg, req("DR-B", manifest, b), fail=["salun-cra"])
    assert r["method"] == "retrain" and r["to_version"] == 2
    st = status(reg)
    assert st["exactness"] == {"approximate_steps": 0, "withdrawn_not_forgotten": 0,
                               "exact": True}
    assert st["samples"]["forgotten"] == 4 and audit_registry(reg).ok
    # resubmitting DR-A now has nothing left to do: a recorded no-op, no new version
    again = fake(reg, req("DR-A", manifest, a))
    assert again["status"] == "completed" and again["to_version"] == 2
    assert "forgotten meanwhile" in again["noop_reason"] and again["attempts"][-1]["n"] == 2
    assert status(reg)["active_version"]["n"] == 2 and audit_registry(reg).ok


def test_failed_consolidation_retried_covers_images_withdrawn_since(reg, manifest, capsys):
    a, b = distinct(manifest, 2), distinct(manifest, 2, start=10)
    fake(reg, req("DR-A", manifest, a))
    with fake_registry_steps(fail=["retrain"]):
        assert main(["registry", "consolidate", str(reg), "--id", "C-1"]) == 1
    assert "the exact retraining did not pass the safety gate" in capsys.readouterr().err
    assert fake(reg, req("DR-B", manifest, b), fail=["salun-cra", "retrain"])["status"] == \
        "failed"
    with fake_registry_steps():
        assert main(["registry", "consolidate", str(reg), "--id", "C-1"]) == 0
    assert "retrained without the 4 image(s)" in capsys.readouterr().out
    call = json.loads((reg / "versions" / "3" / "fake_call.json").read_text())
    assert call["forget"] == sorted(a + b) and call["exclude"] == []
    st = status(reg)
    assert st["exactness"]["exact"] and st["samples"]["forgotten"] == 4
    assert audit_registry(reg).ok
    # and once exact, consolidating again is a no-op that says why
    with fake_registry_steps():
        assert main(["registry", "consolidate", str(reg), "--id", "C-2"]) == 0
    assert "nothing to do (the active model is exact already)" in capsys.readouterr().out


def test_consolidation_with_the_real_unlearn_step(reg, manifest):
    from medunlearn.registry.steps import unlearn_candidate

    a, b = distinct(manifest, 2), distinct(manifest, 3, start=10)
    fake(reg, req("DR-A", manifest, a))
    fake(reg, req("DR-B", manifest, b))
    r = forget(reg, {"id": "C-1", "subject": "ops", "consolidate": True}, unlearn=unlearn_candidate,
               verify=fake_verify)
    assert r["status"] == "completed" and r["to_version"] == 4 and r["consolidated"] == 5
    # the retrained run forgot (and so evaluates) all five images and excluded none
    v4 = reg / "versions" / "4"
    with open(v4 / "forget.csv") as fh:
        assert sorted(int(x["index"]) for x in csv.DictReader(fh)) == sorted(a + b)
    assert not (v4 / "excluded.csv").exists() or len((v4 / "excluded.csv").read_text()
                                                      .splitlines()) <= 1
    config = json.loads((v4 / "config.json").read_text())
    assert config["method"]["name"] == "retrain" and config["forget"]["count"] == 5
    assert status(reg)["exactness"]["exact"] and audit_registry(reg).ok


@pytest.mark.parametrize("body, message", [
    ({"images": ["a" * 64]}, "names no new images"),
    ({"method": "salun"}, "always retrains"),
    ({"consolidate": "yes"}, "must be true or false"),
])
def test_bad_consolidation_requests_are_refused(reg, body, message):
    before = snapshot(reg)
    with pytest.raises(RequestError, match=message):
        forget(reg, {"id": "C-1", "subject": "ops", "consolidate": True} | body,
               unlearn=fake_unlearn, verify=fake_verify)
    assert snapshot(reg) == before


def test_verify_step_receives_active_version_as_original(reg, manifest):
    seen = []

    def checking(run_dir, *, original, data_root=None):
        seen.append((run_dir.name, original.name))
        return Verification(True)

    forget(reg, req("DR-1", manifest, distinct(manifest, 1)), unlearn=fake_unlearn,
           verify=checking)
    forget(reg, req("DR-2", manifest, distinct(manifest, 1, start=5)), unlearn=fake_unlearn,
           verify=checking)
    assert [o for _, o in seen] == ["1", "2"]


# --------------------------------------------------------------------------- audit


def test_certificate_json_and_html(reg, manifest, tiny_model, tmp_path, capsys):
    idx = distinct(manifest, 2)
    fake(reg, req("DR-1", manifest, idx))
    assert main(["audit", "show", str(reg), "DR-1", "--out", str(tmp_path / "cert")]) == 0
    cert = json.loads((tmp_path / "cert" / "certificate.json").read_text())
    assert [f["sha256"] for f in cert["forgotten"]] == [manifest[i] for i in idx]
    # version 1 (a copy of the registered model) was purged by the request: its hash stays
    assert not (reg / "versions" / "1" / "model.safetensors").exists()
    assert cert["model_before"]["weights_sha256"] == sha256_file(
        tiny_model / "model.safetensors")
    assert cert["model_after"]["weights_sha256"] == sha256_file(
        reg / "versions" / "2" / "model.safetensors")
    assert cert["method"] == "salun-cra" and cert["attempts"][0]["passed"]
    assert [e["kind"] for e in cert["ledger"]["entries"]] == ["request", "attempt", "promote",
                                                            "complete", "purge"]
    page = (tmp_path / "cert" / "certificate.html").read_text()
    assert manifest[idx[0]] in page and "<script" not in page and "http" not in page
    # test doubles are recorded in the ledger and flagged, never passed off as real unlearning
    assert "non-standard steps" in page and "fake_unlearn" in page
    warnings = audit_registry(reg).warnings
    assert len(warnings) == 1 and "fake_unlearn" in warnings[0]
    assert main(["audit", "show", str(reg), "NOPE", "--out", str(tmp_path / "c2")]) == 2
    assert "known requests: DR-1" in capsys.readouterr().err


def test_external_anchors_catch_a_rewritten_ledger(reg, manifest, tmp_path, capsys):
    from medunlearn.registry import ledger

    fake(reg, req("DR-1", manifest, distinct(manifest, 2)))
    assert main(["audit", "show", str(reg), "DR-1", "--out", str(tmp_path / "cert")]) == 0
    cert_file = tmp_path / "cert" / "certificate.json"
    head = status(reg)["ledger"]
    fake(reg, req("DR-2", manifest, distinct(manifest, 2, start=10)))
    anchor = f"{head['entries']}:{head['head']}"
    assert main(["audit", "verify", str(reg), "--anchor", anchor, "--certificate",
                 str(cert_file)]) == 0
    # the head anchor, the certificate's five request entries and its head
    assert "7 external anchor(s) matched" in capsys.readouterr().out
    # someone with write access changes DR-1's subject in its table row and in its ledger
    # entry, then recomputes the whole chain and the head file
    conn = sqlite3.connect(reg / "registry.db")
    conn.row_factory = sqlite3.Row
    prev = ledger.GENESIS
    for r in conn.execute("SELECT * FROM ledger ORDER BY seq").fetchall():
        body = json.loads(r["body"])
        if r["kind"] == "request" and r["request_id"] == "DR-1":
            body["request"]["subject"] = "someone-else"
            conn.execute("UPDATE requests SET subject = ?, body = ? WHERE id = 'DR-1'",
                         ("someone-else", ledger.canonical_json(body["request"])))
        h = ledger.entry_hash(r["seq"], r["kind"], r["request_id"], r["created"], body, prev)
        conn.execute("UPDATE ledger SET body = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                     (ledger.canonical_json(body), prev, h, r["seq"]))
        prev = h
    conn.commit()
    (reg / "LEDGER_HEAD").write_text(f"{r['seq']} {prev}\n")
    conn.close()
    assert audit_registry(reg).ok  # internally consistent: only an outside anchor can tell
    report = audit_registry(reg, anchors=[(head["entries"], head["head"])])
    assert not report.ok and "the ledger was rewritten" in report.problems[0]
    assert main(["audit", "verify", str(reg), "--certificate", str(cert_file)]) == 1
    assert "the ledger was rewritten" in capsys.readouterr().err
    assert not audit_registry(reg, anchors=[(999, "0" * 64)]).ok  # entries removed
    for bad in ("12-abc", f"0:{'0' * 64}"):
        assert main(["audit", "verify", str(reg), "--anchor", bad]) == 2
        assert "is not SEQ:HASH" in capsys.readouterr().err
    assert main(["audit", "verify", str(reg), "--certificate", str(tmp_path / "no.json")]) == 2


@pytest.fixture
def busy_reg(reg, manifest):
    fake(reg, req("DR-1", manifest, distinct(manifest, 2)))
    fake(reg, req("DR-2", manifest, distinct(manifest, 2, start=10)))
    assert audit_registry(reg).ok
    return reg


def _sql(reg, *statements):
    conn = sqlite3.connect(reg / "registry.db")
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


def _audit(reg, capsys):
    code = main(["audit", "verify", str(reg)])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("tamper,expect", [
    (["UPDATE ledger SET body = replace(body, '\"retrain\"', '\"finetune\"') WHERE seq = 1"],
     "ledger entry 1 (init"),
    (["UPDATE ledger SET created = '2020-01-01' WHERE seq = 3"], "ledger entry 3"),
    (["DELETE FROM ledger WHERE seq = 4"], "entries 4..4 were removed"),
    (["UPDATE ledger SET seq = 100 WHERE seq = 3", "UPDATE ledger SET seq = 3 WHERE seq = 4",
      "UPDATE ledger SET seq = 4 WHERE seq = 100"], "ledger entry 3"),
    (["DELETE FROM ledger WHERE seq = (SELECT MAX(seq) FROM ledger)"],
     "removed from the end of the ledger"),
    (["UPDATE samples SET forgotten_in = NULL, request_id = NULL WHERE forgotten_in = 2"],
     "could come back"),
    (["UPDATE samples SET sha256 = 'ff' || substr(sha256, 3) WHERE idx = 50"],
     "training manifest"),
    (["UPDATE versions SET weights_sha256 = 'aa' WHERE n = 2"], "model version 2"),
    (["UPDATE attempts SET passed = 0 WHERE n = 1"], "attempt 1 of request DR-1"),
])
def test_audit_detects_tampered_tables(busy_reg, capsys, tamper, expect):
    assert _audit(busy_reg, capsys)[0] == 0
    _sql(busy_reg, *tamper)
    code, err = _audit(busy_reg, capsys)
    assert code == 1 and expect in err, err


def test_audit_detects_changed_or_missing_model_files(busy_reg, capsys):
    weights = busy_reg / "versions" / "3" / "model.safetensors"  # the active version's
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, err = _audit(busy_reg, capsys)
    assert code == 1 and "model version 3" in err and str(weights) in err
    (busy_reg / "versions" / "2" / "config.json").unlink()  # a record kept after the purge
    code, err = _audit(busy_reg, capsys)
    assert "model version 2" in err and "missing" in err


def test_audit_detects_changed_config(busy_reg, capsys):
    config = busy_reg / "versions" / "2" / "config.json"
    config.write_text(config.read_text().replace('"width": 8', '"width": 16'))
    code, err = _audit(busy_reg, capsys)
    assert code == 1 and str(config) in err


def test_ledger_chain_is_over_canonical_json(busy_reg):
    conn = sqlite3.connect(busy_reg / "registry.db")
    conn.row_factory = sqlite3.Row
    rows = conn.execute("SELECT * FROM ledger ORDER BY seq").fetchall()
    assert rows[0]["prev_hash"] == "0" * 64
    assert all(b["prev_hash"] == a["hash"] for a, b in zip(rows, rows[1:], strict=False))
    assert chain_problems(conn) == []
    write_certificate(busy_reg, "DR-2", busy_reg.parent / "cert")


def test_steps_are_recorded_under_stable_names():
    """The ledger names the production steps as it always has (renaming or moving the functions
    must not change the entries a registry records), and any other step under its own name."""
    from medunlearn.registry import steps

    assert steps.step_name(steps.unlearn_candidate) == "medunlearn.registry.steps.real_unlearn"
    assert steps.step_name(steps.gate_candidate) == "medunlearn.registry.steps.real_verify"
    assert steps.REAL_STEPS == (steps.step_name(steps.unlearn_candidate),
                                steps.step_name(steps.gate_candidate))
    assert steps.step_name(fake_unlearn) == "medunlearn.testing.fake_unlearn"
    assert steps.step_name(fake_steps(fail=["x"])["verify"]) == "medunlearn.testing.fake_verify"
    with fake_registry_steps():  # the fakes as defaults keep their own names, and are undone
        assert steps.step_name(steps.gate_candidate) == "medunlearn.testing.fake_verify"
    assert steps.step_name(steps.gate_candidate) == "medunlearn.registry.steps.real_verify"


def test_index_files_round_trip(tmp_path):
    from medunlearn.fileio import read_index_rows, write_index_rows

    path = write_index_rows(tmp_path / "x.csv", ["index", "sha256", "forgotten_in"],
                            [(0, "ab" * 32, None), (1, "cd" * 32, 2)])
    assert path.read_bytes() == (b"index,sha256,forgotten_in\n0," + b"ab" * 32 + b",\n1,"
                                 + b"cd" * 32 + b",2\n")
    header, rows = read_index_rows(path)
    assert header == ["index", "sha256", "forgotten_in"]
    assert rows == [{"index": "0", "sha256": "ab" * 32, "forgotten_in": ""},
                    {"index": "1", "sha256": "cd" * 32, "forgotten_in": "2"}]


# --------------------------------------------------------------------------- end to end


@pytest.mark.integration
def test_end_to_end_with_real_unlearning_and_gate(tiny_model, manifest, tmp_path, medmnist_root,
                                                  capsys):
    """Real run_unlearning + evaluate_run + gate; a real retrain never reads forgotten images."""
    unlearning = pytest.importorskip("medunlearn.runs")
    pytest.importorskip("medunlearn.evaluation.gate")
    reg = tmp_path / "reg"
    assert main(["registry", "init", "--model", str(tiny_model), "--out", str(reg),
                 "--data-root", str(medmnist_root), "--methods", "salun-cra,retrain"]) == 0
    assert "salun-cra -> retrain" in capsys.readouterr().out
    a, b = distinct(manifest, 4), distinct(manifest, 3, start=40)
    (tmp_path / "a.json").write_text(json.dumps(req("E-1", manifest, a)))
    assert main(["forget", str(reg), "--request", str(tmp_path / "a.json")]) == 0  # real steps
    r1 = status(reg)
    assert r1["active_version"]["n"] == 2 and r1["active_version"]["method"] == "salun-cra"
    seen: set[int] = set()

    def instrumented(model_dir, *, method, forget, exclude, out, seed=0, data_root=None):
        return unlearning.run_unlearning(
            model_dir, method=method, forget=list(forget), exclude=list(exclude), seed=seed,
            out=out, data_root=data_root, progress=False,
            on_batch=lambda idx: seen.update(idx.tolist()))

    r2 = forget(reg, req("E-2", manifest, b, method="retrain"), unlearn=instrumented)
    assert r2["status"] == "completed" and r2["method"] == "retrain" and r2["to_version"] == 3
    assert seen and not seen & (set(a) | set(b))  # the retrain read neither request's images
    assert len(seen) == len(manifest) - 7
    cfg = json.loads((reg / "versions" / "3" / "config.json").read_text())
    assert cfg["forget"]["count"] == 3 and cfg["forget"]["excluded_count"] == 4
    with open(reg / "versions" / "3" / "excluded.csv") as fh:  # evaluation keeps them out too
        assert [int(r["index"]) for r in csv.DictReader(fh)] == sorted(a)
    report = audit_registry(reg, load_models=True)
    assert report.ok and len(report.warnings) == 1 and "request E-2" in report.warnings[0]
    cert = write_certificate(reg, "E-2", tmp_path / "cert")
    checks = cert["attempts"][-1]["checks"]
    # the privacy check on the forgotten images, in plain words, and the key metrics
    assert any(c["check"] == "Membership attack" for c in checks)
    assert cert["attempts"][-1]["key_metrics"]
