"""Reports of an experiment: tables (mean ± std over seeds) and figures, as HTML and Markdown.

``write_report(results, out)`` reads the results table and writes

* ``report.html``: one self-contained page (CSS inline, figures embedded as base64 PNG);
* ``report.md``: the same tables in Markdown, with the PNGs in ``figures/`` beside it.

Tables (:mod:`.tables`): one per dataset, augmentation and forget selection; one row per
method. The best value of each column is marked, taking each metric's direction into account:
for UA, RA, TA, MIA-efficacy and attack AUC the best is the one *closest to the retrained
reference* (the goal of unlearning is to behave as if the data had never been seen); for FNR,
FPR, Global Risk, average gap, FNR change and time lower is better; for AUC and speedup higher
is better. The ``retrain`` row is the reference itself and the "original (no unlearning)" row
is the untouched original scored like a method; neither is ranked. Methods whose safety verdict
failed for any seed are flagged, and so are methods no better than doing nothing. A glossary of
the column names (the CLI summary prints the same one) and notes on the data (no patient ids:
leakage across splits cannot be checked) come before the tables. Figures: :mod:`.figures`.
This module renders both.
"""

from __future__ import annotations

import base64
import html
import os
from pathlib import Path

from medunlearn.evaluation.directions import HIGHER, LOWER
from medunlearn.evaluation.directions import REFERENCE as CLOSEST
from medunlearn.evaluation.utility import DEGENERATE_BALANCED_ACCURACY, DEGENERATE_SHARE
from medunlearn.experiments.figures import make_figures
from medunlearn.experiments.grid import ORIGINAL_LABEL, ORIGINAL_METHOD
from medunlearn.experiments.store import ResultsStore
from medunlearn.experiments.tables import (
    COLUMNS,
    NO_BETTER,
    REFERENCE_METHOD,
    SUBGROUP_NOTE,
    Table,
    build_tables,
    compute_time,
    format_parts,
    format_stat,
    glossary_lines,
    study_labels,
    study_rows,
    subgroup_header,
    subgroup_row,
    subgroup_tables,
)
from medunlearn.fileio import atomic_write_text


# -- writers --------------------------------------------------------------------------------------
def legend(tables: list[Table]) -> str:
    """What the tables show, true for these tables: the spread is mentioned only when some
    row has several seeds, the reference row only when there is one."""
    many = any(r["n"] > 1 for t in tables for r in t.rows)
    cols = tables[0].columns if tables else COLUMNS
    has_ref = any(r["method"] == REFERENCE_METHOD for t in tables for r in t.rows)
    parts = ["Mean ± standard deviation over seeds (one seed: the value alone)." if many else
             "One seed per method: single values, no spread."]
    closest = [c.header for c in cols if c.direction == CLOSEST]
    higher = [c.header for c in cols if c.direction == HIGHER]
    lower = [c.header for c in cols if c.direction == LOWER]
    if has_ref:
        parts.append(f"**Bold** (HTML: green) = best in the column among the unlearning "
                     f"methods: closest to the retrained model (the {REFERENCE_METHOD} row, "
                     f"which is not ranked) for {', '.join(closest)}; higher for "
                     f"{', '.join(higher)}; lower for {', '.join(lower)}.")
    else:
        auc = [c.header for c in cols if c.direction == CLOSEST and "auc" in c.field]
        parts.append(f"**Bold** (HTML: green) = best in the column: higher for "
                     f"{', '.join(higher)}; lower for {', '.join(lower)}; closest to 0.5 for "
                     f"{', '.join(auc)}. These results have no {REFERENCE_METHOD} row, so "
                     f"{', '.join(h for h in closest if h not in auc)} (best = closest to the "
                     "retrained model) are not ranked; add the method "
                     f"'{REFERENCE_METHOD}' to the study to rank them.")
    if any(r["method"] == ORIGINAL_METHOD for t in tables for r in t.rows):
        parts.append(f"The '{ORIGINAL_LABEL}' row is the untouched original scored like a "
                     f"method (not ranked); {NOTHING} = {NO_BETTER} by the average gap.")
    parts.append("⚠ = the safety gate failed for at least one seed.")
    return " ".join(parts)


#: The mark of a method no better than doing nothing (see ``tables.do_nothing_notes``).
NOTHING = "∅"


def data_notes(rows: list[dict]) -> list[str]:
    """What the data cannot show, per dataset: without patient ids, images of one patient may
    sit in training and test (leakage), and nothing here can check it. Read from the original
    models' ``config.json`` (their data summary); a folder that is gone says nothing."""
    from medunlearn.checkpoint import CONFIG_FILE
    from medunlearn.experiments.tables import dataset_name
    from medunlearn.fileio import read_json

    out = []
    by_ds: dict[str, set[str]] = {}
    for r in rows:
        if r.get("original_dir"):
            by_ds.setdefault(dataset_name(r), set()).add(r["original_dir"])
    for ds, folders in sorted(by_ds.items()):
        for folder in sorted(folders):
            try:
                summary = read_json(Path(folder) / CONFIG_FILE).get("dataset") or {}
            except (OSError, ValueError, AttributeError):
                continue
            if summary and "n_patients" not in summary:
                out.append(f"{ds}: the data carry no patient ids (source "
                           f"'{summary.get('source', 'unknown')}'), so images of one patient may "
                           "sit in more than one split (training and test) and patient leakage "
                           "cannot be checked; give a patient column to check it.")
                break
    return out


DEGENERATE_NOTE = (f"Not ranked: a model behind this table is degenerate (one class predicted "
                   f"for at least {DEGENERATE_SHARE:.0%} of the test images, balanced accuracy "
                   f"below {DEGENERATE_BALANCED_ACCURACY:g}, or a test AUC at chance), so "
                   "closeness to it says nothing about unlearning.")


def _label(r: dict, t: Table) -> str:
    return f"{r['label']} {NOTHING}" if r["label"] in t.no_better else r["label"]


def _markdown(title: str, tables: list[Table], figs: list[tuple[str, Path]], out: Path,
              meta: str, rows: list[dict] | None = None) -> str:
    rows = rows or []
    lines = [f"# {title}", "", meta, "", legend(tables), ""]
    notes = data_notes(rows)
    if notes:
        lines += ["## Data", ""] + [f"- {n}" for n in notes] + [""]
    lines += ["## Glossary", ""] + [f"- {g}" for g in glossary_lines()] + [""]
    for t in tables:
        lines += [f"## {t.title}", ""]
        head = ["method", "seeds", "safety"] + [c.header for c in t.columns]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "---|" * len(head))
        for r in t.rows:
            cells = [_label(r, t), str(r["n"]),
                     f"⚠ fails ({r['gate_failed']}/{r['n']})" if r["gate_failed"] else "pass"]
            for c in t.columns:
                txt = format_stat(*r["stats"][c.field], c, r["counts"][c.field])
                cells.append(f"**{txt}**" if r["label"] in t.best.get(c.field, ()) else txt)
            lines.append("| " + " | ".join(cells) + " |")
        failing = [r for r in t.rows if r["gate_failed"]]
        if failing:
            lines += ["", "Safety verdict failures:", ""]
            lines += [f"- {r['label']}: {'; '.join(r['reasons'])}" for r in failing]
        if t.degenerate:
            lines += ["", f"**{DEGENERATE_NOTE}**", ""]
            lines += [f"- {why}" for why in t.degenerate]
        if t.notes:
            lines += [""] + [f"- {n}" for n in t.notes]
        lines.append("")
    subs = subgroup_tables(rows)
    if subs:
        lines += ["## Subgroups", "", SUBGROUP_NOTE, ""]
    for t in subs:
        head = subgroup_header(t)
        lines += [f"### {t['title']}", "", "| " + " | ".join(head) + " |",
                  "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(subgroup_row(x, t["levels"])) + " |" for x in t["lines"]]
        lines.append("")
    lines += ["## Figures", ""]
    for cap, p in figs:
        lines += [f"![{cap}]({os.path.relpath(p, out)})", "", f"*{cap}*", ""]
    return "\n".join(lines)


# Tables fit a 1400 px window: headers wrap, the spread sits under the mean in small type, and
# the safety verdict comes right after the method. Figures are shown at their drawn size (up to
# the page width), never shrunk to a thumbnail.
CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2em auto;max-width:1400px;
color:#222;padding:0 1em;box-sizing:border-box}
table.results{border-collapse:collapse;margin:0.5em 0 1.5em;font-size:0.85em}
table.results th,table.results td{border:1px solid #ccc;padding:3px 6px;text-align:right}
table.results td{white-space:nowrap}
table.results th{background:#f0f0f0;white-space:normal;max-width:6.5em;vertical-align:bottom}
table.results td.method{text-align:left;font-weight:600}
table.results span.sd{display:block;font-size:0.8em;color:#666}
td.best{background:#d7f5dc;font-weight:700}
tr.unsafe td.method::after{content:" ⚠";color:#b00}
tr.reference td{color:#555;font-style:italic}
td.unsafe{color:#b00}
div.scroll{overflow-x:auto}
figure{margin:1.5em 0}
figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555;max-width:70em}
.legend{font-size:0.85em;color:#444;max-width:70em}
p.degenerate{color:#b00;max-width:70em}
tr.nothing td.method::after{content:" ∅";color:#a60}
tr.baseline td{color:#555;font-style:italic}
ul.notes,dl.glossary{font-size:0.85em;max-width:70em}
dl.glossary dt{font-weight:600;float:left;clear:left;margin-right:0.5em}
dl.glossary dd{margin:0 0 0.2em 0}
"""


def _html(title: str, tables: list[Table], figs: list[tuple[str, Path]], meta: str,
          rows: list[dict] | None = None) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}"
             f"</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>",
             f"<p>{e(meta)}</p>",
             f"<p class='legend'>{e(legend(tables)).replace('**Bold** (HTML: green)', 'Green')}"
             "</p>"]
    notes = data_notes(rows or [])
    if notes:
        parts.append("<h2 id='data'>Data</h2><ul class='notes data'>"
                     + "".join(f"<li>{e(n)}</li>" for n in notes) + "</ul>")
    parts.append("<details class='glossary'><summary>Glossary</summary><dl class='glossary'>"
                 + "".join(f"<dt>{e(term)}</dt><dd>{e(text)}</dd>"
                           for term, text in (g.split(": ", 1) for g in glossary_lines()))
                 + "</dl></details>")
    for i, t in enumerate(tables):
        parts.append(f"<h2 id='table-{i}'>{e(t.title)}</h2>")
        parts.append("<div class='scroll'>")
        parts.append(f"<table class='results' data-dataset='{e(t.dataset)}' "
                     f"data-augment='{e(t.augment)}' data-forget='{e(t.forget)}'><thead><tr>"
                     "<th>method</th><th>seeds</th><th>safety</th>"
                     + "".join(f"<th>{e(c.header)}</th>" for c in t.columns)
                     + "</tr></thead><tbody>")
        for r in t.rows:
            cls = []
            if r["gate_failed"]:
                cls.append("unsafe")
            if r["method"] == REFERENCE_METHOD:
                cls.append("reference")
            if r["method"] == ORIGINAL_METHOD:
                cls.append("baseline")
            if r["label"] in t.no_better:
                cls.append("nothing")
            tds = [f"<td class='method'>{e(r['label'])}</td><td>{r['n']}</td>"]
            if r["gate_failed"]:
                tds.append(f"<td class='unsafe' data-metric='safety' "
                           f"title='{e('; '.join(r['reasons']))}'>fails "
                           f"({r['gate_failed']}/{r['n']})</td>")
            else:
                tds.append("<td data-metric='safety'>pass</td>")
            for c in t.columns:
                best = " class='best'" if r["label"] in t.best.get(c.field, ()) else ""
                mean, sd = format_parts(*r["stats"][c.field], c, r["counts"][c.field])
                tds.append(f"<td data-metric='{c.field}'{best}>{e(mean)}"
                           + (f"<span class='sd'>{e(sd)}</span>" if sd else "") + "</td>")
            parts.append(f"<tr class='{' '.join(cls)}' data-method='{e(r['label'])}'>"
                         + "".join(tds) + "</tr>")
        parts.append("</tbody></table></div>")
        if t.degenerate:
            parts.append(f"<p class='degenerate'><b>{e(DEGENERATE_NOTE)}</b></p><ul>"
                         + "".join(f"<li>{e(why)}</li>" for why in t.degenerate) + "</ul>")
        if t.notes:
            parts.append("<ul class='notes'>" + "".join(f"<li>{e(n)}</li>" for n in t.notes)
                         + "</ul>")
        failing = [r for r in t.rows if r["gate_failed"]]
        if failing:
            parts.append("<details><summary>Safety verdict failures</summary><ul>"
                         + "".join(f"<li><b>{e(r['label'])}</b>: {e('; '.join(r['reasons']))}"
                                   "</li>" for r in failing) + "</ul></details>")
    subs = subgroup_tables(rows or [])
    if subs:
        parts += ["<h2 id='subgroups'>Subgroups</h2>", f"<p class='legend'>{e(SUBGROUP_NOTE)}</p>"]
    for t in subs:
        parts.append(f"<h3>{e(t['title'])}</h3><div class='scroll'><table class='results "
                     f"subgroups' data-column='{e(t['column'])}'><thead><tr>"
                     + "".join(f"<th>{e(h)}</th>" for h in subgroup_header(t))
                     + "</tr></thead><tbody>")
        for x in t["lines"]:
            cells = subgroup_row(x, t["levels"])
            parts.append("<tr><td class='method'>" + e(cells[0]) + "</td>"
                         + "".join(f"<td>{e(c)}</td>" for c in cells[1:]) + "</tr>")
        parts.append("</tbody></table></div>")
    parts.append("<h2>Figures</h2>")
    for cap, p in figs:
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        parts.append(f"<figure><img alt='{e(cap)}' src='data:image/png;base64,{data}'>"
                     f"<figcaption>{e(cap)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# The columns of the summary printed at the end of 'medunlearn experiment'.
SUMMARY_FIELDS = ("UA", "TA", "fnr", "global_risk", "average_gap_pp", "speedup")


def summary_text(rows: list[dict]) -> str:
    """A plain-text table per setting: one line per method with its key metrics (mean over
    seeds) and its safety verdict; ``*`` marks the best per column, as in the report; the
    table's notes (doing nothing, chance) under it; then the glossary, the report's own."""
    cols = [c for c in COLUMNS if c.field in SUMMARY_FIELDS]
    widths = [max(len(c.header), 5) + 1 for c in cols]
    lines = []
    for t in build_tables(rows):
        mw = max(len("method"), *(len(r["label"]) for r in t.rows)) + 2
        lines += ["", t.title]
        if t.degenerate:
            lines += ["  " + DEGENERATE_NOTE] + [f"    - {why}" for why in t.degenerate]
        lines.append(f"  {'method':<{mw}}{'seeds':>5}" + "".join(
            f"{c.header:>{w}}" for c, w in zip(cols, widths, strict=True)) + "  safety")
        for r in t.rows:
            vals = []
            for c, w in zip(cols, widths, strict=True):
                txt = format_stat(r["stats"][c.field][0], None, c, 1)
                vals.append(f"{txt + ('*' if r['label'] in t.best.get(c.field, ()) else ''):>{w}}")
            safety = (f"fails {r['gate_failed']}/{r['n']}" if r["gate_failed"] else "pass")
            ref = " (reference)" if r["method"] == REFERENCE_METHOD else ""
            ref += f" ({NO_BETTER})" if r["label"] in t.no_better else ""
            lines.append(f"  {r['label']:<{mw}}{r['n']:>5}" + "".join(vals) + f"  {safety}{ref}")
        lines += [f"  - {n}" for n in t.notes]
    lines += ["", "Glossary:"] + [f"- {g}" for g in glossary_lines()]
    return "\n".join(lines)


def write_report(results: str | os.PathLike, out: str | os.PathLike, *,
                 title: str | None = None, study=None) -> dict:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/``) into ``out``.

    Args:
        results: An experiment's results folder (or its ``results.sqlite``).
        out: The report folder.
        title: Page title (default: the study's or the experiments' names).
        study: An ``ExperimentConfig``: report only its cells (a results folder can hold
            several studies that share cells); missing cells are counted in the report.

    Returns:
        ``{"html": Path, "markdown": Path, "figures": [Path], "tables": int, "rows": int,
        "missing": int, "compute_seconds": {...}}``.

    Raises:
        ResultsStoreError: no results table at ``results``.
        MedUnlearnError: the table has no (matching) rows yet.
    """
    from medunlearn.errors import MedUnlearnError

    out = Path(out)
    with ResultsStore(results, create=False) as store:
        rows = store.rows()
        failures = store.failures()
    missing = 0
    if study is not None:
        labels = study_labels(study)  # resolves every cell's options once
        keys = set(labels)
        rows = study_rows(rows, study, labels)
        failures = [f for f in failures if f.get("key") in keys]
        missing = len(keys) - len(rows) - len({f.get("key") for f in failures})
        if not rows:
            raise MedUnlearnError(
                f"None of the {len(keys)} cells of study '{study.name}' is in {results} yet; "
                f"run 'medunlearn experiment {study.source or 'STUDY'} --out {results}' first.")
    if not rows:
        raise MedUnlearnError(f"The results table in {results} has no finished cells yet; run "
                              "'medunlearn experiment' first (or wait for it to finish a cell).")
    names = [study.name] if study is not None else sorted({r["experiment"] for r in rows})
    title = title or f"Unlearning experiment: {', '.join(names)}"
    seeds = sorted({r["seed"] for r in rows})
    cost = compute_time(rows)
    meta = (f"{len(rows)} finished cells, {len({r['label'] for r in rows})} methods, "
            f"seeds {', '.join(map(str, seeds))}; source {Path(results)}."
            + (f" {study.description}" if study is not None and study.description else "")
            + (f" {missing} cell(s) of the study are not in the results yet."
               if missing else "")
            + (f" {len(failures)} cell(s) failed and are missing (rerun the experiment)."
               if failures else "")
            + f" Compute time on the machine that ran it: {cost['total'] / 60:.1f} min "
            f"(original models {cost['originals'] / 60:.1f}, retrained references "
            f"{cost['references'] / 60:.1f}, unlearning + evaluation cells "
            f"{cost['cells'] / 60:.1f}).")
    tables = build_tables(rows)
    figs = make_figures(rows, out / "figures")
    md = atomic_write_text(out / "report.md", _markdown(title, tables, figs, out, meta, rows))
    page = atomic_write_text(out / "report.html", _html(title, tables, figs, meta, rows))
    return {"html": page, "markdown": md, "figures": [p for _, p in figs],
            "tables": len(tables), "rows": len(rows), "missing": missing,
            "compute_seconds": cost}


__all__ = ["legend", "summary_text", "write_report"]
