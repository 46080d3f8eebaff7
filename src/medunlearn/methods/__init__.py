"""Unlearning methods, one module each, registered by CLI name.

Importing this package imports every module in it, and each module registers its method with
:func:`~medunlearn.methods.base.register_method`.
"""

from __future__ import annotations

import importlib
import pkgutil

from medunlearn.config import EXACT_METHODS
from medunlearn.methods.base import (
    Method,
    UnlearnContext,
    UnlearnOutcome,
    create_method,
    get_method_class,
    method_names,
    register_method,
)

#: The order in which methods are listed (CLI help, reports); others follow alphabetically.
CANONICAL_ORDER = (
    "retrain", "finetune", "gradient-ascent", "neggrad-plus", "random-label", "boundary-shrink",
    "l1-sparse", "salun", "salun-cra", "scrub", "ssd", "fisher", "newton",
    "reinit-small-grad", "noise-repair", "oracle-match",
)


for _m in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _m.startswith("_") and _m != "base":
        importlib.import_module(f"{__name__}.{_m}")

__all__ = [
    "CANONICAL_ORDER", "EXACT_METHODS", "Method", "UnlearnContext", "UnlearnOutcome",
    "create_method", "get_method_class", "method_names", "register_method",
]
