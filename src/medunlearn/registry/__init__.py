"""Deletion-request registry: an auditable record of a deployed model and what it forgot.

``init_registry`` registers a trained model (version 1, its manifest of image hashes);
``forget`` processes a deletion request (validate, unlearn, verify, promote or fall back);
``verify_registry`` checks the hash-chained audit ledger and model files; ``write_certificate``
issues a JSON + HTML certificate for a request. See :mod:`medunlearn.registry.core`.
"""

from medunlearn.registry.audit import (
    AuditReport,
    certificate,
    render_html,
    verify_registry,
    write_certificate,
)
from medunlearn.registry.core import (
    RECOMMENDED,
    export_manifest,
    forget,
    init_registry,
    recover,
    resume,
    retain_indices,
    status,
)
from medunlearn.registry.errors import AuditError, RegistryError, RequestError
from medunlearn.registry.request import DeletionRequest, load_request, parse_request
from medunlearn.registry.steps import Verification, fake_unlearn, fake_verify

__all__ = [
    "RECOMMENDED", "AuditError", "AuditReport", "DeletionRequest", "RegistryError",
    "RequestError", "Verification", "certificate", "export_manifest", "fake_unlearn",
    "fake_verify", "forget", "init_registry", "load_request", "parse_request", "recover",
    "render_html", "resume", "retain_indices", "status", "verify_registry", "write_certificate",
]
