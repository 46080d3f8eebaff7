"""Membership-inference attacks: can an attacker tell that the forget set was trained on?

Three attacks, from cheap to strong, all on model outputs computed once:

* **MIA-efficacy** (SalUn convention, after Song & Mittal 2021): a classifier (scikit-learn SVC)
  is fitted on a per-sample confidence feature with *retain* samples as members and *test*
  samples as non-members (balanced); MIA-efficacy is the fraction of *forget* samples it predicts
  non-member. Variants use the true-class confidence, the prediction entropy and Song & Mittal's
  modified entropy. Closer to the retrained reference is better (the retrained model's value is
  what "never seen" looks like on this data; 1.0 is not the goal).
* **Loss attack AUC**: threshold-free ROC AUC of ``-loss`` separating forget samples (label 1)
  from test samples (label 0). 0.5 = indistinguishable; closer to the reference's is better.
* **Offline LiRA** (Carlini et al. 2022): shadow models trained on random halves of the retain
  set never see a forget or test sample, so each sample gets a Gaussian of its logit-scaled
  true-class confidence under "not trained on"; a sample's membership score is how far above that
  Gaussian the evaluated model's confidence lies (one-sided). AUC forget vs test as above.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

EPS = 1e-12


def true_class_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``p(y_i | x_i)`` per sample ``(N,)``."""
    probs = np.asarray(probs, dtype=np.float64)
    return probs[np.arange(len(labels)), np.asarray(labels)]


def per_sample_loss(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cross-entropy ``-log p(y_i | x_i)`` per sample ``(N,)``."""
    return -np.log(np.clip(true_class_confidence(probs, labels), EPS, 1.0))


def prediction_entropy(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy ``-sum_k p_k log p_k`` per sample ``(N,)`` (nats)."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(np.clip(p, EPS, 1.0))).sum(axis=1)


def modified_entropy(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Song & Mittal's modified entropy per sample ``(N,)``:
    ``-(1 - p_y) log p_y - sum_{k != y} p_k log(1 - p_k)``. Low for confident, correct
    predictions (typical of members), high for confident wrong ones.
    """
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(labels)
    rows = np.arange(len(y))
    py = p[rows, y]
    term_y = -(1 - py) * np.log(np.clip(py, EPS, 1.0))
    other = -p * np.log(np.clip(1 - p, EPS, 1.0))
    other[rows, y] = 0.0
    return term_y + other.sum(axis=1)


MIA_FEATURES = ("confidence", "entropy", "m_entropy")


def mia_feature(probs: np.ndarray, labels: np.ndarray, kind: str) -> np.ndarray:
    """One attack feature ``(N, 1)``: ``confidence``, ``entropy`` or ``m_entropy``."""
    if kind == "confidence":
        f = true_class_confidence(probs, labels)
    elif kind == "entropy":
        f = prediction_entropy(probs)
    elif kind == "m_entropy":
        f = modified_entropy(probs, labels)
    else:
        raise ValueError(f"Unknown MIA feature {kind!r}; choose one of {MIA_FEATURES}.")
    return f.reshape(-1, 1)


def mia_efficacy(*, member: np.ndarray, nonmember: np.ndarray, target: np.ndarray,
                 seed: int = 0, max_attacks: int = 8, sizes: dict | None = None) -> float:
    """MIA-efficacy: the fraction of ``target`` samples that a membership attack calls
    non-members (higher = more forgotten; SalUn's metric).

    An RBF SVC (``C=3``, ``gamma="auto"``, as in SalUn's code) is fitted on members (label 1)
    against ``nonmember`` rows (label 0) in equal numbers. SalUn's code fits one attack on a
    random member subset of the non-members' size, so the value moves with the subset (by
    0.3-0.9 points on PneumoniaMNIST). Here the members are shuffled with ``seed`` and cut into
    consecutive blocks of that size; one attack is fitted per block (at most ``max_attacks``
    blocks, so up to ``max_attacks`` x the non-members' size members are used, every member once)
    and the efficacies are averaged. Direction: closer to the retrained reference is better.

    Args:
        member: Features ``(M, D)`` of samples the model was trained on (the retain set).
        nonmember: Features ``(U, D)`` of unseen samples (the test set).
        target: Features ``(F, D)`` of the forget set.
        seed: Seeds the member order.
        max_attacks: Most attacks (member blocks) to fit and average.
        sizes: If given, filled with the set sizes really used (``members``, ``nonmembers``,
            ``attacks``).
    """
    member = np.asarray(member, dtype=np.float64)
    nonmember = np.asarray(nonmember, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    if len(target) == 0 or len(member) == 0 or len(nonmember) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    n = min(len(member), len(nonmember))
    order = rng.permutation(len(member))
    blocks = [order[k * n:(k + 1) * n] for k in range(min(max_attacks, len(member) // n))]
    u = nonmember[rng.choice(len(nonmember), n, replace=False)]
    if sizes is not None:
        sizes.update(members=n * len(blocks), nonmembers=n, attacks=len(blocks))
    rates = []
    for block in blocks:
        x = np.concatenate([member[block], u])
        y = np.concatenate([np.ones(n), np.zeros(n)])
        if np.ptp(x, axis=0).max() == 0:  # constant features: nothing to learn
            rates.append(0.5)
            continue
        clf = SVC(C=3, gamma="auto", kernel="rbf")
        clf.fit(x, y)
        rates.append(float((clf.predict(target) == 0).mean()))
    return float(np.mean(rates))


def attack_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """ROC AUC of a membership score (higher = more member-like) separating the
    ``member_scores`` group (label 1) from ``nonmember_scores`` (label 0).

    With ``-loss`` as the score and forget vs test samples this is the loss attack's AUC:
    0.5 = indistinguishable; closer to the retrained reference's value is better.
    ``nan`` when either group is empty.
    """
    a = np.asarray(member_scores, dtype=np.float64)
    b = np.asarray(nonmember_scores, dtype=np.float64)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    y = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    return float(roc_auc_score(y, np.concatenate([a, b])))


def auc_standard_error(auc: float, n_pos: int, n_neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an ROC AUC from ``n_pos`` and ``n_neg`` samples.

    Used to widen tolerances when forget or test sets are small (at AUC 0.5 with 100 vs 150
    samples the SE is about 0.037).
    """
    if n_pos < 1 or n_neg < 1 or not np.isfinite(auc):
        return float("nan")
    a = float(auc)
    q1 = a / (2 - a)
    q2 = 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return float(np.sqrt(max(var, 0.0)))


def logit_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """LiRA's logit-scaled confidence ``log(p_y / (1 - p_y))`` per sample ``(N,)``, computed
    stably as ``log p_y - log(sum_{k != y} p_k)``."""
    p = np.asarray(probs, dtype=np.float64)
    py = true_class_confidence(p, labels)
    rest = p.sum(axis=1) - py
    return np.log(np.clip(py, EPS, None)) - np.log(np.clip(rest, EPS, None))


def lira_offline_scores(target: np.ndarray, shadow_out: np.ndarray, *,
                        min_std: float = 1e-3) -> np.ndarray:
    """Offline LiRA membership scores: ``Phi((phi - mu_out) / sigma_out)`` per sample.

    Args:
        target: Logit-scaled confidences ``(N,)`` of the evaluated model.
        shadow_out: Logit-scaled confidences ``(K, N)`` of K shadow models none of which was
            trained on these samples.
        min_std: Floor on each per-sample standard deviation (with few shadows the sample
            standard deviation can be ~0).

    Returns:
        Scores in [0, 1] ``(N,)``; higher = more member-like.
    """
    from scipy.stats import norm

    target = np.asarray(target, dtype=np.float64)
    out = np.asarray(shadow_out, dtype=np.float64)
    mu = out.mean(axis=0)
    sd = out.std(axis=0, ddof=1) if out.shape[0] > 1 else np.zeros_like(mu)
    sd = np.maximum(sd, min_std)
    return norm.cdf((target - mu) / sd)


def privacy_metrics(*, forget_probs: np.ndarray, forget_labels: np.ndarray,
                    retain_probs: np.ndarray, retain_labels: np.ndarray,
                    test_probs: np.ndarray, test_labels: np.ndarray, seed: int = 0) -> dict:
    """MIA-efficacy (three features) and the loss attack AUC, forget vs test.

    ``retain_*`` should be a seeded subset (it only trains the attack). Directions: all
    closer-to-reference (0.5 for the AUC without a reference).
    """
    out: dict = {}
    sizes: dict = {}
    for kind in MIA_FEATURES:
        key = "mia_efficacy" if kind == "confidence" else f"mia_efficacy_{kind}"
        out[key] = mia_efficacy(member=mia_feature(retain_probs, retain_labels, kind),
                                nonmember=mia_feature(test_probs, test_labels, kind),
                                target=mia_feature(forget_probs, forget_labels, kind), seed=seed,
                                sizes=sizes)
    out["mia_attack_sizes"] = sizes  # members and non-members the attacks were fitted on
    auc = attack_auc(-per_sample_loss(forget_probs, forget_labels),
                     -per_sample_loss(test_probs, test_labels))
    out["attack_auc"] = auc
    out["attack_auc_se"] = auc_standard_error(auc, len(forget_labels), len(test_labels))
    return out
