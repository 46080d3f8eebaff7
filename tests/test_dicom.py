"""DICOM: rescale, VOI window, MONOCHROME1, PatientID and tags, sniffing, corrupt files.
Every file is a tiny DICOM written here with pydicom."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402,E501

from medunlearn.cli import main  # noqa: E402
from medunlearn.data.images import decode  # noqa: E402
from medunlearn.data.manifest import load_folder, load_manifest  # noqa: E402
from medunlearn.errors import DataError  # noqa: E402


def write_dicom(path: Path, raw: np.ndarray | None, *, patient: str = "PAT1",
                photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0,
                window: tuple[float, float] | None = None, sex: str = "F",
                age: str = "056Y") -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.PatientSex, ds.PatientAge, ds.ViewPosition = patient, sex, age, "PA"
    ds.Modality = "DX"
    if raw is not None:
        raw = np.asarray(raw, dtype=np.uint16)
        ds.Rows, ds.Columns = raw.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = raw.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def ramp(lo: int = 0, hi: int = 1000, n: int = 8) -> np.ndarray:
    return np.linspace(lo, hi, n * n).round().reshape(n, n).astype(np.uint16)


def test_rescale_and_window_are_applied(tmp_path):
    raw = np.full((8, 8), 500, dtype=np.uint16)  # 500 * 2 - 1000 = 0 HU: the window centre
    raw[0, :4] = 0  # -1000 HU: below the window -> black
    raw[0, 4:] = 1000  # +1000 HU: above -> white
    raw[1, 0], raw[1, 1] = 475, 525  # -50 / +50 HU: a quarter inside each side of the window
    p = write_dicom(tmp_path / "ct.dcm", raw, slope=2.0, intercept=-1000.0,
                    window=(0.0, 200.0))
    d = decode(p, p.read_bytes(), None)
    px = d.pixels
    assert px.dtype == np.uint8 and px.shape == (8, 8)
    assert (px[0, :4] == 0).all() and (px[0, 4:] == 255).all()
    assert abs(int(px[2, 2]) - 128) <= 2  # the window centre is mid grey
    assert abs(int(px[1, 0]) - 64) <= 3 and abs(int(px[1, 1]) - 191) <= 3
    assert d.tags == {"patient_id": "PAT1", "sex": "F", "age": "056Y", "view": "PA"}


def test_monochrome1_is_inverted(tmp_path):
    a = write_dicom(tmp_path / "m2.dcm", ramp(), photometric="MONOCHROME2")
    b = write_dicom(tmp_path / "m1.dcm", ramp(), photometric="MONOCHROME1")
    pa, pb = decode(a, a.read_bytes(), None).pixels, decode(b, b.read_bytes(), None).pixels
    assert pa[0, 0] == 0 and pa[-1, -1] == 255
    assert np.array_equal(pb, 255 - pa)


def _dicom_set(root: Path, n_patients: int = 10, per_patient: int = 2) -> list[dict]:
    rows = []
    rng = np.random.default_rng(0)
    for p in range(n_patients):
        for k in range(per_patient):
            label = p % 2
            raw = np.clip(rng.normal(300 + 400 * label, 80, (12, 12)), 0, 4095)
            name = f"d{p}_{k}.png" if k else f"d{p}_{k}.dcm"  # DICOM named .png: sniffed
            write_dicom(root / ("tb" if label else "normal") / name, raw,
                        patient=f"MRN{p}", sex="MF"[p % 2], age=f"0{30 + 5 * p}Y")
            rows.append({"path": f"{'tb' if label else 'normal'}/{name}", "label": label})
    return rows


def test_dicom_manifest_takes_patient_ids_and_tags(tmp_path):
    rows = _dicom_set(tmp_path)
    m = tmp_path / "m.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    ds = load_manifest(m, size=8, val_fraction=0.2, test_fraction=0.2)
    assert ds.in_channels == 1 and ds.size == 8
    assert set(ds.metadata_columns) == {"sex", "age_band", "view"}
    seen = {}
    for s in ("train", "val", "test"):
        for pid in ds.splits[s].patient_ids:
            assert pid.startswith("MRN") and seen.setdefault(pid, s) == s
    assert len(seen) == 10
    folder = load_folder(tmp_path, positive_values="tb", val_fraction=0.2, test_fraction=0.2,
                         size=8)
    assert sorted(set(folder.train.patient_ids)) == sorted(set(ds.train.patient_ids))


@pytest.mark.parametrize("case", ["corrupt", "truncated", "no_pixels"])
def test_bad_dicom_exits_2(tmp_path, capsys, case, monkeypatch):
    monkeypatch.setenv("MEDUNLEARN_CACHE_DIR", str(tmp_path / "cache"))
    rows = _dicom_set(tmp_path / "data", n_patients=6)
    bad = tmp_path / "data" / "bad.dcm"
    good = (tmp_path / "data" / rows[0]["path"]).read_bytes()
    if case == "corrupt":
        bad.write_bytes(good[:132] + b"\xff" * 40)  # preamble and DICM, then garbage
        match = "corrupt or truncated DICOM"
    elif case == "truncated":
        bad.write_bytes(good[:-50])  # pixel data cut short
        match = "cannot be decoded"
    else:
        write_dicom(bad, None)
        match = "without pixel data"
    rows.append({"path": "bad.dcm", "label": 0})
    m = tmp_path / "data" / "m.csv"
    with open(m, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(DataError, match=match):
        load_manifest(m)
    out = tmp_path / "run"
    assert main(["train", "-o", str(out), "-d", str(m), "--epochs", "1", "-q"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and not out.exists()
    assert not any((tmp_path / "cache").rglob("*.npz"))
