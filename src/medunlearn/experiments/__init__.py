"""Experiment grids: study configs, a resumable runner, a results table and reports.

* :mod:`~medunlearn.experiments.config` parses a YAML/TOML study;
* :mod:`~medunlearn.experiments.grid` expands it into jobs (originals, references, cells);
* :mod:`~medunlearn.experiments.jobs` holds the per-job work (train, retrain, unlearn,
  evaluate) behind small replaceable functions;
* :mod:`~medunlearn.experiments.runner` runs a grid locally or on Ray, resumably;
* :mod:`~medunlearn.experiments.store` is the SQLite results table and its CSV export;
* :mod:`~medunlearn.experiments.report` turns a results table into HTML and Markdown.
"""

from medunlearn.experiments.config import ExperimentConfigError, load_experiment, parse_experiment
from medunlearn.experiments.grid import ExperimentConfig
from medunlearn.experiments.runner import ExperimentSummary, run_experiment
from medunlearn.experiments.store import ResultsStore

__all__ = [
    "ExperimentConfig", "ExperimentConfigError", "ExperimentSummary", "ResultsStore",
    "load_experiment", "parse_experiment", "run_experiment",
]
