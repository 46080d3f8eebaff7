"""TODO(coordinator): delete this module once the registry branch (and cache.py) import
:mod:`medunlearn.fileio`; ``medunlearn.io`` shadowed the standard library's ``io`` by name."""

from medunlearn.fileio import *  # noqa: F403
from medunlearn.fileio import __all__, _fsync_dir  # noqa: F401
