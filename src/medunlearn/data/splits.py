"""Patient-grouped, stratified splits for file sources.

Images are grouped so that no group straddles two splits: two images belong to the same group
when they share a patient id *or* are byte-identical files (the same SHA-256), so that neither a
patient nor a copied image can leak from training into evaluation. Groups are assigned with
scikit-learn's ``StratifiedGroupKFold`` (shuffled with a fixed seed): the held-out part is the
one of about ``1 / fraction`` folds closest to the wanted size, so fractions are approximate.
Patients with many images (more than a quarter of the held-out split) stay in training.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medunlearn.errors import DataError

#: groups up to this many images may always be held out
PIN_MIN = 4


def groups_of(patients: Sequence[str], hashes: Sequence[str]) -> np.ndarray:
    """(N,) int group of each image: connected components of shared patients and hashes."""
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, h in zip(patients, hashes, strict=True):
        a, b = find("p:" + p), find("h:" + h)
        if a != b:
            parent[max(a, b)] = min(a, b)
    roots = [find("p:" + p) for p in patients]
    _, inverse = np.unique(np.asarray(roots, dtype=object), return_inverse=True)
    return inverse.astype(np.int64)


def leaking(split_of: Sequence[str], patients: Sequence[str], hashes: Sequence[str]
            ) -> list[str]:
    """Patient ids (or ``file <sha>`` for copied images) that occur in more than one split."""
    seen: dict[str, set[str]] = {}
    for s, p, h in zip(split_of, patients, hashes, strict=True):
        seen.setdefault("patient " + p, set()).add(s)
        seen.setdefault("file " + h[:12], set()).add(s)
    return sorted(k for k, v in seen.items() if len(v) > 1)


def holdout(labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int,
            what: str) -> np.ndarray:
    """Boolean mask of a patient-grouped, label-stratified held-out part of about ``fraction``.

    A group larger than a quarter of the wanted size (and than :data:`PIN_MIN` images) stays
    out of it, so that one patient with many images cannot make up most of a validation or test
    split (NIH's patient 181 has 66 of 1,000 images)."""
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < fraction < 1.0:
        raise DataError(f"The {what} fraction must lie strictly between 0 and 1, got "
                        f"{fraction}.")
    target = fraction * len(labels)
    sizes = np.bincount(groups)
    free = np.flatnonzero(sizes[groups] <= max(PIN_MIN, 0.25 * target))
    if len(free) < target:
        free = np.arange(len(labels))
    sub_labels, sub_groups = labels[free], groups[free]
    n_groups = len(np.unique(sub_groups))
    k = max(2, int(round(len(free) / target)))
    if n_groups < k:
        raise DataError(f"Cannot carve a {what} split of {fraction:.0%}: only {n_groups} "
                        f"patients (groups of images) are available and {k} are needed. Add "
                        "images, or give the split in the manifest's split column.")
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    folds = [held for _, held in cv.split(np.zeros(len(free)), sub_labels, sub_groups)]
    # sklearn puts the largest, most skewed groups into the first folds; hold out the fold
    # closest to the wanted size (ties: the seed decides)
    tie = np.random.default_rng(seed).permutation(k)
    held = folds[min(range(k), key=lambda i: (abs(len(folds[i]) - target), tie[i]))]
    mask = np.zeros(len(labels), dtype=bool)
    mask[free[held]] = True
    return mask


__all__ = ["groups_of", "holdout", "leaking"]
