"""TODO(coordinator): delete this module once the registry branch imports the new homes.

Compatibility names: per-example forgetting quality over run folders is
:func:`medunlearn.runs.verify_forgetting` (:mod:`medunlearn.runs.per_example`), in memory
:func:`medunlearn.api.forgetting_quality`; the protocol and record helpers are in
:mod:`medunlearn.evaluation.forgetting_quality`.
"""

from medunlearn.api import forgetting_quality
from medunlearn.evaluation.forgetting_quality import (
    MIN_MODELS,
    RESULT_FILE,
    RETRAIN_SEED_OFFSET,
    attach_to_record,
    check_n,
    examples_for,
    record_section,
    seeds,
)
from medunlearn.runs.per_example import load_result_for, verify_forgetting

__all__ = ["MIN_MODELS", "RESULT_FILE", "RETRAIN_SEED_OFFSET", "attach_to_record", "check_n",
           "examples_for", "forgetting_quality", "load_result_for", "record_section", "seeds",
           "verify_forgetting"]
