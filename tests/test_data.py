"""Data layer: metadata from medmnist, files, checksums, views, identities, batching."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest
import torch

from medunlearn.data import dataset_flags, get_info, iterate_batches, load_dataset
from medunlearn.data.augment import augment_batch, random_crop
from medunlearn.errors import ChecksumError, DataError


def test_every_2d_flag_has_metadata_from_medmnist():
    import medmnist

    flags = dataset_flags()
    assert "pneumoniamnist" in flags and "dermamnist" in flags
    assert not any(f.endswith("3d") for f in flags)
    for flag in flags:
        info = get_info(flag)
        assert info.md5[28] == medmnist.INFO[flag]["MD5"]
        assert info.n_samples == medmnist.INFO[flag]["n_samples"]


def test_unknown_dataset_suggests_and_lists():
    with pytest.raises(DataError, match="Did you mean 'pneumoniamnist'") as e:
        get_info("pneumoniamnst")
    assert "bloodmnist" in str(e.value)


def test_3d_dataset_refused():
    with pytest.raises(DataError, match="3D"):
        get_info("organmnist3d")


def test_real_breastmnist_binary_view_flips_coding(medmnist_root):
    ds = load_dataset(dataset="breastmnist", data_root=str(medmnist_root), download=False)
    assert ds.view.kind == "binary" and ds.view.positive_classes == (0,)
    native = ds.train.native_labels[:, 0]
    # malignant (native 0) becomes the positive label 1
    assert np.array_equal(ds.train.labels.numpy(), (native == 0).astype(int))
    assert ds.md5 == get_info("breastmnist").md5[28]
    assert len(ds.train) == 546 and ds.train.images.shape == (546, 1, 28, 28)


def test_sample_hash_is_sha256_of_stored_bytes(medmnist_root):
    ds = load_dataset(dataset="breastmnist", data_root=str(medmnist_root), download=False)
    with np.load(medmnist_root / "breastmnist.npz") as f:
        raw = f["train_images"][7]
    assert ds.train.hashes[7] == hashlib.sha256(raw.tobytes()).hexdigest()


def test_missing_file_offline_names_file_and_folder(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset(dataset="bloodmnist", data_root=str(tmp_path), download=False)
    msg = str(e.value)
    assert "bloodmnist.npz" in msg and str(tmp_path) in msg and "--data-root" in msg


def test_md5_mismatch_is_clear(synth_root):
    with pytest.raises(ChecksumError, match="MD5"):
        load_dataset(dataset="dermamnist", data_root=str(synth_root), download=False)


def test_truncated_npz_is_clear(tmp_path, synth_root):
    data = (synth_root / "dermamnist.npz").read_bytes()
    (tmp_path / "dermamnist.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="truncated or corrupt"):
        load_dataset(dataset="dermamnist", data_root=str(tmp_path), download=False,
                     verify_md5=False)
    # with verification on, the checksum catches it first
    with pytest.raises(ChecksumError):
        load_dataset(dataset="dermamnist", data_root=str(tmp_path), download=False)


def test_corrupt_real_copy_fails_checksum(tmp_path, medmnist_root):
    shutil.copy(medmnist_root / "breastmnist.npz", tmp_path / "breastmnist.npz")
    with open(tmp_path / "breastmnist.npz", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    with pytest.raises(ChecksumError):
        load_dataset(dataset="breastmnist", data_root=str(tmp_path), download=False)


def test_dermamnist_binary_view_default_positives(synth_root):
    ds = load_dataset(dataset="dermamnist", data_root=str(synth_root), download=False,
                      verify_md5=False)
    assert ds.view.kind == "binary" and ds.view.positive_classes == (0, 1, 4)
    native = ds.train.native_labels[:, 0]
    assert np.array_equal(ds.train.labels.numpy(), np.isin(native, [0, 1, 4]).astype(int))
    assert ds.in_channels == 3 and ds.train.images.shape[1:] == (3, 28, 28)


def test_native_view_keeps_classes_and_positive_set(synth_root):
    ds = load_dataset(dataset="pathmnist", data_root=str(synth_root), download=False,
                      verify_md5=False, view="native")
    assert ds.num_classes == 9 and ds.view.positive_labels == (8,)


def test_positive_class_out_of_range(synth_root):
    with pytest.raises(DataError, match="out of range"):
        load_dataset(dataset="dermamnist", data_root=str(synth_root), download=False,
                     verify_md5=False, positive_classes=(9,))


def test_multilabel_needs_binary_view(synth_root):
    kw = {"data_root": str(synth_root), "download": False, "verify_md5": False}
    with pytest.raises(DataError, match="multi-label"):
        load_dataset(dataset="chestmnist", view="native", **kw)
    with pytest.raises(DataError, match="--positive-classes"):
        load_dataset(dataset="chestmnist", view="binary", **kw)
    ds = load_dataset(dataset="chestmnist", view="binary", positive_classes=(2, 5), **kw)
    want = (ds.train.native_labels[:, [2, 5]] > 0).any(1).astype(int)
    assert np.array_equal(ds.train.labels.numpy(), want)


def test_subset_is_seeded(synth_root):
    kw = {"dataset": "pathmnist", "data_root": str(synth_root), "download": False,
          "verify_md5": False, "train_limit": 50}
    a, b, c = (load_dataset(seed=s, **kw) for s in (0, 0, 1))
    assert np.array_equal(a.train.source_index, b.train.source_index)
    assert not np.array_equal(a.train.source_index, c.train.source_index)
    assert len(a.train) == 50


def test_batches_cover_subset_once_and_are_reproducible(synth_root):
    ds = load_dataset(dataset="pathmnist", data_root=str(synth_root), download=False,
                      verify_md5=False)
    idx = torch.tensor([3, 5, 7, 11, 13, 17, 19])

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return list(iterate_batches(ds.train, idx, batch_size=3, shuffle=True, generator=g,
                                    augment="basic"))

    b1, b2 = run(0), run(0)
    seen = torch.cat([b for _, _, b in b1])
    assert sorted(seen.tolist()) == idx.tolist()
    for (x1, y1, _), (x2, y2, _) in zip(b1, b2, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert x1.dtype == torch.float32 and 0 <= x1.min() and x1.max() <= 1


def test_random_crop_is_a_shift_of_the_padded_image():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 3, 28, 28)
    out = random_crop(x, 2, g)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    for i in range(16):  # each output equals some 28x28 window of its padded input
        hits = [torch.equal(out[i], padded[i, :, dy:dy + 28, dx:dx + 28])
                for dy in range(5) for dx in range(5)]
        assert any(hits)


@pytest.mark.parametrize("policy", ["none", "basic", "strong"])
def test_augment_policies_keep_shape_and_range(policy):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 1, 28, 28)
    y = augment_batch(x, policy, g)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(y, x) == (policy == "none")
