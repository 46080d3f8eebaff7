"""The registry's shadow models: ``registry init --shadows K`` / ``registry shadows`` train them
(resumably) and the ledger vouches for them; every approximate request's gate runs the
per-image membership check on them ("not run" with the command without them); the certificate
shows the per-image table; and after a request no shadow trained on a forgotten image stays
readable (retrained without it, the old files purged).

A tiny BreastMNIST model (120 training images, one epoch) with K = 4 shadows: each shadow
trains in well under a second."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import distinct, req

from medunlearn.cli import main
from medunlearn.errors import CheckpointError
from medunlearn.fileio import sha256_file
from medunlearn.registry import (
    AuditError,
    RegistryError,
    Verification,
    audit_registry,
    certificate,
    forget,
    init_registry,
    status,
    write_certificate,
)
from medunlearn.registry import ledger as ledger_mod
from medunlearn.registry.certificate_membership import text_lines
from medunlearn.registry.db import connect
from medunlearn.registry.residue import residue
from medunlearn.registry.shadow_records import folder as shadow_folder
from medunlearn.registry.shadows import train as train_shadow_models
from medunlearn.registry.steps import gate_candidate
from medunlearn.runs.shadows import load_companions
from medunlearn.testing import fake_steps, fake_unlearn

K = 4


def _entries(reg, kind="shadows"):
    conn = connect(reg)
    try:
        return [e for e in ledger_mod.entries(conn) if e["kind"] == kind]
    finally:
        conn.close()


def _files(path):
    return {p.relative_to(path).as_posix(): sha256_file(p)
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture
def sreg(tiny_model, tmp_path, medmnist_root):
    """A registry with K = 4 shadow models (newton first, retrain as the fallback)."""
    path = tmp_path / "reg"
    init_registry(tiny_model, path, data_root=str(medmnist_root), methods=["newton", "retrain"],
                  shadows=K, warm=False)
    return path


def real_gate_that_promotes(seen):
    """The production gate step, run and recorded, whose verdict is then forced to pass (so
    that the approximate candidate is promoted and its certificate shows the evidence)."""
    def verify(run_dir, *, original, data_root=None, cache=None, shadows=None, registry=None):
        v = gate_candidate(run_dir, original=original, data_root=data_root, cache=cache,
                           shadows=shadows, registry=registry)
        seen.append({"shadows": shadows, "verdict": v})
        return Verification(True, v.reasons, v.checks, v.metrics)
    return verify


def _membership_check(v):
    return next(c for c in v.checks if c["name"] == "membership")


# --------------------------------------------------------------------------- training


def test_init_trains_records_and_resumes_an_interrupted_set(tiny_model, tmp_path, medmnist_root,
                                                            monkeypatch, capsys):
    import medunlearn.runs.shadows as runs_shadows

    reg = tmp_path / "reg"
    init_registry(tiny_model, reg, data_root=str(medmnist_root), warm=False)
    real = runs_shadows.train_members
    calls = []

    def interrupted(data, mask, *, todo, **kw):  # dies after two members are stored
        calls.append(list(todo))
        for n, m in enumerate(real(data, mask, todo=todo, **kw)):
            if n == 2 and len(calls) == 1:
                raise KeyboardInterrupt
            yield m

    monkeypatch.setattr(runs_shadows, "train_members", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_shadow_models(reg, k=K, progress=False)
    assert _entries(reg) == [] and status(reg)["shadows"] is None  # nothing recorded
    partial = shadow_folder(reg, 1)
    assert len(list((partial / "members").glob("k*.json"))) == 2
    # the unrecorded folder is listed as residue and warned about, never a failure
    assert {r["path"] for r in residue(reg)} == {str(p) for p in partial.rglob("*")
                                                 if p.is_file()}
    report = audit_registry(reg)
    assert report.ok and any("no ledger entry records" in w for w in report.warnings)
    # running init again with the same model resumes: only the two missing members train
    capsys.readouterr()
    assert main(["registry", "init", "--model", str(tiny_model), "--out", str(reg),
                 "--data-root", str(medmnist_root), "--shadows", str(K), "-q"]) == 0
    assert calls[1] == [2, 3]
    assert "shadow models: 4 (generation 1)" in capsys.readouterr().out
    [entry] = _entries(reg)
    body = entry["body"]
    assert body["k"] == K and body["generation"] == 1 and body["excluded"] == []
    assert body["files"] == _files(partial) and body["purged"] == []
    assert body["source"]["weights_sha256"] == sha256_file(tiny_model / "model.safetensors")
    cs = load_companions(partial)
    assert cs.k == K and (cs.membership.sum(axis=0) == K // 2).all()
    assert audit_registry(reg).ok and residue(reg) == []
    # a set of another K is refused (nothing changes); the same K is current
    assert main(["registry", "shadows", str(reg), "--k", "6"]) == 2
    assert "--replace" in capsys.readouterr().err
    assert main(["registry", "shadows", str(reg), "--k", str(K)]) == 0
    assert "nothing to do" in capsys.readouterr().out and len(_entries(reg)) == 1


def test_too_few_shadows_are_refused_before_anything_is_written(tiny_model, tmp_path,
                                                                 medmnist_root, capsys):
    out = tmp_path / "reg"
    assert main(["registry", "init", "--model", str(tiny_model), "--out", str(out),
                 "--data-root", str(medmnist_root), "--shadows", "3"]) == 2
    assert "too few" in capsys.readouterr().err and not out.exists()
    with pytest.raises(Exception, match="too few"):
        init_registry(tiny_model, out, data_root=str(medmnist_root), shadows=2)
    assert not out.exists()


# --------------------------------------------------------------------------- the gate


def test_the_gate_runs_the_membership_check_on_the_registry_shadows(sreg, manifest,
                                                                    tmp_path):
    idx = distinct(manifest, 12, start=5)
    seen = []
    r = forget(sreg, req("R1", manifest, idx, method="newton"), unlearn=fake_unlearn,
               verify=real_gate_that_promotes(seen))
    assert r["status"] == "completed" and r["method"] == "newton"
    assert seen[0]["shadows"] == shadow_folder(sreg, 1)  # the set in use when it was verified
    check = _membership_check(seen[0]["verdict"])
    assert check["status"] in ("pass", "fail", "cannot_say")  # it ran
    rows = seen[0]["verdict"].metrics["models"]["model"]["membership"]["images"]
    assert [x["sha256"] for x in rows] == [manifest[i] for i in idx]
    # the certificate's per-image table: one row per forgotten image, in plain words
    cert = write_certificate(sreg, "R1", tmp_path / "cert")
    mem = cert["membership"]
    assert mem["run"] and mem["applies"] and mem["attempt"] == 1 and mem["k"] == K
    assert [x["short"] for x in mem["images"]] == [manifest[i][:12] for i in idx]
    for x in mem["images"]:
        assert x["status"] in ("looks forgotten", "looks remembered", "cannot say")
        assert x["in_likeness"] is not None and x["out_likeness"] is not None
    assert mem["status"] in ("pass", "fail", "cannot say") and "Cannot say" in mem["how_to_read"]
    html = (tmp_path / "cert" / "certificate.html").read_text()
    assert "IN-likeness" in html and "OUT-likeness" in html
    assert all(manifest[i][:12] in html for i in idx)  # every row in the page
    lines = text_lines(mem, limit=5)
    assert sum(1 for s in lines if s.startswith("  ") and s.split()[0] in
               {m[:12] for m in manifest}) == 5 and "... and 7 more image(s)" in "\n".join(lines)
    # the certificate still matches the registry
    assert audit_registry(sreg, certificate_files=[tmp_path / "cert" / "certificate.json"]).ok


def test_without_shadows_the_check_is_not_run_and_names_the_command(tiny_model, manifest,
                                                                     tmp_path, medmnist_root):
    reg = tmp_path / "plain"
    init_registry(tiny_model, reg, data_root=str(medmnist_root), methods=["newton"],
                  warm=False)
    seen = []
    forget(reg, req("R1", manifest, distinct(manifest, 2)), unlearn=fake_unlearn,
           verify=real_gate_that_promotes(seen))
    check = _membership_check(seen[0]["verdict"])
    assert check["status"] == "not_run" and seen[0]["shadows"] is None
    assert f"medunlearn registry shadows {reg}" in check["message"]
    cert = certificate(reg, "R1")
    assert not cert["membership"]["run"]
    assert cert["membership"]["command"] == f"medunlearn registry shadows {reg} --k 16"
    assert cert["membership"]["instrument"]["shadows"] is False


def test_exact_retraining_skips_the_check(sreg, manifest):
    seen = []
    forget(sreg, req("R1", manifest, distinct(manifest, 2), method="retrain"),
           unlearn=fake_unlearn, verify=real_gate_that_promotes(seen))
    assert _membership_check(seen[0]["verdict"])["status"] == "skipped"
    assert certificate(sreg, "R1")["membership"]["applies"] is False


def test_shadows_of_other_data_are_refused_with_the_rebuild_command(sreg, manifest, tmp_path):
    from helpers import tiny_arrays, user_model

    from medunlearn.config import TrainConfig
    from medunlearn.runs.shadows import train_shadows

    other = tmp_path / "other-shadows"
    train_shadows(user_model(), tiny_arrays(), out=other, k=K,
                  train_config=TrainConfig(epochs=1, batch_size=32, device="cpu"))
    candidate = tmp_path / "cand"
    fake_unlearn(sreg / "versions" / "1", method="newton", forget=[0], exclude=[],
                 out=candidate)
    with pytest.raises(CheckpointError, match="trained on other data.*Rebuild"):
        gate_candidate(candidate, original=sreg / "versions" / "1", shadows=other,
                       registry=sreg)


# --------------------------------------------------------------------------- privacy


def test_a_request_retrains_every_shadow_trained_on_its_images(sreg, manifest, tmp_path,
                                                                medmnist_root):
    from medunlearn.data import load_from_record
    from medunlearn.evaluation.companions import train_members
    from medunlearn.fileio import read_json
    from medunlearn.runs.shadows import run_recipe

    g1 = shadow_folder(sreg, 1)
    old = load_companions(g1)
    # two images with the same IN shadows: half the set is retrained, the other half copied
    cand = distinct(manifest, 60, start=40)
    idx = [cand[0], next(i for i in cand[1:] if np.array_equal(old.membership[:, i],
                                                               old.membership[:, cand[0]]))]
    hashes = [manifest[i] for i in idx]
    affected = old.trained_on(idx)
    assert len(affected) == K // 2
    old_files = _files(g1)
    r = forget(sreg, req("R1", manifest, idx), **fake_steps())
    assert r["status"] == "completed"
    assert r["shadows"] == {"generation": 2, "k": K, "retrained": len(affected),
                            "copied": K - len(affected), "purged_files": len(old_files),
                            "seconds": r["shadows"]["seconds"]} and r["shadows"]["seconds"] > 0
    # the old set is gone from the disk; the new one holds none of the forgotten images
    assert not g1.exists()
    g2 = shadow_folder(sreg, 2)
    new = load_companions(g2)
    assert new.trained_on_hashes(hashes) == [] and not new.membership[:, idx].any()
    expect = old.membership.copy()
    expect[:, idx] = False
    assert np.array_equal(new.membership, expect)  # only the forgotten images left out
    for j in range(K):  # unaffected members' weights are copied byte for byte
        name = f"members/k{j:02d}.safetensors"
        assert (sha256_file(g2 / name) == old_files[name]) == (j not in affected)
    # no member keeps outputs on a forgotten image; every other output is kept or recomputed
    assert np.isfinite(old.logits["train"][:, idx]).all()
    assert np.isnan(new.logits["train"][:, idx]).all()
    keep = np.setdiff1d(np.arange(len(manifest)), idx)
    assert np.isfinite(new.logits["train"][:, keep]).all()
    copied = [j for j in range(K) if j not in affected]
    assert np.array_equal(new.logits["train"][copied][:, keep],
                          old.logits["train"][copied][:, keep])
    # a retrained member is the model its seed and reduced half give (deterministic)
    j = affected[0]
    config = read_json(sreg / "versions" / "1" / "config.json")
    data = load_from_record(config["data"], seed=0, data_root=str(medmnist_root))
    again = next(train_members(data, new.membership, recipe=run_recipe(config),
                               seeds=new.seeds, todo=[j]))
    assert np.array_equal(again.logits["val"], new.logits["val"][j])
    # the ledger vouches for the new set and records the purge of every old file
    entry = _entries(sreg)[-1]
    assert entry["request_id"] == "R1" and entry["body"]["files"] == _files(g2)
    assert sorted(idx) == entry["body"]["excluded"] and entry["body"]["retrained"] == affected
    assert {p["file"] for p in entry["body"]["purged"]} == {f"shadows/g1/{f}" for f in old_files}
    report = audit_registry(sreg)
    assert report.ok and report.checked["purged_by_design"] >= len(old_files)
    assert not any("shadow" in w for w in report.warnings)
    assert residue(sreg) == []
    # the certificate says so
    cert = certificate(sreg, "R1")
    inst = cert["membership"]["instrument"]
    assert inst["retrained"] == len(affected) and inst["trained_on_these_images"] == 0
    assert "No shadow model trained on these images remains" in cert["summary"]["paragraph"]
    # the next request's gate uses the new set
    seen = []
    forget(sreg, req("R2", manifest, distinct(manifest, 2, start=60)), unlearn=fake_unlearn,
           verify=real_gate_that_promotes(seen))
    assert seen[0]["shadows"] == g2 and not shadow_folder(sreg, 2).exists()
    # (its blanked rows do not disturb the test: it ran on the new images)
    assert _membership_check(seen[0]["verdict"])["status"] in ("pass", "fail", "cannot_say")


def test_a_changed_shadow_file_fails_the_audit_and_blocks_requests(sreg, manifest, capsys):
    target = shadow_folder(sreg, 1) / "members" / "k00.outputs.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    report = audit_registry(sreg)
    assert not report.ok and any("shadow models" in p and "k00.outputs" in p
                                 for p in report.problems)
    with pytest.raises(AuditError, match="shadow models"):
        forget(sreg, req("R1", manifest, distinct(manifest, 1)), **fake_steps())
    capsys.readouterr()
    assert main(["registry", "shadows", str(sreg), "--k", str(K)]) == 2
    assert "shadow models" in capsys.readouterr().err
    assert status(sreg)["shadows"]["generation"] == 1 and len(_entries(sreg)) == 1


def test_a_crash_after_the_shadows_retrained_resumes_them(sreg, manifest, monkeypatch):
    import medunlearn.runs.shadows as runs_shadows
    from medunlearn.registry import store

    def crash(name):
        if name == "after-shadows":
            raise RuntimeError("killed")

    store.set_stage_hook(crash)
    try:
        with pytest.raises(RuntimeError, match="killed"):
            forget(sreg, req("R1", manifest, distinct(manifest, 2)), **fake_steps())
    finally:
        store.set_stage_hook(None)
    st = status(sreg)
    assert st["requests"]["pending"] and st["shadows"]["generation"] == 1  # nothing promoted
    unrecorded = shadow_folder(sreg, 2)
    assert unrecorded.is_dir() and len(list((unrecorded / "members").glob("k*.json"))) == K
    report = audit_registry(sreg)
    assert report.ok and any("no ledger entry records" in w for w in report.warnings)
    weights = {p.name: sha256_file(p) for p in (unrecorded / "members").glob("*.safetensors")}
    real, todo = runs_shadows.train_members, []

    def recording(data, mask, **kw):
        todo.append(list(kw["todo"]))
        return real(data, mask, **kw)

    monkeypatch.setattr(runs_shadows, "train_members", recording)
    r = forget(sreg, req("R1", manifest, distinct(manifest, 2)), **fake_steps())
    assert r["status"] == "completed" and r["shadows"]["generation"] == 2
    # the retry trained nothing: it reused the stored shadows and recorded them
    assert todo == [[]]
    assert {p.name: sha256_file(p) for p in (unrecorded / "members").glob("*.safetensors")
            } == weights
    assert audit_registry(sreg).ok and residue(sreg) == [] and not shadow_folder(sreg, 1).exists()


def test_a_set_holding_a_forgotten_image_is_never_used(sreg, manifest):
    import sqlite3

    from medunlearn.registry.shadows import for_gate

    cs = load_companions(shadow_folder(sreg, 1))
    i = distinct(manifest, 1)[0]
    assert cs.trained_on([i])
    conn = sqlite3.connect(sreg / "registry.db")  # what a bug or an edit would leave
    conn.execute("UPDATE samples SET forgotten_in = 1 WHERE idx = ?", (i,))
    conn.commit()
    conn.close()
    conn = connect(sreg)
    try:
        with pytest.raises(RegistryError, match="registry shadows"):
            for_gate(sreg, conn)
    finally:
        conn.close()
    found = residue(sreg)
    assert found and all("trained on a forgotten image" in r["what"] for r in found
                         if "shadows" in r["path"])


def test_certificates_without_the_section_still_verify(sreg, manifest, tmp_path):
    """A certificate issued before certificates had a membership section is not contradicted by
    it; an edited section is."""
    forget(sreg, req("R1", manifest, distinct(manifest, 2)), **fake_steps())
    cert = write_certificate(sreg, "R1", tmp_path / "cert")
    assert cert["membership"]["summary"].startswith("Not run: the registry had shadow models")
    path = tmp_path / "cert" / "certificate.json"
    old = {k: v for k, v in cert.items() if k != "membership"}
    path.write_text(json.dumps(old))
    assert audit_registry(sreg, certificate_files=[path]).ok
    path.write_text(json.dumps(cert | {"membership": cert["membership"] | {"run": True}}))
    report = audit_registry(sreg, certificate_files=[path])
    assert not report.ok and any("membership.run" in p for p in report.problems)


def test_deleted_shadow_files_hold_requests_until_the_set_is_trained_again(sreg, manifest,
                                                                          capsys):
    (shadow_folder(sreg, 1) / "members" / "k01.safetensors").unlink()
    report = audit_registry(sreg)  # derived data: a warning, not tampering
    assert report.ok and any("were deleted" in w for w in report.warnings)
    seen = []
    request = req("R1", manifest, distinct(manifest, 2))
    with pytest.raises(RegistryError, match="registry shadows"):
        forget(sreg, request, unlearn=fake_unlearn, verify=real_gate_that_promotes(seen))
    assert not seen and status(sreg)["requests"]["pending"]  # not verified without them
    assert main(["registry", "shadows", str(sreg), "--k", str(K), "-q"]) == 0
    assert "trained 4 shadow models (generation 2" in capsys.readouterr().out
    assert not shadow_folder(sreg, 1).exists() and audit_registry(sreg).ok
    r = forget(sreg, request, unlearn=fake_unlearn, verify=real_gate_that_promotes(seen))
    assert r["status"] == "completed" and seen[0]["shadows"] == shadow_folder(sreg, 2)
    assert audit_registry(sreg).ok and residue(sreg) == []
