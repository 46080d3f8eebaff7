"""Tampering with a registry: every edit a certificate or ``registry status`` would repeat must
fail ``audit verify`` (even with an anchor at the current head), block certificates, and block
further requests. One case per row of the table below, plus the head-file cases."""

from __future__ import annotations

import json
import sqlite3

import pytest

from medunlearn.cli import main
from medunlearn.registry import (
    audit_registry,
    forget,
    init_registry,
    status,
    write_certificate,
)
from medunlearn.registry.errors import AuditError
from medunlearn.testing import fake_steps, untrained_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth_root):
    """An untrained (randomly initialised) but complete run folder: the fakes need no training."""
    return untrained_run(tmp_path_factory.mktemp("model") / "model", data_root=synth_root,
                         verify_md5=False)


@pytest.fixture
def reg(model_dir, tmp_path):
    """A registry with request R1 completed by salun-cra (an approximate method) after a failed
    newton attempt (so there are reasons)."""
    path = tmp_path / "reg"
    init_registry(model_dir, path, methods=["newton", "salun-cra", "retrain"], data_root="/data")
    run(path, "R1", [3, 4, 5], fail=["newton"])
    return path


def run(reg, rid, indices, fail=()):
    return forget(reg, {"id": rid, "subject": f"s-{rid}", "indices": indices},
                  **fake_steps(fail=fail))


def sql(statements):
    def edit(reg):
        conn = sqlite3.connect(reg / "registry.db")
        conn.executescript(statements)
        conn.close()
    return edit


def edit_file(name):
    def edit(reg):
        path = reg / "versions" / "2" / name
        path.write_text(path.read_text() + "0\n")
    return edit


def head(reg):
    seq, h = (reg / "LEDGER_HEAD").read_text().split()
    return f"{seq}:{h}"


TAMPERING = [
    ("items, subject and method", sql(
        "DELETE FROM request_items WHERE request_id='R1'; "
        "UPDATE requests SET subject='x' || char(10) || 'active model: exact' WHERE id='R1'; "
        "UPDATE versions SET method='retrain' WHERE n=2;"),
     ["images listed for it", "column subject", "column method"]),
    ("attempt reasons", sql("UPDATE attempts SET reasons='[]' WHERE request_id='R1';"),
     ["column reasons"]),
    ("request result", sql("UPDATE requests SET result='{\"status\":\"completed\"}';"),
     ["stored result differs"]),
    ("who withdrew an image", sql("UPDATE samples SET request_id=NULL WHERE idx=3;"),
     ["the request that withdrew them"]),
    ("an image no longer forgotten", sql("UPDATE samples SET forgotten_in=NULL WHERE idx=4;"),
     ["forgotten-in version differs"]),
    ("submitted time", sql("UPDATE requests SET submitted='2020-01-01T00:00:00.000+00:00';"),
     ["column submitted"]),
    ("completed time", sql("UPDATE requests SET completed='2020-01-01T00:00:00.000+00:00';"),
     ["column completed"]),
    ("version time", sql("UPDATE versions SET created='2020-01-01T00:00:00.000+00:00' "
                         "WHERE n=2;"), ["column created"]),
    ("attempt times", sql("UPDATE attempts SET started='2020', finished='2020';"),
     ["column started", "column finished"]),
    ("attempt verdict", sql("UPDATE attempts SET passed=1, status='passed' WHERE n=1;"),
     ["column status", "column passed"]),
    ("data root", sql("UPDATE meta SET value='/elsewhere' WHERE key='data_root';"),
     ["registry setting data_root"]),
    ("method chain", sql("UPDATE meta SET value='[\"retrain\"]' WHERE key='methods';"),
     ["registry setting methods"]),
    ("version parent", sql("UPDATE versions SET parent=NULL WHERE n=2;"), ["column parent"]),
    ("forget.csv of a version", edit_file("forget.csv"), ["forget.csv has SHA-256"]),
    ("metrics.json of a version", edit_file("metrics.json"), ["metrics.json has SHA-256"]),
]


@pytest.mark.parametrize("what,edit,messages", TAMPERING, ids=[t[0] for t in TAMPERING])
def test_tampering_fails_the_audit_even_with_a_current_anchor(reg, tmp_path, capsys, what,
                                                              edit, messages):
    anchor = head(reg)
    assert main(["audit", "verify", str(reg), "--anchor", anchor]) == 0
    edit(reg)
    report = audit_registry(reg)
    assert not report.ok
    for m in messages:
        assert any(m in p for p in report.problems), (m, report.problems)
    capsys.readouterr()
    assert main(["audit", "verify", str(reg), "--anchor", anchor]) == 1
    assert messages[0] in capsys.readouterr().err
    # status says so instead of calling the model exact; no certificate; no new request
    st = status(reg)
    assert not st["audit"]["ok"] and not st["exactness"]["exact"]
    assert main(["registry", "status", str(reg)]) == 1
    assert "\nactive model: exact" not in capsys.readouterr().out  # no injected lines
    with pytest.raises(AuditError, match="fails its audit"):
        write_certificate(reg, "R1", tmp_path / "cert")
    assert not (tmp_path / "cert").exists()
    with pytest.raises(AuditError, match="do not match its audit ledger"):
        run(reg, "R2", [10])
    assert main(["forget", str(reg), "--request", str(request(tmp_path, "R3"))]) == 2


def request(tmp_path, rid):
    path = tmp_path / f"{rid}.json"
    path.write_text(json.dumps({"id": rid, "subject": "s", "indices": [20]}))
    return path


def test_head_set_back_to_an_older_valid_head_fails_and_blocks_writes(reg, tmp_path, capsys):
    old = (reg / "LEDGER_HEAD").read_text()
    run(reg, "R2", [10, 11])
    (reg / "LEDGER_HEAD").write_text(old)
    report = audit_registry(reg)
    assert not report.ok and "was set back" in report.problems[0]
    before = (reg / "registry.db").read_bytes()
    assert main(["forget", str(reg), "--request", str(request(tmp_path, "R3"))]) == 2
    assert "Refusing to change the registry" in capsys.readouterr().err
    assert (reg / "LEDGER_HEAD").read_text() == old and (reg / "registry.db").read_bytes() == before
    # removing the last entries to match the old head is caught too
    conn = sqlite3.connect(reg / "registry.db")
    conn.execute("DELETE FROM ledger WHERE seq > ?", (int(old.split()[0]),))
    conn.commit()
    conn.close()
    assert not audit_registry(reg).ok


def test_deleted_head_fails_and_is_not_silently_rewritten(reg, tmp_path, capsys):
    (reg / "LEDGER_HEAD").unlink()
    report = audit_registry(reg)
    assert not report.ok and "LEDGER_HEAD is missing" in report.problems[0]
    assert main(["forget", str(reg), "--request", str(request(tmp_path, "R3"))]) == 2
    assert "LEDGER_HEAD is missing" in capsys.readouterr().err
    assert not (reg / "LEDGER_HEAD").exists() and not audit_registry(reg).ok
    assert main(["registry", "resume", str(reg)]) == 2
    assert not (reg / "LEDGER_HEAD").exists()


def test_an_untouched_registry_passes_and_certifies(reg, tmp_path):
    run(reg, "R2", [10, 11])
    assert audit_registry(reg).ok and status(reg)["audit"]["ok"]
    cert = write_certificate(reg, "R1", tmp_path / "cert")
    assert [f["index"] for f in cert["forgotten"]] == [3, 4, 5]
