"""Deletion-request registry: an auditable record of a deployed model and what it forgot.

``init_registry`` registers a trained model (version 1, its manifest of image hashes;
:mod:`.versions`); ``process_request`` (alias ``forget``) processes a deletion request: validate,
unlearn, gate, promote or fall back (:mod:`.workflow`, with the request policy in
:mod:`.requests`); ``audit_registry`` checks the hash-chained audit ledger, the tables and the
model files; ``write_certificate`` issues a JSON + HTML certificate for a request
(:mod:`.certificate`). The per-image forgetting proof of a request is :mod:`.forgetting_proof`;
the shadow models behind every request's per-image membership check are :mod:`.shadows`
(``train_shadows``).
docs/registry.md has the map of the modules.
"""

from medunlearn.registry.audit import AuditReport, audit_registry
from medunlearn.registry.certificate import certificate, write_certificate
from medunlearn.registry.certificate_html import render_html
from medunlearn.registry.deletion_request import DeletionRequest, load_request, parse_request
from medunlearn.registry.errors import AuditError, RegistryError, RequestError
from medunlearn.registry.reading import export_manifest, status
from medunlearn.registry.shadows import train as train_shadows
from medunlearn.registry.steps import Verification
from medunlearn.registry.versions import RECOMMENDED, init_registry, retain_indices
from medunlearn.registry.workflow import process_request, recover, resume

#: The name ``medunlearn.registry.forget`` (what the ``medunlearn forget`` command does), kept for
#: callers and tests; it is :func:`process_request`.
forget = process_request

__all__ = [
    "RECOMMENDED", "AuditError", "AuditReport", "DeletionRequest", "RegistryError",
    "RequestError", "Verification", "audit_registry", "certificate", "export_manifest", "forget",
    "init_registry", "load_request", "parse_request", "process_request", "recover",
    "render_html", "resume", "retain_indices", "status", "train_shadows", "write_certificate",
]
