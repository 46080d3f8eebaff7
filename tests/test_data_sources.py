"""File sources: CSV manifests, class folders, channels, cache, grouped splits, forgetting
patients, and bad input (exit 2, nothing left behind). Images are tiny synthetic PNG/JPEG files
written here; two tests use small subsets of the real sets in ../shared/data when present."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medunlearn.cli import main
from medunlearn.config import ModelConfig, TrainConfig
from medunlearn.data import load_from_record
from medunlearn.data import manifest as mf
from medunlearn.data.manifest import age_band, load_folder, load_manifest
from medunlearn.errors import DataError, ForgetSetError
from medunlearn.forget_set import select_forget

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _png(path: Path, value: int, *, mode: str = "L", size: int = 16, seed: int = 0,
         fmt: str = "PNG", tint: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    grey = np.clip(rng.normal(value, 20, (size, size)), 0, 255).astype(np.uint8)
    if mode == "RGB":
        arr = np.stack([grey] * 3, axis=-1)
        if tint:
            arr[..., 2] = np.clip(arr[..., 2].astype(int) + 60, 0, 255)
        img = Image.fromarray(arr, "RGB")
    else:
        img = Image.fromarray(grey, "L")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def make_manifest(root: Path, *, n_patients: int = 24, per_patient: int = 2,
                  split: bool = False) -> Path:
    """``n_patients`` patients (half TB), ``per_patient`` PNG images each, sex and age."""
    rows = []
    for p in range(n_patients):
        label = p % 2
        for k in range(per_patient):
            rel = f"img/p{p}_{k}.png"
            _png(root / rel, 80 + 100 * label, mode="RGB" if k else "L", seed=p * 10 + k)
            row = {"path": rel, "label": "TB" if label else "normal", "patient_id": f"P{p:03d}",
                   "sex": "MF"[p % 3 == 0], "age": str(25 + 3 * p)}
            if split:
                row["split"] = "test" if p >= n_patients - 6 else "train"
            rows.append(row)
    return _write_csv(root / "labels.csv", rows)


@pytest.fixture(autouse=True)
def _own_cache(tmp_path, monkeypatch):
    """A cache folder per test, so that tests can count its entries."""
    monkeypatch.setenv("MEDUNLEARN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def tiny(tmp_path) -> Path:
    return make_manifest(tmp_path / "data")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _members(ds) -> dict[str, set[str]]:
    return {s: set(ds.splits[s].hashes) for s in ("train", "val", "test")}


def test_manifest_keeps_identity_metadata_and_groups_patients(tiny):
    ds = load_manifest(tiny, positive_values="TB")
    rows = list(csv.DictReader(open(tiny)))
    by_hash = {_sha(tiny.parent / r["path"]): r for r in rows}
    assert sum(len(ds.splits[s]) for s in ("train", "val", "test")) == len(rows)
    seen: dict[str, str] = {}
    for s in ("train", "val", "test"):
        sp = ds.splits[s]
        assert sp.images.shape[1:] == (1, 16, 16)  # L and grey RGB files -> one channel
        assert set(sp.labels.tolist()) == {0, 1}
        for h, pid, y, sex, band in zip(sp.hashes, sp.patient_ids, sp.labels.tolist(),
                                        sp.metadata["sex"], sp.metadata["age_band"],
                                        strict=True):
            row = by_hash[h]  # hash = SHA-256 of the source file
            assert pid == row["patient_id"] and y == (row["label"] == "TB")
            assert sex == row["sex"] and band == age_band(row["age"])
            assert seen.setdefault(pid, s) == s  # no patient in two splits
    assert ds.metadata_columns == ["age_band", "sex"]
    assert ds.source["source"] == "manifest" and ds.source["patient_column"] == "patient_id"


def test_age_bands():
    assert [age_band(v) for v in ("39", "40", "60", "60.5", "056Y", "", "n/a", "18M")] == \
        ["<40", "40-60", "40-60", ">60", "40-60", "unknown", "unknown", "<40"]


def test_same_inputs_same_data_and_cache_serves_second_load(tiny, monkeypatch):
    a = load_manifest(tiny, positive_values="TB")
    cached = list((Path(mf.image_cache.cache_root(None))).glob("*.npz"))
    assert len(cached) == 1

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded although the cache holds these files")

    monkeypatch.setattr(mf, "decode", no_decode)
    b = load_manifest(tiny, positive_values="TB")
    for s in ("train", "val", "test"):
        assert a.splits[s].hashes == b.splits[s].hashes
        assert bool((a.splits[s].images == b.splits[s].images).all())
    c = load_manifest(tiny, positive_values="TB", split_seed=1)
    assert _members(c) != _members(a)  # the split seed decides the splits
    # a changed file is a new cache key: it has to be decoded again
    _png(tiny.parent / "img/p0_0.png", 10, seed=99)
    with pytest.raises(AssertionError, match="decoded although"):
        load_manifest(tiny, positive_values="TB")


def test_record_reloads_identically_and_refuses_changed_files(tiny):
    ds = load_manifest(tiny, positive_values="TB", size=8, train_limit=20)
    again = load_from_record(json.loads(json.dumps(ds.source)), seed=0)
    assert again.train.hashes == ds.train.hashes and again.size == 8
    native = load_manifest(tiny, positive_values="TB")  # no size: the files' 16 px
    assert native.size == 16 and load_from_record(native.source).size == 16
    assert len(list(mf.image_cache.cache_root(None).glob("*.npz"))) == 2  # reloads hit the cache
    assert bool((again.test.images == ds.test.images).all())
    import shutil

    moved = shutil.copytree(tiny.parent, tiny.parent.parent / "moved")
    again = load_from_record(ds.source, seed=0, data_root=str(moved))  # --data-root: new place
    assert again.train.hashes == ds.train.hashes
    _png(tiny.parent / "img/p3_1.png", 10, seed=5)
    with pytest.raises(DataError, match="changed since this run was made"):
        load_from_record(ds.source, seed=0)


def test_format_from_bytes_not_extension(tmp_path):
    rows = []
    for i in range(16):
        label = i % 2
        name = f"x{i}.jpg" if i % 4 < 2 else f"x{i}.png"  # PNG named .jpg, JPEG named .png
        fmt = "PNG" if name.endswith(".jpg") else "JPEG"
        _png(tmp_path / name, 60 + 120 * label, seed=i, fmt=fmt)
        rows.append({"path": name, "label": label})
    ds = load_manifest(_write_csv(tmp_path / "m.csv", rows), test_fraction=0.25,
                       val_fraction=0.25)
    assert sum(len(ds.splits[s]) for s in ("train", "val", "test")) == 16
    assert ds.train.patient_ids is None  # no patient column: one patient per image


@pytest.mark.parametrize("channels,tinted,expected", [
    ("auto", 3, 1),  # a few tinted scans: still grey X-rays
    ("auto", 16, 3),  # colour photographs stay RGB
    ("3", 0, 3), ("1", 16, 1), ("source", 0, 1), ("source", 3, 3),
])
def test_channels(tmp_path, channels, tinted, expected):
    rows = []
    for i in range(16):
        mode = "RGB" if i < tinted else "L"
        _png(tmp_path / f"c{i}.png", 60 + 120 * (i % 2), mode=mode, tint=i < tinted, seed=i)
        rows.append({"path": f"c{i}.png", "label": i % 2})
    ds = load_manifest(_write_csv(tmp_path / "m.csv", rows), channels=channels,
                       test_fraction=0.25, val_fraction=0.25)
    assert ds.in_channels == expected


def test_grey_conversion_removes_the_mode_shortcut(tmp_path):
    """The same grey picture stored as L and as RGB gives the same pixels (TB's RGB normals)."""
    _png(tmp_path / "a.png", 100, mode="L", seed=1)
    _png(tmp_path / "b.png", 100, mode="RGB", seed=1)
    from medunlearn.data.images import decode, to_channels

    a = to_channels(decode(tmp_path / "a.png", (tmp_path / "a.png").read_bytes(), 8), 1)
    b = to_channels(decode(tmp_path / "b.png", (tmp_path / "b.png").read_bytes(), 8), 1)
    assert a.shape == (1, 8, 8) and np.array_equal(a, b)


def test_given_splits_are_kept_and_val_is_carved(tmp_path):
    m = make_manifest(tmp_path, split=True)
    ds = load_manifest(m, positive_values="TB")
    rows = list(csv.DictReader(open(m)))
    test_hashes = {_sha(tmp_path / r["path"]) for r in rows if r["split"] == "test"}
    assert set(ds.test.hashes) == test_hashes
    assert len(ds.val) > 0 and not set(ds.val.patient_ids) & set(ds.train.patient_ids)


def test_leaking_splits_refused_unless_resplit(tmp_path):
    m = make_manifest(tmp_path, split=True)
    rows = list(csv.DictReader(open(m)))
    rows[1]["split"] = "test"  # P000's second image in test, its first in train
    _write_csv(m, rows)
    with pytest.raises(DataError, match="share 1 patient.*P000.*--resplit"):
        load_manifest(m, positive_values="TB")
    ds = load_manifest(m, positive_values="TB", resplit=True)
    assert not set(ds.test.patient_ids) & set(ds.train.patient_ids)


def test_a_patient_with_many_images_stays_in_training(tmp_path):
    m = make_manifest(tmp_path, n_patients=30)
    rows = list(csv.DictReader(open(m)))
    for k in range(12):
        _png(tmp_path / f"img/big{k}.png", 180, seed=500 + k)
        rows.append({**rows[1], "path": f"img/big{k}.png", "patient_id": "BIG"})
    _write_csv(m, rows)
    for seed in range(5):
        ds = load_manifest(m, positive_values="TB", split_seed=seed)
        assert int((ds.train.patient_ids == "BIG").sum()) == 12


def test_identical_files_stay_in_one_split(tmp_path):
    rows = []
    for i in range(20):
        _png(tmp_path / f"d{i}.png", 60 + 120 * (i % 2), seed=i)
        rows.append({"path": f"d{i}.png", "label": i % 2})
    (tmp_path / "copy.png").write_bytes((tmp_path / "d3.png").read_bytes())
    rows.append({"path": "copy.png", "label": 1})
    for seed in range(4):
        ds = load_manifest(_write_csv(tmp_path / "m.csv", rows), split_seed=seed)
        h = _sha(tmp_path / "d3.png")
        assert [sum(x == h for x in ds.splits[s].hashes) for s in ("train", "val", "test")] \
            in ([2, 0, 0], [0, 2, 0], [0, 0, 2])


def test_folder_source_with_and_without_split_folders(tmp_path):
    for i in range(12):
        _png(tmp_path / "flat" / ("tb" if i % 2 else "normal") / f"{i}.png", 50 + 150 * (i % 2),
             seed=i)
        for s in ("train", "test"):
            _png(tmp_path / "nested" / s / ("tb" if i % 2 else "normal") / f"{i}.png",
                 50 + 150 * (i % 2), seed=i + (100 if s == "test" else 0))
    flat = load_folder(tmp_path / "flat", positive_values="tb", val_fraction=0.25,
                       test_fraction=0.25)
    assert flat.view.class_names == ("normal", "tb") and flat.source["source"] == "folder"
    nested = load_folder(tmp_path / "nested", positive_values="tb", val_fraction=0.25)
    assert len(nested.test) == 12 and len(nested.train) + len(nested.val) == 12
    assert load_from_record(nested.source).train.hashes == nested.train.hashes


def test_forget_patients_takes_every_image_and_identical_copies(tmp_path):
    m = make_manifest(tmp_path, n_patients=12, per_patient=3)
    rows = list(csv.DictReader(open(m)))
    # another patient holds a byte-identical copy of P000's first image
    (tmp_path / "img/copy.png").write_bytes((tmp_path / "img/p0_0.png").read_bytes())
    rows.append({**rows[0], "path": "img/copy.png", "patient_id": "P999"})
    _write_csv(m, rows)
    ds = load_manifest(m, positive_values="TB", split_column="none", test_fraction=0.2,
                       val_fraction=0.2)
    train = ds.train
    pid = next(p for p in train.patient_ids if p != "P999")
    forget_file = tmp_path / "patients.txt"
    forget_file.write_text(f"# request 7\n{pid}\n")
    fs = select_forget(ds, forget=f"patients:{forget_file}")
    own = {i for i, p in enumerate(train.patient_ids) if p == pid}
    hashes = {train.hashes[i] for i in own}
    expected = {i for i, h in enumerate(train.hashes) if h in hashes}
    assert set(fs.forget.tolist()) == expected and len(own) == 3
    if pid == "P000":
        assert len(expected) == 4  # the copy under P999 goes too
    forget_file.write_text(f"{pid}\nNOPE-1\nNOPE-2\n")
    with pytest.raises(ForgetSetError, match="2 of 3 patient id.*NOPE-1, NOPE-2"):
        select_forget(ds, forget=f"patients:{forget_file}")


def test_forget_patient_copy_across_patients(tmp_path):
    """A patient whose image another patient also holds: both copies are forgotten."""
    m = make_manifest(tmp_path, n_patients=12, per_patient=2, split=True)
    rows = list(csv.DictReader(open(m)))
    for r in rows:
        if r["patient_id"] in ("P002", "P003"):
            r["split"] = "val"
    (tmp_path / "img/copy.png").write_bytes((tmp_path / "img/p0_0.png").read_bytes())
    rows.append({**rows[0], "path": "img/copy.png", "patient_id": "P999"})
    _write_csv(m, rows)
    ds = load_manifest(m, positive_values="TB")
    f = tmp_path / "p.txt"
    f.write_text("P000\n")
    fs = select_forget(ds, forget=f"patients:{f}")
    assert {ds.train.patient_ids[i] for i in fs.forget.tolist()} == {"P000", "P999"}
    assert len(fs) == 3


# -- bad input: exit 2, one message naming problem and fix, nothing left behind ----------------
def _bad_cases(root: Path) -> dict[str, tuple[list[str], str]]:
    m = make_manifest(root / "ok")
    rows = list(csv.DictReader(open(m)))
    cases: dict[str, tuple[list[str], str]] = {}

    def variant(name: str, new_rows: list[dict], extra: list[str], match: str):
        cases[name] = ([str(_write_csv(root / "ok" / f"{name}.csv", new_rows)), *extra], match)

    variant("missing_column", rows, ["--patient-column", "mrn"], "no column 'mrn'")
    variant("missing_path", [*rows, {**rows[0], "path": "img/nothere.png"}], [],
            "do not exist")
    (root / "ok" / "img" / "notes.png").write_text("not an image at all")
    variant("not_image", [*rows, {**rows[0], "path": "img/notes.png"}], [], "is not an image")
    data = (root / "ok" / "img" / "p1_0.png").read_bytes()
    (root / "ok" / "img" / "cut.png").write_bytes(data[: len(data) // 2])
    variant("truncated", [*rows, {**rows[1], "path": "img/cut.png"}], [], "truncated")
    variant("label_outside", [*rows[:-1], {**rows[-1], "label": "TBC"}],
            ["--negative-values", "normal"], "outside the declared set")
    variant("empty_class", rows, ["--positive-values", "tuberculosis"], "class is empty")
    split_rows = [{**r, "split": "test" if r["label"] == "TB" and r["path"].endswith("_0.png")
                   and int(r["patient_id"][1:]) > 20 else "train"} for r in rows]
    split_rows = [r for r in split_rows
                  if not (r["split"] == "train" and int(r["patient_id"][1:]) > 20)]
    variant("empty_split", split_rows, [], "test split is empty or lacks a class")
    leak = [dict(r, split="train") for r in rows]
    leak[1]["split"] = "test"
    variant("leak", leak, [], "share 1 patient")
    _png(root / "ok" / "img" / "big.png", 100, size=20)
    variant("sizes", [*rows, {**rows[0], "path": "img/big.png", "patient_id": "P100"}], [],
            "different sizes")
    variant("duplicate", [*rows, rows[3]], [], "listed more than once")
    return cases


BAD = ["missing_column", "missing_path", "not_image", "truncated", "label_outside",
       "empty_class", "empty_split", "leak", "sizes", "duplicate"]


@pytest.mark.parametrize("case", BAD)
def test_bad_input_exits_2_and_leaves_nothing(tmp_path, capsys, case, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("MEDUNLEARN_CACHE_DIR", str(cache))
    args, match = _bad_cases(tmp_path)[case]
    out = tmp_path / "run"
    code = main(["train", "-o", str(out), "-d", *args[:1], "--positive-values", "TB",
                 *args[1:], "--epochs", "1", "-q"]
                if "--positive-values" not in args else
                ["train", "-o", str(out), "-d", *args, "--epochs", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert match in err and "Traceback" not in err
    assert err.count("error:") == 1
    assert not out.exists()
    assert not cache.exists() or not any(cache.rglob("*.npz"))


def test_train_then_unlearn_a_patient_through_the_cli(tmp_path):
    m = make_manifest(tmp_path / "data", n_patients=16)
    run = tmp_path / "run"
    code = main(["train", "-o", str(run), "-d", str(m), "--positive-values", "TB", "--size",
                 "16", "--epochs", "1", "--width", "4", "--batch-size", "16", "--threads", "1",
                 "-q"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["source"] == "manifest" and config["data"]["content_sha256"]
    train_pids = {}
    ds = load_from_record(config["data"], seed=config["seed"])
    for i, p in enumerate(ds.train.patient_ids):
        train_pids.setdefault(p, []).append(i)
    pid = sorted(train_pids)[0]
    (tmp_path / "forget.txt").write_text(pid + "\n")
    code = main(["unlearn", "-m", str(run), "--method", "finetune", "--forget",
                 f"patients:{tmp_path / 'forget.txt'}", "-o", str(tmp_path / "u"), "-q",
                 "--option", "epochs=1"])
    assert code == 0
    forgotten = list(csv.DictReader(open(tmp_path / "u" / "forget.csv")))
    assert sorted(int(r["index"]) for r in forgotten) == train_pids[pid]


def test_dataset_and_split_print_a_short_summary(tiny):
    """print(data) shows name, splits and sizes, channels, image size, label counts and patients,
    never the tensors."""
    ds = load_manifest(tiny, positive_values="TB", size=16)
    text = repr(ds)
    lines = text.splitlines()
    assert len(lines) == 4 and len(text) < 600, text
    assert lines[0].startswith("Dataset 'data' (manifest, binary view: 0 normal, 1 TB)")
    assert "1 channel(s), 16x16 pixels" in lines[0]
    for line, name in zip(lines[1:], ("train", "val", "test"), strict=True):
        sp = ds.splits[name]
        counts = np.bincount(sp.labels.numpy(), minlength=2).tolist()
        assert line.split() == [name, str(len(sp)), "images", "labels", f"[{counts[0]},",
                                f"{counts[1]}]", str(len(set(sp.patient_ids))), "patients"]
    assert "tensor" not in text and "tensor" not in repr(ds.train)
    assert repr(ds.train).startswith(f"Split('train': {len(ds.train)} images of 1x16x16")


def test_dataset_name_of_each_source():
    from medunlearn.data.sources import dataset_name

    assert dataset_name({"dataset": "breastmnist", "size": 28}) == "breastmnist"
    assert dataset_name({"source": "manifest", "manifest": "/d/tb-cxr/labels.csv",
                         "name": "tb-cxr"}) == "tb-cxr"
    assert dataset_name({"source": "manifest", "manifest": "/d/tb-cxr/labels.csv"}) == "tb-cxr"
    assert dataset_name({"source": "manifest", "manifest": "/d/x/l.csv", "name": "."}) == "x"
    assert dataset_name({"source": "folder", "root": "/d/images", "name": ""}) == "images"
    assert dataset_name({"source": "manifest", "manifest": "/d/x/l.csv", "name": "mine"}) == "mine"


def test_a_note_about_the_data_is_one_plain_line(tmp_path, capsys):
    """Colour converted to grey is worth a note: the CLI prints it once as 'note: ...', without
    Python's warning format or a source line of the package; the Python API keeps a warning
    that points at the caller's line."""
    import warnings

    rows = []
    for i in range(24):
        rel = f"img/{i}.png"
        _png(tmp_path / "d" / rel, 80 + 100 * (i % 2), mode="RGB", tint=i < 4, seed=i)
        rows.append({"path": rel, "label": i % 2})
    m = _write_csv(tmp_path / "d" / "labels.csv", rows)
    code = main(["train", "-o", str(tmp_path / "run"), "-d", str(m), "--size", "16",
                 "--epochs", "1", "--width", "4", "--batch-size", "16", "--threads", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 0, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert notes == ["note: 4 of 24 images carry colour (e.g. tinted scans of film); they were "
                     "converted to one grey channel (channels='auto'). Pass --channels 3 "
                     "(channels=3) if colour matters."], err
    assert "Warning" not in err and "manifest.py" not in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_manifest(m, size=16, cache_dir=str(tmp_path / "fresh-cache"))  # decoded again
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]


# -- real data subsets ---------------------------------------------------------------------------
needs_shared = pytest.mark.skipif(not (SHARED / "nih-cxr-1000" / "metadata.csv").is_file()
                                  or not (SHARED / "tb-cxr" / "labels.csv").is_file(),
                                  reason="../shared/data (tb-cxr, nih-cxr-1000) not present")


@needs_shared
def test_nih_subset_leaks_are_refused_and_patients_forgotten(tmp_path):
    src = SHARED / "nih-cxr-1000"
    rows = list(csv.DictReader(open(src / "metadata.csv")))
    keep = [dict(r, path=str(src / r["path"])) for r in rows
            if r["patient_id"] in {"181", "116", "118", "121", "127", "231", "234"}
            or int(r["patient_id"]) % 9 == 0]
    m = _write_csv(tmp_path / "nih.csv", keep)
    with pytest.raises(DataError, match="share"):
        load_manifest(m, split_column="source_split")
    ds = load_manifest(m, split_column="source_split", resplit=True)
    assert ds.in_channels == 1 and ds.size == 64
    assert {"sex", "view", "age_band"} <= set(ds.metadata_columns)
    all_pids = [set(ds.splits[s].patient_ids) for s in ("train", "val", "test")]
    assert not (all_pids[0] & all_pids[1] or all_pids[0] & all_pids[2]
                or all_pids[1] & all_pids[2])
    # patient 181 (66 images) is too large to hold out: it stays in training, and can be forgotten
    assert int((ds.train.patient_ids == "181").sum()) == 66
    (tmp_path / "p.txt").write_text("181\n")
    assert len(select_forget(ds, forget=f"patients:{tmp_path / 'p.txt'}")) == 66


@needs_shared
def test_tb_subset_is_grey_and_keeps_identical_copies_together(tmp_path):
    src = SHARED / "tb-cxr"
    rows = list(csv.DictReader(open(src / "labels.csv")))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["sha256"]] = counts.get(r["sha256"], 0) + 1
    dup = [r for r in rows if counts[r["sha256"]] > 1]
    keep = dup + [r for r in rows if r not in dup][::40]
    m = _write_csv(tmp_path / "tb.csv", [dict(r, path=str(src / r["path"])) for r in keep])
    ds = load_manifest(m, size=32, resplit=True)
    assert ds.in_channels == 1 and ds.size == 32
    h = dup[0]["sha256"]
    assert sorted(sum(x == h for x in ds.splits[s].hashes) for s in ("train", "val", "test")) \
        == [0, 0, 2]


def test_forget_patients_needs_patient_ids(tmp_path):
    rows = []
    for i in range(20):
        _png(tmp_path / f"n{i}.png", 60 + 120 * (i % 2), seed=i)
        rows.append({"path": f"n{i}.png", "label": i % 2})
    ds = load_manifest(_write_csv(tmp_path / "m.csv", rows))
    (tmp_path / "p.txt").write_text("P1\n")
    with pytest.raises(ForgetSetError, match="has no patient ids.*--patient-column"):
        select_forget(ds, forget=f"patients:{tmp_path / 'p.txt'}")


def test_deletion_request_by_patient_forgets_every_image_and_copy(tmp_path):
    """A registry request naming a patient withdraws every training image of that patient and
    every byte-identical copy; the certificate names the patient; unknown ids are listed."""
    from medunlearn.data.manifest import load_manifest
    from medunlearn.registry import certificate, forget, init_registry
    from medunlearn.registry.errors import RequestError
    from medunlearn.runs import run_training
    from medunlearn.testing import fake_unlearn, fake_verify

    labels = make_manifest(tmp_path / "data")
    # a byte-identical copy of one image, filed under another patient id
    # explicit splits (patients 0-13 train, 14-18 val, 19-23 test) and a byte-identical copy of
    # a training image filed under another patient id
    rows = list(csv.DictReader(open(labels)))
    for r in rows:
        n = int(r["patient_id"][1:])
        r["split"] = "train" if n < 14 else "val" if n < 19 else "test"
    first = rows[0]
    (labels.parent / "img" / "copy.png").write_bytes((labels.parent / first["path"]).read_bytes())
    _write_csv(labels, rows + [first | {"path": "img/copy.png", "patient_id": "P999"}])
    ds = load_manifest(labels, positive_values="TB")
    model = tmp_path / "model"
    run_training(None, ModelConfig(width=4), TrainConfig(epochs=1, progress=False), seed=0,
                 out=model, dataset=ds)
    header = (model / "manifest.csv").read_text().splitlines()[0]
    assert header == "index,sha256,label,patient_id"
    reg = tmp_path / "reg"
    init_registry(model, reg, methods=["salun-cra", "retrain"])
    train = ds.train
    patient = first["patient_id"]
    assert patient in set(train.patient_ids) and "P999" in set(train.patient_ids)
    mine = {i for i, p in enumerate(train.patient_ids) if p == patient}
    copies = {i for i, h in enumerate(train.hashes) if h in {train.hashes[j] for j in mine}}
    result = forget(reg, {"id": "DR-P1", "subject": "ref-1", "patients": [patient]},
                    unlearn=fake_unlearn, verify=fake_verify)
    assert result["status"] == "completed"
    cert = certificate(reg, "DR-P1")
    assert cert["request"]["patients"] == [patient]
    assert cert["dataset"] == "data"  # the CSV's folder, not an empty name ("dataset .")
    assert {f["index"] for f in cert["forgotten"]} == copies
    assert mine < copies  # the copy filed under P999 went too
    with pytest.raises(RequestError, match="NOBODY"):
        forget(reg, {"id": "DR-P2", "subject": "ref-2", "patients": ["NOBODY"]},
               unlearn=fake_unlearn, verify=fake_verify)


def test_experiment_grid_runs_on_a_csv_manifest_with_subgroups(tmp_path):
    """A study can name a CSV manifest with loader options; its cells train, unlearn and
    evaluate, and the manifest's metadata (sex, age band) reaches the subgroup tables."""
    from medunlearn.experiments import parse_experiment, run_experiment
    from medunlearn.experiments.config import ExperimentConfigError
    from medunlearn.experiments.store import ResultsStore

    labels = make_manifest(tmp_path / "data")
    raw = {"name": "files", "datasets": [{"dataset": str(labels), "size": 16,
                                          "options": {"positive_values": "TB"}}],
           "forget": ["random:0.2"], "methods": ["retrain", "finetune"], "augment": ["none"],
           "seeds": [0], "model": {"width": 4}, "train": {"epochs": 1, "batch_size": 16},
           "threads": 1}
    cfg = parse_experiment(raw)
    assert cfg.datasets[0].name == "data-binary"
    summary = run_experiment(cfg, tmp_path / "results", progress=False)
    assert summary.failed == [] and summary.completed == 3  # and the do-nothing row
    rows = ResultsStore(tmp_path / "results").rows()
    assert {r["method"] for r in rows} == {"retrain", "finetune", "original"}
    metrics = next(r for r in rows if r["method"] == "finetune")["metrics"]  # flattened keys
    assert any(k.startswith("bias.subgroups.sex.") for k in metrics)
    assert any(k.startswith("bias.subgroups.age_band.") for k in metrics)
    assert "bias.subgroups.sex.test.model.F.fpr" in metrics  # FNR, FPR and AUC per group
    from medunlearn.experiments.report import write_report

    write_report(tmp_path / "results", tmp_path / "report")
    md = (tmp_path / "report" / "report.md").read_text()
    assert "## Subgroups" in md and "by sex (test set)" in md and "by age_band" in md
    assert "sex = F: acc / FNR / FPR (%) / AUC" in md and "| original |" in md
    html = (tmp_path / "report" / "report.html").read_text()
    assert "class='results subgroups' data-column='sex'" in html
    assert list((tmp_path / "report" / "figures").glob("subgroups_sex_*.png"))
    bad = raw | {"datasets": [{"dataset": str(labels), "options": {"colour": 3}}]}
    with pytest.raises(ExperimentConfigError, match="colour"):
        parse_experiment(bad)
    with pytest.raises(ExperimentConfigError, match="does not exist"):
        parse_experiment(raw | {"datasets": [{"dataset": str(tmp_path / "none.csv")}]})
