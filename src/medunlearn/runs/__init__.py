"""Run folders: the core (:mod:`medunlearn.api`) applied to models saved on disk.

Each function loads run folders (:mod:`medunlearn.checkpoint` owns their layout), calls the core
and writes what it returns; none of them reimplements a step of the core:

* :func:`run_training` (``runs.train``): train a model into a run folder;
* :func:`run_sharded_training` (``runs.sharded``): train a sharded model (SISA) into a run folder;
* :func:`run_unlearning` (``runs.unlearn``): load, :func:`medunlearn.api.unlearn`, save;
* :func:`evaluate_run` (``runs.evaluate``): load, check the comparisons (``runs.checks``),
  :func:`medunlearn.api.evaluate`;
* :func:`tune_method` (``runs.tune``): :func:`medunlearn.api.unlearn` once per grid point;
* :func:`verify_forgetting` (``runs.per_example``): N unlearned and N retrained run folders,
  scored per forget image.

The CLI, experiment grids and the registry call these (or the core) and nothing below them.
"""

from medunlearn.runs.evaluate import evaluate_run
from medunlearn.runs.per_example import verify_forgetting
from medunlearn.runs.sharded import run_sharded_training
from medunlearn.runs.train import recipe, run_training, split_metrics, write_manifest
from medunlearn.runs.tune import tune_method
from medunlearn.runs.unlearn import run_unlearning

__all__ = ["evaluate_run", "recipe", "run_sharded_training", "run_training", "run_unlearning",
           "split_metrics", "tune_method", "verify_forgetting", "write_manifest"]
