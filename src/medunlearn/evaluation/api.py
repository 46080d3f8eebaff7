"""``evaluate_run``: every evaluation of an unlearned model in one call.

The unlearned model's run folder names its forget set (``forget.csv``); the original model and
the retrained reference are optional. Each model's logits and features are computed once
(:mod:`medunlearn.evaluation.outputs`) and passed to pure metric functions. The result is a
nested dict (strict JSON once written with :func:`medunlearn.io.atomic_write_json`):

* ``models.{model,original,reference}``: ``utility``, ``clinical.{test,forget}``, ``privacy``,
  ``representation``, ``calibration`` of each model on the same forget/retain/test samples;
* ``changes.vs_original`` / ``changes.vs_reference``: model minus comparison for scalar metrics;
* ``fidelity``: average gap (percentage points), agreement and KL to the reference;
* ``representation``: CKA with the reference and the original;
* ``bias``: difficulty terciles, per class, per metadata subgroup;
* ``efficiency``: run times and the ratio to retraining;
* ``directions``: metric name -> "higher" / "lower" / "reference" / "info";
* ``skipped``: section -> why it was not computed.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunlearn.checkpoint import Run, check_compatible, load_run, load_run_and_data
from medunlearn.config import as_config
from medunlearn.data import Dataset, data_identity
from medunlearn.errors import CheckpointError, ConfigError, ForgetSetError
from medunlearn.evaluation import bias as B
from medunlearn.evaluation.calibration import expected_calibration_error
from medunlearn.evaluation.clinical import DEFAULT_C_FN, DEFAULT_C_FP, clinical_metrics
from medunlearn.evaluation.directions import DIRECTIONS
from medunlearn.evaluation.efficiency import efficiency
from medunlearn.evaluation.fidelity import average_gap, mean_kl, prediction_agreement
from medunlearn.evaluation.outputs import Outputs, model_outputs
from medunlearn.evaluation.privacy import (
    attack_auc,
    auc_standard_error,
    lira_offline_scores,
    logit_confidence,
    per_sample_loss,
    privacy_metrics,
)
from medunlearn.evaluation.representation import linear_cka, probe_auc
from medunlearn.evaluation.utility import unlearning_utility

SCHEMA_VERSION = 1
FORGET_FILE = "forget.csv"
EXCLUDED_FILE = "excluded.csv"


@dataclass(frozen=True)
class EvalOptions:
    """Options of :func:`evaluate_run`."""

    c_fn: float = DEFAULT_C_FN  # cost of a missed disease (see evaluation.clinical)
    c_fp: float = DEFAULT_C_FP  # cost of a false alarm
    seed: int = 0  # seeds attack subsets, probe folds and LiRA shadows
    # most retain samples (seeded subset) the membership attacks may use; None: all of them
    # (privacy.mia_efficacy averages one attack per test-sized block of them, up to 8)
    attack_retain_cap: int | None = None
    retain_limit: int | None = None  # None: RA on every retain sample; else a seeded subset
    ece_bins: int = 15
    probe_folds: int = 5
    probe_max_per_group: int = 1000
    difficulty_groups: int = 3  # easy / medium / hard by the original model's loss
    metadata: str | None = None  # CSV with subgroup columns (sex, site, ...)
    metadata_key: str = "index"  # "index" (training-split index, or split+index) or "sha256"
    lira_shadows: int = 0  # 0 = off; K shadow models for the offline LiRA attack
    lira_epochs: int | None = None  # None: the original recipe's epochs
    batch_size: int = 512
    threads: int | None = None
    device: str = "auto"  # where models run for their outputs ("auto", "cpu", "cuda", "mps")


def _options(options) -> EvalOptions:
    opts = as_config(EvalOptions, options, where="evaluation options")
    if opts.c_fn < 0 or opts.c_fp < 0:
        raise ConfigError(f"Error costs must be non-negative, got c_FN={opts.c_fn}, "
                          f"c_FP={opts.c_fp}.")
    if opts.retain_limit is not None and opts.retain_limit < 1:
        raise ConfigError(f"retain_limit must be at least 1, got {opts.retain_limit}.")
    for name in ("attack_retain_cap", "ece_bins", "difficulty_groups", "batch_size"):
        if getattr(opts, name) is not None and getattr(opts, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(opts, name)}.")
    if opts.probe_folds < 2:
        raise ConfigError(f"probe_folds must be at least 2, got {opts.probe_folds}.")
    if opts.lira_shadows < 0 or opts.lira_shadows == 1:
        raise ConfigError(f"lira_shadows must be 0 (off) or at least 2 (a Gaussian needs two "
                          f"shadows), got {opts.lira_shadows}.")
    if opts.metadata_key not in B.METADATA_KEYS:
        raise ConfigError(f"metadata_key must be one of {B.METADATA_KEYS}, got "
                          f"{opts.metadata_key!r}.")
    return opts


# --------------------------------------------------------------------------- run folders


def read_index_csv(path: Path, dataset: Dataset, *, what: str = "forget set") -> np.ndarray:
    """Training-split indices from an ``index,sha256,label`` CSV, checked against the data.

    Raises:
        ForgetSetError: missing columns, out-of-range indices, or hashes that do not match.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except OSError as exc:
        raise ForgetSetError(f"Cannot read the {what} file {path}: {exc}.") from exc
    if rows and "index" not in rows[0]:
        raise ForgetSetError(f"{path} has no 'index' column; expected index,sha256,label rows "
                             "as written by 'medunlearn unlearn'.")
    n = len(dataset.train)
    hashes = dataset.train.hashes
    idx = []
    for line, row in enumerate(rows, start=2):
        try:
            i = int(row["index"])
        except (TypeError, ValueError):
            raise ForgetSetError(f"{path} line {line}: index {row['index']!r} is not an "
                                 "integer.") from None
        if not 0 <= i < n:
            raise ForgetSetError(f"{path} line {line}: index {i} is outside the training split "
                                 f"(0..{n - 1}). The file belongs to other data.")
        h = (row.get("sha256") or "").strip().lower()
        if h and h != hashes[i]:
            raise ForgetSetError(
                f"{path} line {line}: training image {i} has SHA-256 {hashes[i][:12]}..., the "
                f"{what} says {h[:12]}.... The run folder was made with different data (another "
                "file version, train_limit or seed); evaluate it on the data it was trained on."
            )
        idx.append(i)
    return np.unique(np.asarray(idx, dtype=np.int64))


def _forget_file(run: Run, forget, reference, notes: list[str]) -> Path | None:
    """The forget set of a model folder that has none (the original scored as the do-nothing
    candidate): ``forget`` if given, else the reference's ``forget.csv``."""
    if forget is not None:
        notes.append(f"Forget set from {forget}.")
        return Path(forget)
    if (run.path / FORGET_FILE).is_file() or reference is None:
        return None
    ref = Path(reference) / FORGET_FILE
    if ref.is_file():
        notes.append(f"{run.path} forgot nothing (a {run.config.get('kind')} run): it is scored "
                     f"as the do-nothing candidate on the reference's forget set ({ref}).")
        return ref
    return None


def _forget_and_retain(run: Run, dataset: Dataset, notes: list[str],
                       forget_file: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    path = forget_file or run.path / FORGET_FILE
    if not path.is_file():
        raise ForgetSetError(
            f"{run.path} has no {FORGET_FILE}, so it is not an unlearning run and has no forget "
            "set to evaluate. Pass the --out folder of 'medunlearn unlearn' as --model (the "
            "original model goes to --original); to score this model itself as 'original (no "
            "unlearning)', also give --reference RETRAIN_RUN or --forget FORGET_CSV."
        )
    forget = read_index_csv(path, dataset)
    if len(forget) == 0:
        raise ForgetSetError(f"{path} lists no samples; there is nothing to evaluate.")
    excluded = np.zeros(0, dtype=np.int64)
    if (run.path / EXCLUDED_FILE).is_file():
        excluded = read_index_csv(run.path / EXCLUDED_FILE, dataset, what="excluded set")
    else:
        count = int(((run.config.get("forget") or {}).get("excluded_count")) or 0)
        if count:
            notes.append(f"{count} earlier-forgotten samples are excluded from training but not "
                         f"listed ({EXCLUDED_FILE} missing): they are counted in the retain set.")
    retain = np.setdiff1d(np.arange(len(dataset.train)), np.union1d(forget, excluded))
    return forget, retain


def _load_other(path, dataset: Dataset, model_run: Run, role: str) -> Run:
    run = load_run(path)
    check_compatible(run, dataset)
    a = data_identity(model_run.data_record)
    b = data_identity(run.data_record)
    diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k != "augment")
    if diff:
        raise CheckpointError(
            f"The {role} model {run.path} was trained on different data than {model_run.path} "
            f"({', '.join(f'{k}: {b[k]!r} vs {a[k]!r}' for k in diff)}). Compare models of the "
            "same dataset, view and limits."
        )
    return run


# --------------------------------------------------------------------------- per model


def _per_model(o: dict[str, Outputs], *, attack_idx: np.ndarray, positives, opts: EvalOptions
               ) -> dict:
    f, r, v, t = o["forget"], o["retain"], o["val"], o["test"]
    fp, rp, vp, tp = f.probs, r.probs, v.probs, t.probs
    out = {"utility": unlearning_utility(
        forget_probs=fp, forget_labels=f.labels, retain_probs=rp, retain_labels=r.labels,
        test_probs=tp, test_labels=t.labels, val_probs=vp, val_labels=v.labels)}
    if positives:
        out["clinical"] = {
            name: clinical_metrics(p, y, positives, c_fn=opts.c_fn, c_fp=opts.c_fp)
            for name, p, y in (("test", tp, t.labels), ("forget", fp, f.labels))}
    else:
        out["clinical"] = None
    out["privacy"] = privacy_metrics(
        forget_probs=fp, forget_labels=f.labels, retain_probs=rp[attack_idx],
        retain_labels=r.labels[attack_idx], test_probs=tp, test_labels=t.labels, seed=opts.seed)
    pa = probe_auc(f.features, t.features, folds=opts.probe_folds, seed=opts.seed,
                   max_per_group=opts.probe_max_per_group)
    # The validation split is unseen too but comes from the same pool as the training split;
    # where MedMNIST's test split differs in distribution (PneumoniaMNIST), forget-vs-val
    # separates memorisation from dataset shift. The gate compares the test versions with the
    # reference, or the validation versions with 0.5 when there is no reference.
    cap = opts.probe_max_per_group
    av = attack_auc(-per_sample_loss(fp, f.labels), -per_sample_loss(vp, v.labels))
    out["privacy"]["attack_auc_val"] = av
    out["privacy"]["attack_auc_val_se"] = auc_standard_error(av, len(f), len(v))
    pv = probe_auc(f.features, v.features, folds=opts.probe_folds, seed=opts.seed,
                   max_per_group=cap)
    out["representation"] = {
        "probe_auc": pa,
        "probe_auc_se": auc_standard_error(pa, min(len(f), cap), min(len(t), cap)),
        "probe_auc_val": pv,
        "probe_auc_val_se": auc_standard_error(pv, min(len(f), cap), min(len(v), cap)),
    }
    out["calibration"] = {"ece": expected_calibration_error(tp, t.labels, n_bins=opts.ece_bins),
                          "ece_forget": expected_calibration_error(fp, f.labels,
                                                                   n_bins=opts.ece_bins)}
    return out


def _flat_scalars(m: dict) -> dict[str, float]:
    """Scalar metrics of one model, flattened for deltas (``test.fnr``, ``TA``, ...)."""
    out = {}
    for k, v in m["utility"].items():
        if isinstance(v, (int, float)) and v is not None:
            out[k] = v
    for where, c in (m.get("clinical") or {}).items():
        for k in ("sensitivity", "specificity", "fnr", "fpr", "ppv", "npv", "global_risk"):
            out[f"{where}.{k}"] = c[k]
    for sec in ("privacy", "representation", "calibration"):
        for k, v in m[sec].items():
            if not k.endswith("_se") and not isinstance(v, dict):  # not e.g. attack sizes
                out[k] = v
    return out


def _deltas(a: dict, b: dict) -> dict:
    fa, fb = _flat_scalars(a), _flat_scalars(b)
    return {k: (fa[k] - fb[k]) if fa[k] is not None and fb.get(k) is not None else None
            for k in fa if k in fb}


# --------------------------------------------------------------------------- bias


def disease_auc(probs: np.ndarray, labels: np.ndarray, positives) -> float:
    """AUC of the summed disease probability for disease vs no disease (nan when a group has
    only one of them)."""
    from sklearn.metrics import roc_auc_score

    pos = np.isin(labels, np.asarray(positives))
    if pos.all() or not pos.any():
        return float("nan")
    return float(roc_auc_score(pos, probs[:, list(positives)].sum(axis=1)))


def _group_table(o: Outputs, groups: np.ndarray, names, positives, opts: EvalOptions) -> dict:
    """Accuracy (and for clinical views FNR, FPR and AUC) per group, plus the accuracy
    ``spread`` (max - min over groups)."""
    table = B.group_accuracy(o.probs, o.labels, groups, names)
    if positives:
        probs = o.probs
        for g in sorted(set(groups.tolist()), key=str):
            m = groups == g
            c = clinical_metrics(probs[m], o.labels[m], positives, c_fn=opts.c_fn,
                                 c_fp=opts.c_fp)
            row = table[str(names[g] if names is not None else g)]
            row["fnr"], row["fpr"] = c["fnr"], c["fpr"]
            row["auc"] = disease_auc(probs[m], o.labels[m], positives)
    table["spread"] = B.accuracy_spread(table)
    return table


def _read_subgroups(opts: EvalOptions, dataset: Dataset, forget: np.ndarray
                    ) -> tuple[list[str], dict, dict] | None:
    """Read and match the metadata CSV (before any model runs, so bad files fail fast)."""
    if not opts.metadata:
        return None
    columns, table = B.read_metadata(opts.metadata, key=opts.metadata_key)
    if opts.metadata_key == "sha256":
        keys = {s: dataset.splits[s].hashes for s in ("train", "val", "test")}
    else:
        keys = {s: [f"{s}:{i}" for i in range(len(dataset.splits[s]))]
                for s in ("train", "val", "test")}
    matched = B.match_metadata(table, keys, key=opts.metadata_key, path=str(opts.metadata))
    per_set = {"forget": [matched["train"][i] for i in forget], "test": matched["test"]}
    return columns, table, per_set


def _dataset_subgroups(dataset: Dataset, forget: np.ndarray
                       ) -> tuple[list[str], dict, dict] | None:
    """Subgroups from the dataset's own metadata columns (sex, age band, view, ...), in the
    shape :func:`_read_subgroups` gives for a metadata CSV; None when it has none."""
    columns = dataset.metadata_columns
    if not columns:
        return None
    table: dict[str, dict[str, str]] = {}
    per_set: dict[str, list[str]] = {}
    for where, split, rows in (("forget", dataset.train, np.asarray(forget, dtype=np.int64)),
                               ("test", dataset.test, np.arange(len(dataset.test)))):
        keys = []
        for i in rows:
            key = f"{split.name}:{int(i)}"
            table[key] = {c: str(split.metadata[c][i]) for c in columns}
            keys.append(key)
        per_set[where] = keys
    return columns, table, per_set


def _bias(outs: dict[str, dict[str, Outputs]], dataset: Dataset, subgroups,
          positives, opts: EvalOptions, skipped: dict) -> dict:
    res: dict = {}
    class_names = list(dataset.view.class_names)
    # difficulty terciles by the ORIGINAL model's per-sample loss
    if "original" in outs:
        n_g = opts.difficulty_groups
        names = list(B.DIFFICULTY_NAMES) if n_g == 3 else [f"q{i + 1}" for i in range(n_g)]
        diff = {}
        for where in ("forget", "test"):
            o0 = outs["original"][where]
            groups = B.difficulty_groups(per_sample_loss(o0.probs, o0.labels), n_g)
            diff[where] = {role: _group_table(o[where], groups, names, positives, opts)
                           for role, o in outs.items()}
        res["difficulty"] = diff
    else:
        skipped["bias.difficulty"] = "no --original model: difficulty is the original's loss"
    res["per_class"] = {where: {role: _group_table(o[where], o[where].labels, class_names,
                                                   positives, opts)
                                for role, o in outs.items()} for where in ("forget", "test")}
    if subgroups is not None:
        columns, table, per_set = subgroups
        sub: dict = {}
        for col in columns:
            sub[col] = {}
            for where, rows in per_set.items():
                vals = np.array([table[k][col] if k is not None else "(missing)" for k in rows],
                                dtype=object)
                levels = sorted(set(vals.tolist()))
                codes = np.array([levels.index(v) for v in vals], dtype=np.int64)
                sub[col][where] = {role: _group_table(o[where], codes, levels, positives, opts)
                                   for role, o in outs.items()}
        res["subgroups"] = sub
    return res


# --------------------------------------------------------------------------- main entry


def evaluate_run(model_dir: str | os.PathLike, *, original: str | os.PathLike | None = None,
                 reference: str | os.PathLike | None = None,
                 options: EvalOptions | Mapping | None = None,
                 data_root: str | None = None, shadows: str | os.PathLike | None = None,
                 forget: str | os.PathLike | None = None) -> dict:
    """Evaluate an unlearned model, optionally against the original and the retrained reference.

    Args:
        model_dir: Unlearn run folder (its ``forget.csv`` names the forget set).
        original: Run folder of the model before unlearning.
        reference: Run folder of the model retrained without the forget set (the gold standard).
        options: :class:`EvalOptions` or a dict of its fields.
        data_root: Folder with the MedMNIST files (default: as recorded / ``$MEDMNIST_ROOT``).
        shadows: Folder of shadow models of the original (``medunlearn shadows``): adds
            per-image membership evidence (``models.<role>.membership``); refused when made for
            another model or other data.
        forget: A ``forget.csv`` naming the forget set, for a model folder without one (a
            ``train`` run scored as "original (no unlearning)"); by default such a folder takes
            the reference's ``forget.csv``.

    Returns:
        The nested metrics dict described in this module's docstring.

    Raises:
        CheckpointError: unreadable or mismatched run folders.
        ForgetSetError: missing or inconsistent ``forget.csv``.
        ConfigError: invalid options or metadata.
    """
    opts = _options(options)
    t0 = time.perf_counter()
    notes: list[str] = []
    run, dataset = load_run_and_data(model_dir, data_root=data_root)
    forget_file = _forget_file(run, forget, reference, notes)
    forget, retain = _forget_and_retain(run, dataset, notes, forget_file)
    runs = {"model": run}
    if original is not None:
        runs["original"] = _load_other(original, dataset, run, "original")
        want = (run.config.get("original") or {}).get("weights_sha256")
        if want:
            from medunlearn.io import sha256_file

            got = sha256_file(runs["original"].path / "model.safetensors")
            if got != want:
                notes.append(f"--original {runs['original'].path} is not the model this run "
                             "was unlearned from (weights hash differs).")
    if reference is not None:
        runs["reference"] = _load_other(reference, dataset, run, "reference")
        ref_forget = runs["reference"].path / FORGET_FILE
        if ref_forget.is_file():
            rf = read_index_csv(ref_forget, dataset)
            if not np.array_equal(rf, forget):
                raise ForgetSetError(
                    f"The reference {runs['reference'].path} forgot a different set "
                    f"({len(rf)} samples) than {run.path} ({len(forget)}). Retrain the "
                    "reference with the same forget set."
                )
        else:
            notes.append(f"The reference {runs['reference'].path} has no {FORGET_FILE}; it is "
                         "assumed to be trained without the forget set.")
    subgroups = _read_subgroups(opts, dataset, forget)
    companions = None
    if shadows is not None:  # refused before any model runs when made for another model/data
        from medunlearn.shadows import load_companions

        companions = load_companions(shadows, data=dataset, fingerprints=[
            run.config.get("fingerprint"), (run.config.get("original") or {}).get("fingerprint")])
    retain_eval = _retain_subset(retain, opts, notes, len(dataset.train))
    rt = _runtime(opts)
    # a folder given in two roles (e.g. a reference evaluated against itself) runs once
    by_path: dict[Path, dict[str, Outputs]] = {}
    outs = {}
    for role, r in runs.items():
        key = r.path.resolve()
        if key not in by_path:
            by_path[key] = model_outputs(r.model, dataset, forget=forget, retain=retain_eval,
                                         batch_size=opts.batch_size, runtime=rt)
        outs[role] = by_path[key]
    lira = None
    if opts.lira_shadows:
        from medunlearn.evaluation.lira import shadow_confidences

        src = runs.get("original", run)
        lira = shadow_confidences(
            dataset, src.config, retain=retain, forget=forget, shadows=opts.lira_shadows,
            seed=opts.seed, epochs=opts.lira_epochs)
    record = evaluate_outputs(
        outs, dataset, forget=forget, n_retain=len(retain), options=opts,
        times={role: r.metrics for role, r in runs.items()}, shadows=lira,
        subgroups=subgroups, notes=notes)
    from medunlearn.shadows import attach_membership, rebuild_command

    src = runs.get("original", run)
    attach_membership(record, outs, companions, forget=forget, retain=retain_eval,
                      rebuild=rebuild_command(src.path, 16, src.seed, src.path / "shadows"))
    record["runs"] = {role: _describe_run(r) for role, r in runs.items()}
    record["evaluate_seconds"] = time.perf_counter() - t0
    return record


def _describe_run(r: Run) -> dict:
    c = r.config
    return {"path": str(r.path), "kind": c.get("kind"), "fingerprint": c.get("fingerprint"),
            "method": c.get("method"), "seed": c.get("seed")}


def _runtime(opts: EvalOptions):
    from medunlearn.loop import Runtime

    return Runtime.create(opts.device, "fp32", opts.threads)


def _retain_subset(retain: np.ndarray, opts: EvalOptions, notes: list[str],
                   n_train: int) -> np.ndarray:
    """The retain samples RA is measured on (all of them unless ``retain_limit``)."""
    if opts.retain_limit is not None and opts.retain_limit < len(retain):
        notes.append(f"RA is measured on a seeded subset of {opts.retain_limit} of the "
                     f"{len(retain)} retain samples (retain_limit).")
        return retain_subset(retain, opts.retain_limit, seed=opts.seed, n_train=n_train)
    return retain


def retain_subset(retain, limit: int, *, seed: int, n_train: int) -> np.ndarray:
    """A seeded subset of at most ``limit`` retain indices, stable as the retain set shrinks.

    The training indices are put in one seeded order and the first ``limit`` that are still
    retain samples are taken (sorted). Forgetting a few images therefore swaps only those images
    out of the subset, so consecutive deletion requests measure on nearly the same images (and
    the active model's outputs on them can be reused; see :mod:`medunlearn.cache`).
    """
    retain = np.asarray(retain, dtype=np.int64)
    if limit >= len(retain):
        return retain
    order = np.random.default_rng(seed).permutation(max(n_train, int(retain.max()) + 1))
    return np.sort(order[np.isin(order, retain)][:limit])


def evaluate_outputs(outs: Mapping[str, Mapping[str, Outputs]], dataset: Dataset, *,
                     forget: np.ndarray, n_retain: int, options: EvalOptions | Mapping | None,
                     times: Mapping[str, Mapping | None] | None = None, shadows=None,
                     subgroups=None, notes: list[str] | None = None) -> dict:
    """Every metric from model outputs already computed: no model runs here.

    Args:
        outs: Role (``model``, and optionally ``original``, ``reference``) -> the outputs of
            that model on ``forget``, ``retain``, ``val`` and ``test`` samples
            (:func:`medunlearn.evaluation.outputs.model_outputs`).
        dataset: The data (view, class names, metadata columns).
        forget: Training-split indices of the forget set (for metadata subgroups).
        n_retain: Size of the whole retain set (``outs`` may hold a subset).
        options: :class:`EvalOptions` or a dict of its fields.
        times: Role -> a metrics dict with ``unlearn_seconds``/``train_seconds`` (efficiency).
        shadows: ``(forget_out_confidences, test_out_confidences, info)`` of LiRA shadow
            models (:func:`medunlearn.evaluation.lira.shadow_confidences`), or None.
        subgroups: Matched metadata (see ``_read_subgroups``); None: the dataset's own metadata
            columns are used when it has any.
        notes: Notes to carry into the record.

    Returns:
        The nested metrics dict described in this module's docstring (without ``runs``).
    """
    opts = _options(options)
    notes = list(notes or [])
    skipped: dict[str, str] = {}
    positives = dataset.view.positive_labels
    model_o = outs["model"]
    rng = np.random.default_rng(opts.seed)
    # the membership attack is trained on ALL retain outputs given (see EvalOptions)
    n_r = len(model_o["retain"])
    cap = n_r if opts.attack_retain_cap is None else min(opts.attack_retain_cap, n_r)
    attack_idx = np.sort(rng.choice(n_r, cap, replace=False)) if cap < n_r else np.arange(n_r)
    if subgroups is None:
        subgroups = _dataset_subgroups(dataset, forget)
    cache: dict[int, dict] = {}
    models = {}
    for role, o in outs.items():
        if id(o) not in cache:
            cache[id(o)] = _per_model(o, attack_idx=attack_idx, positives=positives, opts=opts)
        models[role] = copy.deepcopy(cache[id(o)])
    if not positives:
        skipped["clinical"] = ("no disease classes: the view is native and no positive classes "
                               "were given (train with --view binary or --positive-classes)")

    lira_info = None
    if shadows is not None:
        f_out, t_out, lira_info = shadows
        for role, o in outs.items():
            sf = lira_offline_scores(logit_confidence(o["forget"].probs, o["forget"].labels),
                                     f_out)
            st = lira_offline_scores(logit_confidence(o["test"].probs, o["test"].labels), t_out)
            models[role]["privacy"]["lira_auc"] = attack_auc(sf, st)
    else:
        skipped["privacy.lira"] = "off (pass --lira-shadows K >= 2 for the LiRA attack)"

    changes = {}
    for other in ("original", "reference"):
        if other in models:
            changes[f"vs_{other}"] = _deltas(models["model"], models[other])
            # a model whose outputs on the forgotten images are the original's forgot nothing
            changes[f"vs_{other}"]["forget_max_logit_change"] = float(np.abs(
                outs["model"]["forget"].logits - outs[other]["forget"].logits).max()) \
                if len(outs["model"]["forget"]) else None
        else:
            skipped[f"changes.vs_{other}"] = f"no --{other} model given"

    fidelity = None
    representation: dict = {}
    if "reference" in outs:
        m, r = outs["model"], outs["reference"]
        mu, ru = models["model"], models["reference"]
        fidelity = {
            "average_gap_pp": average_gap(mu["utility"] | mu["privacy"],
                                          ru["utility"] | ru["privacy"]),
            "gap_keys": ["UA", "RA", "TA", "mia_efficacy"],
            "agreement_forget": prediction_agreement(m["forget"].probs, r["forget"].probs),
            "agreement_test": prediction_agreement(m["test"].probs, r["test"].probs),
            "kl_forget": mean_kl(r["forget"].probs, m["forget"].probs),
            "kl_test": mean_kl(r["test"].probs, m["test"].probs),
        }
    else:
        skipped["fidelity"] = "no --reference model given"
    for other in ("reference", "original"):
        if other in outs:
            for where in ("forget", "test"):
                representation[f"cka_{other}_{where}"] = linear_cka(
                    outs["model"][where].features, outs[other][where].features)
        else:
            skipped[f"representation.cka_{other}"] = f"no --{other} model given"

    # the reports' rule: closeness to a degenerate original or reference says nothing
    from medunlearn.evaluation.utility import degenerate_reason

    degenerate = {}
    for role in ("original", "reference"):
        u = (models.get(role) or {}).get("utility") or {}
        why = degenerate_reason(u.get("balanced_accuracy"), u.get("majority_prediction_share"))
        if why:
            degenerate[role] = why
            notes.append(
                f"The retrained reference {why}: closeness to it says nothing (the gate's "
                "checks against it are 'cannot say')." if role == "reference" else
                f"The original model {why}: comparisons with it describe a degenerate model.")
    bias = _bias(dict(outs), dataset, subgroups, positives, opts, skipped)
    times = dict(times or {})
    eff = efficiency(times.get("model"), times.get("reference"))
    if eff["rte_ratio"] is None:
        skipped["efficiency.rte_ratio"] = (
            "no reference with a recorded time" if not times.get("reference")
            else "run time missing")
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": {"name": dataset.name, "view": dataset.view.to_dict(),
                    "positive_labels": list(positives) if positives else None},
        "counts": {"forget": len(model_o["forget"]), "retain": int(n_retain),
                   "retain_evaluated": n_r, "retain_attack": int(cap),
                   "val": len(model_o["val"]), "test": len(model_o["test"])},
        "options": dataclasses.asdict(opts),
        "costs": {"c_fn": opts.c_fn, "c_fp": opts.c_fp},
        "models": models,
        "changes": changes,
        "fidelity": fidelity,
        "representation": representation,
        "bias": bias,
        "efficiency": eff,
        "lira": lira_info,
        "degenerate": degenerate,
        "directions": dict(DIRECTIONS),
        "skipped": skipped,
        "notes": notes,
    }
