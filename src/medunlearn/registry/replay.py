"""The ledger is the source of truth: replay it and compare every table row with the result.

Certificates and ``registry status`` read the SQLite tables (fast, indexed), so every value they
show must be vouched for by a hash-chained ledger entry. :func:`expected_tables` replays the
ledger into the rows the tables must hold; :func:`table_problems` compares them column by column
and names each difference. A row or column edited with ``sqlite3`` therefore fails
``audit verify`` (and blocks further requests) unless the ledger itself is rewritten, which the
chain, the head file and anchors kept outside the registry expose.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from medunlearn.registry import ledger, proof_records, residue, shadow_records, store
from medunlearn.registry.errors import AuditError

BEFORE = "(before registration)"  # samples.request_id of images an unlearn run forgot already

#: Request-item role -> key of the item list in the ledger's request entry.
LEDGER_ITEM_KEYS = {"forget": "forget", "already": "already_forgotten",
                    "consolidate": "consolidate"}


def result_sha256(result: dict) -> str:
    return ledger.sha256_text(ledger.canonical_json(result))


def manifest_sha256(rows: list[tuple[int, str, int]]) -> str:
    """The hash of a training manifest ``[(index, sha256, label), ...]`` recorded at init."""
    return ledger.sha256_text(ledger.canonical_json([list(r) for r in rows]))


def check_before_write(reg: Path, conn: sqlite3.Connection) -> None:
    """What every writer checks first: plain entries only, the head file, and tables and files
    that match the ledger (:class:`AuditError` otherwise; nothing is changed)."""
    store.check_plain(reg)
    store.check_head(reg, conn)
    problems = ledger_problems(conn, reg)
    if problems:
        raise AuditError(
            f"Refusing to change the registry {reg}: its tables do not match its audit ledger "
            f"({problems[0]}{f'; and {len(problems) - 1} more' if len(problems) > 1 else ''}). "
            f"Run 'medunlearn audit verify {reg}' for the full list and restore the registry "
            "from a backup.")


def ledger_problems(conn: sqlite3.Connection, reg: str | Path | None = None) -> list[str]:
    """The hash chain, the manifest, every table row and (given the registry folder ``reg``)
    every file of every model version, checked against the ledger. Empty when all agree."""
    problems = ledger.chain_problems(conn)
    entries = ledger.entries(conn)
    inits = [e for e in entries if e["kind"] == "init" and isinstance(e["body"], dict)]
    if not inits:
        return problems + ["the ledger has no init entry"]
    want = (inits[0]["body"].get("manifest") or {}).get("sha256")
    got = manifest_sha256([tuple(r) for r in conn.execute(
        "SELECT idx, sha256, label FROM samples ORDER BY idx")])
    if want != got:
        problems.append(f"the training manifest (samples table) hashes to {got} but ledger entry "
                        f"{inits[0]['seq']} recorded {want} (hashes or labels were edited)")
    expected = expected_tables(entries)
    if reg is None:
        return problems + table_problems(conn, expected)
    return (problems + table_problems(conn, expected) + residue.purge_problems(entries)
            + file_problems(Path(reg), residue.unpurged(Path(reg), expected, entries))
            + proof_records.file_problems(Path(reg), entries)
            + shadow_records.file_problems(Path(reg), entries))


def file_problems(reg: Path, expected: dict) -> list[str]:
    """Every file of every model version against the hashes its init/promote entry recorded
    (a version folder is never changed after it is recorded)."""
    problems = []
    for n, recorded in sorted(expected["files"].items(), key=lambda kv: str(kv[0])):
        folder = reg / "versions" / str(n)
        if not isinstance(recorded, dict):
            problems.append(f"model version {n}: its ledger entry lists no file hashes")
            continue
        actual = store.folder_hashes(folder) if folder.is_dir() else {}
        for name in sorted(set(recorded) | set(actual)):
            if name not in actual:
                problems.append(f"model version {n}: {folder / name} is missing")
            elif name not in recorded:
                problems.append(f"model version {n}: {folder / name} was added after the "
                                "version was recorded")
            elif actual[name] != recorded[name]:
                problems.append(f"model version {n}: {folder / name} has SHA-256 "
                                f"{actual[name]} but {recorded[name]} was recorded (the file "
                                "was changed)")
    return problems


def expected_tables(entries: list[dict]) -> dict:
    """The table contents the ledger ``entries`` (in order, bodies parsed) imply.

    ``forgetting_quality`` entries change no table (they vouch for a file, checked by
    :func:`.proof_records.file_problems`)."""
    meta: dict[str, str] = {}
    versions: dict[int, dict] = {}
    requests: dict[str, dict] = {}
    items: dict[str, set[tuple[int, str]]] = {}
    attempts: dict[tuple[str, int], dict] = {}
    withdrawn_by: dict[int, str] = {}
    forgotten_in: dict[int, int] = {}
    files: dict[int, dict] = {}
    for e in entries:
        body, rid, kind = e["body"], e["request_id"], e["kind"]
        if not isinstance(body, dict):
            continue  # reported by the chain check
        if kind in ("init", "promote"):
            n = body.get("version")
            versions[n] = {"path": f"versions/{n}", "weights_sha256": body.get("weights_sha256"),
                           "parent": body.get("parent"), "request_id": rid,
                           "method": body.get("method"), "created": e["created"]}
            files[n] = body.get("files")
            meta["active_version"] = str(n)
        if kind == "init":
            meta.update(body.get("meta") or {})
            for i in body.get("forgotten_before", []):
                withdrawn_by[i], forgotten_in[i] = BEFORE, 1
        elif kind == "request":
            req = body.get("request") or {}
            requests[rid] = {"subject": req.get("subject"), "body": ledger.canonical_json(req),
                             "content_sha256": body.get("content_sha256"), "status": "pending",
                             "submitted": e["created"], "completed": None,
                             "from_version": body.get("active_version"), "to_version": None,
                             "result": None, "result_sha256": None}
            items[rid] = {(it["index"], role) for role, key in LEDGER_ITEM_KEYS.items()
                          for it in body.get(key, [])}
            for it in body.get("forget", []):
                withdrawn_by[it["index"]] = rid
        elif kind == "retry" and rid in requests:
            requests[rid].update(status="pending", completed=None, to_version=None,
                                 result_sha256=None, result=ledger.canonical_json(
                                     {"retry_base": body.get("previous_attempts")}))
            items[rid] |= {(it["index"], "consolidate") for it in
                           body.get("consolidate_added", [])}
        elif kind == "attempt":
            attempts[(rid, body.get("attempt"))] = {
                "method": body.get("method"), "status": body.get("status"),
                "passed": int(bool(body.get("passed"))),
                "reasons": ledger.canonical_json(body.get("reasons")),
                "summary_sha256": body.get("summary_sha256"), "started": body.get("started"),
                "finished": e["created"]}
        elif kind in ("complete", "failed") and rid in requests:
            done = kind == "complete"
            requests[rid].update(status="completed" if done else "failed",
                                 completed=e["created"],
                                 to_version=body.get("version") if done else None,
                                 result=None, result_sha256=body.get("result_sha256"))
            for i in body.get("forgotten", []):
                forgotten_in[i] = body.get("version")
    return {"meta": meta, "versions": versions, "requests": requests, "items": items,
            "attempts": attempts, "withdrawn_by": withdrawn_by, "forgotten_in": forgotten_in,
            "files": files}


def _diff(what: str, row: dict, want: dict, columns: list[str]) -> list[str]:
    return [f"{what}: column {c} holds {row[c]!r} but the ledger says {want[c]!r} (the table "
            "was edited)" for c in columns if row[c] != want[c]]


def _short(v) -> str:
    text = repr(v)
    return text if len(text) <= 80 else text[:77] + "..."


def table_problems(conn: sqlite3.Connection, expected: dict) -> list[str]:
    """Every difference between the tables and the replayed ledger (empty when they agree)."""
    problems: list[str] = []
    # meta
    meta = {r["key"]: r["value"] for r in conn.execute("SELECT key, value FROM meta")}
    for key in sorted(set(meta) | set(expected["meta"])):
        have, want = meta.get(key), expected["meta"].get(key)
        if have != want:
            problems.append(f"registry setting {key} is {_short(have)} but the ledger says "
                            f"{_short(want)} (the meta table was edited)")
    # versions
    want_v = expected["versions"]
    for r in conn.execute("SELECT * FROM versions ORDER BY n"):
        w = want_v.get(r["n"])
        if w is None:
            problems.append(f"model version {r['n']} has no init/promote entry in the ledger")
            continue
        problems += _diff(f"model version {r['n']}", dict(r), w,
                          ["path", "weights_sha256", "parent", "request_id", "method", "created"])
    have_v = {r[0] for r in conn.execute("SELECT n FROM versions")}
    for n in sorted(set(want_v) - have_v, key=str):
        problems.append(f"model version {n} is in the ledger but missing from the versions table")
    # requests
    want_r = expected["requests"]
    for r in conn.execute("SELECT * FROM requests ORDER BY num"):
        rid, w = r["id"], want_r.get(r["id"])
        if w is None:
            problems.append(f"request {rid!r} has no request entry in the ledger")
            continue
        problems += _diff(f"request {rid}", dict(r), w,
                          ["subject", "content_sha256", "body", "status", "submitted",
                           "completed", "from_version", "to_version"])
        if w["result_sha256"] is not None:
            if r["result"] is None or ledger.sha256_text(r["result"]) != w["result_sha256"]:
                problems.append(f"request {rid}: its stored result differs from the one "
                                "recorded in the ledger (the table was edited)")
        elif r["result"] != w["result"]:
            problems.append(f"request {rid}: column result holds {_short(r['result'])} but the "
                            f"ledger says {_short(w['result'])} (the table was edited)")
    have_r = {r[0] for r in conn.execute("SELECT id FROM requests")}
    for rid in sorted(set(want_r) - have_r):
        problems.append(f"request {rid} is in the ledger but missing from the requests table")
    # request items
    have_items: dict[str, set] = {}
    for r in conn.execute("SELECT request_id, idx, role FROM request_items"):
        have_items.setdefault(r["request_id"], set()).add((r["idx"], r["role"]))
    for rid in sorted(set(have_items) | set(expected["items"])):
        have, want = have_items.get(rid, set()), expected["items"].get(rid, set())
        if have != want:
            problems.append(f"request {rid}: the images listed for it (request_items: "
                            f"{len(have)}) differ from its ledger entry ({len(want)}); e.g. "
                            f"{sorted(have ^ want)[:5]} (the table was edited)")
    # attempts
    want_a = expected["attempts"]
    seen = set()
    for r in conn.execute("SELECT * FROM attempts ORDER BY request_id, n"):
        key, row = (r["request_id"], r["n"]), dict(r)
        seen.add(key)
        w = want_a.get(key)
        if w is None:
            problems.append(f"attempt {r['n']} of request {r['request_id']} has no ledger entry")
            continue
        row["summary_sha256"] = ledger.sha256_text(r["summary"])
        problems += _diff(f"attempt {r['n']} of request {r['request_id']}", row, w,
                          ["method", "status", "passed", "reasons", "summary_sha256", "started",
                           "finished"])
    for rid, n in sorted(set(want_a) - seen, key=str):
        problems.append(f"attempt {n} of request {rid} is in the ledger but missing from the "
                        "attempts table")
    # samples: who withdrew each image, and from which version on it is forgotten
    wb, fi = expected["withdrawn_by"], expected["forgotten_in"]
    bad_w, bad_f = [], []
    for r in conn.execute("SELECT idx, request_id, forgotten_in FROM samples ORDER BY idx"):
        if r["request_id"] != wb.get(r["idx"]):
            bad_w.append(r["idx"])
        if r["forgotten_in"] != fi.get(r["idx"]):
            bad_f.append(r["idx"])
    if bad_f:
        problems.append(f"images {bad_f[:10]}{' ...' if len(bad_f) > 10 else ''}: their "
                        "forgotten-in version differs from the ledger (an image marked not "
                        "forgotten could come back; the samples table was edited)")
    if bad_w:
        problems.append(f"images {bad_w[:10]}{' ...' if len(bad_w) > 10 else ''}: the request "
                        "that withdrew them differs from the ledger (the samples table was "
                        "edited)")
    return problems
