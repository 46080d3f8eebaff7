"""Machine-readable direction of every metric that ``evaluate`` reports.

Reports and the safety gate read :data:`DIRECTIONS` to know whether a larger value is good:

* ``"higher"``: larger is better (e.g. test accuracy, sensitivity);
* ``"lower"``: smaller is better (e.g. false-negative rate, Global Risk, ECE, run time);
* ``"reference"``: closest to the retrained reference model is best (unlearning's goal: behave
  as if the data had never been seen). Without a reference, attack and probe AUCs fall back to
  0.5 ("indistinguishable from unseen data");
* ``"info"``: descriptive, no better/worse (sample counts, the costs used).

Names are the leaf keys used in the metrics dict written by
:func:`medunlearn.evaluation.record.evaluate_outputs`.
"""

from __future__ import annotations

HIGHER = "higher"
LOWER = "lower"
REFERENCE = "reference"
INFO = "info"

DIRECTIONS: dict[str, str] = {
    # utility
    "UA": REFERENCE,  # 1 - forget accuracy: as high as the retrained model's, no higher
    "RA": HIGHER,
    "TA": HIGHER,
    "val_accuracy": HIGHER,
    "test_auc": HIGHER,
    "balanced_accuracy": HIGHER,
    "per_class_recall": HIGHER,
    "forget_accuracy": REFERENCE,
    "forget_loss": REFERENCE,
    "majority_prediction_share": REFERENCE,  # >= 0.95: degenerate (utility.DEGENERATE_SHARE)
    # clinical (binary view or positive classes)
    "sensitivity": HIGHER,
    "specificity": HIGHER,
    "fnr": LOWER,
    "fpr": LOWER,
    "ppv": HIGHER,
    "npv": HIGHER,
    "global_risk": LOWER,
    "fnr_change": LOWER,  # FNR minus the original model's: above 0 = more missed disease
    # largest |logit change| on the forget set against the original (changes.vs_original);
    # 0 = the original's outputs: nothing forgotten (the gate's forget_changed check)
    "forget_max_logit_change": INFO,
    # mean |change of the logit-scaled true-class confidence| on the forget set against the
    # original, and that as a share of the reference's own change (the do-nothing rule:
    # the gate's forget_changed check and tune reject a model that moved too little)
    "forget_shift": INFO,
    "forget_moved": INFO,
    # privacy
    "mia_efficacy": REFERENCE,
    "mia_efficacy_entropy": REFERENCE,
    "mia_efficacy_m_entropy": REFERENCE,
    "attack_auc": REFERENCE,  # 0.5 without a reference
    "attack_auc_val": REFERENCE,  # forget vs validation (same pool as training: no split shift)
    "lira_auc": REFERENCE,  # 0.5 without a reference
    "mia_attack_sizes": INFO,  # members, non-members and attacks the MIA-efficacy used
    # per-example forgetting quality from N unlearned vs N retrained models
    # (medunlearn.evaluation.forgetting_quality; record section "forgetting_quality")
    "forgetting_quality": HIGHER,  # challenge score in [0, 1]; 1 = indistinguishable
    "forgetting_quality_adjusted": HIGHER,  # x (RA_u / RA_r) x (TA_u / TA_r)
    "forgetting_quality_vs_null": HIGHER,  # score / what retraining itself scores at this N
    "forgetting_quality_null": INFO,  # the ceiling at this N (permutation null)
    "epsilon_mean": LOWER,
    "epsilon_median": LOWER,
    "epsilon_capped_fraction": LOWER,
    "epsilon_peaky_fraction": LOWER,  # capped because the unlearned outputs barely vary
    # medians over the forget examples of the unlearned runs' spread over retraining's (1 = as
    # varied) and of their mean's distance from retraining's in its sd (0 = as confident)
    "spread_ratio": INFO,
    "confidence_shift": INFO,
    "ulira_accuracy": REFERENCE,  # per-example U-LiRA balanced accuracy; 0.5 = indistinguishable
    # per-image membership evidence from shadow models (evaluation.membership; record section
    # models.<role>.membership): about N(0, 1) for a model that never saw the forgotten images
    "membership_z": LOWER,  # record key "z": larger = the forgotten images look more like members
    "membership_p_value": HIGHER,  # one-sided P(Z >= z) under "never seen"
    "membership_power": HIGHER,  # chance to detect remembered images: below the gate's minimum
    #                               the check cannot say
    "membership_log_lr": LOWER,  # summed per-image log likelihood ratio IN vs OUT
    # the paired test against the original (evaluation.membership_paired; record section
    # models.<role>.forget_effect): the share of retraining's expected drop on the forgotten
    # images that the model made (0 = the original; about 1 = exact retraining)
    "forget_effect_share": HIGHER,
    "forget_effect_z": HIGHER,  # evidence of a forget-specific drop
    # fidelity to the retrained reference
    "average_gap_pp": LOWER,
    "agreement_forget": HIGHER,
    "agreement_test": HIGHER,
    "kl_forget": LOWER,
    "kl_test": LOWER,
    # representation
    "cka_reference_forget": HIGHER,
    "cka_reference_test": HIGHER,
    "cka_original_forget": INFO,  # low on forget = moved away from the original; not a goal alone
    "cka_original_test": HIGHER,
    "probe_auc": REFERENCE,  # 0.5 without a reference
    "probe_auc_val": REFERENCE,
    # bias: max - min group accuracy (difficulty terciles, classes, subgroups)
    "spread": LOWER,
    # calibration
    "ece": LOWER,
    "ece_forget": REFERENCE,
    # efficiency
    "unlearn_seconds": LOWER,
    "cpu_seconds": LOWER,
    "peak_memory_mb": LOWER,
    "retrain_seconds": INFO,
    "rte_ratio": LOWER,
    "speedup": HIGHER,
}
