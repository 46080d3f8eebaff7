"""Bias checks (Nasirigerdeh et al.): is unlearning uneven across easy/hard samples, classes or
patient subgroups?

Samples are grouped by difficulty (terciles of the *original* model's per-sample loss: easy =
lowest loss), by class, or by any column of a metadata CSV (sex, site, ...) keyed by sample index
or SHA-256; each group's accuracy (and, for clinical views, FNR) is then reported per model.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medunlearn.errors import ConfigError, DataError

DIFFICULTY_NAMES = ("easy", "medium", "hard")
METADATA_KEYS = ("index", "sha256")


def difficulty_groups(losses: np.ndarray, n_groups: int = 3) -> np.ndarray:
    """Group id ``(N,)`` in ``0..n_groups-1`` by rank of ``losses`` (0 = lowest loss = easiest).

    Groups have sizes differing by at most one (ties broken by position, so the split is
    deterministic).
    """
    losses = np.asarray(losses, dtype=np.float64)
    n = len(losses)
    order = np.argsort(losses, kind="stable")
    groups = np.empty(n, dtype=np.int64)
    groups[order] = (np.arange(n) * n_groups) // max(n, 1)
    return groups


def group_accuracy(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                   names: Sequence[str] | Mapping | None = None) -> dict:
    """Accuracy and size of each group: ``{name: {"accuracy": a, "n": n}}``. Higher is better;
    the spread between groups (``max - min``) is the bias measure (lower is better)."""
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    groups = np.asarray(groups)
    correct = probs.argmax(axis=1) == labels
    out = {}
    for g in sorted(set(groups.tolist()), key=str):
        m = groups == g
        name = names[g] if names is not None else str(g)
        out[str(name)] = {"accuracy": float(correct[m].mean()), "n": int(m.sum())}
    return out


def accuracy_spread(table: Mapping[str, Mapping]) -> float:
    """``max - min`` of group accuracies (groups with at least one sample). Lower is better."""
    vals = [v["accuracy"] for v in table.values() if v.get("n", 0) > 0]
    return float(max(vals) - min(vals)) if len(vals) > 1 else float("nan")


def read_metadata(path: str | os.PathLike, *, key: str = "index") -> tuple[list[str], dict]:
    """Read a metadata CSV keyed by ``index`` (training-split index, or ``split`` + ``index``
    when the CSV has a ``split`` column) or ``sha256``.

    Returns:
        ``(columns, rows)``: the attribute column names and ``{key_value: {column: value}}``;
        with ``split`` present index keys become ``"split:index"``.

    Raises:
        ConfigError: unknown key kind, missing key column, duplicate keys, no attribute columns.
        DataError: the file cannot be read.
    """
    if key not in METADATA_KEYS:
        raise ConfigError(f"--metadata-key must be one of {METADATA_KEYS}, got {key!r}.")
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = list(reader)
    except OSError as exc:
        raise DataError(f"Cannot read the metadata file {path}: {exc}.") from exc
    if key not in header:
        other = "sha256" if key == "index" else "index"
        raise ConfigError(
            f"The metadata file {path} has no {key!r} column (columns: "
            f"{', '.join(header) or 'none'}). Add one, or pass --metadata-key {other} if the file "
            "is keyed the other way."
        )
    has_split = key == "index" and "split" in header
    skip = {"index", "sha256", "split", "label"}
    columns = [c for c in header if c not in skip]
    if not columns:
        raise ConfigError(f"The metadata file {path} has no attribute column besides "
                          f"{', '.join(sorted(set(header) & skip))}; add e.g. a 'sex' column.")
    table: dict = {}
    for i, row in enumerate(rows, start=2):
        k = (row.get(key) or "").strip()
        if key == "sha256":
            k = k.lower()
        else:
            try:
                k = str(int(k))
            except ValueError:
                raise ConfigError(f"{path} line {i}: index {k!r} is not an integer.") from None
            if has_split:
                k = f"{(row.get('split') or '').strip()}:{k}"
        if k in table:
            raise ConfigError(f"{path} line {i}: key {k} appears more than once.")
        table[k] = {c: (row.get(c) or "").strip() for c in columns}
    return columns, table


def match_metadata(table: Mapping[str, Mapping], keys_by_split: Mapping[str, Sequence[str]], *,
                   key: str, path: str = "metadata") -> dict[str, list[str | None]]:
    """Look each sample up in a metadata table.

    Args:
        table: From :func:`read_metadata`.
        keys_by_split: For each split, the key of each of its samples (index keys as
            ``"split:index"`` strings; sha256 keys as hex digests).
        key: ``index`` or ``sha256``.
        path: File name for messages.

    Returns:
        For each split, the matching row key of each sample (``None`` when absent).

    Raises:
        ConfigError: the table holds keys that match no sample of any split.
    """
    known: set[str] = set()
    out: dict[str, list[str | None]] = {}
    plain_index = key == "index" and not any(":" in k for k in table)
    for split, keys in keys_by_split.items():
        matched = []
        for k in keys:
            look = k.split(":", 1)[1] if plain_index else k
            if plain_index and not k.startswith("train:"):
                matched.append(None)  # plain indices refer to the training split
                continue
            if look in table:
                matched.append(look)
                known.add(look)
            else:
                matched.append(None)
        out[split] = matched
    unknown = sorted(set(table) - known)
    if unknown:
        where = ("training-split indices" if plain_index else
                 "split:index pairs" if key == "index" else "image SHA-256 hashes")
        raise ConfigError(
            f"{len(unknown)} key(s) in {path} match no evaluated sample ({where}), e.g. "
            f"{', '.join(unknown[:3])}. Check that the file belongs to this dataset (index keys "
            "are positions in the training split unless a 'split' column is given; sha256 keys "
            "are in the run's manifest.csv)."
        )
    return out
