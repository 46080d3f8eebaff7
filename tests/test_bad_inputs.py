"""A catalogue of bad inputs across the commands: each one must end with exit code 2, one clear
message naming the problem, no traceback, and nothing changed on disk (every file, its mode, and
the registry database's content compared before and after)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medunlearn.cli import main
from medunlearn.registry import forget, init_registry
from medunlearn.testing import fake_unlearn, fake_verify, make_synthetic_npz

HEX = "ab" * 32
NOT_UTF8 = b"\xff\xfe\x00bad\n"


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _req(**fields) -> bytes:
    return _json({"id": "R9", "subject": "s9", "indices": [7]} | fields)


#: Input files of the workspace (name -> bytes).
FILES = {
    "not-utf8.txt": NOT_UTF8,
    "file.txt": b"an existing file\n",
    "study-epochs.yaml": b"datasets: [breastmnist]\nforget: ['random:0.1']\nmethods: [retrain]\n"
                         b"train: {epochs: -1}\n",
    "study-size.yaml": b"datasets: [breastmnist]\nforget: ['random:0.1']\nmethods: [retrain]\n"
                       b"size: abc\n",
    "study-method-option.yaml": b"datasets: [breastmnist]\nforget: ['random:0.1']\n"
                                b"methods: [{name: salun, options: {epochs: 0}}]\n",
    "study-gate.yaml": b"datasets: [breastmnist]\nforget: ['random:0.1']\nmethods: [retrain]\n"
                       b"gate: {fnr_tolerance: -1}\n",
    "study.yaml": b"datasets: [breastmnist]\nforget: ['random:0.1']\nmethods: [retrain]\n",
    "req-ok.json": _req(),
    "req-not-utf8.json": NOT_UTF8,
    "req-not-json.json": b"{id: R9",
    "req-deep.json": b"[" * 200_000 + b"]" * 200_000,
    "req-list.json": b"[1, 2]",
    "req-newline-id.json": _req(id="DR-nl\n"),
    "req-long-id.json": _req(id="D" * 200),
    "req-big-subject.json": _req(subject="x" * 10_000_000),
    "req-big-note.json": _req(note="n" * 10_000_000),
    "req-newline-subject.json": _req(subject="ok\nactive version: 1 exact"),
    "req-empty-subject.json": _req(subject="  "),
    "req-not-hex.json": _req(indices=None, images=["zz" * 32]),
    "req-unknown-hash.json": _req(indices=None, images=[HEX]),
    "req-unknown-key.json": _req(patient="Jane Doe"),
    "req-no-images.json": _req(indices=[]),
    "req-bool-index.json": _req(indices=[True]),
    "req-negative-index.json": _req(indices=[-1]),
    "req-out-of-range.json": _req(indices=[10**6]),
    "req-unknown-method.json": _req(method="nope"),
    "req-reused-id.json": _req(id="R1"),
    "req-consolidate-images.json": _req(consolidate=True),
    "req-control-note.json": _req(note="bell\x07"),
    # issue 29 section 3: inputs that could spoof a certificate, or end in a traceback
    "req-dotdot-id.json": _req(id="a/../../x"),
    "req-duplicate-id.json": b'{"id": "R9", "subject": "s9", "indices": [7], "id": "R1"}',
    "req-nel-subject.json": _req(subject="ref\x85active version: 9"),
    "req-csi-subject.json": _req(subject="ref\x9b31mred"),
    "req-bidi-subject.json": _req(subject="ref-\u202egnp.exe"),
    "req-line-separator-subject.json": _req(subject="ref\u2028status: completed"),
    "req-paragraph-separator-subject.json": _req(subject="ref\u2029x"),
    "req-bidi-note.json": _req(note="see \u202eticket"),
    "req-nel-patient.json": _req(indices=None, patients=["P1\x85"]),
    "req-bidi-patient.json": _req(indices=None, patients=["P\u202e1"]),
    "req-1mb-unknown-key.json": _req(**{"k" * 1_000_000: 1}),
    "req-5000-digit-index.json": b'{"id": "R9", "subject": "s9", "indices": [' + b"9" * 5000
                                 + b"]}",
    "req-3000-digit-index.json": b'{"id": "R9", "subject": "s9", "indices": [' + b"9" * 3000
                                 + b"]}",
    "study-1mb-key.yaml": b"datasets: [breastmnist]\nforget: ['random:0.1']\nmethods: [retrain]\n"
                          b"train:\n  ? " + b"k" * 1_000_000 + b"\n  : 1\n",
}


def _png(size: tuple[int, int], value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, value).save(buf, format="PNG")
    return buf.getvalue()


def _bomb_png(side: int = 40_000) -> bytes:
    """A PNG whose header declares side x side pixels (far over PIL's limit) and whose data is
    a few bytes: PIL refuses it when it reads the header."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grey
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def _csv_sources(ws: Path) -> None:
    """Small CSV-manifest sources, each wrong in one way (grey PNGs of 8 pixels)."""
    def source(name: str, rows: list[str], header: str = "path,label",
               images: dict[str, bytes] | None = None, encoding: str = "utf-8") -> None:
        d = ws / "csv" / name
        d.mkdir(parents=True)
        for i in range(8):
            (d / f"{i}.png").write_bytes(_png((8, 8), 30 * i))
        for fname, data in (images or {}).items():
            (d / fname).write_bytes(data)
        (d / "labels.csv").write_bytes("\n".join([header, *rows, ""]).encode(encoding))

    ok = [f"{i}.png,{i % 2}" for i in range(8)]
    source("ok", ok)
    source("mixed-sizes", ok + ["big.png,1"], images={"big.png": _png((12, 12))})
    source("unknown-split", [f"{i}.png,{i % 2},{'trian' if i == 3 else 'train'}"
                             for i in range(8)], header="path,label,split")
    source("latin1", ok + ["caf\xe9.png,1"], images={"caf\xe9.png": _png((8, 8))},
           encoding="latin-1")
    source("bomb", ok + ["bomb.png,1"], images={"bomb.png": _bomb_png()})
    source("nel-patient", [f"{i}.png,{i % 2},{'P1' + chr(0x85) if i == 2 else f'P{i}'}"
                           for i in range(8)], header="path,label,patient_id")


def _broken_models(ws: Path, model_dir: Path) -> None:
    """Run folders whose manifest.csv no longer matches config.json."""
    lines = (model_dir / "manifest.csv").read_text().splitlines()
    i, h, _ = lines[8].split(",")
    for name, kept in {"model-manifest-header-only": lines[:1],
                       "model-manifest-cut-to-100": lines[:101],
                       "model-manifest-label-7": [*lines[:8], f"{i},{h},7", *lines[9:]]}.items():
        shutil.copytree(model_dir, ws / name)
        (ws / name / "manifest.csv").write_text("\n".join(kept) + "\n")


@pytest.fixture(scope="module")
def base(model_dir, tmp_path_factory):
    """A workspace: run folders (good and damaged), a registry with one request, input files."""
    ws = tmp_path_factory.mktemp("bad-inputs") / "ws"
    ws.mkdir()
    for name, data in FILES.items():
        (ws / name).write_bytes(data)
    (ws / "empty").mkdir()
    shutil.copytree(model_dir, ws / "model")
    variants = {
        "model-cfg-not-utf8": ("config.json", NOT_UTF8),
        "model-metrics-not-json": ("metrics.json", b"{not json"),
        "model-no-data": ("config.json", _json({k: v for k, v in json.loads(
            (model_dir / "config.json").read_text()).items() if k != "data"})),
    }
    for name, (file, data) in variants.items():
        shutil.copytree(model_dir, ws / name)
        (ws / name / file).write_bytes(data)
    shutil.copytree(model_dir, ws / "model-manifest-not-hex")
    manifest = ws / "model-manifest-not-hex" / "manifest.csv"
    lines = manifest.read_text().splitlines()
    i, _, label = lines[1].split(",")
    manifest.write_text("\n".join([lines[0], f"{i},{'zz' * 32},{label}", *lines[2:]]) + "\n")
    init_registry(model_dir, ws / "reg", methods=["salun-cra", "retrain"])
    forget(ws / "reg", {"id": "R1", "subject": "s1", "indices": [1, 2]}, unlearn=fake_unlearn,
           verify=fake_verify)
    # a registry whose journal cannot be created: what SQLite reports for a read-only registry
    shutil.copytree(ws / "reg", ws / "reg-locked")
    (ws / "reg-locked" / "registry.db-wal").mkdir()
    frac = make_synthetic_npz(ws / "frac" / "breastmnist.npz", n_classes=2)
    arrays = dict(np.load(frac))
    arrays["train_labels"] = arrays["train_labels"].astype(np.float64) + 0.5
    np.savez_compressed(frac, **arrays)
    (ws / "corrupt-root").mkdir()
    (ws / "corrupt-root" / "breastmnist.npz").write_bytes(b"PK\x03\x04 not really a zip" * 50)
    _csv_sources(ws)
    _broken_models(ws, model_dir)
    _fold_sets(ws)
    return ws


def _fold_sets(ws: Path) -> None:
    """K-fold sets that do not fit a run (oracle-match): trained on other data, made for another
    model, and a shadow set where K-fold models are needed (members trained one epoch)."""
    import dataclasses

    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.config import DataConfig, TrainConfig
    from medunlearn.data import load_dataset
    from medunlearn.evaluation.companions import KFOLD, Recipe, balanced_halves, kfold_masks
    from medunlearn.runs.shadows import train_companions
    from medunlearn.training import model_from_spec

    run, data = load_run_and_data(ws / "model")
    spec = run.config["model"]
    recipe = Recipe(build=lambda: model_from_spec(spec), spec=spec,
                    train=TrainConfig(epochs=1, threads=1, progress=False, device="cpu"))
    other = load_dataset(dataclasses.replace(DataConfig(**run.config["data"]), train_limit=100),
                         seed=0)
    train_companions(other, kfold_masks(len(other.train), 2, seed=0), recipe=recipe,
                     out=ws / "folds-other-data", kind=KFOLD, progress=False,
                     rebuild="medunlearn shadows {ws}/model --kind kfold --k 2")
    train_companions(data, balanced_halves(len(data.train), 4, seed=0), recipe=recipe,
                     out=ws / "shadow-set", progress=False)
    shutil.copytree(ws / "model", ws / "model-fp")
    cfg = json.loads((ws / "model-fp" / "config.json").read_text())
    (ws / "model-fp" / "config.json").write_text(json.dumps(cfg | {"fingerprint": "aaaa"}))
    train_companions(data, kfold_masks(len(data.train), 2, seed=0), recipe=recipe,
                     out=ws / "model-fp" / "kfold", kind=KFOLD, progress=False,
                     source={"path": "another/run", "fingerprint": "bbbb"},
                     rebuild="medunlearn shadows another/run --kind kfold --k 2")


def snapshot(ws: Path) -> dict:
    """Every path with its mode and content hash; registry databases by their SQL dump."""
    out = {}
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws).as_posix()
        if p.name.endswith(("-wal", "-shm")):
            continue
        if p.name == "registry.db" and not (p.parent / "registry.db-wal").is_dir():
            conn = sqlite3.connect(f"file:{p}?mode=ro", uri=True)
            out[rel] = "\n".join(conn.iterdump())
            conn.close()
        else:
            out[rel] = (p.stat().st_mode, hashlib.sha256(p.read_bytes()).hexdigest()
                        if p.is_file() else None)
    return out


R = "{ws}/reg"
#: (case id, arguments, a fragment the message must contain)
CASES = [
    # registry commands pointed at something that is not a registry
    ("forget-missing-folder", ["forget", "{ws}/nowhere", "--request", "{ws}/req-ok.json"],
     "does not exist"),
    ("forget-not-a-registry", ["forget", "{ws}/empty", "--request", "{ws}/req-ok.json"],
     "is not a medunlearn registry"),
    ("resume-not-a-registry", ["registry", "resume", "{ws}/empty"], "not a medunlearn registry"),
    ("status-not-a-registry", ["registry", "status", "{ws}/empty"], "not a medunlearn registry"),
    ("verify-not-a-registry", ["audit", "verify", "{ws}/model"], "not a medunlearn registry"),
    ("manifest-not-a-registry", ["registry", "manifest", "{ws}/empty", "--out", "{ws}/m.csv"],
     "not a medunlearn registry"),
    # audit
    ("verify-bad-anchor", ["audit", "verify", R, "--anchor", "12-abc"], "is not SEQ:HASH"),
    ("verify-anchor-not-hex", ["audit", "verify", R, "--anchor", "1:" + "zz" * 32],
     "is not SEQ:HASH"),
    ("verify-certificate-not-utf8", ["audit", "verify", R, "--certificate",
                                     "{ws}/not-utf8.txt"], "is not a medunlearn certificate"),
    ("verify-certificate-missing", ["audit", "verify", R, "--certificate", "{ws}/nope.json"],
     "does not exist"),
    ("show-unknown-request", ["audit", "show", R, "NOPE", "--out", "{ws}/cert"],
     "has no request 'NOPE'"),
    ("show-out-is-a-file", ["audit", "show", R, "R1", "--out", "{ws}/file.txt"], "is a file"),
    ("manifest-out-is-a-folder", ["registry", "manifest", R, "--out", "{ws}/empty"],
     "it is a folder"),
    # shadow models of a registry
    ("init-too-few-shadows", ["registry", "init", "--model", "{ws}/model", "--out", "{ws}/new",
                              "--shadows", "3"], "shadow models are too few"),
    ("shadows-too-few", ["registry", "shadows", R, "--k", "2"], "shadow models are too few"),
    ("shadows-not-a-registry", ["registry", "shadows", "{ws}/empty", "--k", "4"],
     "not a medunlearn registry"),
    # registry init
    ("init-missing-model", ["registry", "init", "--model", "{ws}/nowhere", "--out",
                            "{ws}/new"], "does not exist"),
    ("init-config-not-utf8", ["registry", "init", "--model", "{ws}/model-cfg-not-utf8",
                              "--out", "{ws}/new"], "is not a valid medunlearn run config"),
    ("init-config-without-data", ["registry", "init", "--model", "{ws}/model-no-data",
                                  "--out", "{ws}/new"], "no 'data' section"),
    ("init-metrics-not-json", ["registry", "init", "--model", "{ws}/model-metrics-not-json",
                               "--out", "{ws}/new"], "metrics.json is not valid JSON"),
    ("init-manifest-not-hex", ["registry", "init", "--model", "{ws}/model-manifest-not-hex",
                               "--out", "{ws}/new"], "do not hold SHA-256 hashes"),
    ("init-out-not-empty", ["registry", "init", "--model", "{ws}/model", "--out", R],
     "already holds files"),
    ("init-unknown-method", ["registry", "init", "--model", "{ws}/model", "--out", "{ws}/new",
                             "--methods", "nope"], "method chain nope is invalid"),
    ("init-repeated-method", ["registry", "init", "--model", "{ws}/model", "--out", "{ws}/new",
                              "--methods", "retrain,retrain"], "distinct method names"),
    # consolidation options
    ("consolidate-bad-id", ["registry", "consolidate", R, "--id", "C 1"], "needs an 'id'"),
    ("consolidate-newline-id", ["registry", "consolidate", R, "--id", "C1\n"], "needs an 'id'"),
    ("consolidate-newline-subject", ["registry", "consolidate", R, "--id", "C1", "--subject",
                                     "a\nb"], "'subject' must be"),
    # deletion requests
    ("request-missing", ["forget", R, "--request", "{ws}/nope.json"], "does not exist"),
    ("request-not-utf8", ["forget", R, "--request", "{ws}/req-not-utf8.json"], "not UTF-8"),
    ("request-not-json", ["forget", R, "--request", "{ws}/req-not-json.json"],
     "is not valid JSON"),
    ("request-nested-200000-deep", ["forget", R, "--request", "{ws}/req-deep.json"],
     "nested too deeply"),
    ("request-is-a-list", ["forget", R, "--request", "{ws}/req-list.json"],
     "must be a JSON object"),
    ("request-id-trailing-newline", ["forget", R, "--request", "{ws}/req-newline-id.json"],
     "needs an 'id'"),
    ("request-id-too-long", ["forget", R, "--request", "{ws}/req-long-id.json"],
     "needs an 'id'"),
    ("request-10mb-subject", ["forget", R, "--request", "{ws}/req-big-subject.json"],
     "at most 256 characters"),
    ("request-10mb-note", ["forget", R, "--request", "{ws}/req-big-note.json"],
     "at most 4000 characters"),
    ("request-newline-subject", ["forget", R, "--request", "{ws}/req-newline-subject.json"],
     "one line"),
    ("request-blank-subject", ["forget", R, "--request", "{ws}/req-empty-subject.json"],
     "not empty"),
    ("request-control-character-note", ["forget", R, "--request",
                                        "{ws}/req-control-note.json"], "control characters"),
    ("request-hash-not-hex", ["forget", R, "--request", "{ws}/req-not-hex.json"],
     "not a 64-character SHA-256 hex digest"),
    ("request-unknown-hash", ["forget", R, "--request", "{ws}/req-unknown-hash.json"],
     "not in this model's training manifest"),
    ("request-unknown-key", ["forget", R, "--request", "{ws}/req-unknown-key.json"],
     "unknown key(s) patient"),
    ("request-no-images", ["forget", R, "--request", "{ws}/req-no-images.json"],
     "names no images"),
    ("request-boolean-index", ["forget", R, "--request", "{ws}/req-bool-index.json"],
     "non-negative integers"),
    ("request-negative-index", ["forget", R, "--request", "{ws}/req-negative-index.json"],
     "non-negative integers"),
    ("request-index-out-of-range", ["forget", R, "--request", "{ws}/req-out-of-range.json"],
     "out of range"),
    ("request-unknown-method", ["forget", R, "--request", "{ws}/req-unknown-method.json"],
     "nope"),
    ("request-id-reused", ["forget", R, "--request", "{ws}/req-reused-id.json"],
     "already submitted with different content"),
    ("request-consolidate-with-images", ["forget", R, "--request",
                                         "{ws}/req-consolidate-images.json"],
     "names no new images"),
    ("forget-no-download-missing-data", ["forget", R, "--request", "{ws}/req-ok.json",
                                         "--no-download", "--data-root", "{ws}/empty"],
     "breastmnist"),
    # a registry SQLite cannot open (as for a read-only folder); outputs that cannot be written
    ("status-unopenable-registry", ["registry", "status", "{ws}/reg-locked"],
     "cannot be opened or changed"),
    ("verify-unopenable-registry", ["audit", "verify", "{ws}/reg-locked"],
     "cannot be opened or changed"),
    ("forget-unopenable-registry", ["forget", "{ws}/reg-locked", "--request",
                                    "{ws}/req-ok.json"], "cannot be opened or changed"),
    ("init-out-under-a-file", ["registry", "init", "--model", "{ws}/model", "--out",
                               "{ws}/file.txt/reg"], "Cannot write"),
    ("show-out-under-a-file", ["audit", "show", R, "R1", "--out", "{ws}/file.txt/cert"],
     "Cannot write"),
    ("manifest-out-under-a-file", ["registry", "manifest", R, "--out",
                                   "{ws}/file.txt/m.csv"], "Cannot write"),
    ("train-out-under-a-file", ["train", "--dataset", "breastmnist", "--train-limit", "40",
                                "--epochs", "1", "--out", "{ws}/file.txt/run"], "Cannot write"),
    # train, unlearn, experiment
    ("unlearn-indices-not-utf8", ["unlearn", "--model", "{ws}/model", "--method", "retrain",
                                  "--forget", "indices:{ws}/not-utf8.txt", "--out", "{ws}/u"],
     "not UTF-8"),
    ("unlearn-exclude-not-utf8", ["unlearn", "--model", "{ws}/model", "--method", "retrain",
                                  "--forget", "random:0.1", "--exclude", "{ws}/not-utf8.txt",
                                  "--out", "{ws}/u"], "not UTF-8"),
    ("unlearn-config-not-utf8", ["unlearn", "--model", "{ws}/model-cfg-not-utf8", "--method",
                                 "retrain", "--forget", "random:0.1", "--out", "{ws}/u"],
     "is not a valid medunlearn run config"),
    # oracle-match and its K fold models
    ("unlearn-oracle-match-without-folds", ["unlearn", "--model", "{ws}/model", "--method",
                                            "oracle-match", "--forget", "random:0.1", "--out",
                                            "{ws}/u"], "holds none. Build them once"),
    ("unlearn-oracle-match-folds-of-other-data", [
        "unlearn", "--model", "{ws}/model", "--method", "oracle-match", "--forget",
        "random:0.1", "--folds", "{ws}/folds-other-data", "--out", "{ws}/u"], "other data"),
    ("unlearn-oracle-match-folds-of-another-model", [
        "unlearn", "--model", "{ws}/model-fp", "--method", "oracle-match", "--forget",
        "random:0.1", "--out", "{ws}/u"], "another model"),
    ("unlearn-oracle-match-shadow-set", [
        "unlearn", "--model", "{ws}/model", "--method", "oracle-match", "--forget",
        "random:0.1", "--folds", "{ws}/shadow-set", "--out", "{ws}/u"], "holds shadow models"),
    ("unlearn-oracle-match-negative-noise", [
        "unlearn", "--model", "{ws}/model", "--method", "oracle-match", "--forget",
        "random:0.1", "-O", "noise=-1", "--out", "{ws}/u"],
     "noise of method 'oracle-match' must be non-negative"),
    ("unlearn-oracle-match-unknown-retain-target", [
        "unlearn", "--model", "{ws}/model", "--method", "oracle-match", "--forget",
        "random:0.1", "-O", "retain_target=oracle", "--out", "{ws}/u"], "original or folds"),
    ("shadows-kfold-one-fold", ["shadows", "{ws}/model", "--kind", "kfold", "--k", "1"],
     "K >= 2"),
    ("shadows-unknown-kind", ["shadows", "{ws}/model", "--kind", "halves"],
     "--kind must be one of"),
    ("train-fractional-labels", ["train", "--dataset", "breastmnist", "--data-root",
                                 "{ws}/frac", "--no-verify", "--epochs", "1", "--out", "{ws}/t"],
     "fractional"),
    ("study-negative-epochs", ["experiment", "{ws}/study-epochs.yaml", "--out", "{ws}/x",
                               "--dry-run"], "epochs must be at least 1"),
    ("study-size-not-a-number", ["experiment", "{ws}/study-size.yaml", "--out", "{ws}/x",
                                 "--dry-run"], "size must be a positive whole number"),
    ("study-bad-method-option", ["experiment", "{ws}/study-method-option.yaml", "--out",
                                 "{ws}/x", "--dry-run"], "epochs of method 'salun'"),
    ("study-negative-gate-tolerance", ["experiment", "{ws}/study-gate.yaml", "--out", "{ws}/x",
                                       "--dry-run"], "fnr_tolerance must be a non-negative"),
    ("study-seeds-not-numbers", ["experiment", "{ws}/study.yaml", "--out", "{ws}/x", "--seeds",
                                 "abc"], "whole numbers"),
    ("study-not-utf8", ["experiment", "{ws}/not-utf8.txt", "--out", "{ws}/x"], "not UTF-8"),
]


def _train_csv(name: str, *extra: str) -> list[str]:
    return ["train", "--dataset", f"{{ws}}/csv/{name}/labels.csv", "--epochs", "1",
            "--cache-dir", "{ws}/cache", "--out", "{ws}/t", *extra]


def _train(*extra: str) -> list[str]:
    return ["train", "--dataset", "breastmnist", "--epochs", "1", "--out", "{ws}/t", *extra]


def _forget(*extra: str, request: str = "req-ok.json") -> list[str]:
    return ["forget", R, "--request", f"{{ws}}/{request}", *extra]


#: Issue 29 section 3: each input that was accepted (or ended in a traceback) and must be refused.
CASES += [
    # spoofing a certificate: ids that act as paths, repeated keys, hidden or reordered text
    ("request-id-with-dot-dot", _forget(request="req-dotdot-id.json"), "no '.' or '..'"),
    ("request-duplicate-id-key", _forget(request="req-duplicate-id.json"),
     "gives the key 'id' more than once"),
    ("request-subject-nel", _forget(request="req-nel-subject.json"), "U+0085"),
    ("request-subject-csi", _forget(request="req-csi-subject.json"), "U+009B"),
    ("request-subject-bidi-override", _forget(request="req-bidi-subject.json"), "U+202E"),
    ("request-subject-line-separator", _forget(request="req-line-separator-subject.json"),
     "U+2028"),
    ("request-subject-paragraph-separator",
     _forget(request="req-paragraph-separator-subject.json"), "U+2029"),
    ("request-note-bidi-override", _forget(request="req-bidi-note.json"), "bidi overrides"),
    ("request-patient-nel", _forget(request="req-nel-patient.json"), "never dropped"),
    ("request-patient-bidi-override", _forget(request="req-bidi-patient.json"), "never dropped"),
    # more request inputs
    ("request-1mb-unknown-key", _forget(request="req-1mb-unknown-key.json"),
     "(1000002 characters)"),
    ("request-5000-digit-index", _forget(request="req-5000-digit-index.json"),
     "thousands of digits"),
    ("request-3000-digit-index", _forget(request="req-3000-digit-index.json"),
     "too large to be a training index"),
    ("request-is-a-folder", ["forget", R, "--request", "{ws}/empty"], "is a folder"),
    ("request-is-a-fifo", ["forget", R, "--request", "{fifo}"], "is not a regular file"),
    # forget options that used to fail only after the request was recorded
    ("forget-negative-seed", _forget("--seed", "-1"), "--seed must be a whole number"),
    ("forget-seed-2-to-the-70", _forget("--seed", str(2**70)), "--seed must be a whole number"),
    ("consolidate-negative-seed", ["registry", "consolidate", R, "--id", "C1", "--seed", "-5"],
     "--seed must be a whole number"),
    ("forget-data-root-missing", _forget("--data-root", "{ws}/nowhere"), "does not exist"),
    ("forget-data-root-is-a-file", _forget("--data-root", "{ws}/file.txt"),
     "is a file, not a folder"),
    ("forget-data-root-corrupt", _forget("--data-root", "{ws}/corrupt-root"),
     "truncated or corrupt"),
    # a registry made from a broken run folder or options
    ("init-manifest-header-only", ["registry", "init", "--model",
                                   "{ws}/model-manifest-header-only", "--out", "{ws}/new"],
     "lists no training images"),
    ("init-manifest-cut-to-100-rows", ["registry", "init", "--model",
                                       "{ws}/model-manifest-cut-to-100", "--out", "{ws}/new"],
     "lists 100 training images, but config.json records 120"),
    ("init-manifest-label-7-in-binary-view", ["registry", "init", "--model",
                                              "{ws}/model-manifest-label-7", "--out",
                                              "{ws}/new"], "label outside the model's 2 classes"),
    ("init-blank-method-list", ["registry", "init", "--model", "{ws}/model", "--out", "{ws}/new",
                                "--methods", " , "], "names no method"),
    ("init-data-root-missing", ["registry", "init", "--model", "{ws}/model", "--out",
                                "{ws}/new", "--data-root", "{ws}/nowhere"], "does not exist"),
    # training options
    ("train-size-0", _train("--size", "0"), "--size must be a positive whole number"),
    ("train-empty-device", _train("--device", ""), "--device must name a device"),
    ("train-0-threads", _train("--threads", "0"), "--threads must be a whole number"),
    ("train-negative-threads", _train("--threads", "-2"), "--threads must be a whole number"),
    ("train-negative-seed", _train("--seed", "-1"), "--seed must be a whole number"),
    ("train-nan-lr", _train("--lr", "nan"), "--lr must be a finite number"),
    ("train-inf-lr", _train("--lr", "inf"), "--lr must be a finite number"),
    ("train-nan-weight-decay", _train("--weight-decay", "nan"),
     "--weight-decay must be a finite number"),
    ("train-inf-weight-decay", _train("--weight-decay", "inf"),
     "--weight-decay must be a finite number"),
    # CSV sources
    ("csv-mixed-sizes-without-size", _train_csv("mixed-sizes"), "different sizes"),
    ("csv-unknown-split-value", _train_csv("unknown-split"), "Unknown split value(s) 'trian'"),
    ("csv-val-fraction-1.5", _train_csv("ok", "--val-fraction", "1.5"),
     "--val-fraction must be a share"),
    ("csv-val-plus-test-over-1", _train_csv("ok", "--val-fraction", "0.6", "--test-fraction",
                                            "0.5"), "add up to 1.1"),
    ("csv-test-fraction-nan", _train_csv("ok", "--test-fraction", "nan"),
     "--test-fraction must be a share"),
    ("csv-not-utf8", _train_csv("latin1"), "not a readable UTF-8 CSV"),
    ("csv-decompression-bomb", _train_csv("bomb"), "decompression bomb"),
    ("csv-patient-id-with-nel", _train_csv("nel-patient"), "U+0085"),
    ("study-1mb-unknown-key", ["experiment", "{ws}/study-1mb-key.yaml", "--out", "{ws}/x",
                               "--dry-run"], "characters) in train"),
]


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("argv,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_refused_cleanly(base, tmp_path, capsys, argv, message):
    ws = tmp_path / "ws"
    shutil.copytree(base, ws, symlinks=True)
    if any("{fifo}" in a for a in argv):
        os.mkfifo(tmp_path / "fifo")  # outside the workspace: copying a pipe would block
    before = snapshot(ws)
    code = main([a.replace("{ws}", str(ws)).replace("{fifo}", str(tmp_path / "fifo"))
                 for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (out, err)
    assert err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and len(err) < 2000, err[:3000]
    assert snapshot(ws) == before


# --------------------------------------------------------------------------- the request format


def test_a_request_with_a_byte_order_mark_is_read_like_a_csv(tmp_path):
    """Some editors start UTF-8 files with a BOM; CSVs with one are read, so requests are too."""
    from medunlearn.registry.deletion_request import load_request, parse_request

    body = {"id": "R9", "subject": "s9", "patients": ["P1"], "images": [HEX]}
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + _json(body))
    assert load_request(path) == parse_request(body)


def test_forget_help_and_the_readme_give_the_one_request_schema(capsys):
    from medunlearn.registry.deletion_request import KEYS, REQUEST_SCHEMA

    assert main(["forget", "--help"]) == 0
    out = capsys.readouterr().out
    schema_lines = [line.strip() for line in REQUEST_SCHEMA.splitlines() if line.strip()]
    assert all(line in out for line in schema_lines), out
    for key in KEYS:  # every key is described (hashes as another name for images)
        assert f'"{key}"' in REQUEST_SCHEMA or f"  {key} " in REQUEST_SCHEMA, key
    readme = (Path(__file__).parents[1] / "README.md").read_text("utf-8")
    assert REQUEST_SCHEMA in readme  # quoted verbatim: one description, not three
    # the examples are valid requests of the two kinds
    from medunlearn.registry.deletion_request import (
        EXAMPLE_IMAGES,
        EXAMPLE_PATIENTS,
        parse_request,
    )

    assert parse_request(json.loads(EXAMPLE_PATIENTS)).patients == ("P0042",)
    assert json.loads(EXAMPLE_IMAGES)["images"] == ["<sha256>"]


@pytest.mark.parametrize("name", ["req-list.json", "req-unknown-key.json", "req-not-json.json",
                                  "req-no-images.json", "req-duplicate-id.json"])
def test_a_malformed_request_prints_the_schema(base, capsys, name):
    from medunlearn.registry.deletion_request import EXAMPLE_IMAGES, EXAMPLE_PATIENTS, KEYS

    assert main(["forget", str(base / "reg"), "--request", str(base / name)]) == 2
    err = capsys.readouterr().err
    assert EXAMPLE_IMAGES in err and EXAMPLE_PATIENTS in err, err
    assert ", ".join(KEYS) in err and "medunlearn forget --help" in err
