"""Deletion certificates: what a request did, in words a patient and a data-protection officer
can read, and every value checked against the ledger.

:func:`certificate` builds the certificate of one request from one read-only snapshot of a
registry that passes its audit (:mod:`.reading`): the images (hashes only), the models before
and after, the method, each safety check in plain words (:mod:`.wording`), the measures before
and after, timings, the per-image forgetting check, and the request's ledger entries. Its
``summary`` says in one paragraph what is certified: how the model was changed, what the
evidence shows for these images (forgotten, cannot say, or not shown), what was not checked and
the command that would check it. "Completed" is only ever the request's status.

:func:`differences` compares a ``certificate.json`` with the certificate the registry gives now
(as of the ledger head the certificate recorded): every statement in it, so a certificate whose
images, subject, method, request id, checks or times were edited fails ``audit verify
--certificate``. The one exception is the method's published benchmark figure, which comes from
the installed package: only its form and place are checked (:func:`_strip_figure`).
:func:`write_certificate` writes the JSON and the HTML (:mod:`.certificate_html`).
"""

from __future__ import annotations

import json
import os
import sqlite3
from importlib import resources
from pathlib import Path

from medunlearn.errors import OutputExistsError
from medunlearn.fileio import atomic_write_json, atomic_write_text, to_jsonable
from medunlearn.registry import certificate_membership, ledger, proof_records, reading, wording
from medunlearn.registry.db import get_meta
from medunlearn.registry.errors import RegistryError
from medunlearn.registry.steps import REQUEST_OPTIONS

#: Methods that retrain from scratch without the images (exact forgetting).
EXACT = {"retrain": "exact retraining", "sisa": "exact sharded retraining"}


def certificate(reg: str | os.PathLike, request_id: str) -> dict:
    """The certificate of one request as a dict (see the module doc).

    Raises:
        RegistryError: unknown request id (the known ids are listed).
        AuditError: the registry does not pass ``audit verify`` (no certificate is made).
    """
    with reading.snapshot(reg) as snap:
        reading.refuse_problems(snap, "No certificate was written")
        return build(Path(reg), snap.conn, request_id)


def write_certificate(reg: str | os.PathLike, request_id: str, out: str | os.PathLike) -> dict:
    """Write ``certificate.json`` and ``certificate.html`` for a request into ``out``.

    Returns:
        The certificate dict.
    """
    from medunlearn.registry.certificate_html import render_html

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} is a file; give a folder for certificate.json and "
                                "certificate.html (it is created if needed).")
    cert = certificate(reg, request_id)
    atomic_write_json(out / "certificate.json", cert)
    atomic_write_text(out / "certificate.html", render_html(cert))
    return cert


# --------------------------------------------------------------------------- building


def _rnd(v) -> float | None:
    return round(float(v), 3) if isinstance(v, (int, float)) and v == v else None


def _seconds(v) -> float | None:
    return round(v, 2) if isinstance(v, (int, float)) else None


def build(reg: Path, conn: sqlite3.Connection, request_id: str, *,
          as_of: int | None = None) -> dict:
    """The certificate from an open snapshot; ``as_of``: as issued when the ledger ended at
    entry ``as_of`` (the request's later ledger entries and checks left out)."""
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
    rows = [dict(a) for a in conn.execute(
        "SELECT * FROM attempts WHERE request_id = ? ORDER BY n", (request_id,))]
    attempts = [_attempt(a, n_images) for a in rows]
    result = json.loads(r["result"]) if r["result"] else {}
    before, after = versions.get(r["from_version"]), versions.get(r["to_version"])
    entries = [e for e in ledger.entries(conn, request_id) if as_of is None or e["seq"] <= as_of]
    seq, head = ledger.head(conn) if as_of is None else (as_of, conn.execute(
        "SELECT hash FROM ledger WHERE seq = ?", (as_of,)).fetchone()[0])
    body = json.loads(r["body"])
    dataset = get_meta(conn, "dataset")
    method = result.get("method")
    cert = {
        "certificate": "medunlearn deletion certificate", "registry": str(reg),
        "dataset": dataset,
        "request": {"id": r["id"], "subject": r["subject"], "status": r["status"],
                    "content_sha256": r["content_sha256"], "submitted": r["submitted"],
                    "completed": r["completed"], "body": body,
                    "patients": body.get("patients", [])},
        "forgotten": [{"index": i["idx"], "sha256": i["sha256"]}
                      for i in items if i["role"] == "forget"],
        "already_forgotten": [{"index": i["idx"], "sha256": i["sha256"]}
                              for i in items if i["role"] == "already"],
        "consolidated": [{"index": i["idx"], "sha256": i["sha256"]}
                         for i in items if i["role"] == "consolidate"],
        "model_before": before and {"version": before["n"],
                                    "weights_sha256": before["weights_sha256"]},
        "model_after": after and {"version": after["n"], "weights_sha256": after["weights_sha256"],
                                  "method": after["method"]},
        "method": method, "model_change": model_change(
            method if r["to_version"] != r["from_version"] else None),
        "attempts": attempts,
        "timings": {"submitted": r["submitted"], "completed": r["completed"],
                    "unlearn_seconds": _seconds(result.get("unlearn_seconds")),
                    "verify_seconds": _seconds(result.get("verify_seconds")),
                    "promote_seconds": _seconds(result.get("promote_seconds"))},
        "copies": _copies(result),
        "forgetting_quality": _fq_section(reg, r, entries),
        "membership": certificate_membership.section(
            reg, [(a, json.loads(a["summary"])) for a in rows], request=dict(r),
            change=model_change(method if r["to_version"] != r["from_version"] else None)[
                "kind"], entries=[e for e in ledger.entries(conn)
                                  if as_of is None or e["seq"] <= as_of],
            forgotten=[i["idx"] for i in items if i["role"] == "forget"]),
        "ledger": {"entries": [{k: e[k] for k in ("seq", "kind", "created", "prev_hash", "hash")}
                               for e in entries], "head_seq": seq, "head_hash": head},
    }
    cert["published_figure"] = published_figure(cert, dataset)
    cert["summary"] = summary(cert)
    return json.loads(json.dumps(to_jsonable(cert)))  # exactly what certificate.json holds


def _attempt(a: dict, n_images: int) -> dict:
    summary_ = json.loads(a["summary"])
    rows = wording.key_metrics(summary_.get("metrics"))
    return {
        "attempt": a["n"], "method": a["method"], "status": a["status"],
        "passed": bool(a["passed"]), "reasons": json.loads(a["reasons"]),
        "started": a["started"], "finished": a["finished"],
        "unlearn_seconds": _seconds(summary_.get("unlearn_seconds")),
        "verify_seconds": _seconds(summary_.get("verify_seconds")),
        "candidate_sha256": summary_.get("weights_sha256"),
        "forget_count": summary_.get("forget_count"),
        "exclude_count": summary_.get("exclude_count"),
        "checks": [wording.plain_check(c, n_images) for c in
                   (summary_.get("verdict") or {}).get("checks", []) if isinstance(c, dict)],
        "steps": summary_.get("steps"),
        "key_metrics": rows, "before_after_in_words": wording.nothing_changed(rows),
        "warnings": wording.result_warnings(summary_.get("metrics")),
        "error": summary_.get("error"),
        # a sharded model's exact step: which shards were retrained, which kept byte for byte
        **({"shards": summary_["shards"]} if summary_.get("shards") else {}),
    }


def _copies(result: dict) -> dict | None:
    """What the request's clean-up recorded about copies of the old model (``purged``,
    ``kept_until``, ``not_reachable``), when it recorded anything."""
    found = {k: result[k] for k in ("purged", "kept_until", "not_reachable") if k in result}
    return found or None


def model_change(method: str | None) -> dict:
    """How a method changed the model, in words, and what it left unchanged."""
    if method is None:
        return {"kind": "none", "in_words": "The model was not changed.", "not_changed": None}
    if method in EXACT:
        what = ("Only the parts of the model (shards) that had seen these images were retrained "
                "from scratch without them" if method == "sisa" else
                "The model was retrained from scratch without these images")
        return {"kind": "exact-sharded" if method == "sisa" else "exact", "method": method,
                "in_words": f"{what} ({EXACT[method]}): it is the model that training without "
                            "them produces.", "not_changed": None}
    if method == "newton" and REQUEST_OPTIONS.get("newton", {}).get("scope") == "head":
        return {"kind": "approximate-final-layer", "method": method,
                "in_words": "The model was changed by an approximate step on its final layer "
                            "(one Newton step on the final layer), not retrained.",
                "not_changed": "Every weight but the final layer was left as it was, so the "
                               "images still shaped the rest of the model."}
    return {"kind": "approximate", "method": method,
            "in_words": f"The model was changed by an approximate unlearning method ({method}) "
                        "that adjusts the trained weights instead of retraining from scratch.",
            "not_changed": "The model was not retrained: the method reduces what the model "
                           "learnt from the images but does not remove it by construction."}


PUBLISHED_FIGURES = "defaults/published_figures.json"


def _published() -> dict:
    """The record of published per-example figures (written by
    ``bench/bench_forgetting_quality.py --publish-figures``; never edited by hand)."""
    text = resources.files("medunlearn").joinpath(PUBLISHED_FIGURES).read_text("utf-8")
    return json.loads(text)


def _figure_applies(cert: dict) -> bool:
    """Whether a certificate shows a published figure: an approximate method served the request
    and the request's own per-image check was not run."""
    change, fq = cert.get("model_change") or {}, cert.get("forgetting_quality") or {}
    return str(change.get("kind", "")).startswith("approximate") and not fq.get("run") \
        and bool(fq.get("applies"))


def published_figure(cert: dict, dataset: str | None) -> dict | None:
    """The method's published per-example figure on this dataset (BENCHMARKS.md), shown when an
    approximate method served the request and its own per-image check was not run; None when
    there is none (or the packaged record's entry is malformed: the figure is supplementary)."""
    if not _figure_applies(cert):
        return None
    record = _published()
    key = record.get("datasets", {}).get((dataset or "").lower())
    fig = record.get("figures", {}).get(key, {}).get(cert["model_change"]["method"]) \
        if key else None
    if not fig:
        return None
    try:
        return figure_entry(fig, cert["model_change"], dataset)
    except (KeyError, IndexError, TypeError, ValueError):
        return None


def figure_entry(fig: dict, change: dict, dataset: str | None) -> dict:
    """The certificate's ``published_figure``: the record's fields and the sentence that says
    what they mean. Rebuilt from a certificate's own fields by :func:`differences`."""
    fields = {k: v for k, v in fig.items() if k not in ("method", "dataset", "in_words")}
    seeds = fields["seeds"]
    ratios = [float(x["ratio"]) for x in seeds]
    spread = f"each {ratios[0]:.2f}" if f"{min(ratios):.2f}" == f"{max(ratios):.2f}" else \
        f"{min(ratios):.2f} to {max(ratios):.2f}"
    over = f"mean over {len(seeds)} training seeds, {spread}" if len(seeds) > 1 else \
        f"training seed {seeds[0]['seed']}"
    gated = [x for x in seeds if "runs_gated" in x]
    gate = ""
    if gated:
        where = "" if len(gated) == len(seeds) else \
            f" of training seed{'s' if len(gated) > 1 else ''} " + ", ".join(
                str(x["seed"]) for x in gated)
        gate = (f"; the safety gate accepted {sum(int(x['runs_passed']) for x in gated)} of "
                f"the {sum(int(x['runs_gated']) for x in gated)} runs{where}")
        rest = [x for x in seeds if "runs_gated" not in x]
        if rest:
            gate += (f" and the deployed model of {sum(bool(x['gate']) for x in rest)} of the "
                     f"{len(rest)} other seed{'s' if len(rest) > 1 else ''}")
    elif all("gate" in x for x in seeds):
        gate = (f"; the safety gate accepted the deployed model of "
                f"{sum(bool(x['gate']) for x in seeds)} of the {len(seeds)} seed"
                f"{'s' if len(seeds) > 1 else ''}")
    scope = " (on the final layer, as the registry runs it)" if \
        change["kind"] == "approximate-final-layer" else ""
    return {"method": change["method"], "dataset": dataset, **fields, "in_words": (
        f"For the method, not for this request: on the {dataset} benchmark "
        f"({_forget_words(str(fields['forget']))}, N = {fields['n']} models per "
        f"side, options {fields['options']}), {change['method']}{scope} scored "
        f"{float(fields['ratio']):.2f} times what retraining itself scores on the per-image "
        f"check ({over}; 1 = as good as retraining, 0 = the untouched model){gate} "
        f"(BENCHMARKS.md section {fields['section']}).")}


def _earlier_figure_words(fig: dict, change: dict, dataset: str | None) -> str:
    """The sentence certificates issued before the figures record (2026-12-05) gave a figure."""
    return (f"For the method, not for this request: on the {dataset} benchmark (a random 10% "
            f"of the training images forgotten, N = {fig['n']} models per side, options "
            f"{fig['options']}), {change['method']} scored {float(fig['ratio']):.2f} times what "
            "retraining itself scores on the per-image check (1 = as good as retraining; "
            f"BENCHMARKS.md section {fig['section']}).")


def _forget_words(forget: str) -> str:
    """``random:0.1`` -> "a random 10% of the training images forgotten"."""
    kind, _, value = forget.partition(":")
    try:
        if kind == "random":
            return f"a random {float(value) * 100:g}% of the training images forgotten"
    except ValueError:
        pass
    return f"forget set {forget}"


def _fq_section(reg: Path, r: sqlite3.Row, entries: list[dict]) -> dict:
    """The per-image forgetting check of the request as of ``entries``: recorded (numbers and
    one row per image), or not run (and the command that runs it)."""
    rid = r["id"]
    cmd = proof_records.command(reg, rid) + " --n 16"
    path = str(proof_records.folder(reg, rid) / proof_records.RECORD_FILE)
    if r["status"] != "completed" or json.loads(r["body"]).get("consolidate") or \
            r["to_version"] == r["from_version"]:
        return {"run": False, "applies": False, "summary": (
            "The per-image forgetting check does not apply: it checks the model a completed "
            "deletion request produced by unlearning, and this request produced none.")}
    found = proof_records.latest_entries(entries).get(rid)
    if found is None:
        return {"run": False, "applies": True, "command": cmd, "path": path, "summary": (
            "The per-image forgetting check was not run for this request, so per-image "
            "forgetting is not established. It trains many models (N unlearned, N retrained "
            f"without the images) and takes minutes to hours; '{cmd}' runs it and writes {path}, "
            "which this certificate then shows.")}
    body = found["body"]
    match = proof_records.matching_file(reg, rid, body.get("result_sha256"))
    rec = json.loads(match.read_text(encoding="utf-8")) if match else None
    n, score, null = body.get("n"), _rnd(body.get("score")), _rnd(body.get("null"))
    ci = [_rnd(v) for v in body.get("ci") or []]
    out = {"run": True, "applies": True, "command": cmd, "path": path,
           "ledger_entry": {"seq": found["seq"], "hash": found["hash"],
                            "result_sha256": body.get("result_sha256")},
           "n": n, "method": body.get("method"), "from_version": body.get("from_version"),
           "score": score, "ci": ci, "null": null, "best": 1.0}
    ci_text = (f" (95% interval {wording.fmt(ci[0])} to {wording.fmt(ci[1])})"
               if len(ci) == 2 else "")
    out["summary"] = (
        f"{n} models unlearned with {body.get('method')} from version "
        f"{body.get('from_version')} were compared with {n} models retrained without the "
        f"request's images. Forgetting-quality score {wording.fmt(score)}{ci_text}; best "
        f"possible 1. Retraining itself scores about {wording.fmt(null)} with {n} models per "
        "side, so read the score against that, not against 1.")
    if rec is None:  # a later check replaced the file (only when read as of an older entry)
        out["images"] = None
        return out
    if rec.get("note"):
        out["summary"] += f" Note: {rec['note']}."
    return out | {"ci_level": rec.get("ci_level"), "ulira_accuracy": _rnd(
        rec.get("ulira_accuracy")), "created": rec.get("created"),
        "how_to_read": proof_records.how_to_read(),
        "images": [{"index": x["index"], "sha256": x["sha256"], "epsilon": _rnd(x["epsilon"]),
                    "ulira_accuracy": _rnd(x.get("ulira_accuracy"))} for x in rec["examples"]]}


#: A per-image check "shows" forgetting when its score reaches this share of the retraining
#: null (the per-example pass rule of BENCHMARKS.md).
SHOWN_SHARE = 0.5


def evidence(cert: dict) -> tuple[str, str]:
    """``(verdict, sentence)``: what the evidence shows for these images: ``forgotten``,
    ``cannot say`` or ``not shown``."""
    req, change, fq = cert["request"], cert["model_change"], cert["forgetting_quality"]
    if req["status"] != "completed":
        return "not shown", (f"No new model was put in service for this request (status "
                             f"{req['status']}), so nothing is shown to be forgotten; the images "
                             "are withdrawn from all further training.")
    if change["kind"] == "none":
        return "forgotten", ("The images had already been forgotten by an earlier request; "
                             "its certificate holds the evidence.")
    if change["kind"].startswith("exact"):
        return "forgotten", ("Forgotten by construction: the model in service was trained "
                             "without these images.")
    if fq.get("run"):
        score, null = fq.get("score"), fq.get("null")
        if isinstance(score, (int, float)) and isinstance(null, (int, float)) and null > 0 \
                and score >= SHOWN_SHARE * null:
            return "forgotten", (f"The per-image check shows them forgotten: score "
                                 f"{wording.fmt(score)} against {wording.fmt(null)} for "
                                 "retraining itself.")
        return "not shown", (f"The per-image check does not show them forgotten: score "
                             f"{wording.fmt(score)} against {wording.fmt(null)} for retraining "
                             "itself (at least half of that counts as forgotten).")
    mem = cert.get("membership") or {}
    if mem.get("run") and mem.get("applies"):
        pair = mem.get("paired") or {}
        if pair.get("status") == "fail":
            return "not shown", pair["summary"]
        if mem.get("status") == "fail":
            return "not shown", mem["summary"]
        if mem.get("status") == "pass" or pair.get("status") == "pass":
            return "forgotten", " ".join(x["summary"] for x in (mem, pair)
                                         if x.get("status") == "pass")
        return "cannot say", ("For these images the evidence cannot say whether they were "
                              f"forgotten. {mem['summary']} The per-image forgetting check was "
                              "not run.")
    return "cannot say", ("For these images the evidence cannot say whether they were forgotten: "
                          "the safety checks of the request measure the model as a whole, and "
                          "the per-image check was not run.")


def not_checked(cert: dict) -> list[dict]:
    """What was not checked for this request, each with the command that would check it."""
    out = []
    fq = cert["forgetting_quality"]
    if fq.get("applies") and not fq.get("run"):
        out.append({"what": "per-image forgetting check", "command": fq["command"],
                    "path": fq.get("path")})
    skipped = {c["check"] for a in cert["attempts"] if a["passed"] for c in a["checks"]
               if c["outcome"] == "not run" and "exact retraining" in c["check"]}
    if skipped:
        out.append({"what": "comparison with a model retrained without the images ("
                    + ", ".join(sorted(skipped)) + ")", "command": (
                        f"medunlearn registry consolidate {cert['registry']} --id ID"),
                    "note": "retrains the model exactly (and replaces it)"})
    return out


def summary(cert: dict) -> dict:
    """The one-paragraph statement of what is certified (``paragraph``) and its parts."""
    req, change = cert["request"], cert["model_change"]
    verdict, ev = evidence(cert)
    missing = not_checked(cert)
    n = len(cert["forgotten"]) or len(cert["consolidated"]) or len(cert["already_forgotten"])
    parts = [f"Request {req['id']} asked to remove {n} training image{'s' if n != 1 else ''} "
             f"from the model; its status is {req['status']} (its processing "
             f"{'finished' if req['status'] != 'pending' else 'has not finished'}, which by "
             "itself does not mean the images were forgotten)."]
    if req["status"] == "completed":
        parts.append(change["in_words"])
        if change.get("not_changed"):
            parts.append(change["not_changed"])
    parts.append(ev)
    inst = (cert.get("membership") or {}).get("instrument") or {}
    if req["status"] == "completed" and inst.get("shadows"):
        parts.append(inst["in_words"])
    for m in missing:
        parts.append(f"Not checked: the {m['what']}; '{m['command']}' would check it"
                     + (f" ({m['note']})" if m.get("note") else "")
                     + (f" and write {m['path']}" if m.get("path") else "") + ".")
    if cert.get("published_figure"):
        parts.append(cert["published_figure"]["in_words"])
    return {"evidence": verdict, "model_change": change["kind"], "not_checked": missing,
            "paragraph": " ".join(parts)}


# --------------------------------------------------------------------------- checking


def load(path: str | os.PathLike) -> dict:
    """A ``certificate.json`` read for checking.

    Raises:
        RegistryError: missing, not a file, not JSON, too deeply nested, or not a certificate.
    """
    path = Path(path)
    hint = ("pass the certificate.json written by 'medunlearn audit show REG ID --out DIR'")
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise RegistryError(f"Certificate {path} {what}; {hint}.")
    try:
        cert = json.loads(path.read_text(encoding="utf-8"))
        led = cert["ledger"]
        ok = (isinstance(cert["request"]["id"], str) and isinstance(led["entries"], list)
              and all(isinstance(e, dict) for e in led["entries"]))
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError, RecursionError):
        ok = False
    if not ok:
        raise RegistryError(f"{path} is not a medunlearn certificate.json (it must be a JSON "
                            f"object with a request id and ledger entries); {hint}.")
    return cert


def anchors(cert: dict, path: str | os.PathLike = "certificate") -> list[tuple[int, str]]:
    """The ledger entries ``(seq, hash)`` a certificate recorded: its request's entries and the
    ledger head at issue.

    Raises:
        RegistryError: a sequence number or hash that is not one.
    """
    led = cert["ledger"]
    pairs = [(e.get("seq"), e.get("hash")) for e in led["entries"]]
    pairs.append((led.get("head_seq"), led.get("head_hash")))
    for seq, h in pairs:
        if type(seq) is not int or not 0 < seq < 2 ** 63 or not isinstance(h, str):
            raise RegistryError(f"{path}: ledger entry {str(seq)[:20]!r} is not a ledger "
                                "sequence number (1 or more) with its hash; the file is not a "
                                "certificate issued by this tool or was damaged.")
    return pairs


def _rewrite(value, old: str, new: str):
    if isinstance(value, str):
        return value.replace(old, new) if old else value
    if isinstance(value, list):
        return [_rewrite(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _rewrite(v, old, new) for k, v in value.items()}
    return value


def _diff(path: str, have, want, out: list[str]) -> None:
    if isinstance(have, dict) and isinstance(want, dict):
        for k in list(have) + [k for k in want if k not in have]:
            _diff(f"{path}.{k}" if path else str(k), have.get(k, "<absent>"),
                  want.get(k, "<absent>"), out)
    elif isinstance(have, list) and isinstance(want, list) and len(have) == len(want):
        for i, (h, w) in enumerate(zip(have, want, strict=True)):
            _diff(f"{path}[{i}]", h, w, out)
    elif have != want or type(have) is not type(want):
        out.append(f"{path} reads {_short(have)} but the registry says {_short(want)}")


def _short(v) -> str:
    text = json.dumps(v, ensure_ascii=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _figure_wordings(fig: dict, change: dict, dataset: str | None) -> set[str]:
    """The sentences this package (now, or before the figures record) gives ``fig``'s fields."""
    out = set()
    for words in (lambda *a: figure_entry(*a)["in_words"], _earlier_figure_words):
        try:
            out.add(words(fig, change, dataset))
        except (KeyError, IndexError, TypeError, ValueError):
            pass
    return out


def _cut_figure_sentence(cert: dict, fig) -> bool:
    """Remove ``fig``'s sentence from the end of ``cert``'s summary; False if it is not there."""
    summary = cert.get("summary")
    if not isinstance(fig, dict) or not isinstance(summary, dict) \
            or not isinstance(summary.get("paragraph"), str):
        return False
    tail = " " + str(fig.get("in_words"))
    if not summary["paragraph"].endswith(tail):
        return False
    summary["paragraph"] = summary["paragraph"][:-len(tail)]
    return True


def _strip_figure(have: dict, want: dict, name: str) -> list[str]:
    """Take the published figure out of both certificates before they are compared, and check
    what can be checked of the certificate's own.

    The figure is a benchmark figure of the installed package about the method, not anything
    the registry recorded: a release that refreshes it must not make earlier certificates fail,
    so its numbers are not compared. Its form is: a certificate may show one only where the
    registry's certificate would (an approximate method, the request's own check not run), for
    the request's method and dataset, worded exactly as this package (or the earlier wording)
    words those numbers, and only as the last sentence of the summary. Anything else is a
    difference."""
    mine, theirs = have.pop("published_figure", None), want.pop("published_figure", None)
    _cut_figure_sentence(want, theirs)
    if mine is None:
        return []
    change = want.get("model_change") or {}
    if isinstance(mine, dict) and _figure_applies(want) \
            and mine.get("method") == change.get("method") \
            and mine.get("dataset") == want.get("dataset") \
            and mine.get("in_words") in _figure_wordings(mine, change, want.get("dataset")) \
            and _cut_figure_sentence(have, mine):
        return []
    return [f"certificate {name}: published_figure: not a figure the registry's certificate of "
            "this request could show (method, dataset, wording or place in the summary differ)"]


def differences(reg: Path, conn: sqlite3.Connection, cert: dict, name: str) -> list[str]:
    """Every statement of ``cert`` that differs from the certificate the registry gives as of
    the ledger head the certificate recorded (empty when all agree). Its ledger pairs are
    checked as anchors separately; the registry's path may differ (a copy)."""
    rid = cert["request"]["id"]
    if conn.execute("SELECT 1 FROM requests WHERE id = ?", (rid,)).fetchone() is None:
        return [f"certificate {name}: the registry has no request {_short(rid)} (the request id "
                "was edited, or the certificate belongs to another registry)"]
    head = cert["ledger"].get("head_seq")
    last = ledger.head(conn)[0]
    if type(head) is not int or not 0 < head <= last:
        return [f"certificate {name}: its ledger head {_short(head)} is not in the ledger"]
    fresh = build(reg, conn, rid, as_of=head)
    have = _rewrite({k: v for k, v in cert.items() if k != "registry"},
                    str(cert.get("registry") or ""), str(reg))
    want = {k: v for k, v in fresh.items() if k != "registry"}
    if "membership" not in have:  # issued before certificates had the section: not a statement
        want.pop("membership", None)
    if (want.get("forgetting_quality") or {}).get("images", []) is None:
        for d in (have, want):  # the rows of an older check were replaced by a later one
            for k in ("images", "how_to_read", "ci_level", "ulira_accuracy", "created"):
                (d.get("forgetting_quality") or {}).pop(k, None)
            if isinstance(d.get("forgetting_quality"), dict):
                d["forgetting_quality"]["summary"] = None
    figure = _strip_figure(have, want, name)  # the package's figure, not the registry's
    found: list[str] = []
    _diff("", have, want, found)
    later = [e["seq"] for e in ledger.entries(conn, rid) if e["seq"] > head
             and e["kind"] != proof_records.ENTRY_KIND]
    out = figure + [f"certificate {name}: {d}" for d in found[:20]]
    if len(found) > 20:
        out.append(f"certificate {name}: and {len(found) - 20} more differences")
    if out and later:
        out.append(f"certificate {name}: the request changed after it was issued (ledger "
                   f"entries {later[:5]}); issue a new certificate with 'medunlearn audit show'")
    return out
