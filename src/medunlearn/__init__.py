"""medunlearn: make a trained medical image classifier forget specific images, and prove it.

The front door (see :mod:`medunlearn.api`)::

    import medunlearn as mu

    result = mu.unlearn(model, data, forget="random:0.1", method="salun-cra")
    report = mu.evaluate(result.model, data, forget=result.forget, original=model)

The public API is re-exported lazily here so that ``import medunlearn`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "unlearn": "medunlearn.api",
    "evaluate": "medunlearn.api",
    "UnlearnResult": "medunlearn.api",
    "EvaluationResult": "medunlearn.api",
    "Dataset": "medunlearn.data",
    "from_arrays": "medunlearn.data",
    "load_dataset": "medunlearn.data",
    "load_run": "medunlearn.checkpoint",
    "as_classifier": "medunlearn.models",
    "train_model": "medunlearn.training",
    "TrainConfig": "medunlearn.config",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'medunlearn' has no attribute {name!r}")
