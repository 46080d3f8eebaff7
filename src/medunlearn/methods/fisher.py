"""Fisher forgetting (Golatkar, Achille & Soatto, 2020): noise shaped by the retain Fisher.

Weights that the retain data constrain little (small Fisher information) can carry information
about the forget set; adding Gaussian noise there destroys it while the retain loss barely moves:

    F_j      = (1/N) sum_n sum_k p_k(x_n) (d log p_k(x_n) / d theta_j)^2   (retain samples n)
    sigma2_j = alpha * min(1 / (F_j + eps), max_var)       (max_var_head for the head)
    sigma2   averaged over each weight tensor's input dimension (``dim=1``) where it has one,
             then multiplied by ``boost`` for the head and for 1-d tensors (biases, BatchNorm)
    theta_j <- theta_j + sigma_j * eps_j,   eps_j ~ N(0, 1) drawn from the run's seed

These are the steps of the reference implementation (``get_mean_var`` in Golatkar et al.'s
code, also used by the SalUn benchmark). The Fisher is estimated per sample (``torch.func``) on
``retain_budget`` retain samples. BatchNorm: computed in eval mode; running statistics unchanged.
``steps`` counts the vmapped per-sample-gradient batches.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from medunlearn.data import iterate_batches
from medunlearn.errors import ConfigError
from medunlearn.methods._common import need_retain, subsample
from medunlearn.methods._hessian import FISHER_MODES, per_sample_fisher_diag
from medunlearn.methods.base import Method, UnlearnContext, UnlearnOutcome, register_method
from medunlearn.models import Classifier


def fisher_noise_variance(params: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor], *,
                          alpha: float, max_var: float, max_var_head: float, boost: float,
                          eps: float = 1e-8, head_prefix: str = "head.",
                          ) -> dict[str, torch.Tensor]:
    """Per-entry noise variance ``sigma^2`` from a diagonal Fisher (see the module docstring)."""
    out = {}
    for n, p in params.items():
        is_head = n.startswith(head_prefix)
        var = (1.0 / (fisher[n] + eps)).clamp(max=max_var_head if is_head else max_var) * alpha
        if p.dim() > 1:
            var = var.mean(dim=1, keepdim=True).expand_as(p).clone()
        if is_head or p.dim() == 1:
            var = var * boost
        out[n] = var
    return out


@register_method("fisher")
class Fisher(Method):
    """Fisher forgetting: Gaussian noise with variance ~ alpha / (retain Fisher)."""

    summary = "Fisher forgetting: noise scaled by the inverse retain Fisher information"

    @dataclass(frozen=True)
    class Config:
        """Hyperparameters of ``fisher``."""

        alpha: float = 1e-7  # noise scale (the reference code uses 1e-6..1e-8)
        max_var: float = 1e3  # clamp of 1 / F (weights of the backbone)
        max_var_head: float = 1e2  # clamp of 1 / F for the classifier head
        boost: float = 10.0  # extra variance factor for the head and 1-d tensors (as reference)
        fisher: str = "true"  # "true" (expectation over the model's classes) or "empirical"
        retain_budget: int | None = 512  # retain samples for the Fisher estimate (None: all)
        chunk_size: int = 32  # samples per vmapped per-sample-gradient batch

    def validate(self) -> None:
        super().validate()
        c = self.config
        if c.alpha < 0 or c.max_var <= 0 or c.max_var_head <= 0 or c.boost <= 0:
            raise ConfigError("fisher needs alpha >= 0 and positive max_var, max_var_head, boost.")
        if c.fisher not in FISHER_MODES:
            raise ConfigError(f"Unknown Fisher mode {c.fisher!r}; choose one of {FISHER_MODES}.")
        if c.chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {c.chunk_size}.")

    def unlearn(self, model: Classifier, ctx: UnlearnContext) -> UnlearnOutcome:
        c = self.config
        need_retain(ctx, self.name)
        new = copy.deepcopy(model).to(ctx.device).eval()
        sub = subsample(ctx.retain, c.retain_budget, ctx.generator(31))

        def batches():
            for x, y, b in iterate_batches(ctx.dataset.train, sub, batch_size=256):
                ctx.seen(b)
                yield x.to(ctx.device), y.to(ctx.device)

        names = [n for n, p in new.named_parameters() if p.requires_grad]
        fisher, n_samples, passes = per_sample_fisher_diag(new, names, batches(), mode=c.fisher,
                                                           chunk_size=c.chunk_size)
        params = dict(new.named_parameters())
        var = fisher_noise_variance({n: params[n] for n in names}, fisher, alpha=c.alpha,
                                    max_var=c.max_var, max_var_head=c.max_var_head,
                                    boost=c.boost)
        g = ctx.generator(32)
        noise_sq, weight_sq = 0.0, 0.0
        with torch.no_grad():
            for n in names:  # fixed order: the same seed gives the same noise
                p = params[n]
                e = torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device)  # cpu: seeded
                d = var[n].sqrt() * e
                noise_sq += float(d.pow(2).sum())
                weight_sq += float(p.pow(2).sum())
                p.add_(d)
        details = {"fisher_samples": n_samples, "fisher": c.fisher,
                   "noise_norm": noise_sq ** 0.5, "weight_norm": weight_sq ** 0.5,
                   "noise_to_weight": (noise_sq / max(weight_sq, 1e-30)) ** 0.5}
        return UnlearnOutcome(new, steps=passes, details=details)
