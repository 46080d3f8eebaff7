"""Forget sets: which training samples a model must forget, chosen reproducibly from a seed.

A forget set is a pair of disjoint index tensors over ``dataset.train`` (forget and retain).
Samples forgotten by an earlier unlearning run (``exclude``) belong to neither: they are not
forgotten again and a retrained reference never sees them.

Spec strings (``--forget``):

* ``random:F`` a fraction ``F`` in (0, 1) of the (non-excluded) training samples;
  ``random:F:stratified`` keeps each class's proportion.
* ``class:K`` every sample with view label ``K``.
* ``positive:F`` / ``negative:F`` a fraction of only the disease-positive (or only the negative)
  samples, using ``dataset.view.positive_labels`` (an error for views without positive labels).
* ``indices:FILE`` one training index (position in ``dataset.train``) per line.
* ``hashes:FILE`` one SHA-256 image hash per line, matched against ``dataset.train.hashes``.
* ``patients:FILE`` one patient id per line: every training image of each patient, and every
  byte-identical copy of those images (``dataset.train.patients`` and ``hashes``).
* ``random-patients:F`` a fraction ``F`` of the training patients (seeded), each with every
  image and every byte-identical copy (on data without patient ids: one patient per image).

In index and hash files, blank lines and text after ``#`` are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medunlearn.data import MedDataset
from medunlearn.errors import ForgetSetError

KINDS = ("random", "class", "positive", "negative", "indices", "hashes", "patients",
         "random-patients")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ForgetSet:
    """A resolved forget set.

    Attributes:
        forget: (F,) int64 sorted training-split indices to forget.
        retain: (R,) int64 sorted training-split indices to keep (excludes ``forget`` and the
            excluded samples).
        spec: The spec string it came from (``indices:<n given>`` for a Python sequence).
        excluded_count: How many training samples were excluded (forgotten earlier).
    """

    forget: torch.Tensor
    retain: torch.Tensor
    spec: str
    excluded_count: int

    def __len__(self) -> int:
        return int(self.forget.numel())


def _fraction(text: str, spec: str) -> float:
    try:
        frac = float(text)
    except ValueError:
        raise ForgetSetError(
            f"Forget spec {spec!r}: {text!r} is not a number. Give a fraction between 0 and 1, "
            "e.g. random:0.2."
        ) from None
    if not 0.0 < frac < 1.0:
        raise ForgetSetError(
            f"Forget spec {spec!r}: the fraction must lie strictly between 0 and 1, got {frac}. "
            "To forget a whole class use class:K; for an explicit list use indices:FILE."
        )
    return frac


def _read_lines(path_text: str, spec: str) -> list[tuple[int, str]]:
    path = Path(path_text).expanduser()
    if not path_text or not path.is_file():
        raise ForgetSetError(
            f"Forget spec {spec!r}: the file {path_text!r} does not exist. Give the path of a text "
            "file with one entry per line."
        )
    out = []
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                text = line.split("#", 1)[0].strip()
                if text:
                    out.append((n, text))
    except UnicodeDecodeError:
        raise ForgetSetError(f"Forget spec {spec!r}: {path_text} is not UTF-8 text; give a text "
                             "file with one entry per line.") from None
    return out


def _sample(pool: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    k = int(round(frac * len(pool)))
    return rng.choice(pool, size=k, replace=False) if k > 0 else pool[:0]


def _check_indices(values: Iterable, n: int, where: str) -> np.ndarray:
    out = []
    for pos, v in enumerate(values):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
            if isinstance(v, str) and re.fullmatch(r"[+-]?\d+", v.strip()):
                v = int(v)
            elif isinstance(v, (float, np.floating)) and float(v).is_integer():
                v = int(v)
            else:
                raise ForgetSetError(
                    f"{where}: entry {pos + 1} ({v!r}) is not an integer index. Give positions in "
                    f"the training split, 0 to {n - 1}."
                )
        v = int(v)
        if not 0 <= v < n:
            raise ForgetSetError(
                f"{where}: index {v} is out of range; the training split has {n} samples "
                f"(valid indices 0 to {n - 1}). Indices are positions in the training split as "
                "loaded (after train_limit), as listed in the run's manifest.csv."
            )
        out.append(v)
    arr = np.asarray(out, dtype=np.int64)
    uniq, counts = np.unique(arr, return_counts=True)
    if (counts > 1).any():
        dup = uniq[counts > 1][:5].tolist()
        raise ForgetSetError(
            f"{where}: index/indices {dup} are listed more than once. List each sample once."
        )
    return arr


def _indices_from_file(path_text: str, n: int, spec: str) -> np.ndarray:
    values = []
    for line_no, text in _read_lines(path_text, spec):
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ForgetSetError(
                f"Forget spec {spec!r}: line {line_no} ({text!r}) is not an integer index. The "
                "file must hold one training-split index per line."
            )
        values.append(int(text))
    return _check_indices(values, n, f"Forget spec {spec!r}")


def _indices_from_hashes(path_text: str, dataset: MedDataset, spec: str) -> np.ndarray:
    wanted: list[str] = []
    for line_no, text in _read_lines(path_text, spec):
        h = text.lower()
        if not _HEX64.match(h):
            raise ForgetSetError(
                f"Forget spec {spec!r}: line {line_no} ({text!r}) is not a SHA-256 hex digest "
                "(64 hexadecimal characters). The file must hold one image hash per line."
            )
        wanted.append(h)
    return hash_indices(dataset, wanted, where=f"Forget spec {spec!r}")


def hash_indices(dataset: MedDataset, wanted: Sequence[str], *, where: str = "Forget set"
                 ) -> np.ndarray:
    """Training indices of the images with these SHA-256 hashes, every identical copy included.

    Raises:
        ForgetSetError: a malformed, repeated or unknown hash (listed).
    """
    wanted = [str(h).strip().lower() for h in wanted]
    bad = [h for h in wanted if not _HEX64.match(h)]
    if bad:
        raise ForgetSetError(f"{where}: {bad[0][:70]!r} is not a SHA-256 hex digest (64 "
                             "hexadecimal characters).")
    seen, dups = set(), []
    for h in wanted:
        if h in seen:
            dups.append(h)
        seen.add(h)
    if dups:
        raise ForgetSetError(
            f"{where}: hash(es) {', '.join(d[:12] + '...' for d in dups[:5])} are "
            "listed more than once. List each image hash once (a hash already selects every "
            "identical image)."
        )
    by_hash: dict[str, list[int]] = {}
    for i, h in enumerate(dataset.train.hashes):
        by_hash.setdefault(h, []).append(i)
    unknown = [h for h in wanted if h not in by_hash]
    if unknown:
        first = ", ".join(unknown[:3])
        raise ForgetSetError(
            f"{where}: {len(unknown)} of {len(wanted)} hash(es) match no training "
            f"image of {dataset.name} (first: {first}). Hashes are SHA-256 of the stored "
            "image bytes, as in a run's manifest.csv; check the dataset, size and train_limit."
        )
    return np.asarray(sorted(i for h in wanted for i in by_hash[h]), dtype=np.int64)


def _indices_from_patients(path_text: str, dataset: MedDataset, spec: str) -> np.ndarray:
    wanted = [text for _, text in _read_lines(path_text, spec)]
    return patient_indices(dataset, wanted, where=f"Forget spec {spec!r}")


def patient_indices(dataset: MedDataset, patients: Sequence[str], *, where: str = "Forget set"
                    ) -> np.ndarray:
    """Training indices of every image of these patients and every byte-identical copy.

    Raises:
        ForgetSetError: no patient ids in the data, or unknown patients (listed).
    """
    wanted = list(dict.fromkeys(str(p).strip() for p in patients))
    if not wanted:
        raise ForgetSetError(f"{where}: the list of patients to forget is empty.")
    train = dataset.train
    if train.patient_ids is None:
        raise ForgetSetError(
            f"{where}: {dataset.name} has no patient ids (one patient per image), so "
            "no patient can be named. Load the data with a patient column (--patient-column) or "
            "from DICOM files with PatientID, or forget images with hashes:FILE.")
    patients = train.patients
    chosen = np.flatnonzero(np.isin(patients, np.asarray(wanted, dtype=object)))
    unknown = sorted(set(wanted) - set(patients[chosen].tolist()))
    if unknown:
        elsewhere = {p for s in ("val", "test") if dataset.splits[s].patient_ids is not None
                     for p in dataset.splits[s].patient_ids.tolist()} & set(unknown)
        note = (f" ({len(elsewhere)} of them only in the validation/test split, which the "
                "model never trained on)" if elsewhere else "")
        raise ForgetSetError(
            f"{where}: {len(unknown)} of {len(wanted)} patient id(s) have no "
            f"training image in {dataset.name}: {', '.join(unknown[:20])}"
            f"{' ...' if len(unknown) > 20 else ''}{note}. Check the ids against the patient "
            "column of the data the model was trained on.")
    hashes = train.hashes
    copies = {hashes[i] for i in chosen}
    return np.flatnonzero([h in copies for h in hashes]).astype(np.int64)


def select_forget(dataset: MedDataset, *, forget: str | Sequence[int], seed: int = 0,
                  exclude: Iterable[int] | None = None) -> ForgetSet:
    """Resolve a forget spec into forget and retain index sets over ``dataset.train``.

    Random selections (``random``, ``positive``, ``negative``) are drawn from the non-excluded
    samples with ``numpy.random.default_rng(seed)``, so the same seed gives the same set.
    ``hashes:FILE`` selects *every* training image whose hash matches; datasets with identical
    images (PneumoniaMNIST's training split holds 18 images stored twice) therefore forget all
    copies of a requested image, as a deletion request requires. Explicit selections
    (``class``, ``indices``, ``hashes``, a sequence) drop samples already excluded.

    Args:
        dataset: The data the model was trained on.
        forget: A spec string (see the module docstring) or a sequence of training indices.
        seed: Seeds random selections.
        exclude: Training indices forgotten earlier; in neither the forget nor the retain set.

    Returns:
        The resolved :class:`ForgetSet`.

    Raises:
        ForgetSetError: malformed spec, fraction outside (0, 1), bad or unknown entries, a view
            without positive labels for ``positive``/``negative``, or an empty selection.
    """
    n = len(dataset.train)
    labels = dataset.train.labels.numpy()
    excl = np.zeros(n, dtype=bool)
    if exclude is not None:
        values = exclude.tolist() if isinstance(exclude, torch.Tensor) else list(exclude)
        ex = _check_indices(list(dict.fromkeys(values)), n, "exclude")  # repeats are harmless
        excl[ex] = True
    pool = np.flatnonzero(~excl)
    rng = np.random.default_rng(seed)

    if not isinstance(forget, str):
        if isinstance(forget, torch.Tensor):
            forget = forget.tolist()
        chosen = _check_indices(list(forget), n, "Forget indices")
        spec = f"indices:<{len(chosen)} given>"
        chosen = chosen[~excl[chosen]]
    else:
        spec = forget.strip()
        kind, _, rest = spec.partition(":")
        kind = kind.lower()
        if kind not in KINDS or not rest:
            raise ForgetSetError(
                f"Unknown forget spec {spec!r}. Use one of random:0.2, random:0.2:stratified, "
                "class:K, positive:0.3, negative:0.3, indices:FILE, hashes:FILE, patients:FILE, "
                "random-patients:0.1."
            )
        if kind == "random":
            frac_text, _, mode = rest.partition(":")
            frac = _fraction(frac_text, spec)
            if mode not in ("", "stratified"):
                raise ForgetSetError(
                    f"Forget spec {spec!r}: unknown mode {mode!r}; the only mode is "
                    "'stratified' (random:0.2:stratified)."
                )
            if mode == "stratified":
                parts = [_sample(pool[labels[pool] == k], frac, rng)
                         for k in range(dataset.num_classes)]
                chosen = np.concatenate(parts)
            else:
                chosen = _sample(pool, frac, rng)
        elif kind == "class":
            try:
                k = int(rest)
            except ValueError:
                k = None
            if k is None or not 0 <= k < dataset.num_classes:
                raise ForgetSetError(
                    f"Forget spec {spec!r}: the class must be an integer label between 0 and "
                    f"{dataset.num_classes - 1} of the {dataset.view.kind} view (classes: "
                    f"{', '.join(f'{i} {c}' for i, c in enumerate(dataset.view.class_names))})."
                )
            chosen = np.flatnonzero((labels == k) & ~excl)
        elif kind in ("positive", "negative"):
            frac = _fraction(rest, spec)
            positives = dataset.view.positive_labels
            if not positives:
                raise ForgetSetError(
                    f"Forget spec {spec!r}: the {dataset.view.kind} view of {dataset.name} "
                    "has "
                    "no disease-positive labels. Train with --view binary or --positive-classes, "
                    "or use random:F or class:K."
                )
            is_pos = np.isin(labels, np.asarray(positives))
            sub = pool[is_pos[pool]] if kind == "positive" else pool[~is_pos[pool]]
            chosen = _sample(sub, frac, rng)
        elif kind == "indices":
            chosen = _indices_from_file(rest, n, spec)
            chosen = chosen[~excl[chosen]]
        elif kind == "patients":
            chosen = _indices_from_patients(rest, dataset, spec)
            chosen = chosen[~excl[chosen]]
        elif kind == "random-patients":
            frac = _fraction(rest, spec)
            pids = dataset.train.patients
            people = np.asarray(sorted(set(pids[pool].tolist())), dtype=object)
            k = max(1, round(frac * len(people)))
            picked = people[np.sort(rng.choice(len(people), size=min(k, len(people)),
                                               replace=False))]
            chosen = patient_indices(dataset, picked.tolist(), where=f"Forget spec {spec!r}") \
                if dataset.train.patient_ids is not None else \
                np.flatnonzero(np.isin(pids, picked))
            chosen = chosen[~excl[chosen]]
        else:
            chosen = _indices_from_hashes(rest, dataset, spec)
            chosen = chosen[~excl[chosen]]

    if len(chosen) == 0:
        why = (f"all selected samples were already forgotten ({int(excl.sum())} excluded)"
               if excl.any() else "it selects no training sample")
        raise ForgetSetError(
            f"The forget set {spec!r} is empty: {why}. Choose a larger fraction, another class, "
            "or a file that lists samples still in the model."
        )
    forget_mask = np.zeros(n, dtype=bool)
    forget_mask[chosen] = True
    retain = np.flatnonzero(~forget_mask & ~excl)
    return ForgetSet(
        forget=torch.from_numpy(np.flatnonzero(forget_mask)).long(),
        retain=torch.from_numpy(retain).long(), spec=spec, excluded_count=int(excl.sum()),
    )


__all__ = ["KINDS", "ForgetSet", "hash_indices", "patient_indices", "select_forget"]
