"""Tuning method options against a retrained reference, and the published defaults.

* ``medunlearn.runs.tune_method`` grid-searches any of a method's options (``lr``, ``epochs``,
  ``retain_budget``, ``alpha``, ``scope``...) by closeness to a model retrained without the forget
  set, on the validation split and the forget set only (``TUNE_CRITERION``); this module holds
  what it searches (:func:`default_grid`, :func:`parse_grid`) and how it chooses
  (:func:`choose`, :func:`worst_case`).
* :func:`load_tuning_spec` reads ``defaults/tuning.toml``: the default search space of every
  method and the recipe ``scripts/tune_defaults.py`` follows to publish the defaults.
* :func:`render_methods_toml` turns the tuning record (``defaults/tuning.json``) into
  ``defaults/methods.toml``: the one place the published values are derived, so a test can check
  that the shipped file is exactly what the record says.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

from medunlearn.config import NONE_WORDS, parse_option_pairs, read_packaged_toml
from medunlearn.errors import ConfigError

TUNING_VERSION = 1
# the wording recorded with every tuning result; evaluation.fidelity.tuning_closeness computes it
TUNE_CRITERION = ("mean of |forget accuracy - reference's|, |validation accuracy - reference's|, "
                  "1 - prediction agreement with the reference on validation + forget samples, "
                  "and the Wasserstein-1 distance between the unlearned and the reference "
                  "model's true-class probabilities on the forget set (a membership-signal "
                  "term: over- or under-forgetting moves it); lower is better; the test split "
                  "is never used")


def load_tuning_spec() -> dict:
    """The parsed ``defaults/tuning.toml`` shipped with the package (grids and recipe)."""
    return read_packaged_toml("tuning.toml", TUNING_VERSION)


def default_grid(method: str) -> dict[str, list]:
    """The search space ``defaults/tuning.toml`` gives a method (empty when it has none)."""
    return {k: list(v) for k, v in load_tuning_spec().get("grid", {}).get(method, {}).items()}


def _plain(value):
    """A grid value as the method option it stands for ("none" -> None)."""
    if isinstance(value, str) and value.strip().lower() in NONE_WORDS:
        return None
    return value


def grid_as_options(grid: Mapping[str, Sequence]) -> dict[str, list]:
    """A grid with option names and values as the method reads them ("none" -> None)."""
    return {k.replace("-", "_"): [_plain(v) for v in vs] for k, vs in grid.items()}


def is_current(result: Mapping, method: str) -> bool:
    """Whether a stored ``tune_method`` result still stands for ``method``: searched over
    its grid in ``defaults/tuning.toml`` with the recipe's seed, tolerance, the current
    criterion and do-nothing threshold, and with the method's current algorithm
    (``Method.revision``)."""
    from medunlearn.methods.base import get_method_class

    recipe = load_tuning_spec()["recipe"]
    return (result.get("grid_spec") == grid_as_options(default_grid(method))
            and result.get("revision", 0) == get_method_class(method).revision
            and result.get("seed") == int(recipe["seed"])
            and result.get("tolerance") == float(recipe["tolerance"])
            and result.get("criterion") == TUNE_CRITERION
            and result.get("min_move") == do_nothing_min_move()
            and result.get("rule") == TUNE_RULES)


def parse_grid(pairs: Iterable[str]) -> dict[str, list]:
    """``key=v1,v2`` strings as a grid (values read like ``--option`` values).

    Raises:
        ConfigError: an entry without ``=``, without values, or a key given twice.
    """
    grid: dict[str, list] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        key = key.strip().replace("-", "_")
        values = [v.strip() for v in raw.split(",") if v.strip()]
        if not sep or not key or not values:
            raise ConfigError(f"--grid takes key=v1,v2,... (e.g. --grid lr=0.003,0.01), got "
                              f"{pair!r}.")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list its values once.")
        grid[key] = [parse_option_pairs([f"{key}={v}"])[key] for v in values]
    return grid


def do_nothing_min_move() -> float:
    """The safety gate's ``do_nothing_min_move`` (``defaults/gate.toml``): a grid point must
    move at least this share of the retrained reference's shift from the original on the
    forget set, as a model must to pass the gate's ``forget_changed`` check."""
    from medunlearn.evaluation.gate import default_tolerances

    return float(default_tolerances().do_nothing_min_move)


DO_NOTHING_RULE = ("a grid point whose mean shift from the original on the forget set (logit-"
                   "scaled true-class confidence) is below min_move times the retrained "
                   "reference's shift is rejected as indistinguishable from doing nothing; if "
                   "every point is, the closest is chosen with a warning")


def rejects_as_do_nothing(row: Mapping, min_move: float) -> str | None:
    """Why ``row`` is rejected as doing nothing (its ``moved``, the shift from the original
    relative to the reference's, is below ``min_move``, or the paired forget-effect test
    failed it: ``forget_effect``), or None. Rows without either measurement (tuned before the
    rule existed) are not judged."""
    if row.get("forget_effect") == "fail":
        return ("the paired test against the original (shadow models) finds the forgotten "
                "images kept more than half of what retraining removes: they still look "
                "remembered")
    moved = row.get("moved")
    if moved is None or not moved < min_move:
        return None
    return (f"moved {moved:.2f}x as far from the original on the forget set as retraining "
            f"did (< {min_move:g}): indistinguishable from doing nothing")


DAMAGE_RULE = ("a grid point whose validation accuracy fell below the original's by more than "
               "the safety gate's ta_drop limit (ta_drop_tolerance, widened by rate_noise_sigmas "
               "standard errors for the validation size) is rejected as damaging the model")
# what a stored result was judged by: is_current requires it, judged() applies it
TUNE_RULES = f"{DO_NOTHING_RULE}; {DAMAGE_RULE}"


def val_drop_limit(accuracy: float, original_accuracy: float, n: int) -> float:
    """The gate's ``ta_drop`` limit (``defaults/gate.toml``) for a validation-accuracy drop
    from ``original_accuracy`` to ``accuracy`` on ``n`` images: ``ta_drop_tolerance``, widened
    to ``rate_noise_sigmas`` binomial standard errors of the difference when ``n`` is small."""
    from medunlearn.evaluation.gate import default_tolerances

    tol = default_tolerances()
    a, a0 = accuracy, original_accuracy
    se = math.sqrt((a * (1 - a) + a0 * (1 - a0)) / n) if n > 0 else 0.0
    return max(tol.ta_drop_tolerance, tol.rate_noise_sigmas * se)


def rejects_as_damaging(row: Mapping) -> str | None:
    """Why ``row`` is rejected as damaging the model (its validation accuracy fell below the
    original's by more than :func:`val_drop_limit`: a request unlearned with it would fail the
    gate's utility check), or None. Rows without the measurement are not judged."""
    drop, limit = row.get("val_drop"), row.get("val_drop_limit")
    if drop is None or limit is None or not drop > limit + 1e-12:
        return None
    return (f"validation accuracy fell {drop:.3f} below the original's (limit {limit:.3f}, the "
            "gate's ta_drop rule): it damages the model")


def rejection(row: Mapping, min_move: float | None) -> str | None:
    """Why ``row`` cannot be chosen (:func:`rejects_as_damaging`, then, with ``min_move``,
    :func:`rejects_as_do_nothing`), or None."""
    return rejects_as_damaging(row) or (
        rejects_as_do_nothing(row, min_move) if min_move is not None else None)


ALL_REJECTED = ("every grid point was rejected (it did nothing on the forget set, or damaged "
                "the model): the method has no setting here that both forgets and stays safe; "
                "the closest to retraining was chosen")


def all_rejected(rows: Sequence[Mapping]) -> dict:
    """``{"warning": ALL_REJECTED}`` when every judged row is rejected, else ``{}``."""
    return {"warning": ALL_REJECTED} if all(r["rejected"] for r in rows) else {}


def judged(result: Mapping, n_val: int) -> dict:
    """``result`` (a :func:`tune_method <medunlearn.runs.tune_method>` result) with its rules
    applied: each grid row gets ``val_drop`` (the original's validation accuracy minus the
    row's), ``val_drop_limit`` and ``rejected`` (:func:`rejection`), then the choice
    (:func:`choose`) and a ``warning`` when every row is rejected. A pure function of the
    stored rows, so a result tuned under older rules is re-judged without rerunning its grid.
    """
    acc0 = result["do_nothing"]["val_accuracy"]
    rows = []
    for r in result["grid"]:
        r = dict(r)
        if r.get("val_accuracy") is not None and n_val > 0:
            r["val_drop"] = acc0 - r["val_accuracy"]
            r["val_drop_limit"] = val_drop_limit(r["val_accuracy"], acc0, n_val)
        r["rejected"] = rejection(r, result.get("min_move"))
        rows.append(r)
    best = choose(rows, float(result["tolerance"]), min_move=result.get("min_move"))
    out = {k: v for k, v in result.items() if k != "warning"}
    return out | {"grid": rows, "chosen": dict(best["options"]), "rule": TUNE_RULES,
                  "n_val": n_val, **all_rejected(rows)}


def choose(rows: Sequence[Mapping], tolerance: float, *, min_move: float | None = None
           ) -> Mapping:
    """The chosen grid row: the cheapest (fewest steps, then lowest score, then first) among the
    rows whose score is within ``tolerance`` of the best.

    Rows :func:`rejection` rejects (damaging, and with ``min_move`` doing nothing) are left
    out first (all of them rejected: the choice is made among all, and :func:`judged` records
    a warning)."""
    pool = [r for r in rows if rejection(r, min_move) is None] or list(rows)

    def score(r):  # as the record keeps it, so a stored grid gives the same choice again
        return round(r["score"], 6)

    best = min(score(r) for r in pool)
    ties = [r for r in pool if score(r) <= best + tolerance]
    return min(ties, key=lambda r: (r["steps"], score(r), rows.index(r)))


def worst_case(results: Sequence[Mapping], tolerance: float, *,
               min_move: float | None = None) -> dict:
    """One tuning result from several ``tune_method`` results over the same grid on
    different forget sets (same method, dataset and seed).

    Each grid point scores its *worst* (highest) score over the forget sets and costs the sum
    of their steps and seconds; the chosen point is then the :func:`choose` pick over those
    rows, so a setting that is close to retraining on one forget set but collapses on another
    loses. A row keeps the measurements of its worst forget set, plus ``scores`` (forget spec ->
    score) and ``worst_forget``; its ``moved`` is its smallest over the forget sets (a point
    that does nothing on one of them is rejected with ``min_move``).

    Raises:
        ConfigError: no results, or results whose grids differ.
    """
    if not results:
        raise ConfigError("worst_case needs at least one tuning result.")
    grids = [[r["options"] for r in res["grid"]] for res in results]
    if any(g != grids[0] for g in grids[1:]):
        raise ConfigError("The tuning results to combine searched different grids.")
    specs = [res["forget"] for res in results]
    rows = []
    for i in range(len(grids[0])):
        points = [res["grid"][i] for res in results]
        worst = max(range(len(points)), key=lambda j: points[j]["score"])
        moved = [p["moved"] for p in points if p.get("moved") is not None]
        drops = [p for p in points if p.get("val_drop") is not None]
        hurt = max(drops, key=lambda p: p["val_drop"] - p["val_drop_limit"]) if drops else {}
        rows.append({**points[worst], "steps": sum(p["steps"] for p in points),
                     **({"moved": min(moved)} if moved else {}),
                     **{k: hurt[k] for k in ("val_drop", "val_drop_limit") if k in hurt},
                     "seconds": sum(p["seconds"] for p in points),
                     "scores": {spec: p["score"] for spec, p in zip(specs, points, strict=True)},
                     "worst_forget": specs[worst]})
    rows = [r | {"rejected": rejection(r, min_move)} for r in rows]
    combined = {k: v for k, v in results[0].items() if k != "warning"}
    return {**combined, "forget": specs, "reference": [res["reference"] for res in results],
            "tolerance": tolerance,
            "reference_scores": {spec: res["reference_scores"]
                                 for spec, res in zip(specs, results, strict=True)},
            "chosen": dict(choose(rows, tolerance, min_move=min_move)["options"]),
            "grid": rows, **all_rejected(rows)}


def _toml_value(v) -> str:
    if v is None:
        return '"none"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _fmt_options(opts: Mapping) -> str:
    return ", ".join(f"{k}={'none' if v is None else v}" for k, v in opts.items())


def tune_snippet(result: dict) -> str:
    """A ``defaults/methods.toml`` section with the chosen values; the grid as comments."""
    lines = [f"# medunlearn tune: {result['method']} on {result['dataset']}, forget "
             f"{result['forget']}, seed {result['seed']}, reference {result['reference']}",
             f"# criterion: {result['criterion']}; ties within {result['tolerance']:g}: fewest "
             "steps", "# grid (options: score, forget_acc, val_acc, agreement, forget_prob_w1, "
             "steps, seconds):"]
    for r in result["grid"]:
        lines.append(f"#   {_fmt_options(r['options']) or 'defaults'}: {r['score']:.4f}, "
                     f"{r['forget_accuracy']:.4f}, {r['val_accuracy']:.4f}, "
                     f"{r['agreement']:.4f}, {r['forget_prob_w1']:.4f}, {r['steps']}, "
                     f"{r['seconds']:.2f}")
    lines.append(f"[{result['dataset']}.{result['method']}]")
    lines += [f"{k} = {_toml_value(v)}" for k, v in result["chosen"].items()]
    return "\n".join(lines) + "\n"


def render_methods_toml(record: Mapping) -> str:
    """``defaults/methods.toml`` as the tuning record ``record`` (``defaults/tuning.json``)
    determines it, byte for byte.

    ``[default.<method>]`` holds the chosen values on the recipe's ``default_from`` dataset;
    ``[<dataset>.<method>]`` the values another dataset's tuning chose differently. Datasets the
    record skipped (e.g. a degenerate reference) get no section, with the reason as a comment.
    """
    recipe = record["recipe"]
    results = record["results"]
    base_flag = recipe["default_from"]
    if base_flag not in results:
        raise ConfigError(f"The tuning record has no results for {base_flag!r}, the dataset "
                          "the [default] sections come from; rerun scripts/tune_defaults.py.")
    lines = [
        "# Default hyperparameters of the unlearning methods (medunlearn.methods.base resolves "
        "them).",
        "#",
        "# GENERATED: do not edit. Written by scripts/tune_defaults.py from defaults/tuning.json",
        f"# (command: {record['command']}; commit {record['commit']}; {record['date']}).",
        f"# Recipe: forget {recipe['forget']}, tuning seed {recipe['seed']} (not a reporting "
        f"seed), ties within {recipe['tolerance']:g} go to the cheapest point; criterion: "
        f"{TUNE_CRITERION}.",
        *(f"# {m} also scored on forget {', '.join(v)} (a point counts with its worst score)."
          for m, v in sorted(recipe.get("also_forget", {}).items())),
        "# Precedence, lowest first: the method's Config dataclass < [default.<method>] here",
        "# < [<dataset>.<method>] here < options given by the user (--option key=value).",
        "# \"none\" leaves an optional value unset (retain_budget = \"none\": every retain image).",
        f"version = {record['defaults_version']}",
        "",
    ]
    base = results[base_flag]["methods"]
    for method in sorted(base):
        lines.append(f"# {base_flag}: criterion score {base[method]['score']:.4f}")
        lines.append(f"[default.{method}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in base[method]["chosen"].items()]
        lines.append("")
    for flag in sorted(results):
        if flag == base_flag:
            continue
        entry = results[flag]
        if entry.get("skipped"):
            lines += [f"# {flag}: not tuned: {entry['skipped']}", ""]
            continue
        for method in sorted(entry["methods"]):
            chosen = entry["methods"][method]["chosen"]
            diff = {k: v for k, v in chosen.items()
                    if k not in base.get(method, {}).get("chosen", {})
                    or base[method]["chosen"][k] != v}
            if diff:
                lines.append(f"[{flag}.{method}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in diff.items()]
                lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def summarize(result: Mapping) -> dict:
    """The part of a ``tune_method`` result the tuning record keeps per method."""
    best = next(r for r in result["grid"] if r["options"] == result["chosen"])
    return {"chosen": dict(result["chosen"]), "score": round(best["score"], 6),
            **({"revision": result["revision"]} if result.get("revision") else {}),
            "grid_spec": result["grid_spec"],
            "grid": [{"options": r["options"], "score": round(r["score"], 6),
                      "forget_accuracy": round(r["forget_accuracy"], 6),
                      "val_accuracy": round(r["val_accuracy"], 6),
                      "agreement": round(r["agreement"], 6),
                      "forget_prob_w1": round(r["forget_prob_w1"], 6),
                      **{k: round(r[k], 6) for k in ("moved", "agreement_original",
                                                      "forget_share", "val_drop",
                                                      "val_drop_limit")
                         if r.get(k) is not None},
                      **({"forget_effect": r["forget_effect"]} if "forget_effect" in r
                         else {}),
                      "steps": r["steps"],
                      "seconds": round(r["seconds"], 2),
                      **({"scores": {k: round(v, 6) for k, v in r["scores"].items()},
                          "worst_forget": r["worst_forget"]} if "scores" in r else {})}
                     for r in result["grid"]],
            **({"forget": list(result["forget"])} if not isinstance(result["forget"], str)
               else {}),
            **{k: result[k] for k in ("do_nothing", "min_move", "n_val", "warning")
               if k in result}}


def load_tuning_record(path: str | os.PathLike | None = None) -> dict | None:
    """The tuning record (default: the packaged ``defaults/tuning.json``), or None if absent."""
    if path is None:
        ref = resources.files("medunlearn").joinpath("defaults/tuning.json")
        return json.loads(ref.read_text("utf-8")) if ref.is_file() else None
    p = Path(path)
    return json.loads(p.read_text("utf-8")) if p.is_file() else None


__all__ = ["DO_NOTHING_RULE", "TUNE_CRITERION", "choose", "default_grid", "do_nothing_min_move",
           "grid_as_options", "is_current",
           "load_tuning_record", "load_tuning_spec", "parse_grid", "rejects_as_do_nothing",
           "ALL_REJECTED", "DAMAGE_RULE", "TUNE_RULES", "judged", "rejection",
           "rejects_as_damaging", "val_drop_limit",
           "render_methods_toml", "summarize", "tune_snippet", "worst_case"]
