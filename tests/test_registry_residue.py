"""Nothing of a forgotten patient stays readable in the registry: superseded versions' weights
are purged (recorded in the ledger), ``--keep-superseded`` keeps a rollback copy and says until
when, ``registry residue`` lists what is left, the audit tells "purged by design" from
"missing", and the registry refuses symlinks and never deletes what it did not make.

The requests use the fast fake steps on a tiny BreastMNIST model."""

from __future__ import annotations

import errno
import json

import pytest

from medunlearn.cli import main
from medunlearn.fileio import sha256_file
from medunlearn.registry import (
    RegistryError,
    audit_registry,
    forget,
    init_registry,
    resume,
    status,
)
from medunlearn.registry.residue import NOT_REACHABLE, residue
from medunlearn.testing import fake_registry_steps, fake_steps


def _reg(tiny_model, tmp_path, root, **kw):
    path = tmp_path / "reg"
    init_registry(tiny_model, path, data_root=str(root), methods=["salun-cra", "retrain"], **kw)
    return path


@pytest.fixture
def reg(tiny_model, tmp_path, medmnist_root):
    return _reg(tiny_model, tmp_path, medmnist_root)


def req(rid, manifest, start, k=2):
    return {"id": rid, "subject": f"subj-{rid}", "images": manifest[start:start + k]}


def fake(reg, request, **kw):
    return forget(reg, request, **fake_steps(), **kw)


def _cli(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_default_purges_superseded_weights_and_keeps_the_record(reg, manifest, capsys):
    v1 = reg / "versions" / "1"
    weights = sha256_file(v1 / "model.safetensors")
    assert _cli(capsys, "registry", "residue", reg)[0] == 0  # nothing forgotten yet
    r = fake(reg, req("DR-1", manifest, 0))
    assert r["status"] == "completed" and r["to_version"] == 2
    # the weights are gone; the record (config, metrics, manifest) stays
    assert not (v1 / "model.safetensors").exists()
    assert (v1 / "config.json").is_file() and (v1 / "metrics.json").is_file()
    assert (reg / "versions" / "2" / "model.safetensors").is_file()
    res = r["residue"]
    assert res["purged"] == [{"version": 1, "file": "model.safetensors", "sha256": weights}]
    assert res["kept"] == [] and res["keep_superseded"] == 0
    assert res["not_reachable"] == NOT_REACHABLE
    assert status(reg)["versions"][0]["weights_sha256"] == weights  # the hash is kept
    # the registry lists no residue (the cache was rewritten without the withdrawn images)
    assert residue(reg) == []
    code, out, _ = _cli(capsys, "registry", "residue", reg)
    assert code == 0 and "none" in out and "backups" in out
    # the audit checks the chain and tells purged by design from missing
    report = audit_registry(reg)
    assert report.ok and report.checked["purged_by_design"] == 1
    code, out, _ = _cli(capsys, "audit", "verify", reg)
    assert code == 0 and "purged by design: 1 file(s)" in out


def test_the_audit_catches_a_planted_or_missing_file_after_a_purge(reg, manifest, capsys):
    fake(reg, req("DR-1", manifest, 0))
    v1 = reg / "versions" / "1"
    (v1 / "model.safetensors").write_bytes(b"planted weights")
    code, _, err = _cli(capsys, "audit", "verify", reg)
    assert code == 1 and "model.safetensors" in err and "added after" in err
    (v1 / "model.safetensors").unlink()
    assert audit_registry(reg).ok
    (v1 / "config.json").unlink()  # not purged: missing
    code, _, err = _cli(capsys, "audit", "verify", reg)
    assert code == 1 and "missing" in err and "config.json" in err


def test_an_interrupted_purge_is_finished_by_the_next_writer(reg, manifest, tiny_model):
    fake(reg, req("DR-1", manifest, 0))
    target = reg / "versions" / "1" / "model.safetensors"
    # as if the process died after the commit that recorded the purge, before the deletion
    target.write_bytes((tiny_model / "model.safetensors").read_bytes())
    report = audit_registry(reg)
    assert report.ok and any("interrupted purge" in w for w in report.warnings)
    assert [f["path"] for f in residue(reg)] == [str(target)]
    resume(reg, **fake_steps())
    assert not target.exists() and residue(reg) == [] and audit_registry(reg).ok


def test_keep_superseded_keeps_a_rollback_copy_until_a_stated_version(tiny_model, manifest,
                                                                      tmp_path, medmnist_root,
                                                                      capsys):
    reg = _reg(tiny_model, tmp_path, medmnist_root, keep_superseded=1)
    r = fake(reg, req("DR-1", manifest, 0))
    assert r["residue"]["purged"] == []
    assert r["residue"]["kept"] == [{"version": 1, "files": ["model.safetensors"],
                                     "kept_until_version": 3}]
    found = residue(reg)
    assert [(f["path"], f["kept_until"]) for f in found] == [
        (str(reg / "versions" / "1" / "model.safetensors"), 3)]
    code, out, _ = _cli(capsys, "registry", "residue", reg)
    assert code == 1 and "until version 3" in out
    r = fake(reg, req("DR-2", manifest, 10))  # version 3: version 1's copy goes, 2's is kept
    assert [p["version"] for p in r["residue"]["purged"]] == [1]
    assert [k["version"] for k in r["residue"]["kept"]] == [2]
    assert not (reg / "versions" / "1" / "model.safetensors").exists()
    # a request can ask for the default (purge) whatever the registry keeps
    r = fake(reg, req("DR-3", manifest, 20), keep_superseded=0)
    assert [p["version"] for p in r["residue"]["purged"]] == [2, 3] and residue(reg) == []
    assert audit_registry(reg).ok


def test_forget_cli_takes_keep_superseded(reg, manifest, tmp_path, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(req("DR-1", manifest, 0)))
    with fake_registry_steps():
        code, _, _ = _cli(capsys, "forget", reg, "--request", path, "--keep-superseded", "1",
                          "--json")
    assert code == 0 and (reg / "versions" / "1" / "model.safetensors").is_file()
    assert _cli(capsys, "registry", "residue", reg)[0] == 1
    assert _cli(capsys, "forget", reg, "--request", path, "--keep-superseded", "-1")[0] == 2


def test_scratch_files_are_deleted_after_a_request(reg, manifest):
    (reg / "staging" / "r9-a1").mkdir()
    (reg / "staging" / "r9-a1" / "model.safetensors").write_bytes(b"x")
    work = reg / "forgetting_quality" / "DR-0"
    (work / "runs" / "unlearn-0").mkdir(parents=True)
    (work / "runs" / "unlearn-0" / "model.safetensors").write_bytes(b"x")
    found = {f["what"] for f in residue(reg)}
    assert any("staging" in w for w in found) and any("per-image check" in w for w in found)
    fake(reg, req("DR-1", manifest, 0))
    assert not list((reg / "staging").iterdir())
    assert not (work / "runs").exists()  # (a recorded result file would be kept)
    assert residue(reg) == []


@pytest.mark.parametrize("where", ["staging", "cache", "versions/7", "lock"])
def test_symlinks_in_the_registry_are_refused_before_any_change(reg, manifest, tmp_path, where,
                                                                capsys):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.npz").write_bytes(b"not the registry's")
    target = reg / where
    if where == "lock":
        target.unlink()
        target.symlink_to(tmp_path / "elsewhere" / "lock")  # dangling
    else:
        if target.is_dir():
            import shutil

            shutil.rmtree(target)
        target.symlink_to(outside, target_is_directory=True)
    before = (reg / "registry.db").read_bytes()
    with pytest.raises(RegistryError, match="symbolic link"):
        fake(reg, req("DR-1", manifest, 0))
    assert (outside / "keep.npz").read_bytes() == b"not the registry's"
    assert not (tmp_path / "elsewhere").exists()
    assert (reg / "registry.db").read_bytes() == before


def test_unknown_files_in_versions_are_reported_and_never_deleted(reg, manifest):
    stray = reg / "versions" / "notes"
    stray.mkdir()
    (stray / "readme.txt").write_text("mine")
    (reg / "versions" / "backup.txt").write_text("mine too")
    report = audit_registry(reg)
    assert report.ok and sum("not a model version" in w for w in report.warnings) == 2
    fake(reg, req("DR-1", manifest, 0))
    assert (stray / "readme.txt").read_text() == "mine"
    assert (reg / "versions" / "backup.txt").read_text() == "mine too"


def test_a_full_disk_is_not_a_failed_attempt(reg, manifest):
    def full_disk(model_dir, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    steps = fake_steps()
    with pytest.raises(RegistryError, match="stays pending"):
        forget(reg, req("DR-1", manifest, 0), unlearn=full_disk, verify=steps["verify"])
    st = status(reg)
    assert [r["id"] for r in st["requests"]["pending"]] == ["DR-1"]
    assert not st["requests"]["failed"] and audit_registry(reg).ok
    done = resume(reg, **steps)
    assert done[0]["status"] == "completed" and [a["n"] for a in done[0]["attempts"]] == [1]
