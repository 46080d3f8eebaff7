"""TODO(coordinator): delete this module once the registry branch imports the new homes.

Compatibility names: ``evaluate_run`` (a run folder) is :func:`medunlearn.runs.evaluate_run`;
the record, its options and the retain subset are in :mod:`medunlearn.evaluation.record`.
This shim is the only module in ``evaluation/`` that reaches up to the run-folder layer.
"""

from medunlearn.evaluation.record import EvalOptions, evaluate_outputs, retain_subset
from medunlearn.runs.evaluate import evaluate_run

__all__ = ["EvalOptions", "evaluate_outputs", "evaluate_run", "retain_subset"]
