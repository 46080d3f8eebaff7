"""A deletion request: the JSON a hospital submits when a patient withdraws consent.

Example ``request.json``::

    {
      "id": "DR-2026-0042",
      "subject": "opaque-ref-7f3a",
      "images": ["<sha256 of an image>", "..."],
      "method": "salun-cra"
    }

``subject`` is a required opaque reference (never a name); ``images`` are SHA-256 hashes as
listed in the registry's manifest (``indices`` into the training split, or ``patients``, the
patient ids of the training manifest's ``patient_id`` column, may be given instead or as well:
a patient stands for every image of that patient and every byte-identical copy); ``method`` is
optional (default: the registry's recommended method and fallbacks).

A *consolidation* request (``"consolidate": true``, no images) names no new images: it retrains
the model from scratch without every image forgotten so far, so that a model reached through
approximate unlearning steps is replaced by an exact one (``medunlearn registry consolidate``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from medunlearn.registry.errors import RequestError
from medunlearn.registry.ledger import canonical_json, sha256_text

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")  # used with fullmatch
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")  # used with fullmatch
MAX_SUBJECT = 256
MAX_NOTE = 4000
MAX_FILE_BYTES = 64 << 20  # a request for 1 million images is ~70 MB of JSON; refuse more


def _preview(value, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters, for error messages."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _has_control(text: str, allowed: str = "") -> bool:
    return any((ord(c) < 32 or ord(c) == 127) and c not in allowed for c in text)
KEYS = ("id", "subject", "images", "hashes", "indices", "patients", "method", "note",
        "consolidate")
MAX_PATIENT_ID = 128


@dataclass(frozen=True)
class DeletionRequest:
    """A parsed, normalised deletion request."""

    id: str
    subject: str
    images: tuple[str, ...]  # sorted unique lower-case SHA-256 hex digests
    indices: tuple[int, ...]  # sorted unique training-split indices
    method: str | None
    note: str = ""
    consolidate: bool = False  # retrain exactly without every image forgotten so far
    patients: tuple[str, ...] = ()  # sorted unique patient ids (training manifest's patient_id)

    def body(self) -> dict:
        """The normalised content that identifies the request (hashed for idempotency)."""
        body = {"id": self.id, "subject": self.subject, "images": list(self.images),
                "indices": list(self.indices), "method": self.method, "note": self.note}
        if self.patients:  # absent when empty: requests without patients hash as before
            body["patients"] = list(self.patients)
        return body | ({"consolidate": True} if self.consolidate else {})

    @property
    def content_sha256(self) -> str:
        return sha256_text(canonical_json(self.body()))


def parse_request(data: dict, *, source: str = "the request") -> DeletionRequest:
    """Validate and normalise a request dict.

    Raises:
        RequestError: naming the field that is wrong and what it must hold.
    """
    if not isinstance(data, dict):
        raise RequestError(f"{source} must be a JSON object with keys id, subject and images; "
                           f"got a {type(data).__name__}.")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise RequestError(f"{source} has unknown key(s) {', '.join(unknown)}; valid keys: "
                           f"{', '.join(KEYS)}.")
    rid = data.get("id")
    if not isinstance(rid, str) or not ID_PATTERN.fullmatch(rid):
        raise RequestError(
            f"{source} needs an 'id': 1-128 characters of letters, digits and ._:@/- starting "
            f"with a letter or digit, nothing else (got {_preview(rid)}). Use your ticket "
            "number, e.g. 'DR-2026-0042'.")
    subject = data.get("subject")
    if (not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT
            or _has_control(subject)):
        raise RequestError(f"{source}: 'subject' must be an opaque reference to the patient: "
                           f"one line of at most {MAX_SUBJECT} characters, not empty (got "
                           f"{_preview(subject)}), e.g. a pseudonymous id from your consent "
                           "system. Never put a name here.")
    if "images" in data and "hashes" in data:
        raise RequestError(f"{source} has both 'images' and 'hashes'; they mean the same thing, "
                           "give one list.")
    images = data.get("images", data.get("hashes", []))
    if images is None:
        images = []
    if not isinstance(images, list):
        raise RequestError(f"{source}: 'images' must be a list of SHA-256 hex strings.")
    bad = [h for h in images if not isinstance(h, str) or not HASH_PATTERN.fullmatch(h.lower())]
    if bad:
        raise RequestError(
            f"{source}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} of 'images' "
            f"{'is' if len(bad) == 1 else 'are'} not a 64-character SHA-256 hex digest: "
            f"{', '.join(map(_preview, bad[:5]))}{' ...' if len(bad) > 5 else ''}. Take the hashes "
            "from the model's manifest.csv.")
    indices = data.get("indices", [])
    if indices is None:
        indices = []
    if not isinstance(indices, list) or any(
            isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in indices):
        raise RequestError(f"{source}: 'indices' must be a list of non-negative integers "
                           "(training-split indices from manifest.csv).")
    patients = data.get("patients", [])
    if patients is None:
        patients = []
    if not isinstance(patients, list) or any(
            not isinstance(p, str) or not p.strip() or len(p) > MAX_PATIENT_ID
            or _has_control(p) for p in patients):
        raise RequestError(f"{source}: 'patients' must be a list of patient ids (one line of at "
                           f"most {MAX_PATIENT_ID} characters each), as in the patient_id column "
                           "of the model's manifest.csv.")
    method = data.get("method")
    if method is not None and (not isinstance(method, str) or not method):
        raise RequestError(f"{source}: 'method' must be a method name such as 'salun-cra' or "
                           "'retrain', or left out to use the registry's default.")
    if method is not None and (len(method) > 64 or _has_control(method)):
        raise RequestError(f"{source}: 'method' {_preview(method)} is not a method name; see "
                           "'medunlearn methods'.")
    note = data.get("note", "")
    if not isinstance(note, str) or len(note) > MAX_NOTE or _has_control(note, "\n\t"):
        raise RequestError(f"{source}: 'note' must be text of at most {MAX_NOTE} characters "
                           f"without control characters (got {_preview(note)}); keep long "
                           "documents in your ticket system and put its reference here.")
    consolidate = data.get("consolidate", False)
    if not isinstance(consolidate, bool):
        raise RequestError(f"{source}: 'consolidate' must be true or false.")
    if consolidate:
        if images or indices or patients:
            raise RequestError(f"{source} ({rid}): a consolidation request retrains without "
                               "every image forgotten so far and names no new images; submit "
                               "the images as a deletion request first, then consolidate.")
        if method not in (None, "retrain"):
            raise RequestError(f"{source} ({rid}): a consolidation request always retrains "
                               f"from scratch; leave 'method' out (got {method!r}).")
        method = "retrain"
    elif not images and not indices and not patients:
        raise RequestError(f"{source} ({rid}) names no images: give the SHA-256 hashes of the "
                           "images to forget in 'images' (or training indices in 'indices', or "
                           "patient ids in 'patients').")
    return DeletionRequest(id=rid, subject=subject,
                           images=tuple(sorted({h.lower() for h in images})),
                           indices=tuple(sorted(set(indices))), method=method, note=note,
                           consolidate=consolidate,
                           patients=tuple(sorted({p.strip() for p in patients})))


def load_request(source: str | os.PathLike | dict) -> DeletionRequest:
    """Read and validate a request from a JSON file (or take a dict).

    Raises:
        RequestError: missing/unreadable file, invalid JSON, or invalid content.
    """
    if not isinstance(source, (str, os.PathLike)):
        return parse_request(source)  # a dict (anything else is refused there)
    path = Path(source)
    if not path.is_file():
        raise RequestError(f"Request file {path} does not exist. Pass the JSON file of the "
                           "deletion request with --request.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise RequestError(f"Request file {path} is larger than {MAX_FILE_BYTES >> 20} MB; a "
                           "deletion request lists one patient's image hashes. Split it into "
                           "several requests.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except RecursionError:
        raise RequestError(f"Request file {path} is nested too deeply to be a deletion request "
                           "(expected one JSON object with keys id, subject and images).") from None
    except OSError as exc:
        raise RequestError(f"Request file {path} cannot be read ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise RequestError(f"Request file {path} is not UTF-8 text; save it as a UTF-8 JSON "
                           "file.") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"Request file {path} is not valid JSON (line {exc.lineno}, column "
                           f"{exc.colno}: {exc.msg}). Expected e.g. {{\"id\": \"DR-1\", "
                           "\"subject\": \"ref\", \"images\": [\"<sha256>\"]}.") from None
    return parse_request(data, source=f"request file {path}")
