"""File sources: a CSV manifest (one row per image) or a folder with one subfolder per class.

Both end in the same :class:`~medunlearn.data.dataset.Dataset` as MedMNIST:

* Images are decoded from their bytes (PNG, JPEG, BMP, TIFF, GIF, WebP or DICOM, whatever the
  file name says; see :mod:`medunlearn.data.images`), resized once to ``size`` and cached on
  disk keyed by the files' SHA-256 (:mod:`medunlearn.data.image_cache`), so a second load only
  hashes the files.
* Identity: every image keeps the SHA-256 of its source file and its patient id (the patient
  column, else the DICOM PatientID tag; without either, one patient per image).
* Labels: a binary clinical view; ``positive_values`` names the label values (or class folders)
  that mean disease, everything else is negative unless ``negative_values`` declares the
  allowed negatives (then any other value is an error).
* Splits: the split column (``train``/``val``/``test`` and common spellings) when given and free
  of leaks; a missing validation (or test) split is carved from the training rows. Without a
  split column, or with ``resplit=True``, new splits are made. Every carved split is stratified
  by label and grouped by patient and by identical file (:mod:`medunlearn.data.splits`), seeded
  by ``split_seed``. Given splits that share a patient or an identical file are refused unless
  ``resplit=True``.
* Metadata: the named columns (default: those called sex, gender, age, view, view_position,
  site, hospital, institution, scanner, manufacturer, race or ethnicity), or the DICOM PatientSex,
  PatientAge and ViewPosition tags, as strings in ``Split.metadata``. An age column becomes
  ``age_band`` (``<40``, ``40-60``, ``>60``, ``unknown``).

``Dataset.source`` records every resolved option plus ``content_sha256`` (the manifest and every
file); run folders reload the data through it (:func:`medunlearn.data.load_from_record`) and a
changed file is refused. Sources registered here: ``manifest`` and ``folder``.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from medunlearn.config import DataSource, unsafe_characters
from medunlearn.data import image_cache
from medunlearn.data.dataset import SPLITS, Dataset, _subset, from_arrays
from medunlearn.data.images import CHANNELS, decode, resolve_channels, to_channels
from medunlearn.data.sources import register_source
from medunlearn.data.splits import groups_of, holdout, leaking
from medunlearn.errors import DataError
from medunlearn.fileio import sha256_file

AUTO = "auto"
PATIENT_COLUMNS = ("patient_id", "patientid", "patient")
SPLIT_COLUMNS = ("split",)
METADATA_COLUMNS = ("sex", "gender", "age", "view", "view_position", "viewposition", "site",
                    "hospital", "institution", "scanner", "manufacturer", "race", "ethnicity")
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val", "tune": "val",
    "test": "test", "testing": "test", "holdout": "test",
}
AGE_BANDS = ("<40", "40-60", ">60")
_BLANKS = " \t\r\n"  # what is stripped from manifest cells
DEFAULTS = {"val_fraction": 0.1, "test_fraction": 0.2, "split_seed": 0, "channels": AUTO,
            "augment": "basic"}


@dataclass
class Row:
    """One image of a file source before loading."""

    line: str  # where it came from, for messages ("labels.csv line 12", "folder TB/x.png")
    path: Path
    label: str
    patient: str | None = None
    split: str | None = None
    meta: dict[str, str] = field(default_factory=dict)


def age_band(value: str) -> str:
    """``<40``, ``40-60`` or ``>60`` from an age such as ``56``, ``56.5`` or DICOM ``056Y``."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([YMWDymwd]?)\s*", str(value))
    if not m:
        return "unknown"
    age = float(m.group(1)) / {"": 1, "Y": 1, "M": 12, "W": 52, "D": 365}[m.group(2).upper()]
    return AGE_BANDS[0] if age < 40 else AGE_BANDS[1] if age <= 60 else AGE_BANDS[2]


def _norm(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _listing(items: Sequence[str], n: int = 5) -> str:
    items = list(items)
    head = ", ".join(str(i) for i in items[:n])
    return head + (f" and {len(items) - n} more" if len(items) > n else "")


def _values(text) -> list[str] | None:
    if text is None:
        return None
    if isinstance(text, str):
        text = text.split(",")
    out = [str(t).strip() for t in text if str(t).strip()]
    return out or None


class DataNote(UserWarning):
    """A remark about the user's data that is not an error (the CLI prints it as a plain
    ``note:`` line, once)."""

    medunlearn_note = True  # the marker the CLI's warning printer looks for


def note(message: str) -> None:
    """Tell the user something about their data that is not an error: a :class:`DataNote`
    attributed to the first caller outside medunlearn (so Python shows the user's line, not a
    line of this package)."""
    import sys

    package = str(Path(__file__).resolve().parents[1])
    level, frame = 2, sys._getframe(1)
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, DataNote, stacklevel=level)


# -- reading a manifest or a folder -------------------------------------------------------------
def _read_manifest(manifest: Path, opts: dict) -> tuple[list[Row], dict]:
    """Rows of a CSV manifest and the resolved column options."""
    if not manifest.is_file():
        raise DataError(f"The manifest {manifest} does not exist. Give the path of a CSV file "
                        "with one row per image (columns such as path,label,patient_id).")
    try:
        with open(manifest, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            raw = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"The manifest {manifest} is not a readable UTF-8 CSV file ({exc}). Save "
                        "it as CSV (comma-separated, UTF-8) with a header row.") from None
    by_norm = {_norm(c): c for c in columns}

    def pick(option: str, value, candidates: Sequence[str]) -> str | None:
        if value is None or (isinstance(value, str) and value.lower() in ("", "none")):
            return None
        if value == AUTO:
            return next((by_norm[c] for c in candidates if c in by_norm), None)
        if value not in columns:
            raise DataError(
                f"The manifest {manifest} has no column {value!r} (named by {option}); its "
                f"columns are {', '.join(columns) or '(none)'}. Name one of these columns, or add "
                "the column to the CSV.")
        return value

    path_col = pick("--path-column", opts["path_column"], ())
    label_col = pick("--label-column", opts["label_column"], ())
    if path_col is None or label_col is None:
        raise DataError("A manifest needs a path column and a label column; name them with "
                        "--path-column and --label-column.")
    patient_col = pick("--patient-column", opts["patient_column"], PATIENT_COLUMNS)
    split_col = pick("--split-column", opts["split_column"], SPLIT_COLUMNS)
    used = {path_col, label_col, patient_col, split_col}
    meta_opt = opts["metadata_columns"]
    if meta_opt == AUTO or meta_opt is None:
        meta_cols = ([by_norm[c] for c in METADATA_COLUMNS if c in by_norm
                      and by_norm[c] not in used] if meta_opt == AUTO else [])
    else:
        meta_cols = [pick("--metadata-columns", c, ()) for c in _values(meta_opt) or []]
    if not raw:
        raise DataError(f"The manifest {manifest} has a header but no rows. Add one row per "
                        "image.")
    base = manifest.parent
    rows = []
    for n, r in enumerate(raw, start=2):
        # strip ASCII blanks only: str.strip() would also drop NEL or a line separator, so that
        # a patient id 'P1\x85' silently became 'P1'
        r = {(k or "").strip(_BLANKS): (v or "").strip(_BLANKS) for k, v in r.items()}
        where = f"{manifest.name} line {n}"
        if not r[path_col]:
            raise DataError(f"{where} has an empty {path_col!r}. Every row needs the path of its "
                            "image (relative to the CSV's folder).")
        patient = r[patient_col] if patient_col else None
        if patient and (bad := unsafe_characters(patient)):
            raise DataError(f"{where} has a patient id {patient[:40]!r} with control, "
                            f"bidi-override or line-separator character(s) ({', '.join(bad)}). "
                            "Patient ids end up in certificates and deletion requests, so they "
                            "must be plain printable text: fix the id in the CSV.")
        if patient_col and not patient:
            raise DataError(f"{where} has an empty patient id in {patient_col!r}. Fill it in "
                            "(a patient's images must share one id) or pass --patient-column "
                            "none to treat every image as its own patient.")
        rows.append(Row(where, Path(os.path.abspath(base / r[path_col])), r[label_col], patient,
                        r[split_col] if split_col else None,
                        {c: r[c] for c in meta_cols}))
    resolved = {"path_column": path_col, "label_column": label_col, "patient_column": patient_col,
                "split_column": split_col, "metadata_columns": meta_cols}
    return rows, resolved


def _read_folder(root: Path) -> tuple[list[Row], dict]:
    """Rows of ``root/<class>/...`` or ``root/<split>/<class>/...``."""
    if not root.is_dir():
        raise DataError(f"The image folder {root} does not exist. Give a folder with one "
                        "subfolder per class (e.g. normal/ and tb/), optionally inside "
                        "train/, val/ and test/ folders.")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subdirs:
        raise DataError(f"The image folder {root} has no subfolders. Put each class's images in "
                        "a subfolder named after the class.")
    by_split = all(p.name.lower() in SPLIT_NAMES for p in subdirs)
    tops = [(p.name, p) for p in subdirs] if by_split else [(None, root)]
    rows = []
    for split, top in tops:
        classes = sorted(p for p in top.iterdir() if p.is_dir() and not p.name.startswith("."))
        for cls in classes:
            for f in sorted(cls.rglob("*")):
                if f.is_file() and not f.name.startswith("."):
                    rows.append(Row(f"folder {f.relative_to(root)}", f.resolve(), cls.name,
                                    None, split))
    if not rows:
        raise DataError(f"The image folder {root} holds no image files in its class "
                        "subfolders.")
    return rows, {"split_column": "folder" if by_split else None}


# -- building the dataset -------------------------------------------------------------------------
def _hash_files(rows: list[Row]) -> list[str]:
    seen: dict[Path, str] = {}
    dups = []
    for r in rows:
        if r.path in seen:
            dups.append(f"{r.path} ({seen[r.path]} and {r.line})")
        seen[r.path] = r.line
    if dups:
        raise DataError(f"The same file is listed more than once: {_listing(dups, 3)}. List "
                        "each image once (a patient's several images are separate files).")
    missing = [f"{r.path} ({r.line})" for r in rows if not r.path.is_file()]
    if missing:
        raise DataError(f"{len(missing)} image path(s) do not exist: {_listing(missing, 3)}. "
                        "Paths in a manifest are relative to the CSV file's folder; fix the "
                        "path column or restore the files.")
    return [sha256_file(r.path) for r in rows]


def _binary_labels(rows: list[Row], positive, negative, what: str
                   ) -> tuple[np.ndarray, tuple, list[str]]:
    values = [r.label for r in rows]
    found = sorted(set(values))
    blank = [r.line for r in rows if r.label == ""]
    if blank:
        raise DataError(f"{len(blank)} row(s) have an empty label ({_listing(blank, 3)}). Fill "
                        "in every label or remove those rows.")
    positive = _values(positive)
    negative = _values(negative)
    if positive is None:
        if set(found) <= {"0", "1"}:
            positive = ["1"]
        else:
            raise DataError(
                f"Name the {what} that mean disease with --positive-values (e.g. "
                f"--positive-values {found[-1]}); found: {_listing(found, 10)}. Every other "
                "value is negative (declare the negatives with --negative-values to have "
                "unexpected values refused).")
    if negative is not None:
        allowed = set(positive) | set(negative)
        bad = [f"{r.label!r} ({r.line})" for r in rows if r.label not in allowed]
        if bad:
            raise DataError(
                f"{len(bad)} label(s) are outside the declared set {sorted(allowed)}: "
                f"{_listing(bad, 3)}. Correct those rows, or add the value to --positive-values "
                "or --negative-values.")
    labels = np.asarray([1 if v in positive else 0 for v in values], dtype=np.int64)
    for k, name in ((1, "positive (disease)"), (0, "negative")):
        if not (labels == k).any():
            raise DataError(
                f"The {name} class is empty: no image has a {what[:-1]} "
                f"{'in' if k else 'outside'} {positive}; found {_listing(found, 10)}. Check "
                "--positive-values (values are compared as exact text) and the label column.")
    neg_names = negative or [v for v in found if v not in positive]
    names = (",".join(neg_names)[:40] or "negative", ",".join(positive)[:40])
    return labels, names, positive


def _decode_all(rows: list[Row], hashes: list[str], size: int | None, channels: str,
                cache_dir: str | None) -> tuple[np.ndarray, list[dict], Callable[[], object]]:
    """Images (N, C, H, W) and DICOM tags per row, and a function that caches them (called
    once the whole dataset has been checked, so that refused data leave no cache entry)."""
    key = image_cache.cache_key(hashes, size=size, channels=channels, resample="bilinear")
    hit = image_cache.load(cache_dir, key)
    if hit is not None:
        return (*hit, lambda: None)
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        first.setdefault(h, i)
    order = sorted(first.values())

    def work(i: int):
        r = rows[i]
        with open(r.path, "rb") as fh:
            return decode(r.path, fh.read(), size)

    workers = max(1, min(4, os.cpu_count() or 1))
    with warnings.catch_warnings(), ThreadPoolExecutor(workers) as pool:
        # an image just under PIL's hard limit only warns: refuse it too (decode says why)
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        decoded = dict(zip(order, pool.map(work, order), strict=True))
    shapes: dict[tuple, str] = {}
    for i, d in decoded.items():
        shapes.setdefault(d.pixels.shape[:2], rows[i].line)
    if len(shapes) > 1:
        ex = "; ".join(f"{w}x{h} ({line})" for (h, w), line in list(shapes.items())[:3])
        raise DataError(f"The images have different sizes ({ex}) and no size was given. Pass "
                        "--size (e.g. --size 128) to resize every image to one square size.")
    (h, w), = shapes
    if h != w:
        raise DataError(f"The images are {w}x{h} pixels, not square. Pass --size (e.g. --size "
                        "128) to resize them to a square.")
    c = resolve_channels(channels, list(decoded.values()))
    if channels == AUTO and c == 1:
        n_colour = sum(d.colour for d in decoded.values())
        if n_colour:
            note(f"{n_colour} of {len(decoded)} images carry colour (e.g. tinted scans of "
                 "film); they were converted to one grey channel (channels='auto'). Pass "
                 "--channels 3 (channels=3) if colour matters.")
    arrays = {i: to_channels(d, c) for i, d in decoded.items()}
    images = np.stack([arrays[first[h]] for h in hashes])
    tags = [decoded[first[h]].tags for h in hashes]
    return images, tags, lambda: image_cache.save(cache_dir, key, images, tags)


def _split_names(rows: list[Row], column: str | None) -> list[str] | None:
    if column is None:
        return None
    bad = sorted({r.split for r in rows if (r.split or "").lower() not in SPLIT_NAMES})
    if bad:
        raise DataError(f"Unknown split value(s) {_listing([repr(b) for b in bad])} in "
                        f"{column!r}. Use train, val (or valid/validation) and test; or drop the "
                        "split column to have patient-grouped splits made.")
    return [SPLIT_NAMES[r.split.lower()] for r in rows]


def _assign_splits(rows: list[Row], given: list[str] | None, labels: np.ndarray,
                   patients: list[str], hashes: list[str], opts: dict) -> np.ndarray:
    """(N,) split name per row."""
    n = len(rows)
    groups = groups_of(patients, hashes)
    seed = int(opts["split_seed"])
    if given is not None and not opts["resplit"]:
        leaks = leaking(given, patients, hashes)
        if leaks:
            raise DataError(
                f"The given splits share {len(leaks)} patient(s) or identical image file(s) "
                f"({_listing(leaks)}), so evaluation would see images of patients the model "
                "trained on. Pass --resplit (resplit=True) to make new splits grouped by patient "
                "and stratified by label, or fix the split column.")
        split = np.asarray(given, dtype=object)
    else:
        split = np.full(n, "train", dtype=object)
    for name, frac_key in (("test", "test_fraction"), ("val", "val_fraction")):
        if (split == name).any():
            continue
        pool = np.flatnonzero(split == "train")
        # fractions are of all images: carve fraction * n of them from the training rows
        frac = min(0.5, float(opts[frac_key]) * n / max(1, len(pool)))
        mask = holdout(labels[pool], groups[pool], frac, seed + (name == "val"), name)
        split[pool[mask]] = name
    return split


def _build(rows: list[Row], record: dict, *, seed: int, expect: str | None,
           listing: bytes) -> Dataset:
    opts = {**DEFAULTS, **record}
    if str(opts["channels"]) not in CHANNELS:
        resolve_channels(str(opts["channels"]), [])  # raises with the choices
    hashes = _hash_files(rows)
    h = hashlib.sha256(listing)
    for x in hashes:
        h.update(x.encode())
    content = h.hexdigest()
    if expect is not None and expect != content:
        where = record.get("manifest") or record.get("root")
        raise DataError(
            f"The data at {where} changed since this run was made: the manifest or an image "
            f"file differs (content SHA-256 {content[:16]}... now, {expect[:16]}... recorded). "
            "Restore the original files, or train a new model on the changed data.")
    what = "class folders" if record["source"] == "folder" else "label values"
    labels, class_names, positive = _binary_labels(rows, opts.get("positive_values"),
                                                   opts.get("negative_values"), what)
    size = opts.get("size")
    images, tags, save = _decode_all(rows, hashes, size, str(opts["channels"]),
                                     opts.get("cache_dir"))
    # patient ids: column, else DICOM tag, else one patient per image
    pids = [r.patient or t.get("patient_id") for r, t in zip(rows, tags, strict=True)]
    has_patients = any(p is not None for p in pids)
    patients = [p if p is not None else f"file-{hh[:16]}" for p, hh in zip(pids, hashes,
                                                                           strict=True)]
    # metadata: columns, else DICOM tags
    meta_cols = list(opts.get("metadata_columns") or [])
    meta: dict[str, list[str]] = {}
    for col in meta_cols:
        values = [r.meta.get(col, "") for r in rows]
        if _norm(col) == "age":
            meta["age_band"] = [age_band(v) for v in values]
        else:
            meta[col] = values
    for tag in ("sex", "age", "view"):
        present = [t.get(tag) for t in tags]
        if any(present) and not any(_norm(c) == tag for c in meta_cols):
            vals = [v or "" for v in present]
            if tag == "age":
                meta["age_band"] = [age_band(v) for v in vals]
            else:
                meta[tag] = vals
    given = _split_names(rows, opts.get("split_column"))
    split_of = _assign_splits(rows, given, labels, patients, hashes, opts)
    parts = {}
    for s in SPLITS:
        idx = np.flatnonzero(split_of == s)
        counts = np.bincount(labels[idx], minlength=2)
        if len(idx) == 0 or (counts == 0).any():
            raise DataError(
                f"The {s} split is empty or lacks a class ({counts[0]} negative, {counts[1]} "
                f"positive images). Give each split images of both classes, or let medunlearn "
                "make the splits (--resplit, or no split column) with larger --val-fraction / "
                "--test-fraction.")
        parts[s] = {"images": images[idx], "labels": labels[idx],
                    "patient_ids": [patients[i] for i in idx] if has_patients else None,
                    "metadata": {k: [v[i] for i in idx] for k, v in meta.items()},
                    "hashes": [hashes[i] for i in idx]}
    # size stays as given (None: the files' own), so that reloads hit the same cache entry
    record = {**record, "positive_values": positive, "content_sha256": content}
    ds = from_arrays(parts, name=record["name"], num_classes=2, positive_labels=(1,),
                     class_names=class_names, augment=opts["augment"], source=record)
    save()
    for s in SPLITS:
        ds.splits[s].source_index = np.flatnonzero(split_of == s)
        limit = opts.get("train_limit") if s == "train" else opts.get("eval_limit")
        ds.splits[s] = _subset(ds.splits[s], limit, seed + SPLITS.index(s))
    return ds


def _common(record: dict, opts: dict) -> dict:
    """The record of a file source: where it is, the resolved columns and every option."""
    for key in ("size", "train_limit", "eval_limit"):
        if opts.get(key) is not None and int(opts[key]) <= 0:
            raise DataError(f"{key} must be a positive integer, got {opts[key]}.")
    record.update({
        "positive_values": _values(opts.get("positive_values")),
        "negative_values": _values(opts.get("negative_values")),
        "size": None if opts.get("size") is None else int(opts["size"]),
        "channels": str(opts.get("channels", AUTO)),
        "resplit": bool(opts.get("resplit", False)),
        "val_fraction": float(opts.get("val_fraction", DEFAULTS["val_fraction"])),
        "test_fraction": float(opts.get("test_fraction", DEFAULTS["test_fraction"])),
        "split_seed": int(opts.get("split_seed", 0)),
        "augment": opts.get("augment", "basic"),
        "train_limit": opts.get("train_limit"), "eval_limit": opts.get("eval_limit"),
        "cache_dir": opts.get("cache_dir"),
    })
    return record


def _options(path: str | os.PathLike, options: dict) -> dict:
    """``options`` validated as the file options of a :class:`DataSource` (unknown or ill-typed
    options are errors), with every default filled in."""
    from medunlearn.config import from_dict

    return from_dict(DataSource, {**options, "dataset": str(path)},
                     where=f"the options of {path}").file_options()


def _load(kind: str, path: str | os.PathLike, opts: dict, *, seed: int, name: str | None,
          expect_sha256: str | None) -> Dataset:
    if kind == "folder":
        root = Path(path).expanduser().resolve()
        rows, cols = _read_folder(root)
        record = _common({"source": "folder", "root": str(root), "name": name or root.name,
                          **cols}, opts)
        listing = "\n".join(f"{r.split}/{r.label}/{r.path.relative_to(root)}" for r in rows)
        return _build(rows, record, seed=seed, expect=expect_sha256, listing=listing.encode())
    manifest = Path(path).expanduser().resolve()
    rows, cols = _read_manifest(manifest, opts)
    record = _common({"source": "manifest", "manifest": str(manifest),
                      "name": name or manifest.parent.name, **cols}, opts)
    return _build(rows, record, seed=seed, expect=expect_sha256, listing=manifest.read_bytes())


def load_manifest(manifest: str | os.PathLike, *, seed: int = 0, name: str | None = None,
                  expect_sha256: str | None = None, **options) -> Dataset:
    """Load the images a CSV manifest lists (see the module docstring).

    Args:
        manifest: CSV file, one row per image; paths are relative to its folder.
        seed: Seeds the ``train_limit``/``eval_limit`` subsets, as for MedMNIST.
        name: Dataset name (default: the name of the folder holding the CSV).
        expect_sha256: Refuse data whose content hash differs (reloading a run).
        **options: The file options of :class:`~medunlearn.config.DataSource`
            (``path_column``, ``label_column``, ``patient_column``, ``split_column``,
            ``metadata_columns``, ``positive_values``, ``negative_values``, ``size``,
            ``channels``, ``resplit``, ``val_fraction``, ``test_fraction``, ``split_seed``,
            ``augment``, ``train_limit``, ``eval_limit``, ``cache_dir``); their meanings and
            defaults are documented there.

    Raises:
        DataError: any problem with the manifest or its images, naming the fix.
        ConfigError: an unknown or ill-typed option.
    """
    return _load("manifest", manifest, _options(manifest, options), seed=seed, name=name,
                 expect_sha256=expect_sha256)


def load_folder(root: str | os.PathLike, *, seed: int = 0, name: str | None = None,
                expect_sha256: str | None = None, **options) -> Dataset:
    """Load ``root/<class>/*`` (or ``root/<split>/<class>/*``); arguments as
    :func:`load_manifest` (``positive_values`` names class folders; the column options do not
    apply)."""
    return _load("folder", root, _options(root, options), seed=seed, name=name,
                 expect_sha256=expect_sha256)


_RECORD_OPTIONS = ("positive_values", "negative_values", "size", "channels", "resplit",
                   "val_fraction", "test_fraction", "split_seed", "augment", "train_limit",
                   "eval_limit", "cache_dir")


def _moved(path: str, data_root: str | None, folder: bool) -> str:
    if not data_root:
        return path
    root = Path(data_root).expanduser()
    return str(root if folder else root / Path(path).name)


def _from_manifest_record(record: dict, *, seed: int, data_root: str | None = None,
                          **overrides) -> Dataset:
    r = {**record, **overrides}
    return load_manifest(
        _moved(r["manifest"], data_root, False), path_column=r["path_column"],
        label_column=r["label_column"], patient_column=r.get("patient_column"),
        split_column=r.get("split_column"), metadata_columns=r.get("metadata_columns") or None,
        seed=seed, expect_sha256=r.get("content_sha256"), name=r.get("name"),
        **{k: r[k] for k in _RECORD_OPTIONS if k in r})


def _from_folder_record(record: dict, *, seed: int, data_root: str | None = None,
                        **overrides) -> Dataset:
    r = {**record, **overrides}
    return load_folder(_moved(r["root"], data_root, True), seed=seed,
                       expect_sha256=r.get("content_sha256"), name=r.get("name"),
                       **{k: r[k] for k in _RECORD_OPTIONS if k in r})


def load_files(path: str | os.PathLike, *, seed: int = 0, **options) -> Dataset:
    """A CSV manifest (a file) or a class folder (a directory) at ``path``; options as
    :func:`load_manifest`."""
    if Path(path).expanduser().is_dir():
        for key in ("path_column", "label_column", "patient_column", "split_column",
                    "metadata_columns"):
            options.pop(key, None)
        return load_folder(path, seed=seed, **options)
    return load_manifest(path, seed=seed, **options)


def _manifest_source(source: DataSource, *, seed: int) -> Dataset:
    return _load("manifest", source.dataset, source.file_options(), seed=seed, name=None,
                 expect_sha256=None)


def _folder_source(source: DataSource, *, seed: int) -> Dataset:
    return _load("folder", source.dataset, source.file_options(), seed=seed, name=None,
                 expect_sha256=None)


register_source("manifest", _from_manifest_record, _manifest_source)
register_source("folder", _from_folder_record, _folder_source)

__all__ = ["DataNote", "age_band", "load_files", "load_folder", "load_manifest"]
