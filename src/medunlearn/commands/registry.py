"""``medunlearn registry``, ``medunlearn forget`` and ``medunlearn audit``: deletion requests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medunlearn.commands._common import DataRoot, NoDownload, echo_json

registry_app = typer.Typer(help="Register a deployed model and inspect its deletion requests.",
                           no_args_is_help=True)
audit_app = typer.Typer(help="Verify a registry's audit ledger; issue deletion certificates; "
                        "prove forgetting per image.",
                        no_args_is_help=True)

Reg = Annotated[Path, typer.Argument(help="Registry folder (from 'medunlearn registry init').")]
KeepSuperseded = Annotated[int, typer.Option(
    "--keep-superseded", min=0, max=1000, metavar="N",
    help="Keep the weights of the last N superseded model versions for rollback (0: after each "
         "request, delete the weights of every superseded version that holds a forgotten "
         "image; their records stay). 'registry residue' lists what is kept.")]


def _short(h: str | None) -> str:
    return (h or "-")[:16]


def _one_line(text: str | None, limit: int = 80) -> str:
    """``text`` on one line with control characters escaped (stored values are printed as
    data, never as extra output lines), cut to ``limit`` characters."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in (text or ""))
    return text if len(text) <= limit else text[:limit - 3] + "..."


@registry_app.command("init")
def init(
    model: Annotated[Path, typer.Option("--model", "-m", help="Run folder of the deployed model "
                                        "(from 'medunlearn train').")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Registry folder to create.")],
    methods: Annotated[str | None, typer.Option(
        help="Method chain, first = default, rest = fallbacks (default: newton,salun-cra,retrain "
             "for binary clinical views, newton,salun,retrain otherwise).")] = None,
    data_root: DataRoot = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing registry.")] = False,
    keep_superseded: KeepSuperseded = 0,
    shadows: Annotated[int | None, typer.Option(
        "--shadows", metavar="K",
        help="Also train K shadow models of the model with its own recipe (at least 4; 16 to "
             "32 recommended), so that every request's safety gate checks per image that the "
             "forgotten images no longer look like training images. Resumable: run the same "
             "command again to finish an interrupted training.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Register a model: copy it as version 1 and record its weights hash and image manifest."""
    from medunlearn.registry import init_registry, status
    from medunlearn.registry.preflight import check_init_options
    from medunlearn.registry.shadows import check_k

    if shadows is not None:
        check_k(shadows)  # before anything is written
    chain = check_init_options(model, methods=methods, data_root=data_root)
    init_registry(model, out, methods=chain, data_root=data_root, overwrite=overwrite,
                  keep_superseded=keep_superseded, shadows=shadows, progress=not quiet)
    st = status(out)
    v = st["active_version"]
    typer.echo(f"registry {out}: version {v['n']} (weights {_short(v['weights_sha256'])}...), "
               f"{st['samples']['total']} training images in the manifest, methods "
               f"{' -> '.join(st['methods'])}")
    _echo_shadows(out, st)


def _echo_shadows(reg: Path, st: dict) -> None:
    sh = st.get("shadows")
    if sh:
        typer.echo(f"shadow models: {sh['k']} (generation {sh['generation']}) in "
                   f"{sh['folder']}; every request's gate runs the per-image membership check")
    else:
        from medunlearn.registry.shadow_records import command

        typer.echo(f"shadow models: none; the gate's per-image membership check is not run "
                   f"until '{command(reg)}' trains them")


@registry_app.command("shadows")
def shadows_cmd(
    reg: Reg,
    k: Annotated[int, typer.Option("--k", metavar="K", help="Number of shadow models (at least "
                                   "4; 16 to 32 recommended).")] = 16,
    seed: Annotated[int | None, typer.Option(metavar="INT", help="Base seed of the design and "
                                             "of every shadow (default: the registry's).")
                    ] = None,
    replace: Annotated[bool, typer.Option(
        "--replace", help="Train a new set although one is recorded (another K or seed); the "
        "old set is purged.")] = False,
    data_root: DataRoot = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads for torch.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
    wait: Annotated[float | None, typer.Option(
        help="Seconds to wait for another process changing the registry (default: as long as "
             "it takes).")] = None,
) -> None:
    """Train the registry's K shadow models with the model's own recipe (each on a random half
    of the training images, none on a forgotten one), so that every request's safety gate
    checks per image that the forgotten images no longer look like training images.

    Resumable (finished shadows are reused); on a registry whose set is current it does nothing.
    After each request the registry retrains every shadow trained on a forgotten image.
    """
    from medunlearn.registry.shadows import check_k, train

    check_k(k)
    r = train(reg, k=k, seed=seed, data_root=data_root, replace=replace, progress=not quiet,
              lock_timeout=wait, threads=threads)
    what = {"trained": f"trained {r['k']} shadow models",
            "refreshed": f"retrained {r['retrained']} of {r['k']} shadow models without the "
                         "forgotten images",
            "current": f"its {r['k']} shadow models are current (none holds a forgotten "
                       "image); nothing to do"}[r["status"]]
    typer.echo(f"registry {reg}: {what} (generation {r['generation']}, {r['folder']}"
               + (f", {r['seconds']:.0f} s" if r["seconds"] else "") + ")")
    if r["purged"]:
        typer.echo(f"purged {r['purged']} file(s) of the superseded shadow models")


@registry_app.command("status")
def status_cmd(
    reg: Reg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the full status as JSON.")] = False,
) -> None:
    """Show the active version, pending, completed and failed requests."""
    from medunlearn.registry import status

    st = status(reg)
    if as_json:
        echo_json(st)
        if not st["audit"]["ok"]:
            raise typer.Exit(1)
        return
    v = st["active_version"]
    typer.echo(f"registry {reg} ({st['dataset']}); methods {' -> '.join(st['methods'])}")
    typer.echo(f"active version: {v['n']}  weights {v.get('weights_sha256')}  method "
               f"{v.get('method') or 'original'}")
    s = st["samples"]
    typer.echo(f"images: {s['total']} in the manifest, {s['forgotten']} forgotten, "
               f"{s['withdrawn']} withdrawn from training")
    x = st["exactness"]
    if x["exact"]:
        typer.echo("active model: exact (trained or retrained without every withdrawn image)")
    else:
        parts = []
        if x["approximate_steps"]:
            parts.append(f"{x['approximate_steps']} approximate unlearning step(s) since the "
                         "last exact model")
        if x["withdrawn_not_forgotten"]:
            parts.append(f"{x['withdrawn_not_forgotten']} withdrawn image(s) whose request did "
                         "not finish are still in it")
        typer.echo(f"active model: {'; '.join(parts)}. 'medunlearn registry consolidate "
                   f"{reg} --id ID' retrains it exactly.")
    _echo_shadows(reg, st)
    for name in ("pending", "completed", "failed"):
        reqs = st["requests"].get(name, [])
        typer.echo(f"{name} requests: {len(reqs)}")
        for r in reqs:
            typer.echo(f"  {_one_line(r['id']):<24} subject {_one_line(r['subject']) or '-':<16} "
                       f"v{r['from_version']} -> "
                       f"v{r['to_version'] if r['to_version'] is not None else '?'}  "
                       f"{r['completed'] or r['submitted']}")
    typer.echo(f"ledger: {st['ledger']['entries']} entries; head (keep a copy outside the "
               f"registry, check with 'audit verify --anchor'): "
               f"{st['ledger']['entries']}:{st['ledger']['head']}")
    if not st["audit"]["ok"]:
        for p in st["audit"]["problems"]:
            typer.secho(f"FAIL {p}", err=True, fg="red")
        typer.secho(f"the registry {reg} does not match its audit ledger: what is shown above "
                    f"cannot be trusted. Run 'medunlearn audit verify {reg}'.", err=True,
                    fg="red")
        raise typer.Exit(1)


@registry_app.command("manifest")
def manifest_cmd(
    reg: Reg,
    out: Annotated[Path, typer.Option("--out", "-o", help="CSV file to write.")],
) -> None:
    """Export the training manifest with each image's forgotten status (hashes only)."""
    from medunlearn.registry import export_manifest

    export_manifest(reg, out)
    typer.echo(f"wrote {out}")


@registry_app.command("residue")
def residue_cmd(
    reg: Reg,
    as_json: Annotated[bool, typer.Option("--json", help="Print the list as JSON.")] = False,
) -> None:
    """List every file still in the registry derived from a forgotten image (exit 1 if any).

    Superseded versions' weights (purged after each request unless --keep-superseded keeps
    them), staging folders, per-image checks' work runs, feature tables the ledger does not
    vouch for, and any other model file. Copies outside the registry (deployed models, backups,
    the training data) are not seen.
    """
    from medunlearn.registry.residue import NOT_REACHABLE, residue

    found = residue(reg)
    if as_json:
        echo_json({"registry": str(reg), "residue": found, "not_reachable": NOT_REACHABLE})
    elif not found:
        typer.echo(f"residue of {reg}: none (no file in the registry is derived from a "
                   "forgotten image)")
    else:
        typer.echo(f"residue of {reg}: {len(found)} file(s) derived from forgotten images")
        for f in found:
            until = (f"; kept for rollback until version {f['kept_until']} is promoted"
                     if f.get("kept_until") else "")
            typer.echo(f"  {_one_line(f['path'], 200)}  ({f['what']}{until})")
    if not as_json:
        typer.echo("not reachable from here: " + "; ".join(NOT_REACHABLE))
    if found:
        raise typer.Exit(1)


@registry_app.command("resume")
def resume_cmd(reg: Reg, data_root: DataRoot = None, no_download: NoDownload = False) -> None:
    """Clean up after an interrupted run and finish every pending request."""
    from medunlearn.registry import resume

    results = resume(reg, data_root=data_root, download=not no_download,
                     log=lambda m: typer.echo(m, err=True))
    typer.echo(f"finished {len(results)} pending request(s)")


def forget_cmd(
    reg: Reg,
    request: Annotated[Path, typer.Option("--request", "-r", help="Deletion request JSON file "
                                          "(its format is shown above).")],
    data_root: DataRoot = None,
    no_download: NoDownload = False,
    seed: Annotated[int | None, typer.Option(
        help="Unlearning seed (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    wait: Annotated[float | None, typer.Option(
        help="Seconds to wait for another process changing the registry (default: as long as "
             "it takes).")] = None,
    keep_superseded: Annotated[int | None, typer.Option(
        "--keep-superseded", min=0, max=1000, metavar="N",
        help="For this request: keep the weights of the last N superseded versions (default: "
             "the registry's setting from 'registry init', else 0).")] = None,
) -> None:
    from medunlearn.registry import process_request

    result = process_request(reg, request, data_root=data_root, seed=seed, lock_timeout=wait,
                             download=not no_download, keep_superseded=keep_superseded,
                             log=lambda m: typer.echo(m, err=True))
    if as_json or result.get("reused") or not result.get("attempts"):
        _report_result(reg, result, as_json)
        return
    _echo_attempts(reg, result)
    try:
        _report_result(reg, result, as_json)
    finally:
        rid = result["request_id"]
        where = result.get("certificate")
        typer.echo(f"certificate: {where}" if where else
                   f"certificate: 'medunlearn audit show {reg} {rid} --out DIR' writes "
                   "DIR/certificate.json and DIR/certificate.html for this request")


def _forget_help() -> str:
    """``forget``'s help: one sentence, then the request format of
    :data:`~medunlearn.registry.deletion_request.REQUEST_SCHEMA` (its one description), kept
    line by line (click's \\b marks a paragraph it must not rewrap)."""
    from medunlearn.registry.deletion_request import REQUEST_SCHEMA

    paragraphs = REQUEST_SCHEMA.strip("\n").split("\n\n")
    return ("Forget a patient's images: unlearn, verify safety, promote a new version (or fall "
            "back).\n\n" + "\n\n".join("\b\n" + p for p in paragraphs))


forget_cmd.__doc__ = _forget_help()


def _echo_attempts(reg: Path, result: dict) -> None:
    """Each attempt's safety checks, one line each (passed, failed, cannot say, not run, with
    the measured value and what was accepted), and results to flag in words: an attack that got
    stronger after unlearning, a gap to the reference larger than a second retraining's."""
    from medunlearn.registry import certificate
    from medunlearn.registry.certificate_membership import text_lines

    cert = certificate(reg, result["request_id"])
    for a in cert["attempts"]:
        verdict = "passed the safety gate" if a["passed"] else "did not pass the safety gate"
        typer.echo(f"attempt {a['attempt']} ({a['method']}): {verdict}")
        if a.get("error"):
            typer.echo(f"  error: {_one_line(a['error'], 200)}")
        for c in a.get("checks") or []:  # the certificate's plain-words checks
            typer.echo(f"  {_check_line(c)}")
        for w in a.get("warnings") or []:
            typer.secho(f"  warning: {w}", fg="yellow")
    for line in text_lines(cert.get("membership")):
        typer.echo(line)
    if result["status"] != "completed":
        typer.echo(f"next: 'medunlearn registry consolidate {reg} --id ID' retrains exactly "
                   "without every withdrawn image (these included); to make that the automatic "
                   "last resort, register with a method chain ending in retrain ('registry init "
                   "--methods ...,retrain').")


def _check_line(c: dict) -> str:
    """``Accuracy: passed (measured 0.01; accepted at most 0.05 (0 + 0.05))``."""
    from medunlearn.registry.wording import fmt

    line = f"{c['check']}: {c['outcome']}"
    if c["outcome"] in ("passed", "failed") and c.get("measured") is not None:
        line += f" (measured {fmt(c['measured'])}; accepted {c.get('limit_text') or '-'})"
    elif c["outcome"] == "cannot say" and c.get("measured") is not None:
        line += f" (measured {fmt(c['measured'])}; too few images for this test)"
    elif c["outcome"] == "not run":
        line += " (needs a model retrained without the images)" if "retraining" in c[
            "check"] else ""
    return line


@registry_app.command("consolidate")
def consolidate_cmd(
    reg: Reg,
    request_id: Annotated[str, typer.Option("--id", help="Id of this consolidation in the "
                                            "ledger, e.g. 'CONS-2026-11'.")],
    subject: Annotated[str, typer.Option(
        help="Opaque reference recorded with it (who asked, or the schedule).")] =
        "scheduled-consolidation",
    note: Annotated[str, typer.Option(help="Free-text note for the ledger.")] = "",
    data_root: DataRoot = None,
    no_download: NoDownload = False,
    seed: Annotated[int | None, typer.Option(
        help="Training seed (default: the model's).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    wait: Annotated[float | None, typer.Option(
        help="Seconds to wait for another process changing the registry (default: as long as "
             "it takes).")] = None,
) -> None:
    """Retrain from scratch without every image forgotten so far, verify, promote.

    Run it now and then (e.g. monthly) to replace approximate unlearning by exact retraining.
    A sharded model retrains only the shards whose data changed since its last exact version
    (sisa from that version's checkpoints), while they are kept (--keep-superseded at init);
    otherwise every shard.
    """
    from medunlearn.registry import process_request

    request = {"id": request_id, "subject": subject, "note": note, "consolidate": True}
    result = process_request(reg, request, data_root=data_root, seed=seed, lock_timeout=wait,
                             download=not no_download, log=lambda m: typer.echo(m, err=True))
    _report_result(reg, result, as_json)


def _shards_line(method: str, sh: dict) -> str:
    """Which shards an exact unlearning of a sharded model retrained, in one line."""
    kept = f"; shard(s) {', '.join(map(str, sh['kept']))} kept byte for byte" if sh["kept"] \
        else ""
    return (f"  {method} from version {sh['start_version']} retrained shard(s) "
            f"{', '.join(map(str, sh['retrained'])) or 'none'} of {sh['count']} "
            f"({sh['retrained_stages']} of {sh['total_stages']} slice stages){kept}")


def _report_result(reg: Path, result: dict, as_json: bool) -> None:
    """Print a request's result; exit 1 when no method passed the safety gate."""
    rid = result["request_id"]
    what = "consolidation" if result.get("consolidate") else "request"
    if as_json:
        echo_json(result)
    elif result.get("reused"):
        typer.echo(f"{what} {rid} was already {result['status']} (version "
                   f"{result['to_version']}); nothing to do")
    elif result["status"] == "completed" and result["from_version"] == result["to_version"]:
        why = result.get("noop_reason") or (f"all {result['already_forgotten']} image(s) were "
                                            "already forgotten")
        typer.echo(f"{what} {rid}: nothing to do ({why}); version {result['to_version']} stays "
                   "active")
    elif result["status"] == "completed" and result.get("consolidate"):
        typer.echo(f"consolidation {rid}: retrained without the {result['consolidated']} "
                   f"image(s) forgotten so far; version {result['to_version']} is active "
                   f"(weights {_short(result['weights_after'])}...)")
        if result.get("shards"):
            typer.echo(_shards_line(result["method"], result["shards"]))
    elif result["status"] == "completed":
        typer.echo(f"request {rid}: forgot {result['forgotten']} image(s) with "
                   f"{result['method']}; version {result['to_version']} is active (weights "
                   f"{_short(result['weights_after'])}...)")
        if result.get("shards"):
            typer.echo(_shards_line(result["method"], result["shards"]))
    if result["status"] == "completed":
        return
    if result.get("consolidate"):
        typer.secho(f"consolidation {rid}: the exact retraining did not pass the safety gate; "
                    f"version {result['from_version']} stays active. See 'medunlearn audit "
                    f"show {reg} {rid} --out DIR'; rerun the same command to retry.",
                    err=True, fg="red")
    else:
        typer.secho(f"request {rid}: no method passed the safety gate "
                    f"({', '.join(a['method'] for a in result['attempts'])}); version "
                    f"{result['from_version']} stays active and the images are withdrawn from "
                    f"all further training. See 'medunlearn audit show {reg} {rid} --out DIR'.",
                    err=True, fg="red")
    raise typer.Exit(1)


@audit_app.command("verify")
def verify_cmd(
    reg: Reg,
    load_models: Annotated[bool, typer.Option(help="Also load every version's weights "
                                              "(safetensors, no pickle).")] = False,
    anchor: Annotated[list[str] | None, typer.Option(
        help="SEQ:HASH of a ledger entry kept outside the registry (e.g. the head printed by "
             "'registry status'); repeatable.")] = None,
    certificate: Annotated[list[Path] | None, typer.Option(
        help="A certificate.json issued earlier: its ledger entries must still be in the "
             "ledger and every statement in it must match the registry; repeatable.")] = None,
) -> None:
    """Check the ledger's hash chain, every model file's SHA-256 and the tables (exit 1 if not).

    Works on a read-only copy of a registry (nothing is written to it). With --certificate,
    every statement of the certificate must match the registry as well.
    """
    from medunlearn.registry import audit_registry
    from medunlearn.registry.audit import parse_anchor

    anchors = [parse_anchor(a) for a in anchor or []]
    report = audit_registry(reg, load_models=load_models, anchors=anchors,
                            certificate_files=certificate or [])
    if not report.ok:
        for p in report.problems:
            typer.secho(f"FAIL {p}", err=True, fg="red")
        typer.secho(f"audit of {reg} failed: {len(report.problems)} problem(s)", err=True,
                    fg="red")
        raise typer.Exit(1)
    for w in report.warnings:
        typer.secho(f"WARNING {w}", err=True, fg="yellow")
    c = report.checked
    typer.echo(f"audit of {reg} OK: {c['ledger_entries']} ledger entries, {c['versions']} model "
               f"versions, {c['samples']} manifest images ({c['forgotten']} forgotten), "
               f"{c['anchors']} external anchor(s) matched, {c['certificates']} certificate(s) "
               f"match the registry; head {c['head']}")
    if c.get("purged_by_design"):
        typer.echo(f"purged by design: {c['purged_by_design']} file(s) of superseded versions "
                   "(recorded in the ledger's purge entries with their hashes)")


@audit_app.command("show")
def show_cmd(
    reg: Reg,
    request_id: Annotated[str, typer.Argument(help="The request's id.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for certificate.json and "
                                      "certificate.html.")],
) -> None:
    """Write a deletion certificate (JSON + self-contained HTML) for one request."""
    from medunlearn.registry import write_certificate
    from medunlearn.registry.certificate_membership import text_lines

    cert = write_certificate(reg, request_id, out)
    for line in text_lines(cert.get("membership")):
        typer.echo(line)
    typer.echo(f"certificate of {request_id} ({cert['request']['status']}, "
               f"{len(cert['forgotten'])} image(s)): {out / 'certificate.html'}")


@audit_app.command("forgetting-quality")
def forgetting_quality_cmd(
    reg: Reg,
    request_id: Annotated[str, typer.Argument(help="A completed deletion request's id.")],
    n: Annotated[int, typer.Option("--n", metavar="N", help="Unlearned and retrained models "
                                   "each (at least 3; more gives a finer estimate).")] = 16,
    data_root: DataRoot = None,
    no_download: NoDownload = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress display.")] = False,
) -> None:
    """Prove forgetting per image for one request (costly: 2N trainings).

    Unlearns the request's starting version N times with the promoted method and retrains it N
    times without the request's images, scores each image, and records the result in the
    ledger; the request's certificate then shows it. Finished trainings under
    REG/forgetting_quality/ are reused.
    """
    from medunlearn.commands._common import fmt
    from medunlearn.evaluation.forgetting_quality import check_n, mismatch_reading
    from medunlearn.registry.forgetting_proof import forgetting_quality_for
    from medunlearn.registry.proof_records import RECORD_FILE, folder

    check_n(n)
    rec = forgetting_quality_for(reg, request_id, n=n, data_root=data_root,
                                 download=not no_download, progress=not quiet)
    lo, hi = rec["forgetting_quality_ci"]
    typer.echo(f"request {request_id}: {rec['forget_count']} image(s), {rec['method']} from "
               f"version {rec['from_version']}, N = {n} unlearned + {n} retrained models")
    typer.echo(f"forgetting quality {fmt(rec['forgetting_quality'])} "
               f"[95% CI {fmt(lo)}, {fmt(hi)}]; retraining itself scores "
               f"~{fmt(rec['forgetting_quality_null'])} at this N")
    summary = rec.get("summary") or {}
    reading = mismatch_reading(summary.get("spread_ratio"), summary.get("confidence_shift"))
    if reading and not rec.get("identical_unlearned_models"):
        typer.echo(f"against retraining: {reading}")
    for x in rec["examples"]:
        typer.echo(f"  {x['sha256'][:16]}  epsilon {fmt(x['epsilon'])}  U-LiRA "
                   f"{fmt(x.get('ulira_accuracy'))}")
    if rec.get("note"):
        typer.echo(f"note: {rec['note']}")
    typer.echo(f"recorded in ledger entry {rec['ledger_seq']}; "
               f"{folder(reg, request_id) / RECORD_FILE}; 'medunlearn audit show "
               f"{reg} {request_id} --out DIR' puts it in the certificate")


def register(app: typer.Typer) -> None:
    app.add_typer(registry_app, name="registry")
    app.add_typer(audit_app, name="audit")
    app.command("forget")(forget_cmd)
