"""The certificate's per-image membership section: what the gate's shadow-model test found for
each forgotten image, in plain words, and what became of the shadow models themselves.

Built from the record of the attempt the registry promoted (its ``models.model.membership``
section, vouched for by the attempt's ledger entry) and the ``shadows`` ledger entries
(:mod:`.shadow_records`). The JSON keeps every image; the HTML page shows every row; the text
form (:func:`text_lines`) shows the first rows and counts the rest.
"""

from __future__ import annotations

from medunlearn.registry import shadow_records, wording

HOW_TO_READ = (
    "Each image is compared with shadow models: copies of the model trained the same way, half "
    "of them with the image and half without. From them, 'IN-likeness' is the confidence a model "
    "like this one is expected to have on the image if it still remembers it, and "
    "'OUT-likeness' the confidence expected if it never saw it (confidences on the log-odds "
    "scale of the image's true label: higher is more confident). 'Confidence' is what the "
    "request's new model (the candidate the gate checked) gives. An image 'looks forgotten' "
    "when that confidence sits where an unseen "
    "image's would, and the test was able to tell a remembered image apart (enough power); it "
    "'looks remembered' when the confidence is significantly closer to IN-likeness (p below "
    "the test's level). 'Cannot say' means the IN and OUT expectations are too close to each "
    "other (or the image has too few shadow models on one side) to tell a remembered image "
    "from a forgotten one: neither is shown, and it is not a pass.")

#: request-level status of the membership record -> words
OUTCOME = {"pass": "passed: the images look forgotten",
           "fail": "failed: the images still look like training images",
           "cannot say": "cannot say: the test cannot tell remembering from forgetting here"}


def _rnd(v):
    return round(float(v), 3) if isinstance(v, (int, float)) and v == v else None


def _record(summary: dict | None, key: str = "membership") -> dict | None:
    sec = (((summary or {}).get("metrics") or {}).get("models") or {}).get("model")
    sec = sec.get(key) if isinstance(sec, dict) else None
    return sec if isinstance(sec, dict) else None


PAIRED_OUTCOME = {"pass": "passed: the images lost what had been memorised of them",
                  "fail": "failed: the images kept most of what had been memorised of them",
                  "cannot say": "cannot say"}


def paired(rec: dict | None) -> dict | None:
    """The paired test against the replaced model (``forget_effect``), in words."""
    if not rec:
        return None
    images = rec.get("images") or []
    counts = {s: sum(1 for x in images if x.get("status") == s)
              for s in ("looks forgotten", "looks remembered", "cannot say")}
    status = rec.get("status")
    share = _rnd(rec.get("share"))
    text = (f"Compared with the model it replaces, the new model removed "
            f"{wording.fmt(share)} of the memorisation exact retraining is expected to remove "
            f"on these images (upper bound {wording.fmt(_rnd(rec.get('share_upper')))}); "
            if share is not None else "")
    return {"status": status, "outcome": PAIRED_OUTCOME.get(status, str(status)),
            "share": share, "share_upper": _rnd(rec.get("share_upper")), "counts": counts,
            "reason": rec.get("reason"),
            "summary": (f"The paired test {PAIRED_OUTCOME.get(status, str(status))}. {text}"
                        + (f"{rec.get('reason')}." if status == "cannot say" else
                           f"per image: {counts['looks forgotten']} look forgotten, "
                           f"{counts['looks remembered']} look remembered, "
                           f"{counts['cannot say']} cannot say."))}


def section(reg, attempts: list[tuple[dict, dict]], *, request: dict, change: str,
            entries: list[dict], forgotten: list[int]) -> dict:
    """The membership section of a certificate.

    Args:
        reg: The registry folder (for the command that enables the check).
        attempts: ``(attempt row as a dict, its parsed summary)`` in order.
        request: The request row (``id``, ``status``).
        change: The certificate's ``model_change.kind`` (``none``, ``exact...``,
            ``approximate...``).
        entries: The ledger entries as of the certificate's head.
        forgotten: Training indices this request forgot.
    """
    promoted = next((s | {"n": a["n"], "method": a["method"]} for a, s in reversed(attempts)
                     if a["passed"]), None)
    chosen = promoted or next((s | {"n": a["n"], "method": a["method"]}
                               for a, s in reversed(attempts) if _record(s)), None)
    rec = _record(chosen)
    out: dict = {"instrument": instrument(reg, entries, request["id"], forgotten)}
    exact = change.startswith("exact")
    if change == "none" and not attempts:
        return out | {"applies": False, "run": False, "summary": (
            "Does not apply: no new model was made for this request.")}
    if exact:
        out |= {"applies": False, "run": rec is not None, "summary": (
            "Not needed: the model was retrained from scratch without the images, so it never "
            "saw them.")}
    elif rec is None:
        cmd = shadow_records.command(reg)
        tried = [e["seq"] for e in entries
                 if e["kind"] == "attempt" and e["request_id"] == request["id"]]
        had = any(e["seq"] < max(tried) for e in shadow_records.shadow_entries(entries)
                  ) if tried else False
        why = ("Not run: the registry had shadow models, but the step that verified this "
               "request recorded no per-image membership evidence (a non-standard verify "
               "step)." if had else
               "Not run: the registry had no shadow models when this request was verified, so "
               f"no per-image membership evidence exists for it. '{cmd}' trains them once; "
               "every later request then runs this check.")
        return out | {"applies": bool(attempts), "run": False, "command": cmd, "summary": why}
    else:
        out |= {"applies": True, "run": True}
    if rec is None:
        return out
    images = [{"sha256": x.get("sha256"), "short": str(x.get("sha256") or "")[:12],
               "in_likeness": _rnd(x.get("expected_if_member")),
               "out_likeness": _rnd(x.get("expected_if_unseen")),
               "confidence": _rnd(x.get("confidence")), "z": _rnd(x.get("z")),
               "p_value": _rnd(x.get("p_value")), "status": x.get("status")}
              for x in rec.get("images") or []]
    counts = {s: sum(1 for x in images if x["status"] == s)
              for s in ("looks forgotten", "looks remembered", "cannot say")}
    status = rec.get("status")
    out["paired"] = paired(_record(chosen, "forget_effect"))
    out |= {"attempt": chosen["n"], "method": chosen["method"], "status": status,
            "outcome": OUTCOME.get(status, str(status)), "z": _rnd(rec.get("z")),
            "p_value": _rnd(rec.get("p_value")), "power": _rnd(rec.get("power")),
            "alpha": _rnd(rec.get("alpha")), "k": rec.get("k"),
            "n_images": rec.get("n_images"), "n_tested": rec.get("n_tested"),
            "reason": rec.get("reason"), "counts": counts, "images": images,
            "how_to_read": HOW_TO_READ}
    if not exact:
        p = f", p = {wording.fmt(out['p_value'])}" if out["p_value"] is not None else ""
        pw = (f", power {wording.fmt(out['power'])}" if out["power"] is not None else "")
        out["summary"] = (
            f"The per-image membership test (attempt {chosen['n']}, {chosen['method']}, "
            f"{rec.get('k')} shadow models) {out['outcome']} (z = {wording.fmt(out['z'])}{p}"
            f"{pw}). Per image: {counts['looks forgotten']} look forgotten, "
            f"{counts['looks remembered']} look remembered, {counts['cannot say']} cannot say.")
    return out


def instrument(reg, entries: list[dict], request_id: str, forgotten: list[int]) -> dict:
    """What became of the shadow models after this request: how many were retrained without
    its images, and whether any model trained on them remains (computed from the ledger)."""
    last = shadow_records.latest(entries)
    if last is None:
        return {"shadows": False, "in_words": "The registry has no shadow models (nothing to "
                "retrain)."}
    mine = shadow_records.ledger_view(entries, request_id)
    remain = shadow_records.stale(last["body"], forgotten)
    out = {"shadows": True, "k": last["body"].get("k"),
           "generation": last["body"].get("generation"),
           "retrained": len(mine["retrained"]) if mine else 0,
           "copied": len(mine["copied"]) if mine else None,
           "purged_files": len(mine["purged"]) if mine else 0,
           "trained_on_these_images": len(remain)}
    if remain:
        words = (f"{len(remain)} of this request's images are still in the training halves of "
                 "the registry's shadow models; 'medunlearn registry shadows' retrains them.")
    elif mine:
        kept = (f"the other {out['copied']} were kept" if out["copied"] else
                "every one of them was")
        words = (f"The shadow models are derived from patients' images too: {out['retrained']} "
                 f"of the {out['k']} had been trained on these images and were retrained "
                 f"without them ({kept}), and the files of the old ones were deleted "
                 f"({out['purged_files']} files). No shadow model trained on these images "
                 "remains in the registry.")
    else:
        words = ("No shadow model of the registry was trained on these images (none needed "
                 "retraining).")
    return out | {"in_words": words}


def text_lines(sec: dict | None, limit: int = 10) -> list[str]:
    """The section as text lines: the result, then at most ``limit`` image rows and a count of
    the rest (the certificate's HTML page shows them all)."""
    if not sec:
        return []
    lines = [f"per-image membership test: {sec.get('summary') or '-'}"]
    images = sec.get("images") or []
    if images and sec.get("applies"):
        lines.append(f"  {'image':<14}{'IN-like':>9}{'OUT-like':>9}{'model':>9}{'z':>8}  status")
        for x in images[:limit]:
            lines.append(f"  {x['short']:<14}{wording.fmt(x['in_likeness']):>9}"
                         f"{wording.fmt(x['out_likeness']):>9}{wording.fmt(x['confidence']):>9}"
                         f"{wording.fmt(x['z']):>8}  {x['status']}")
        if len(images) > limit:
            lines.append(f"  ... and {len(images) - limit} more image(s) (all in the "
                         "certificate: 'medunlearn audit show')")
    if sec.get("paired"):
        lines.append(f"paired test against the replaced model: {sec['paired']['summary']}")
    lines.append(f"shadow models: {sec['instrument']['in_words']}")
    return lines


def render_html(sec: dict | None, esc, table) -> str:
    """The section as HTML (every image row); ``esc`` and ``table`` are the page's helpers."""
    if not sec:
        return ""
    parts = ["<h2>Per-image membership test</h2>", f"<p>{esc(sec.get('summary'))}</p>"]
    if sec.get("command") and not sec.get("run"):
        parts.append(f"<p><code>{esc(sec['command'])}</code></p>")
    images = sec.get("images") or []
    if images and sec.get("applies"):
        parts.append(f"<p>{esc(sec['how_to_read'])}</p>")
        parts.append(table([[x["short"], wording.fmt(x["in_likeness"]),
                             wording.fmt(x["out_likeness"]), wording.fmt(x["confidence"]),
                             wording.fmt(x["z"]), wording.fmt(x["p_value"]), x["status"]]
                            for x in images],
                           ["image (SHA-256, first 12)", "IN-likeness", "OUT-likeness",
                            "the new model's confidence", "z", "p", "looks"], hashes=(0,)))
    if sec.get("paired"):
        parts.append(f"<p>{esc(sec['paired']['summary'])}</p>")
    parts.append(f"<p>{esc(sec['instrument']['in_words'])}</p>")
    return "".join(parts)


__all__ = ["HOW_TO_READ", "instrument", "paired", "render_html", "section", "text_lines"]
