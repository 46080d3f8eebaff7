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
* ``forgetting_quality``: per-example forgetting quality from N unlearned and N retrained models;
* ``record``: :func:`~medunlearn.evaluation.record.evaluate_outputs`, every metric assembled
  into one record from the outputs;
* ``gate``: :func:`~medunlearn.evaluation.gate.gate`, the safety verdict on a record.

Nothing here reads or writes run folders: :func:`medunlearn.api.evaluate` computes the outputs
and calls these, and ``medunlearn.runs.evaluate_run`` loads run folders for it. (``api`` is a
compatibility name for ``evaluate_run``, to be deleted.)
"""
