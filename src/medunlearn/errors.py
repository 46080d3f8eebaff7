"""Exceptions raised for user-facing problems.

Every error that a user can cause (a wrong dataset name, a corrupt file, a bad forget set, a
checkpoint that does not fit the data) is a :class:`MedUnlearnError` whose message says what is
wrong *and* how to fix it. The CLI prints the message without a traceback and exits with code 2.
"""

from __future__ import annotations


class MedUnlearnError(Exception):
    """Base class of every user-facing error in medunlearn."""


class ConfigError(MedUnlearnError, ValueError):
    """An option or configuration value is invalid."""


class DataError(MedUnlearnError):
    """A dataset cannot be found, is corrupt, or does not match its expected form."""


class ChecksumError(DataError):
    """A dataset file's MD5 does not match the value published by MedMNIST."""


class CheckpointError(MedUnlearnError):
    """A saved model is missing, corrupt, or does not fit the data it is used with."""


class OutputError(MedUnlearnError):
    """An output file or folder cannot be written (permissions, a file where a folder belongs)."""


class OutputExistsError(MedUnlearnError):
    """An output folder already holds a different run."""


class ForgetSetError(MedUnlearnError, ValueError):
    """A forget-set selection is empty, out of range or otherwise invalid."""
