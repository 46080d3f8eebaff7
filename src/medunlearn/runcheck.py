"""Is a run folder the right comparison for an unlearned model? (``evaluate --reference`` and
``--original``.)

Only ``config.json``, ``forget.csv``, ``excluded.csv`` and the weights' SHA-256 are read, so a
wrong folder is refused before any data or model is loaded.

* The **reference** must be an exact retrain of the *same* original without the *same* images:
  an unlearning run with method ``retrain``, unlearned from the model the evaluated run was
  unlearned from, with the same forget set and the same earlier exclusions.
* The **original** must be the model the evaluated run was unlearned from (weights hash, or the
  recorded folder when no hash was recorded).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from medunlearn.errors import CheckpointError

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"


def _config(folder: Path) -> dict | None:
    from medunlearn.io import read_json

    try:
        cfg = read_json(folder / CONFIG_FILE)
    except (OSError, ValueError):
        return None  # evaluate_run reports an unreadable folder in its own words
    return cfg if isinstance(cfg, dict) else None


def _hashes(path: Path) -> list[str] | None:
    """The sha256 column of a forget.csv / excluded.csv (None: no such file)."""
    if not path.is_file():
        return None
    try:
        with open(path, newline="") as fh:
            return sorted((row.get("sha256") or row.get("index") or "").strip()
                          for row in csv.DictReader(fh))
    except (OSError, csv.Error, UnicodeDecodeError):
        return None


def _same_original(a: dict, b: dict) -> bool | None:
    """Whether two unlearn configs name the same original (None: not recorded)."""
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


def reference_recipe(model_cfg: dict) -> str:
    """The command that makes the right reference for an unlearned run."""
    orig = (model_cfg.get("original") or {}).get("path") or "ORIGINAL"
    spec = (model_cfg.get("forget") or {}).get("spec") or "SAME_SPEC"
    seed = model_cfg.get("unlearn_seed", (model_cfg.get("method") or {}).get("seed", 0))
    return (f"medunlearn unlearn --model {orig} --method retrain --forget {spec} --seed {seed} "
            "--out RETRAIN_DIR")


def check_reference(model: str | os.PathLike, reference: str | os.PathLike) -> None:
    """Refuse a ``--reference`` that is not an exact retrain of ``model``'s original without
    ``model``'s forget set.

    Raises:
        CheckpointError: the reference is another kind of run, was retrained from another
            original, or without another set of images (the message gives the command that
            makes the right one).
    """
    model, reference = Path(model), Path(reference)
    mcfg, rcfg = _config(model), _config(reference)
    if mcfg is None or rcfg is None or mcfg.get("kind") != "unlearn":
        return  # nothing to compare: evaluate_run explains what is wrong with the folder
    fix = (f"Make the reference by retraining the same original without the same images: "
           f"'{reference_recipe(mcfg)}', then pass that folder as --reference.")
    if rcfg.get("kind") != "unlearn" or (rcfg.get("method") or {}).get("name") != "retrain":
        raise CheckpointError(
            f"--reference {reference} is not a retrained reference: its config.json says it is "
            f"{_describe(rcfg)}. The reference must be the original model retrained from scratch "
            f"without the forget set, or every comparison with it is meaningless. {fix}")
    if _same_original(mcfg.get("original") or {}, rcfg.get("original") or {}) is False:
        raise CheckpointError(
            f"--reference {reference} was retrained from a different original model than "
            f"{model} was unlearned from (config.json 'original' differs: "
            f"{(rcfg.get('original') or {}).get('path')} vs "
            f"{(mcfg.get('original') or {}).get('path')}). {fix}")
    for name, what in (("forget.csv", "forget set"), ("excluded.csv", "earlier exclusions")):
        a, b = _hashes(model / name), _hashes(reference / name)
        if name == "forget.csv" and (a is None or b is None):
            continue  # evaluate_run reports a missing forget.csv itself
        if (a or []) != (b or []):
            raise CheckpointError(
                f"--reference {reference} was retrained without a different {what} than "
                f"{model} ({len(b or [])} vs {len(a or [])} images in {name}). {fix}")


def check_original(model: str | os.PathLike, original: str | os.PathLike) -> str | None:
    """A warning when ``--original`` is not the model ``model`` was unlearned from, else None."""
    from medunlearn.io import sha256_file

    model, original = Path(model), Path(original)
    mcfg = _config(model)
    if mcfg is None or mcfg.get("kind") != "unlearn" or not (original / WEIGHTS_FILE).is_file():
        return None
    rec = mcfg.get("original") or {}
    if rec.get("weights_sha256"):
        same = sha256_file(original / WEIGHTS_FILE) == rec["weights_sha256"]
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
