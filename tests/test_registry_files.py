"""Files written by medunlearn: modes follow the umask, and staging folders of killed runs are
removed by the next run (folders of live processes are left alone)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from medunlearn.errors import OutputError
from medunlearn.fileio import atomic_write_text, remove_stale_staging, staged_output
from medunlearn.testing import untrained_run


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, synth_root):
    """An untrained (randomly initialised) but complete run folder: the fakes need no training."""
    return untrained_run(tmp_path_factory.mktemp("model") / "model", data_root=synth_root,
                         verify_md5=False)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("umask,expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_respect_the_umask(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        path = atomic_write_text(tmp_path / "certificate.html", "<p>x</p>")
    finally:
        os.umask(old)
    assert _mode(path) == expected


def test_writing_a_file_over_a_folder_is_a_clear_error(tmp_path):
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_write_text(tmp_path, "x")
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has this id (until the kernel reuses it)


def test_staging_of_a_killed_run_is_removed_by_the_next_run(tmp_path):
    out = tmp_path / "run"
    dead = tmp_path / f".run.staging-{_dead_pid()}-abcd1234"
    live = tmp_path / f".run.staging-{os.getpid()}-abcd1234"
    other = tmp_path / f".other.staging-{_dead_pid()}-abcd1234"  # another output's: kept
    for d in (dead, live, other):
        (d / "sub").mkdir(parents=True)
    with staged_output(out) as stage:
        (stage / "model.safetensors").write_bytes(b"x")
    assert not dead.exists() and live.is_dir() and other.is_dir()
    assert (out / "model.safetensors").is_file()


def test_a_replaced_folder_is_kept_while_it_is_the_only_copy(tmp_path):
    out = tmp_path / "run"
    trash = tmp_path / f".run.replaced-{_dead_pid()}-abcd1234"
    trash.mkdir()
    assert remove_stale_staging(out) == [] and trash.is_dir()  # out missing: trash is the run
    out.mkdir()
    assert remove_stale_staging(out) == [trash] and not trash.exists()


def test_registry_files_are_readable_like_other_files(tmp_path, model_dir):
    from medunlearn.registry import init_registry

    old = os.umask(0o022)
    try:
        init_registry(model_dir, tmp_path / "reg", methods=["retrain"])
    finally:
        os.umask(old)
    for name in ("LEDGER_HEAD", "versions/1/model.safetensors", "versions/1/config.json"):
        assert _mode(tmp_path / "reg" / name) == 0o644, name
