"""Forget-set selection: every spec form, reproducibility, stratification, every error case."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from medunlearn.checkpoint import read_indices, write_index_csv
from medunlearn.data import load_dataset
from medunlearn.errors import ForgetSetError
from medunlearn.forget_set import select_forget
from medunlearn.testing import make_synthetic_npz


@pytest.fixture(scope="module")
def ds(synth_root):
    """Synthetic BreastMNIST (binary view, 160 training samples)."""
    return load_dataset(dataset="breastmnist", data_root=str(synth_root), download=False,
                        verify_md5=False)


@pytest.fixture(scope="module")
def native_ds(tmp_path_factory):
    """A native 8-class view with no disease classes (BloodMNIST has no default positives)."""
    root = tmp_path_factory.mktemp("blood")
    make_synthetic_npz(root / "bloodmnist.npz", n_classes=8, n_channels=3, n_train=80, seed=5)
    return load_dataset(dataset="bloodmnist", data_root=str(root), download=False,
                        verify_md5=False)


def _check_partition(fs, n, excluded=()):
    f, r = set(fs.forget.tolist()), set(fs.retain.tolist())
    assert not f & r and not (f | r) & set(excluded)
    assert f | r | set(excluded) == set(range(n))
    assert fs.forget.dtype == torch.long and torch.equal(fs.forget, fs.forget.sort().values)


def test_random_fraction_is_seeded_and_partitions(ds):
    n = len(ds.train)
    a = select_forget(ds, forget="random:0.2", seed=3)
    b = select_forget(ds, forget="random:0.2", seed=3)
    c = select_forget(ds, forget="random:0.2", seed=4)
    assert len(a) == round(0.2 * n) and torch.equal(a.forget, b.forget)
    assert not torch.equal(a.forget, c.forget)
    assert a.spec == "random:0.2" and a.excluded_count == 0
    _check_partition(a, n)


def test_stratified_keeps_class_proportions(ds):
    fs = select_forget(ds, forget="random:0.25:stratified", seed=0)
    labels = ds.train.labels
    for k in range(ds.num_classes):
        n_k = int((labels == k).sum())
        assert int((labels[fs.forget] == k).sum()) == round(0.25 * n_k)


def test_class_selects_every_sample_of_that_label(ds):
    fs = select_forget(ds, forget="class:1", seed=0)
    assert torch.equal(fs.forget, torch.nonzero(ds.train.labels == 1).flatten())


def test_positive_and_negative_fractions(ds):
    labels = ds.train.labels
    pos = select_forget(ds, forget="positive:0.5", seed=0)
    neg = select_forget(ds, forget="negative:0.5", seed=0)
    assert (labels[pos.forget] == 1).all() and (labels[neg.forget] == 0).all()
    assert len(pos) == round(0.5 * int((labels == 1).sum()))


def test_positive_needs_positive_labels(native_ds):
    with pytest.raises(ForgetSetError, match="no disease-positive labels"):
        select_forget(native_ds, forget="positive:0.3", seed=0)


def test_indices_file_and_sequence(ds, tmp_path):
    f = tmp_path / "idx.txt"
    f.write_text("# forget these\n3\n\n7  # a comment\n11\n")
    fs = select_forget(ds, forget=f"indices:{f}", seed=0)
    assert fs.forget.tolist() == [3, 7, 11]
    seq = select_forget(ds, forget=[11, 3, 7], seed=0)
    assert torch.equal(seq.forget, fs.forget) and seq.spec == "indices:<3 given>"
    assert select_forget(ds, forget=torch.tensor([5]), seed=0).forget.tolist() == [5]


def test_hashes_select_all_identical_copies(ds, tmp_path):
    dup = load_dataset(dataset="breastmnist", data_root=str(ds.path.parent), download=False,
                       verify_md5=False)
    dup.train.images[9] = dup.train.images[4]  # make sample 9 an exact copy of sample 4
    dup.train._hashes = None
    hashes = dup.train.hashes
    f = tmp_path / "h.txt"
    f.write_text(f"{hashes[4].upper()}\n{hashes[20]}\n")
    fs = select_forget(dup, forget=f"hashes:{f}", seed=0)
    assert fs.forget.tolist() == [4, 9, 20]


@pytest.mark.parametrize("spec, match", [
    ("random:0", "strictly between 0 and 1"),
    ("random:1.5", "strictly between 0 and 1"),
    ("random:abc", "not a number"),
    ("random:0.2:weird", "unknown mode"),
    ("random:0.001", "empty"),
    ("class:2", "between 0 and 1"),
    ("class:x", "integer label"),
    ("bogus:1", "Unknown forget spec"),
    ("random", "Unknown forget spec"),
    ("indices:/no/such/file.txt", "does not exist"),
])
def test_spec_errors(ds, spec, match):
    with pytest.raises(ForgetSetError, match=match):
        select_forget(ds, forget=spec, seed=0)


@pytest.mark.parametrize("content, match", [
    ("1\n2.5\n", "line 2"),
    ("1\nabc\n", "not an integer"),
    ("1\n100000\n", "out of range"),
    ("-1\n", "out of range"),
    ("4\n4\n", "more than once"),
    ("# nothing\n", "empty"),
])
def test_index_file_errors(ds, tmp_path, content, match):
    f = tmp_path / "i.txt"
    f.write_text(content)
    with pytest.raises(ForgetSetError, match=match):
        select_forget(ds, forget=f"indices:{f}", seed=0)


def test_sequence_errors(ds):
    with pytest.raises(ForgetSetError, match="not an integer"):
        select_forget(ds, forget=[1, "x"], seed=0)
    with pytest.raises(ForgetSetError, match="out of range"):
        select_forget(ds, forget=[len(ds.train)], seed=0)
    with pytest.raises(ForgetSetError, match="empty"):
        select_forget(ds, forget=[], seed=0)


def test_hash_errors_list_unknown_and_refuse_duplicates(ds, tmp_path):
    h = ds.train.hashes
    f = tmp_path / "h.txt"
    f.write_text(f"{h[0]}\n{'ab' * 32}\n{'cd' * 32}\n")
    with pytest.raises(ForgetSetError, match=r"2 of 3 hash.*abababab") as e:
        select_forget(ds, forget=f"hashes:{f}", seed=0)
    assert "manifest.csv" in str(e.value)
    f.write_text(f"{h[0]}\n{h[0]}\n")
    with pytest.raises(ForgetSetError, match="more than once"):
        select_forget(ds, forget=f"hashes:{f}", seed=0)
    f.write_text("not-a-hash\n")
    with pytest.raises(ForgetSetError, match="SHA-256"):
        select_forget(ds, forget=f"hashes:{f}", seed=0)


def test_exclude_is_in_neither_set_and_random_draws_from_the_rest(ds):
    n = len(ds.train)
    excluded = list(range(0, n, 2))  # half the data was forgotten earlier
    fs = select_forget(ds, forget="random:0.5", seed=0, exclude=excluded)
    _check_partition(fs, n, excluded)
    assert fs.excluded_count == len(excluded) and len(fs) == round(0.5 * (n - len(excluded)))
    explicit = select_forget(ds, forget=[0, 1, 2, 3], seed=0, exclude=excluded)
    assert explicit.forget.tolist() == [1, 3]
    with pytest.raises(ForgetSetError, match="already forgotten"):
        select_forget(ds, forget=[0, 2], seed=0, exclude=excluded)
    with pytest.raises(ForgetSetError, match="exclude"):
        select_forget(ds, forget="random:0.2", seed=0, exclude=[n + 5])


def test_forget_csv_round_trip(ds, tmp_path):
    fs = select_forget(ds, forget="random:0.1", seed=1)
    path = write_index_csv(tmp_path / "forget.csv", ds, fs.forget.tolist())
    rows = list(csv.DictReader(path.open()))
    assert [int(r["index"]) for r in rows] == fs.forget.tolist()
    assert all(r["sha256"] == ds.train.hashes[int(r["index"])] for r in rows)
    assert np.array_equal([int(r["label"]) for r in rows], ds.train.labels[fs.forget].numpy())
    assert read_indices(path) == fs.forget.tolist()


def test_real_pneumoniamnist_duplicate_hash_selects_both_copies(medmnist_root, tmp_path):
    from collections import Counter

    pn = load_dataset(dataset="pneumoniamnist", data_root=str(medmnist_root), download=False)
    dups = [h for h, c in Counter(pn.train.hashes).items() if c > 1]
    assert len(dups) == 18
    f = tmp_path / "h.txt"
    f.write_text(dups[0] + "\n")
    fs = select_forget(pn, forget=f"hashes:{f}", seed=0)
    assert len(fs) == 2 and all(pn.train.hashes[i] == dups[0] for i in fs.forget.tolist())
