"""The active model's feature cache (``REG/cache``).

Derived data (``medunlearn.cache``): the active version's features on the verification images,
so that a request runs only the candidate model over them (and not even that when the
candidate's unlearning changed only the head). Safe to delete at any time; the audit neither
reads nor hashes it.

Both functions take the model folder and the cache folder explicitly; they know nothing of the
registry's tables. :func:`warm_features` fills the cache for a model (at ``init``);
:func:`keep_active_features` runs at the end of a request, inside its cache session, and keeps
only the tables of the version now in service.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medunlearn import cache

#: The cache folder inside a registry.
CACHE_DIR = "cache"


def keep_active_features(active_dir: Path, cache_dir: Path) -> None:
    """Write the features of the model in ``active_dir`` computed in this session to
    ``cache_dir`` and delete the tables of every other backbone (earlier versions, rejected
    candidates)."""
    from medunlearn.checkpoint import load_run

    session = cache.current()
    if session is None or not session.features:
        return
    digest = cache.backbone_digest(load_run(active_dir).model)
    for key in list(session.features):
        if key.startswith(digest):
            cache.save_features(key)
    cache.prune(cache_dir, {digest})


def warm_features(model_dir: str | os.PathLike, cache_dir: str | os.PathLike, *,
                  retain: list[int], data_root: str | None = None) -> int:
    """Compute the features of the model in ``model_dir`` on the images every verification uses
    (validation, test and the seeded subset of the ``retain`` training indices; see
    ``steps.VERIFY_OPTIONS``) and keep them in ``cache_dir``. Returns the number of images run
    (0 when they were cached already)."""
    from medunlearn.checkpoint import load_run_and_data
    from medunlearn.evaluation.record import EvalOptions, retain_subset
    from medunlearn.loop import Runtime, infer
    from medunlearn.registry.steps import VERIFY_OPTIONS

    with cache.session(Path(cache_dir)) as session:
        run, dataset = load_run_and_data(model_dir, data_root=data_root)
        opts = EvalOptions(**VERIFY_OPTIONS)
        rt = Runtime.create(opts.device, "fp32", opts.threads)
        pool = retain_subset(np.asarray(retain, dtype=np.int64), opts.retain_limit,
                             seed=opts.seed, n_train=len(dataset.train))
        before = session.misses
        for split, idx in ((dataset.train, pool), (dataset.val, None), (dataset.test, None)):
            infer(run.model, split, idx, runtime=rt, batch_size=opts.batch_size, features=True)
        keep_active_features(Path(model_dir), Path(cache_dir))
        return session.misses - before
