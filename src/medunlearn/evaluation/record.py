"""The evaluation record: every metric of an unlearned model from outputs already computed.

:func:`evaluate_outputs` takes each model's logits and features on the forget, retain,
validation and test samples (:mod:`medunlearn.evaluation.outputs`, computed once per model by
:func:`medunlearn.api.evaluate`) and assembles the pure metric functions' results into one
nested dict (strict JSON once written with :func:`medunlearn.fileio.atomic_write_json`):

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
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from medunlearn.config import as_config
from medunlearn.data import Dataset
from medunlearn.errors import ConfigError
from medunlearn.evaluation import bias as B
from medunlearn.evaluation.calibration import expected_calibration_error
from medunlearn.evaluation.clinical import DEFAULT_C_FN, DEFAULT_C_FP, clinical_metrics
from medunlearn.evaluation.directions import DIRECTIONS
from medunlearn.evaluation.efficiency import efficiency
from medunlearn.evaluation.fidelity import (
    average_gap,
    forget_shift,
    mean_kl,
    prediction_agreement,
)
from medunlearn.evaluation.outputs import Outputs
from medunlearn.evaluation.privacy import (
    attack_auc,
    auc_standard_error,
    lira_offline_scores,
    logit_confidence,
    per_sample_loss,
    privacy_metrics,
)
from medunlearn.evaluation.representation import linear_cka, probe_auc
from medunlearn.evaluation.utility import degenerate_reason, unlearning_utility

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class EvalOptions:
    """Options of an evaluation (:func:`medunlearn.api.evaluate`, ``evaluate_run``)."""

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


def eval_options(options: EvalOptions | Mapping | None) -> EvalOptions:
    """``options`` as validated :class:`EvalOptions` (None: the defaults).

    Raises:
        ConfigError: an unknown option or a value out of range.
    """
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


def _dataset_subgroups(dataset: Dataset, forget: np.ndarray
                       ) -> tuple[list[str], dict, dict] | None:
    """Subgroups from the dataset's own metadata columns (sex, age band, view, ...), in the
    shape a metadata CSV gives (see ``subgroups`` of :func:`evaluate_outputs`); None when it
    has none."""
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


# --------------------------------------------------------------------------- the record


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


def _shift(a: Mapping[str, Outputs], b: Mapping[str, Outputs]) -> float | None:
    """:func:`forget_shift` between two models' forget-set outputs (None: no forget image)."""
    if not len(a["forget"]):
        return None
    return forget_shift(logit_confidence(a["forget"].probs, a["forget"].labels),
                        logit_confidence(b["forget"].probs, b["forget"].labels))


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
        subgroups: Matched metadata (``(columns, table, per_set)`` as
            :func:`medunlearn.api.evaluate` reads a metadata CSV); None: the dataset's own
            metadata columns are used when it has any.
        notes: Notes to carry into the record.

    Returns:
        The nested metrics dict described in this module's docstring (without ``runs``).
    """
    opts = eval_options(options)
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
            changes[f"vs_{other}"]["forget_shift"] = _shift(outs["model"], outs[other])
        else:
            skipped[f"changes.vs_{other}"] = f"no --{other} model given"
    if "original" in outs and "reference" in outs:
        # how far the model moved from the original on the forget set, as a share of how far
        # exact retraining moved (the gate's do-nothing rule; tune's too)
        ref_shift = _shift(outs["reference"], outs["original"])
        changes["vs_original"]["forget_moved"] = (
            changes["vs_original"]["forget_shift"] / ref_shift
            if ref_shift and changes["vs_original"]["forget_shift"] is not None else None)

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
