"""Errors raised by the deletion-request registry (all are user-facing ``MedUnlearnError``)."""

from __future__ import annotations

from medunlearn.errors import MedUnlearnError


class RegistryError(MedUnlearnError):
    """A registry folder is missing, not a registry, or in a state that forbids the operation."""


class RequestError(RegistryError, ValueError):
    """A deletion request is malformed, empty, names unknown images, or reuses an id."""


class AuditError(RegistryError):
    """The audit ledger or a model file does not match what was recorded (tampering or damage)."""
