"""A deletion request: the JSON a hospital submits when a patient withdraws consent.

The format is :data:`REQUEST_SCHEMA`, the one description of it: ``medunlearn forget --help``
prints it, the README's "Deletion requests" section quotes it, and a malformed request's error
message points to it.

A *consolidation* request (``"consolidate": true``, no images) names no new images: it retrains
the model from scratch without every image forgotten so far, so that a model reached through
approximate unlearning steps is replaced by an exact one (``medunlearn registry consolidate``).

Every string that a certificate, ``registry status`` or a log shows is refused when it holds a
character that could hide or reorder text (control characters including C1 such as NEL, bidi
overrides, line separators, surrogates); ids are also path-safe (no ``.``/``..`` parts).
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

from medunlearn.config import unsafe_characters
from medunlearn.registry.errors import RequestError
from medunlearn.registry.ledger import canonical_json, sha256_text

ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")  # used with fullmatch
HASH_PATTERN = re.compile(r"[0-9a-f]{64}")  # used with fullmatch
MAX_SUBJECT = 256
MAX_NOTE = 4000
MAX_PATIENT_ID = 128
MAX_INDEX = 2**40  # far beyond any training split; larger numbers are not training indices
MAX_FILE_BYTES = 64 << 20  # a request for 1 million images is ~70 MB of JSON; refuse more
KEYS = ("id", "subject", "images", "hashes", "indices", "patients", "method", "note",
        "consolidate")
#: The two examples of the request format (one forgets images by hash, one a patient).
EXAMPLE_IMAGES = '{"id": "DR-2026-0042", "subject": "ref-7f3a", "images": ["<sha256>"]}'
EXAMPLE_PATIENTS = '{"id": "DR-2026-0043", "subject": "ref-81c2", "patients": ["P0042"]}'

#: The request format: the one description (``forget --help`` prints it, the README quotes it).
REQUEST_SCHEMA = f"""\
A deletion request is one JSON object in a UTF-8 file (a byte-order mark is
allowed), each key at most once:

  id           required. Your ticket number: 1-128 letters, digits and
               . _ : @ / -, starting with a letter or digit, no "." or ".."
               between slashes. E.g. "DR-2026-0042".
  subject      required. An opaque reference to the patient, never a name:
               one line of at most {MAX_SUBJECT} printable characters.
  images       SHA-256 hashes (64 hex digits) of the images to forget, from
               the model's manifest.csv ("hashes" is another name for it).
  patients     patient ids (patient_id column of manifest.csv): every image
               of each patient, and every identical copy, is forgotten.
  indices      training-split indices (index column of manifest.csv).
  method       optional. A method name (see 'medunlearn methods');
               default: the registry's method chain.
  note         optional. Free text, at most {MAX_NOTE} characters; line breaks
               and tabs are allowed.
  consolidate  optional. true only for a consolidation ('medunlearn
               registry consolidate'), which names no images.

A request names images, patients or indices (any combination). No text may
hold control characters, bidi overrides or line separators.

Example, forgetting images by hash:
  {EXAMPLE_IMAGES}
Example, forgetting every image of a patient:
  {EXAMPLE_PATIENTS}
"""
#: The request format in brief, appended to errors about a request's shape.
SCHEMA_HINT = (f"A request looks like {EXAMPLE_IMAGES} or {EXAMPLE_PATIENTS}; its keys are "
               f"{', '.join(KEYS)}. 'medunlearn forget --help' explains each key.")


def _preview(value, limit: int = 60) -> str:
    """``repr`` of a value cut to ``limit`` characters, for error messages."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
        return f"a number of about {int(value.bit_length() * 0.30103) + 1} digits"
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _has_control(text: str, allowed: str = "") -> bool:
    return bool(unsafe_characters(text, allowed))


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` of :func:`json.loads`: refuse a key given twice (the last one
    would otherwise win silently)."""
    out: dict = {}
    for k, v in pairs:
        if k in out:
            raise _DuplicateKey(k)
        out[k] = v
    return out


class _DuplicateKey(ValueError):
    pass


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
                           f"got a {type(data).__name__}. {SCHEMA_HINT}")
    unknown = sorted(map(str, set(data) - set(KEYS)))
    if unknown:
        shown = ", ".join(k if len(k) <= 40 and k.isprintable() else _preview(k, 40)
                          for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        raise RequestError(f"{source} has unknown key(s) {shown}{more}; valid keys: "
                           f"{', '.join(KEYS)}. {SCHEMA_HINT}")
    rid = data.get("id")
    if (not isinstance(rid, str) or not ID_PATTERN.fullmatch(rid)
            or any(part in ("", ".", "..") for part in rid.split("/"))):
        raise RequestError(
            f"{source} needs an 'id': 1-128 characters of letters, digits and ._:@/- starting "
            "with a letter or digit, with no '.' or '..' between slashes, nothing else (got "
            f"{_preview(rid)}). Use your ticket number, e.g. 'DR-2026-0042'.")
    subject = data.get("subject")
    if isinstance(subject, str) and (bad := unsafe_characters(subject)):
        raise RequestError(f"{source}: 'subject' must be one line of printable text, but it "
                           f"holds control, bidi-override or line-separator character(s) "
                           f"({', '.join(bad[:5])}) that could hide or reorder text in "
                           "certificates and logs. Give an opaque reference of plain printable "
                           "characters, e.g. 'ref-7f3a'.")
    if (not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT):
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
    huge = [i for i in indices if i > MAX_INDEX]
    if huge:
        raise RequestError(f"{source}: 'indices' holds {len(huge)} number(s) too large to be a "
                           f"training index (e.g. {_preview(huge[0])}); take the indices from "
                           "the index column of the model's manifest.csv.")
    patients = data.get("patients", [])
    if patients is None:
        patients = []
    if isinstance(patients, list):
        bad = [p for p in patients if isinstance(p, str) and unsafe_characters(p)]
        if bad:
            raise RequestError(
                f"{source}: {len(bad)} patient id(s) hold control, bidi-override or "
                f"line-separator characters ({', '.join(_preview(p, 30) for p in bad[:3])}); "
                "such a character is never dropped or guessed at. Give the ids exactly as "
                "printable text, as in the patient_id column of the model's manifest.csv.")
    if not isinstance(patients, list) or any(
            not isinstance(p, str) or not p.strip(" ") or len(p) > MAX_PATIENT_ID
            for p in patients):
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
                           "without control characters, bidi overrides or line separators "
                           f"(line breaks and tabs are fine; got {_preview(note)}); keep long "
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
                           f"patient ids in 'patients'). {SCHEMA_HINT}")
    return DeletionRequest(id=rid, subject=subject,
                           images=tuple(sorted({h.lower() for h in images})),
                           indices=tuple(sorted(set(indices))), method=method, note=note,
                           consolidate=consolidate,
                           patients=tuple(sorted({p.strip(" ") for p in patients})))


def load_request(source: str | os.PathLike | dict) -> DeletionRequest:
    """Read and validate a request from a JSON file (or take a dict).

    Raises:
        RequestError: missing/unreadable file, invalid JSON, or invalid content.
    """
    if not isinstance(source, (str, os.PathLike)):
        return parse_request(source)  # a dict (anything else is refused there)
    path = Path(source)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise RequestError(f"Request file {path} does not exist. Pass the JSON file of the "
                           "deletion request with --request.") from None
    except OSError as exc:
        raise RequestError(f"Request file {path} cannot be read ({exc.strerror}).") from None
    if stat.S_ISDIR(mode):
        raise RequestError(f"--request {path} is a folder, not a file. Pass the JSON file of "
                           "the deletion request itself, e.g. --request request.json.")
    if not stat.S_ISREG(mode):
        raise RequestError(f"--request {path} is not a regular file (a pipe, socket or device). "
                           "Save the deletion request as a JSON file and pass that file.")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise RequestError(f"Request file {path} is larger than {MAX_FILE_BYTES >> 20} MB; a "
                           "deletion request lists one patient's image hashes. Split it into "
                           "several requests.")
    try:
        # utf-8-sig: a byte-order mark (as some Windows editors write) is accepted, as for CSVs
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise RequestError(f"Request file {path} is nested too deeply to be a deletion request "
                           "(expected one JSON object with keys id, subject and images).") from None
    except OSError as exc:
        raise RequestError(f"Request file {path} cannot be read ({exc.strerror}).") from None
    except UnicodeDecodeError:
        raise RequestError(f"Request file {path} is not UTF-8 text; save it as a UTF-8 JSON "
                           "file.") from None
    except _DuplicateKey as exc:
        raise RequestError(f"Request file {path} gives the key {_preview(exc.args[0], 40)} more "
                           "than once, so which value counts would be ambiguous. Give each key "
                           f"once. {SCHEMA_HINT}") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"Request file {path} is not valid JSON (line {exc.lineno}, column "
                           f"{exc.colno}: {exc.msg}). Expected e.g. {{\"id\": \"DR-1\", "
                           f"\"subject\": \"ref\", \"images\": [\"<sha256>\"]}}. {SCHEMA_HINT}"
                           ) from None
    except ValueError:  # an integer literal longer than Python's limit (4300 digits)
        raise RequestError(f"Request file {path} holds a number with thousands of digits; no "
                           "training index is that large. Take the indices from the index "
                           "column of the model's manifest.csv.") from None
    return parse_request(data, source=f"request file {path}")
