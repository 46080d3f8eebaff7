"""TODO(coordinator): delete this module once the registry branch imports the new homes.

Compatibility names for code written before the run-folder layer: ``run_unlearning`` lives in
:mod:`medunlearn.runs.unlearn`, method resolution in :mod:`medunlearn.methods.base` and
``parse_option_pairs`` in :mod:`medunlearn.config`.
"""

from medunlearn.config import parse_option_pairs, read_packaged_toml
from medunlearn.methods.base import (
    DEFAULTS_VERSION,
    default_options,
    load_defaults,
    resolve_method,
    takes_retain_budget,
)
from medunlearn.runs.unlearn import run_unlearning

__all__ = ["DEFAULTS_VERSION", "default_options", "load_defaults", "parse_option_pairs",
           "read_packaged_toml", "resolve_method", "run_unlearning", "takes_retain_budget"]
