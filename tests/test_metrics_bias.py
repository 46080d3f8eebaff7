"""Difficulty groups, group tables and metadata files."""

from __future__ import annotations

import numpy as np
import pytest

from medunlearn.errors import ConfigError
from medunlearn.evaluation.bias import (
    accuracy_spread,
    difficulty_groups,
    group_accuracy,
    match_metadata,
    read_metadata,
)


def test_difficulty_groups_terciles():
    rng = np.random.default_rng(0)
    loss = rng.exponential(size=100)
    g = difficulty_groups(loss)
    assert np.bincount(g).tolist() == [34, 33, 33]
    assert loss[g == 0].max() <= loss[g == 1].min() <= loss[g == 1].max() <= loss[g == 2].min()


def test_group_accuracy_hand():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 0, 0, 1])
    t = group_accuracy(p, y, np.array([0, 0, 1, 1]), ["a", "b"])
    assert t == {"a": {"accuracy": 0.5, "n": 2}, "b": {"accuracy": 1.0, "n": 2}}
    assert accuracy_spread(t) == 0.5


def test_metadata_files(tmp_path):
    f = tmp_path / "meta.csv"
    f.write_text("index,sex,site\n0,F,A\n2,M,B\n")
    cols, table = read_metadata(f, key="index")
    assert cols == ["sex", "site"] and table["2"] == {"sex": "M", "site": "B"}
    keys = {"train": ["train:0", "train:1", "train:2"], "test": ["test:0"]}
    m = match_metadata(table, keys, key="index")
    assert m == {"train": ["0", None, "2"], "test": [None]}
    with pytest.raises(ConfigError, match="no 'sha256' column"):
        read_metadata(f, key="sha256")
    bad = tmp_path / "bad.csv"
    bad.write_text("index,sex\n0,F\n99,M\n")
    _, table = read_metadata(bad, key="index")
    with pytest.raises(ConfigError, match="match no evaluated sample"):
        match_metadata(table, keys, key="index")
    split = tmp_path / "split.csv"
    split.write_text("split,index,sex\ntest,0,F\ntrain,1,M\n")
    _, table = read_metadata(split, key="index")
    assert match_metadata(table, keys, key="index") == {"train": [None, "train:1", None],
                                                        "test": ["test:0"]}
    dup = tmp_path / "dup.csv"
    dup.write_text("sha256,sex\nAB,F\nab,M\n")
    with pytest.raises(ConfigError, match="more than once"):
        read_metadata(dup, key="sha256")
