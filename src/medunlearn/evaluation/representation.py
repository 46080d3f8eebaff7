"""Representation-level verification ("feature residuals", TB study).

Output-level attacks can miss information kept in the features. Two checks on penultimate
features (``Classifier.features``):

* **Linear CKA** (Kornblith et al. 2019) between the unlearned model's features and those of the
  retrained / original models on the same samples: 1 = the same representation up to rotation
  and scale.
* **Probe AUC**: a cross-validated logistic-regression probe tries to separate forget-set
  features from unseen test features. 0.5 = forgotten images look like unseen ones; compare with
  the same probe on the retrained model's features (closer to the reference is better).
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medunlearn.evaluation.privacy import attack_auc


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment of two representations of the same N samples.

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc`` (N, D1),
    ``Yc`` (N, D2). Invariant to orthogonal transforms and isotropic scaling of either side; in
    [0, 1]. Higher = more similar (higher is better against the retrained reference). ``nan`` when
    either representation is constant or N < 2.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides, got {x.shape[0]} and "
                         f"{y.shape[0]} rows.")
    if x.shape[0] < 2:
        return float("nan")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    nx = np.linalg.norm(x.T @ x)
    ny = np.linalg.norm(y.T @ y)
    if nx == 0 or ny == 0:
        return float("nan")
    return float(cross / (nx * ny))


def probe_auc(forget_features: np.ndarray, unseen_features: np.ndarray, *, folds: int = 5,
              seed: int = 0, max_per_group: int = 1000) -> float:
    """Cross-validated AUC of a linear probe separating forget features (label 1) from unseen
    features (label 0).

    Features are standardised and fitted with L2 logistic regression inside each of ``folds``
    stratified folds (``C=0.1``: strong L2, since features often outnumber
    samples); the AUC is over the out-of-fold scores (sklearn ``roc_auc_score``). Groups
    larger than ``max_per_group`` are subsampled with ``seed``. 0.5 = indistinguishable; closer
    to the retrained reference's value is better. ``nan`` when a group has fewer than ``folds``
    samples.
    """
    a = np.asarray(forget_features, dtype=np.float64)
    b = np.asarray(unseen_features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    if len(a) > max_per_group:
        a = a[rng.choice(len(a), max_per_group, replace=False)]
    if len(b) > max_per_group:
        b = b[rng.choice(len(b), max_per_group, replace=False)]
    if min(len(a), len(b)) < folds:
        return float("nan")
    x = np.concatenate([a, b])
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    scores = cross_val_predict(clf, x, y, cv=cv, method="decision_function")
    return attack_auc(scores[y == 1], scores[y == 0])
