"""Comparability of run folders: is a run the right reference or original for another?

Every path that compares models checks here (``evaluate`` on the CLI, the pipeline, study cells,
the registry, ``tune``), from ``config.json``, the index CSVs and the weights' SHA-256 only, so a
wrong folder is refused before any data or model is loaded.

* The **reference** must be an exact retrain of the *same* original without the *same* images:
  an unlearning run with method ``retrain``, unlearned from the same original, with the same
  forget set and the same earlier exclusions (:func:`check_reference`,
  :func:`check_tuning_reference`; both end in :func:`_check_retrain_of`, the one place that
  decides whether the reference forgot the same set).
* The **original** should be the model the evaluated run was unlearned from (weights hash, or
  the recorded folder when no hash was recorded): :func:`check_original` says when it is not.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from medunlearn.checkpoint import (
    CONFIG_FILE,
    EXCLUDED_FILE,
    FORGET_FILE,
    MODEL_FILE,
    read_indices,
)
from medunlearn.errors import CheckpointError, MedUnlearnError
from medunlearn.fileio import read_json, sha256_file


def _config(folder: Path) -> dict | None:
    try:
        cfg = read_json(folder / CONFIG_FILE)
    except (OSError, ValueError):
        return None  # loading the run reports an unreadable folder in its own words
    return cfg if isinstance(cfg, dict) else None


def _indices(path: Path) -> list[int] | None:
    """The sorted index column of an index CSV (None: no such file, or unreadable: loading
    the run reports that)."""
    if not path.is_file():
        return None
    try:
        return sorted(read_indices(path))
    except MedUnlearnError:
        return None


def _same_original(a: dict, b: dict) -> bool | None:
    """Whether two unlearn configs' ``original`` records name the same model (None: not
    recorded)."""
    ha, hb = a.get("weights_sha256"), b.get("weights_sha256")
    if ha and hb:
        return ha == hb
    pa, pb = a.get("path"), b.get("path")
    if pa and pb:
        return Path(pa).resolve() == Path(pb).resolve()
    return None


def _describe(cfg: dict) -> str:
    if cfg.get("kind") == "unlearn":
        return f"an unlearning run made with method '{(cfg.get('method') or {}).get('name')}'"
    if cfg.get("kind") == "train":
        return "a trained model (no images forgotten)"
    return f"a run of kind {cfg.get('kind')!r}"


def reference_recipe(original: str | os.PathLike | None, spec: str | None,
                     seed: int | None) -> str:
    """The command that makes the right reference for an original and a forget set."""
    return (f"medunlearn unlearn --model {original or 'ORIGINAL'} --method retrain --forget "
            f"{spec or 'SAME_SPEC'} --seed {0 if seed is None else seed} --out RETRAIN_DIR")


def _check_retrain_of(reference: Path, rcfg: dict, *, original: dict, forget: list[int] | None,
                      excluded: list[int], what: str, fix: str) -> None:
    """Refuse ``reference`` unless it is a ``retrain`` run of ``original`` (an ``original``
    record: weights_sha256 and/or path) without exactly ``forget`` (None: not known here) and
    with exactly the earlier exclusions ``excluded``."""
    if rcfg.get("kind") != "unlearn" or (rcfg.get("method") or {}).get("name") != "retrain":
        raise CheckpointError(
            f"--reference {reference} is not a retrained reference: its config.json says it is "
            f"{_describe(rcfg)}. The reference must be the original model retrained from scratch "
            f"without the forget set, or every comparison with it is meaningless. {fix}")
    ref_original = rcfg.get("original") or {}
    if _same_original(original, ref_original) is False:
        raise CheckpointError(
            f"--reference {reference} was retrained from a different original model than "
            f"{what} (config.json 'original' differs: {ref_original.get('path')} vs "
            f"{original.get('path')}). {fix}")
    ref_forget = _indices(reference / FORGET_FILE)
    if forget is not None and ref_forget is not None and ref_forget != sorted(forget):
        raise CheckpointError(
            f"--reference {reference} forgot a different set of samples than {what} "
            f"({len(ref_forget)} vs {len(forget)} images in {FORGET_FILE}). {fix}")
    ref_excluded = _indices(reference / EXCLUDED_FILE) or []
    if ref_excluded != sorted(excluded):
        raise CheckpointError(
            f"--reference {reference} was retrained with different earlier exclusions than "
            f"{what} ({len(ref_excluded)} vs {len(excluded)} images in {EXCLUDED_FILE}). {fix}")


def check_reference(model: str | os.PathLike, reference: str | os.PathLike) -> None:
    """Refuse a ``--reference`` that is not an exact retrain of ``model``'s original without
    ``model``'s forget set and earlier exclusions.

    Raises:
        CheckpointError: the reference is another kind of run, was retrained from another
            original, or without another set of images (the message gives the command that
            makes the right one).
    """
    model, reference = Path(model), Path(reference)
    mcfg, rcfg = _config(model), _config(reference)
    if mcfg is None or rcfg is None or mcfg.get("kind") != "unlearn":
        return  # nothing to compare: loading the runs explains what is wrong with the folder
    recipe = reference_recipe((mcfg.get("original") or {}).get("path"),
                              (mcfg.get("forget") or {}).get("spec"),
                              mcfg.get("unlearn_seed", (mcfg.get("method") or {}).get("seed", 0)))
    fix = (f"Make the reference by retraining the same original without the same images: "
           f"'{recipe}', then pass that folder as --reference.")
    _check_retrain_of(reference, rcfg, original=mcfg.get("original") or {},
                      forget=_indices(model / FORGET_FILE),
                      excluded=_indices(model / EXCLUDED_FILE) or [], what=str(model), fix=fix)


def check_tuning_reference(original: str | os.PathLike, reference: str | os.PathLike, *,
                           forget: Sequence[int], excluded: Sequence[int], spec: str,
                           seed: int) -> None:
    """Refuse a ``tune --reference`` that is not an exact retrain of ``original`` without the
    forget set being tuned on (``forget``, from ``spec`` and ``seed``) and ``excluded``.

    Raises:
        CheckpointError: as :func:`check_reference`.
    """
    original, reference = Path(original), Path(reference)
    rcfg = _config(reference)
    if rcfg is None:
        return  # loading the reference reports an unreadable folder
    fix = (f"Retrain the reference with the same --forget and --seed: "
           f"'{reference_recipe(original, spec, seed)}'.")
    _check_retrain_of(reference, rcfg,
                      original={"weights_sha256": sha256_file(original / MODEL_FILE),
                                "path": str(original.resolve())},
                      forget=[int(i) for i in forget], excluded=[int(i) for i in excluded],
                      what=f"{spec!r} with seed {seed}", fix=fix)


def check_original(model: str | os.PathLike, original: str | os.PathLike) -> str | None:
    """A warning when ``original`` is not the model ``model`` was unlearned from, else None."""
    model, original = Path(model), Path(original)
    mcfg = _config(model)
    if mcfg is None or mcfg.get("kind") != "unlearn" or not (original / MODEL_FILE).is_file():
        return None
    rec = mcfg.get("original") or {}
    if rec.get("weights_sha256"):
        same = sha256_file(original / MODEL_FILE) == rec["weights_sha256"]
    elif rec.get("path"):
        same = Path(rec["path"]).resolve() == original.resolve()
    else:
        return None
    if same:
        return None
    return (f"--original {original} is not the model {model} was unlearned from (config.json "
            f"records {rec.get('path')}); the comparisons 'vs original' (FNR, Global Risk, test "
            "accuracy drop) and the gate checks built on them describe another model. Pass "
            f"--original {rec.get('path')} unless you mean this.")


__all__ = ["check_original", "check_reference", "check_tuning_reference", "reference_recipe"]
