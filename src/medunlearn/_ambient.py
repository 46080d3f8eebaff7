"""TODO(coordinator): delete this module once the registry passes ``cache=`` explicitly.

The one place that still reads the ambient ``medunlearn.cache.session`` context variable.
:func:`medunlearn.loop.infer` and :func:`medunlearn.data.sources.load_from_record` take an
explicit ``cache=`` (a :class:`medunlearn.cache.Session`); when it is None they ask
:func:`cache_or_ambient`, so that code still running inside ``with cache.session(...)`` (the
registry, until it is switched) behaves exactly as before. Deleting this module means: replace
both calls by the explicit argument, remove ``_CURRENT``/``current``/``session`` from cache.py,
and drop the ``medunlearn.cache -> medunlearn.loop`` exception in tests/test_architecture.py.
"""

from __future__ import annotations


def cache_or_ambient(cache):
    """``cache`` when given, else the session of an enclosing ``cache.session()`` (or None)."""
    if cache is not None:
        return cache
    from medunlearn import cache as ambient

    return ambient.current()
