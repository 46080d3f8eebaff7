"""CLI: exit codes and one-paragraph error messages for bad input."""

from __future__ import annotations

import pytest

from medunlearn.cli import main


def _synth_args(root, out, *extra):
    return ["train", "--dataset", "breastmnist", "--data-root", str(root), "--no-verify",
            "--no-download", "--epochs", "1", "--width", "4", "--quiet", "--out", str(out), *extra]


def test_train_cli_success(synth_root, tmp_path, capsys):
    assert main(_synth_args(synth_root, tmp_path / "r")) == 0
    out = capsys.readouterr().out
    assert "test" in out and "run folder" in out
    assert (tmp_path / "r" / "model.safetensors").is_file()


@pytest.mark.parametrize("extra,message", [
    (["--dataset", "pnuemoniamnist"], "Unknown dataset"),
    (["--positive-classes", "5"], "out of range"),
    (["--positive-classes", "a,b"], "comma-separated"),
    (["--view", "sideways"], "Unknown view"),
    (["--augment", "heavy"], "Unknown augmentation"),
])
def test_train_cli_bad_input(synth_root, tmp_path, capsys, extra, message):
    assert main(_synth_args(synth_root, tmp_path / "r", *extra)) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_missing_file_offline(tmp_path, capsys):
    code = main(["train", "--dataset", "octmnist", "--data-root", str(tmp_path),
                 "--no-download", "--out", str(tmp_path / "r")])
    assert code == 2
    err = capsys.readouterr().err
    assert "octmnist.npz" in err and "MEDMNIST_ROOT" in err


def test_existing_output_refused(synth_root, tmp_path, capsys):
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "notes.txt").write_text("someone else's run")
    assert main(_synth_args(synth_root, tmp_path / "r")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "r" / "notes.txt").read_text() == "someone else's run"


def test_version_and_datasets(capsys):
    assert main(["--version"]) == 0
    assert main(["datasets"]) == 0
    out = capsys.readouterr().out
    assert "pneumoniamnist" in out and "[0, 1, 4]" in out and "data folder:" in out
