"""Audit: check a registry against its ledger, and write deletion certificates.

:func:`audit_registry` (the ``audit verify`` command) recomputes the ledger's hash chain, checks the
head file and any anchors kept outside the registry, replays the ledger into the rows every table
must hold and compares them column by column (:mod:`.replay`), and hashes every file of every
model version against the hashes its ledger entry recorded. See docs/registry.md for what this
does and does not catch.

:func:`write_certificate` writes ``certificate.json`` and a self-contained ``certificate.html``
for one request, only for a registry that passes that audit: what was forgotten (hashes only),
the model hashes before and after, the method, each safety check in plain words
(:mod:`.wording`), the key metrics before and after, timings, and the request's ledger entries.
"""

from __future__ import annotations

import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from medunlearn.errors import OutputExistsError
from medunlearn.io import atomic_write_json, atomic_write_text
from medunlearn.registry import ledger, proof_records, replay, residue, store, wording
from medunlearn.registry.db import connect, get_meta, writer_lock
from medunlearn.registry.errors import AuditError, RegistryError
from medunlearn.registry.steps import REAL_STEPS
from medunlearn.registry.versions import MODEL_FILE


@dataclass
class AuditReport:
    """The outcome of :func:`audit_registry`."""

    ok: bool
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    checked: dict = field(default_factory=dict)


def audit_registry(reg: str | os.PathLike, *, load_models: bool = False,
                   anchors: list[tuple[int, str]] | None = None) -> AuditReport:
    """Check the ledger chain, model files and tables of a registry.

    Args:
        reg: The registry folder.
        load_models: Also load every version with ``checkpoint.load_run`` (safetensors, no
            pickle) to prove the weights fit their config.
        anchors: ``(seq, hash)`` pairs kept outside the registry (a certificate's ledger head,
            a hash sent in a ticket): each entry must still exist with that hash. A chain
            rewritten from scratch by someone with write access passes every internal check but
            not an anchor taken before the rewrite.

    Returns:
        An :class:`AuditReport`; ``problems`` name each bad entry, row or file.
    """
    reg = Path(reg)
    connect(reg).close()  # a clear error if reg is not a registry
    with writer_lock(reg, shared=True):  # wait for a running request: see a committed state
        return _audit(reg, load_models, anchors or [])


def certificate_anchors(path: str | os.PathLike) -> list[tuple[int, str]]:
    """The ledger entries ``(seq, hash)`` a ``certificate.json`` recorded: the request's own
    entries and the ledger head at issue.

    Raises:
        RegistryError: the file is missing or is not a certificate.
    """
    path = Path(path)
    try:
        led = json.loads(path.read_text(encoding="utf-8"))["ledger"]
        out = [(int(e["seq"]), str(e["hash"])) for e in led["entries"]]
        return out + [(int(led["head_seq"]), str(led["head_hash"]))]
    except FileNotFoundError:
        raise RegistryError(f"Certificate {path} does not exist.") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise RegistryError(f"{path} is not a medunlearn certificate.json (no ledger entries "
                            "in it); pass the certificate.json written by 'medunlearn audit "
                            "show'.") from None


def _check_anchors(conn, anchors: list[tuple[int, str]]) -> list[str]:
    problems = []
    for seq, h in anchors:
        row = conn.execute("SELECT hash FROM ledger WHERE seq = ?", (seq,)).fetchone()
        if row is None:
            problems.append(f"anchor {seq}:{h[:16]}...: the ledger has no entry {seq} any more "
                            "(entries were removed)")
        elif row["hash"] != h:
            problems.append(f"anchor {seq}:{h[:16]}...: ledger entry {seq} now has hash "
                            f"{row['hash'][:16]}... (the ledger was rewritten)")
    return problems


def _load_problems(reg: Path, expected: dict) -> list[str]:
    """Load every version with ``checkpoint.load_run`` (safetensors, no pickle)."""
    from medunlearn.checkpoint import load_run
    from medunlearn.errors import CheckpointError

    problems = []
    for n in sorted(expected["versions"], key=str):
        folder = reg / "versions" / str(n)
        if (folder / MODEL_FILE).is_file():
            try:
                load_run(folder)
            except CheckpointError as exc:
                problems.append(f"model version {n}: {exc}")
    return problems


def _audit(reg: Path, load_models: bool, anchors: list[tuple[int, str]]) -> AuditReport:
    conn = connect(reg)
    try:
        head_problems, crashed = store.head_state(reg, conn)
        entries = ledger.entries(conn)
        expected = replay.expected_tables(entries)
        problems = (head_problems + _check_anchors(conn, anchors)
                    + replay.ledger_problems(conn, reg)
                    + (_load_problems(reg, expected) if load_models else []))
        warnings = []
        if crashed:
            warnings.append(f"{reg / store.HEAD_FILE} is one commit behind because a run was "
                            "interrupted after its commit; the next 'forget' or 'registry "
                            "resume' brings it up to date")
        for e in entries:
            steps = e["body"].get("steps") or {} if isinstance(e["body"], dict) else {}
            odd = [v for v in steps.values() if v not in REAL_STEPS]
            if e["kind"] == "attempt" and e["body"].get("passed") and odd:
                warnings.append(f"attempt {e['body'].get('attempt')} of request "
                                f"{e['request_id']} (ledger entry {e['seq']}) was promoted "
                                f"using non-standard steps {', '.join(odd)}")
        warnings += residue.audit_notes(reg, entries)  # interrupted purges, unknown files
        counts = {k: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for k, t in
                  (("versions", "versions"), ("samples", "samples"))}
        forgotten = conn.execute("SELECT COUNT(*) FROM samples WHERE forgotten_in IS NOT NULL"
                                 ).fetchone()[0]
        return AuditReport(ok=not problems, problems=problems, warnings=warnings, checked={
            "ledger_entries": len(entries), **counts, "forgotten": forgotten,
            "head": ledger.head(conn)[1], "anchors": len(anchors),
            "purged_by_design": residue.purged_count(entries)})
    finally:
        conn.close()


def certificate(reg: str | os.PathLike, request_id: str) -> dict:
    """The certificate of one request as a dict (see :func:`write_certificate`).

    Every value comes from table rows that ``audit verify`` checks against the ledger; the
    certificate is refused when that check fails, so it never vouches for an edited registry.

    Raises:
        RegistryError: unknown request id (the known ids are listed).
        AuditError: the registry does not pass ``audit verify``.
    """
    reg = Path(reg)
    report = audit_registry(reg)
    if not report.ok:
        more = len(report.problems) - 1
        raise AuditError(
            f"No certificate was written: the registry {reg} fails its audit "
            f"({report.problems[0]}{f'; and {more} more' if more else ''}). Run 'medunlearn "
            f"audit verify {reg}' for the full list and restore the registry from a backup.")
    conn = connect(reg)
    try:
        r = conn.execute("SELECT * FROM requests WHERE id = ?", (request_id,)).fetchone()
        if r is None:
            known = [x[0] for x in conn.execute("SELECT id FROM requests ORDER BY num LIMIT 20")]
            raise RegistryError(f"Registry {reg} has no request {request_id!r}; known requests: "
                                f"{', '.join(known) or 'none'}.")
        items = conn.execute(
            "SELECT ri.idx, ri.role, s.sha256, s.label FROM request_items ri JOIN samples s "
            "ON s.idx = ri.idx WHERE ri.request_id = ? ORDER BY ri.idx", (request_id,)).fetchall()
        versions = {v["n"]: dict(v) for v in conn.execute("SELECT * FROM versions")}
        n_images = sum(1 for i in items if i["role"] in ("forget", "consolidate"))
        attempts = []
        for a in conn.execute("SELECT * FROM attempts WHERE request_id = ? ORDER BY n",
                              (request_id,)):
            summary = json.loads(a["summary"])
            attempts.append({
                "attempt": a["n"], "method": a["method"], "status": a["status"],
                "passed": bool(a["passed"]), "reasons": json.loads(a["reasons"]),
                "started": a["started"], "finished": a["finished"],
                "unlearn_seconds": _seconds(summary.get("unlearn_seconds")),
                "verify_seconds": _seconds(summary.get("verify_seconds")),
                "candidate_sha256": summary.get("weights_sha256"),
                "forget_count": summary.get("forget_count"),
                "exclude_count": summary.get("exclude_count"),
                "checks": [wording.plain_check(c, n_images) for c in
                           (summary.get("verdict") or {}).get("checks", [])
                           if isinstance(c, dict)],
                "steps": summary.get("steps"),
                "key_metrics": wording.key_metrics(summary.get("metrics")),
                "error": summary.get("error"),
            })
        result = json.loads(r["result"]) if r["result"] else {}
        before, after = versions.get(r["from_version"]), versions.get(r["to_version"])
        entries = ledger.entries(conn, request_id)
        seq, head = ledger.head(conn)
        return {
            "certificate": "medunlearn deletion certificate", "registry": str(reg),
            "dataset": get_meta(conn, "dataset"),
            "request": {"id": r["id"], "subject": r["subject"], "status": r["status"],
                        "content_sha256": r["content_sha256"], "submitted": r["submitted"],
                        "completed": r["completed"], "body": json.loads(r["body"]),
                        "patients": json.loads(r["body"]).get("patients", [])},
            "forgotten": [{"index": i["idx"], "sha256": i["sha256"]}
                          for i in items if i["role"] == "forget"],
            "already_forgotten": [{"index": i["idx"], "sha256": i["sha256"]}
                                  for i in items if i["role"] == "already"],
            "consolidated": [{"index": i["idx"], "sha256": i["sha256"]}
                             for i in items if i["role"] == "consolidate"],
            "model_before": before and {"version": before["n"],
                                        "weights_sha256": before["weights_sha256"]},
            "model_after": after and {"version": after["n"],
                                      "weights_sha256": after["weights_sha256"],
                                      "method": after["method"]},
            "method": result.get("method"), "attempts": attempts,
            "timings": {"submitted": r["submitted"], "completed": r["completed"],
                        "unlearn_seconds": _seconds(result.get("unlearn_seconds")),
                        "verify_seconds": _seconds(result.get("verify_seconds")),
                        "promote_seconds": _seconds(result.get("promote_seconds"))},
            "forgetting_quality": _fq_section(reg, conn, r),
            "ledger": {"entries": [{k: e[k] for k in ("seq", "kind", "created", "prev_hash",
                                                       "hash")} for e in entries],
                       "head_seq": seq, "head_hash": head},
        }
    finally:
        conn.close()


def _fq_section(reg: Path, conn, r) -> dict:
    """The per-example forgetting check of the request, in plain words: recorded (numbers and
    one row per image of the request), or not run (and the command that runs it)."""
    rid = r["id"]
    cmd = proof_records.command(reg, rid)
    if r["status"] != "completed" or json.loads(r["body"]).get("consolidate") or \
            r["to_version"] == r["from_version"]:
        return {"run": False, "applies": False, "summary": (
            "The per-image forgetting check does not apply: it checks the model a completed "
            "deletion request produced by unlearning, and this request produced none.")}
    found = proof_records.recorded(reg, conn, rid)
    if found is None:
        return {"run": False, "applies": True, "command": cmd, "summary": (
            "The per-image forgetting check was not run for this request. It trains many models "
            "(N unlearned, N retrained without the images) and takes minutes to hours; "
            f"'{cmd}' runs it and adds the result to this certificate.")}
    body, rec = found["entry"]["body"], found["record"]
    entry = {"seq": found["entry"]["seq"], "hash": found["entry"]["hash"],
             "result_sha256": body.get("result_sha256")}
    if rec is None:
        path = proof_records.folder(reg, rid) / proof_records.RECORD_FILE
        return {"run": True, "applies": True, "command": cmd, "ledger_entry": entry,
                "n": body.get("n"), "score": _rnd(body.get("score")),
                "ci": [_rnd(v) for v in body.get("ci") or []], "null": _rnd(body.get("null")),
                "images": [], "summary": (
                    "The per-image forgetting check was run (the ledger records its score), but "
                    f"its result file {path} is missing, so the "
                    f"per-image rows cannot be shown. '{cmd}' runs it again.")}
    n, score, ci = rec["n"], _rnd(rec["forgetting_quality"]), [
        _rnd(v) for v in rec["forgetting_quality_ci"]]
    null = _rnd(rec.get("forgetting_quality_null"))
    level = int(round((rec.get("ci_level") or 0.95) * 100))
    summary = (f"{n} models unlearned with {rec['method']} from version {rec['from_version']} "
               f"were compared with {n} models retrained without the request's images. "
               f"Forgetting-quality score {wording.fmt(score)} ({level}% interval "
               f"{wording.fmt(ci[0])} to {wording.fmt(ci[1])}); best possible 1. Retraining "
               f"itself scores about {wording.fmt(null)} with {n} models per side, so read the "
               "score against that, not against 1.")
    if rec.get("note"):
        summary += f" Note: {rec['note']}."
    return {"run": True, "applies": True, "command": cmd, "ledger_entry": entry, "n": n,
            "method": rec["method"], "from_version": rec["from_version"], "score": score,
            "ci": ci, "ci_level": rec.get("ci_level"), "null": null, "best": 1.0,
            "ulira_accuracy": _rnd(rec.get("ulira_accuracy")), "created": rec.get("created"),
            "summary": summary, "how_to_read": proof_records.how_to_read(),
            "images": [{"index": x["index"], "sha256": x["sha256"],
                        "epsilon": _rnd(x["epsilon"]), "ulira_accuracy": _rnd(
                            x.get("ulira_accuracy"))} for x in rec["examples"]]}


def _rnd(v) -> float | None:
    return round(float(v), 3) if isinstance(v, (int, float)) and v == v else None


def _seconds(v) -> float | None:
    return round(v, 2) if isinstance(v, (int, float)) else None


def _esc(v) -> str:
    return html.escape("-" if v is None else str(v))


def _table(rows: list[list], header: list[str], hashes: tuple[int, ...] = ()) -> str:
    """An HTML table; the columns in ``hashes`` hold long hex strings that may wrap anywhere."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{' class=h' if k in hashes else ''}>{_esc(c)}</td>" for k, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _num(v) -> str:
    return wording.fmt(v) if isinstance(v, (int, float)) else "-"


OUTCOME_CLASS = {"passed": "ok", "failed": "bad", "cannot say": "warn", "not run": "muted"}

CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:64em;color:#222;"
       "line-height:1.45;padding:0 1em}"
       "table{border-collapse:collapse;margin:.5em 0 1em;font-size:.9em;width:100%}"
       "td,th{border:1px solid #ccc;padding:.3em .5em;text-align:left;vertical-align:top}"
       "th{background:#f2f2f2;white-space:nowrap}td.h{font-family:monospace;font-size:.85em;"
       "overflow-wrap:anywhere}code{overflow-wrap:anywhere}"
       ".badge{padding:.15em .6em;border-radius:.3em;color:#fff;white-space:nowrap}"
       ".ok{background:#2a7d2e}.bad{background:#b3261e}.warn{background:#9a6700}"
       ".muted{background:#6b6b6b}.note{background:#fff8e1;border-left:4px solid #9a6700;"
       "padding:.5em 1em}")


def _outcome(o: str) -> str:
    return f"<span class='badge {OUTCOME_CLASS.get(o, 'muted')}'>{_esc(o)}</span>"


def _checks_table(a: dict) -> str:
    head = ["check", "question", "outcome", "measured", "limit", "what it means"]
    rows = "".join(
        f"<tr><td>{_esc(c['check'])}</td><td>{_esc(c['question'])}</td>"
        f"<td>{_outcome(c['outcome'])}</td><td>{_num(c['measured'])}</td>"
        f"<td>{_esc(c.get('limit_text', '-'))}</td><td>{_esc(c['explanation'])}</td></tr>"
        for c in a["checks"])
    return (f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _patients_sentence(patients: list[str]) -> str:
    """The patients a request named (every image of each, and every identical copy)."""
    if not patients:
        return ""
    return (f" Patients named: <code>{_esc(', '.join(patients))}</code> (every training image "
            "of each, and every byte-identical copy, listed below by hash).")


def render_html(cert: dict) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external resources)."""
    req = cert["request"]
    ok = req["status"] == "completed"
    badge = f"<span class='badge {'ok' if ok else 'bad'}'>{_esc(req['status'].upper())}</span>"
    attempts = _table([[a["attempt"], a["method"], a["status"], _num(a["unlearn_seconds"]),
                        _num(a["verify_seconds"]), a["candidate_sha256"]]
                       for a in cert["attempts"]],
                      ["#", "method", "outcome", "unlearning (s)", "checks (s)",
                       "candidate model SHA-256"], hashes=(5,))
    checks = "".join(
        f"<h3>Attempt {a['attempt']} ({_esc(a['method'])}): safety checks</h3>"
        + (_checks_table(a) if a["checks"] else f"<p>No checks ran: {_esc(a['error'])}</p>")
        for a in cert["attempts"])
    low_power = any(c["outcome"] == "cannot say" for a in cert["attempts"] for c in a["checks"])
    power = ("<p class='note'>Some checks <b>cannot say</b> anything about so few images: their "
             "measurement is too uncertain to tell a model that forgot the images from one that "
             f"remembers them. {_esc(wording.STRONGER_CHECK)}</p>") if low_power else ""
    hashes = lambda items: _table([[f["index"], f["sha256"]] for f in items],  # noqa: E731
                                  ["training index", "image SHA-256"], hashes=(1,))
    if cert.get("consolidated"):
        images = (f"<h2>Consolidation: exact retraining without the "
                  f"{len(cert['consolidated'])} images forgotten so far</h2>"
                  + hashes(cert["consolidated"]))
    else:
        images = (f"<h2>Images forgotten ({len(cert['forgotten'])})</h2>"
                  "<p>Identified by the SHA-256 hash of their pixels; the registry never stores "
                  "the images themselves.</p>" + hashes(cert["forgotten"]))
        if cert["already_forgotten"]:
            images += ("<h2>Already forgotten by an earlier request</h2>"
                       + hashes(cert["already_forgotten"]))
    led = _table([[e["seq"], e["kind"], e["created"], e["hash"]]
                  for e in cert["ledger"]["entries"]], ["entry", "kind", "time (UTC)",
                                                        "entry hash"], hashes=(3,))
    before, after = cert["model_before"] or {}, cert["model_after"] or {}
    odd = sorted({v for a in cert["attempts"] if a["passed"]
                  for v in (a.get("steps") or {}).values() if v not in REAL_STEPS})
    warn = (f"<p class='badge bad'>Promoted with non-standard steps: {_esc(', '.join(odd))}"
            "</p>") if odd else ""
    promoted = next((a for a in reversed(cert["attempts"]) if a["passed"]), None)
    metrics = ""
    if promoted and promoted["key_metrics"]:
        metrics = ("<h2>The model before and after</h2>" + _table(
            [[m["metric"], _num(m["before"]), _num(m["after"])]
             for m in promoted["key_metrics"]], ["measure", "before", "after"]))
    head = cert["ledger"]
    fqs = _fq_html(cert.get("forgetting_quality"))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Deletion certificate {_esc(req['id'])}</title>
<style>{CSS}</style></head><body>
<h1>Deletion certificate {badge}</h1>
{warn}
<p>Request <b>{_esc(req['id'])}</b> for subject reference <code>{_esc(req['subject'])}</code>,
dataset {_esc(cert['dataset'])}.{_patients_sentence(req.get('patients') or [])}
Submitted {_esc(req['submitted'])}, completed
{_esc(req['completed'])} (UTC). Request content SHA-256
<code>{_esc(req['content_sha256'])}</code>.</p>
<h2>Models</h2>
{_table([["before", before.get("version"), before.get("weights_sha256")],
         ["after", after.get("version"), after.get("weights_sha256")]],
        ["", "version", "weights SHA-256"], hashes=(2,))}
<p>Method that produced the new model: <b>{_esc(cert['method'] or 'none')}</b>.</p>
{images}
<h2>Attempts</h2>
{attempts}
{checks}
{power}
{metrics}
{fqs}
<h2>Audit ledger entries of this request</h2>
{led}
<p>Ledger head when this certificate was issued: entry {_esc(head['head_seq'])},
<code>{_esc(head['head_hash'])}</code>. Anyone holding this certificate can check that the
registry still contains these entries unchanged with
<code>medunlearn audit verify REG --certificate certificate.json</code>.</p>
</body></html>
"""


def _fq_html(sec: dict | None) -> str:
    """The per-image forgetting check section of the HTML certificate."""
    if not sec:
        return ""
    head = "<h2>Per-image forgetting check</h2>"
    text = f"<p>{_esc(sec['summary'])}</p>"
    if not sec.get("images"):
        cmd = f"<p><code>{_esc(sec['command'])}</code></p>" if sec.get("command") else ""
        return head + text + cmd
    rows = [[x["sha256"][:16], _num(x["epsilon"]), _num(x["ulira_accuracy"])]
            for x in sec["images"]]
    entry = sec["ledger_entry"]
    return (head + text + f"<p>{_esc(sec['how_to_read'])}</p>"
            + _table(rows, ["image SHA-256 (first 16)", "epsilon", "U-LiRA accuracy"],
                     hashes=(0,))
            + f"<p>Recorded in ledger entry {_esc(entry['seq'])}; result file SHA-256 "
              f"<code>{_esc(entry['result_sha256'])}</code>.</p>")


def write_certificate(reg: str | os.PathLike, request_id: str, out: str | os.PathLike) -> dict:
    """Write ``certificate.json`` and ``certificate.html`` for a request into ``out``.

    Returns:
        The certificate dict.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder for certificate.json and "
                                "certificate.html (it is created if needed).")
    cert = certificate(reg, request_id)
    atomic_write_json(out / "certificate.json", cert)
    atomic_write_text(out / "certificate.html", render_html(cert))
    return cert
