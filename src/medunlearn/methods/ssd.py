"""Selective Synaptic Dampening (Foster, Schoepf & Brintrup, 2023): training-free forgetting.

Two diagonal-Fisher importances are measured at the original weights,

    I_F = importance on the forget set,   I_D = importance on the reference data
    (the whole training split by default, as in the paper; or the retain set),

with SSD's estimator ``I_j = (1/B) sum_b (d L_b / d theta_j)^2`` over mini-batches ``b`` of
mean cross-entropy. Parameters specialised to the forget set are dampened, all others untouched:

    selected_j  =  I_F,j > alpha * I_D,j
    theta_j    <-  beta_j * theta_j  with  beta_j = min(lambda * I_D,j / I_F,j, 1)   if selected
    theta_j    <-  theta_j                                                          otherwise

Unlike the reference code, each importance cuts its rows into batches of equal size instead of
full batches and a remainder (revision 1): a small trailing forget batch holding one poorly
fitted image made ``I_F`` look forget-specific almost everywhere, and SSD then destroyed small
models (TB: a fifth to a half of the weights dampened at alpha 10; docs/results section 4).

No gradient step is taken; ``steps`` counts the importance passes (backward passes over
mini-batches). BatchNorm: importances are computed in eval mode, so running statistics do not
change (buffers are copied bit-identically).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from medunlearn.errors import ConfigError
from medunlearn.methods._common import subsample
from medunlearn.methods._hessian import squared_grad_importance
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier

REFERENCES = ("train", "retain")


@torch.no_grad()
def ssd_dampen_(params: dict[str, torch.Tensor], forget_imp: dict[str, torch.Tensor],
                global_imp: dict[str, torch.Tensor], *, alpha: float, lam: float,
                ) -> dict[str, torch.Tensor]:
    """Dampen, in place, the entries of ``params`` that the forget set specialises.

    ``selected = I_F > alpha * I_D``; selected entries are multiplied by
    ``min(lambda * I_D / I_F, 1)``; unselected entries are not written at all.

    Returns:
        The boolean selection mask of each parameter.
    """
    masks = {}
    for n, p in params.items():
        fi, gi = forget_imp[n], global_imp[n]
        sel = fi > alpha * gi
        masks[n] = sel
        if bool(sel.any()):
            beta = (lam * gi[sel] / fi[sel]).clamp(max=1.0)
            p[sel] = p[sel] * beta
    return masks


@register_method("ssd")
class SSD(Method):
    """Selective Synaptic Dampening: shrink parameters far more important to the forget set."""

    summary = "selective synaptic dampening: training-free shrinking of forget-specific weights"
    revision = 1  # 1: importances over equal-size batches (methods._hessian)

    @dataclass(frozen=True)
    class Config:
        """Hyperparameters of ``ssd`` (paper defaults alpha=10, lambda=1)."""

        alpha: float = 10.0  # selection threshold: I_F > alpha * I_D
        dampening: float = 1.0  # lambda in beta = min(lambda * I_D / I_F, 1)
        reference: str = "train"  # importance reference: "train" (forget + retain) or "retain"
        retain_budget: int | None = None  # retain samples in the reference (None: all)
        batch_size: int = 64  # mini-batch size of both importance estimates

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.alpha <= 0 or c.dampening <= 0:
            raise ConfigError("ssd needs alpha > 0 and dampening > 0.")
        if c.reference not in REFERENCES:
            raise ConfigError(f"Unknown reference {c.reference!r}; choose one of {REFERENCES}.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        if len(ctx.forget) == 0:
            raise ConfigError("ssd needs a non-empty forget set.")
        new = copy.deepcopy(model).to(ctx.device).eval()
        retain = subsample(ctx.retain, c.retain_budget, ctx.generator(21))
        ref = torch.cat([ctx.forget, retain]).sort().values if c.reference == "train" else retain
        if len(ref) == 0:
            raise ConfigError("ssd has no reference data: the retain set is empty.")
        forget_imp, nb_f = squared_grad_importance(new, ctx, ctx.forget, batch_size=c.batch_size)
        global_imp, nb_d = squared_grad_importance(new, ctx, ref, batch_size=c.batch_size)
        params = {n: p for n, p in new.named_parameters() if n in forget_imp}
        masks = ssd_dampen_(params, forget_imp, global_imp, alpha=c.alpha, lam=c.dampening)
        new.zero_grad(set_to_none=True)
        total = sum(m.numel() for m in masks.values())
        selected = sum(int(m.sum()) for m in masks.values())
        per_param = {n: int(m.sum()) for n, m in masks.items() if bool(m.any())}
        details = {"selected": selected, "selected_fraction": selected / max(total, 1),
                   "selected_by_parameter": per_param, "reference": c.reference,
                   "reference_samples": len(ref), "importance_batches": nb_f + nb_d}
        return UnlearnOutcome(new, steps=nb_f + nb_d, details=details)
