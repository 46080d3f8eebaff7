"""The HTML page of a deletion certificate (:mod:`.certificate` builds its content).

Written for a reader who is not an ML engineer: the summary paragraph first, plain words
("fingerprint of the model file", "one Newton step on the final layer"), times without
milliseconds and with their time zone, hashes in full in their own aligned column. The precise
values stay in ``certificate.json``. Self-contained: inline CSS, no scripts, no external
resources.
"""

from __future__ import annotations

import html

from medunlearn.registry import certificate_membership, wording
from medunlearn.registry.steps import REAL_STEPS

#: Method names in words (the JSON keeps the names).
METHOD_WORDS = {
    "newton": "one Newton step on the final layer",
    "retrain": "exact retraining from scratch",
    "sisa": "exact retraining of the affected shards (sisa)",
}

EVIDENCE_CLASS = {"forgotten": "ok", "not shown": "bad", "cannot say": "warn"}
OUTCOME_CLASS = {"passed": "ok", "failed": "bad", "cannot say": "warn", "not run": "muted"}

CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:64em;color:#222;"
       "line-height:1.45;padding:0 1em}"
       "table{border-collapse:collapse;margin:.5em 0 1em;font-size:.95em;width:100%}"
       "td,th{border:1px solid #ccc;padding:.35em .5em;text-align:left;vertical-align:middle}"
       "th{background:#f2f2f2;white-space:nowrap}"
       "td.h{font-family:ui-monospace,monospace;font-size:.95em;line-height:1.45;"
       "overflow-wrap:anywhere}code{overflow-wrap:anywhere}"
       ".badge{padding:.15em .6em;border-radius:.3em;color:#fff;white-space:nowrap}"
       ".ok{background:#2a7d2e}.bad{background:#b3261e}.warn{background:#9a6700}"
       ".muted{background:#6b6b6b}.note{background:#fff8e1;border-left:4px solid #9a6700;"
       "padding:.5em 1em}.summary{background:#f4f6fa;border-left:4px solid #345;"
       "padding:.6em 1em;font-size:1.05em}")


def method_words(m: str | None) -> str:
    if not m:
        return "none"
    return METHOD_WORDS.get(m, f"approximate unlearning ({m})")


def _esc(v) -> str:
    return html.escape("-" if v is None else str(v))


def _num(v) -> str:
    return wording.fmt(v) if isinstance(v, (int, float)) else "-"


def _table(rows: list[list], header: list[str], hashes: tuple[int, ...] = ()) -> str:
    """An HTML table; the columns in ``hashes`` hold long hex strings in monospace."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(
        f"<td{' class=h' if k in hashes else ''}>{_esc(c)}</td>" for k, c in enumerate(row))
        + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(text: str, cls: str) -> str:
    return f"<span class='badge {cls}'>{_esc(text)}</span>"


def _checks_table(a: dict) -> str:
    head = ["check", "question", "outcome", "measured", "accepted", "what it means"]
    rows = "".join(
        f"<tr><td>{_esc(c['check'])}</td><td>{_esc(c['question'])}</td>"
        f"<td>{_badge(c['outcome'], OUTCOME_CLASS.get(c['outcome'], 'muted'))}</td>"
        f"<td>{_num(c['measured'])}</td><td>{_esc(c.get('limit_text', '-'))}</td>"
        f"<td>{_esc(c['explanation'])}</td></tr>" for c in a["checks"])
    return (f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead>"
            f"<tbody>{rows}</tbody></table>")


def _fq_html(sec: dict | None) -> str:
    """The per-image forgetting check section."""
    if not sec:
        return ""
    head = "<h2>Per-image forgetting check</h2>"
    text = f"<p>{_esc(sec['summary'])}</p>"
    if not sec.get("images"):
        cmd = f"<p><code>{_esc(sec['command'])}</code></p>" if sec.get("command") else ""
        return head + text + cmd
    rows = [[x["sha256"], _num(x["epsilon"]), _num(x["ulira_accuracy"])] for x in sec["images"]]
    entry = sec["ledger_entry"]
    return (head + text + f"<p>{_esc(sec['how_to_read'])}</p>"
            + _table(rows, ["image fingerprint (SHA-256)", "epsilon", "U-LiRA accuracy"],
                     hashes=(0,))
            + f"<p>Recorded in ledger entry {_esc(entry['seq'])}; fingerprint of the result file "
              f"<code>{_esc(entry['result_sha256'])}</code>.</p>")


def _copies_html(copies: dict | None) -> str:
    if not copies:
        return ""
    parts = []
    if copies.get("purged"):
        parts.append(f"Deleted from the registry: {_esc(', '.join(map(str, copies['purged'])))}.")
    if copies.get("kept_until"):
        parts.append(f"Kept for a retention window, to be deleted: "
                     f"{_esc(copies['kept_until'])}.")
    if copies.get("not_reachable"):
        parts.append("Out of the registry's reach (delete them yourself): "
                     f"{_esc(', '.join(map(str, copies['not_reachable'])))}.")
    return "<h2>Copies of the old model</h2><p>" + " ".join(parts) + "</p>"


def render_html(cert: dict) -> str:
    """A self-contained HTML page (inline CSS, no scripts, no external resources)."""
    req, summ = cert["request"], cert["summary"]
    ev = _badge(f"evidence for these images: {summ['evidence']}",
                EVIDENCE_CLASS.get(summ["evidence"], "muted"))
    attempts = _table([[a["attempt"], method_words(a["method"]), a["status"],
                        _num(a["unlearn_seconds"]), _num(a["verify_seconds"]),
                        a["candidate_sha256"]] for a in cert["attempts"]],
                      ["#", "method", "outcome", "unlearning (s)", "checks (s)",
                       "fingerprint of the candidate model file (SHA-256)"], hashes=(5,))
    checks = "".join(
        f"<h3>Attempt {a['attempt']} ({_esc(method_words(a['method']))}): safety checks</h3>"
        + (_checks_table(a) if a["checks"] else f"<p>No checks ran: {_esc(a['error'])}</p>")
        + "".join(f"<p class='note'>Note: {_esc(w)}.</p>" for w in a.get("warnings") or [])
        for a in cert["attempts"])
    low_power = any(c["outcome"] == "cannot say" for a in cert["attempts"] for c in a["checks"])
    power = ("<p class='note'>Some checks <b>cannot say</b> anything about so few images: their "
             "measurement is too uncertain to tell a model that forgot the images from one that "
             f"remembers them. {_esc(wording.STRONGER_CHECK)}</p>") if low_power else ""
    hashes = lambda items: _table([[f["index"], f["sha256"]] for f in items],  # noqa: E731
                                  ["training index", "image fingerprint (SHA-256)"], hashes=(1,))
    if cert.get("consolidated"):
        images = (f"<h2>Consolidation: exact retraining without the "
                  f"{len(cert['consolidated'])} images forgotten so far</h2>"
                  + hashes(cert["consolidated"]))
    else:
        images = (f"<h2>Images concerned ({len(cert['forgotten'])})</h2>"
                  "<p>Identified by the fingerprint (SHA-256 hash) of their pixels; the registry "
                  "never stores the images themselves.</p>" + hashes(cert["forgotten"]))
        if cert["already_forgotten"]:
            images += ("<h2>Already forgotten by an earlier request</h2>"
                       + hashes(cert["already_forgotten"]))
    led = _table([[e["seq"], e["kind"], wording.when(e["created"]), e["hash"]]
                  for e in cert["ledger"]["entries"]], ["entry", "kind", "time", "entry hash"],
                 hashes=(3,))
    before, after = cert["model_before"] or {}, cert["model_after"] or {}
    odd = sorted({v for a in cert["attempts"] if a["passed"]
                  for v in (a.get("steps") or {}).values() if v not in REAL_STEPS})
    warn = (f"<p class='badge bad'>Promoted with non-standard steps: {_esc(', '.join(odd))}"
            "</p>") if odd else ""
    promoted = next((a for a in reversed(cert["attempts"]) if a["passed"]), None)
    metrics = ""
    if promoted and promoted["key_metrics"]:
        metrics = ("<h2>The model before and after</h2>"
                   + (f"<p>{_esc(promoted['before_after_in_words'])}</p>"
                      if promoted.get("before_after_in_words") else "")
                   + _table([[m["metric"], _num(m["before"]), _num(m["after"])]
                             for m in promoted["key_metrics"]], ["measure", "before", "after"]))
    head = cert["ledger"]
    change = cert["model_change"]
    not_changed = (f"<p>What was not changed: {_esc(change['not_changed'])}</p>"
                   if change.get("not_changed") else "")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Deletion certificate {_esc(req['id'])}</title>
<style>{CSS}</style></head><body>
<h1>Deletion certificate</h1>
{warn}
<p>{ev}</p>
<p class="summary">{_esc(summ['paragraph'])}</p>
<p>Request <b>{_esc(req['id'])}</b> for subject reference <code>{_esc(req['subject'])}</code>,
dataset {_esc(cert['dataset'])}.{_patients_sentence(req.get('patients') or [])}
Request status: {_esc(req['status'])}. Submitted {_esc(wording.when(req['submitted']))};
finished {_esc(wording.when(req['completed']))}. Fingerprint of the request's content
(SHA-256): <code>{_esc(req['content_sha256'])}</code>.</p>
<h2>How the model was changed</h2>
<p>{_esc(change['in_words'])}</p>
{not_changed}
{_table([["before", before.get("version"), before.get("weights_sha256")],
         ["after", after.get("version"), after.get("weights_sha256")]],
        ["model", "version", "fingerprint of the model file (SHA-256)"], hashes=(2,))}
<p>To check a deployed copy, compare the fingerprint of its model file with the one above.</p>
{images}
{_copies_html(cert.get('copies'))}
<h2>Attempts</h2>
{attempts}
{checks}
{power}
{metrics}
{certificate_membership.render_html(cert.get("membership"), _esc, _table)}
{_fq_html(cert.get("forgetting_quality"))}
<h2>Audit ledger entries of this request</h2>
{led}
<p>Ledger head when this certificate was issued: entry {_esc(head['head_seq'])},
<code>{_esc(head['head_hash'])}</code>. Anyone holding this certificate can check that the
registry still contains these entries unchanged and still says everything this certificate
says with <code>medunlearn audit verify REG --certificate certificate.json</code>.</p>
</body></html>
"""


def _patients_sentence(patients: list[str]) -> str:
    """The patients a request named (every image of each, and every identical copy)."""
    if not patients:
        return ""
    return (f" Patients named: <code>{_esc(', '.join(patients))}</code> (every training image "
            "of each, and every byte-identical copy, listed below by fingerprint).")
