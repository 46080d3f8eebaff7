"""Evaluation: pure metric functions, each stating its definition and direction.

Modules (each function takes arrays, returns numbers; ``directions.DIRECTIONS`` says for every
metric whether higher, lower or closer-to-the-retrained-reference is better):

* ``utility``: accuracy, AUC, per-class recall, balanced accuracy, UA/RA/TA;
* ``clinical``: sensitivity, specificity, FNR, FPR, PPV, NPV, Global Risk (c_FN=5, c_FP=1);
* ``privacy``: MIA-efficacy (SalUn), loss-attack AUC, offline LiRA scores;
* ``fidelity``: average gap to the reference (percentage points), agreement, KL;
* ``representation``: linear CKA, linear-probe AUC on penultimate features;
* ``bias``: difficulty terciles, per-class and metadata subgroups;
* ``calibration``: expected calibration error;
* ``efficiency``: run time of unlearning and its ratio to retraining;
* ``outputs``: logits and features of each model, computed once;
* ``api``: :func:`~medunlearn.evaluation.api.evaluate_run`, everything in one call;
* ``gate``: :func:`~medunlearn.evaluation.gate.gate`, the safety verdict.
"""
