"""medunlearn: make a trained medical image classifier forget specific images, and prove it.

The public API is re-exported lazily here so that ``import medunlearn`` stays cheap.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "load_dataset",
    "load_run",
    "train",
]


def __getattr__(name: str):
    if name == "load_dataset":
        from medunlearn.data import load_dataset

        return load_dataset
    if name == "load_run":
        from medunlearn.checkpoint import load_run

        return load_run
    if name == "train":
        from medunlearn.training import train

        return train
    raise AttributeError(f"module 'medunlearn' has no attribute {name!r}")
