"""Curvature tools shared by the second-order methods (``newton``, ``fisher``, ``ssd``).

Nothing here forms an explicit Hessian: curvature enters only through Hessian-vector products
(double backward), conjugate gradients on those products, and diagonal Fisher estimates, so
memory stays at a few copies of the parameter vector plus one batch's activations (and, for
``newton``, the cached prefix outputs of its small retain subset).

BatchNorm: every function here runs the model in **eval mode** (the caller sets it; see
:func:`eval_mode`). Curvature and importances are then those of the function the model computes at
inference (running statistics, no batch coupling), per-sample gradients are well defined, and
the running statistics never drift while curvature is being measured.

Main pieces:

* :func:`hvp` / :func:`loss_hvp` -- ``H v`` with ``H = d^2 L / d theta^2`` via double backward.
* :func:`ce_ggn_vp` -- ``G v`` with the (positive semi-definite) Gauss-Newton matrix of the
  cross-entropy, ``G = sum_n c_n J_n^T (diag p_n - p_n p_n^T) J_n``.
* :func:`conjugate_gradient` -- solves ``(A + lambda I) x = b`` using only matvecs.
* :func:`per_sample_fisher_diag` -- ``diag F = E_x[ sum_k p_k(x) (d log p_k(x) / d theta)^2 ]``
  (true Fisher) or ``E_(x,y)[(d CE(x, y) / d theta)^2]`` (empirical Fisher), per sample with
  :mod:`torch.func`.
* :func:`squared_grad_importance` -- ``mean_b (d L_b / d theta)^2`` over mini-batches ``b``, the
  cheap importance estimator of Selective Synaptic Dampening.
* :func:`split_for_scope` -- cuts a :class:`~medunlearn.models.Classifier` into a frozen prefix
  (run once without gradients) and a trainable suffix (``all``, ``last-block`` or ``head``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from medunlearn.data import iterate_batches
from medunlearn.errors import ConfigError
from medunlearn.methods.base import UnlearnContext

SCOPES = ("all", "last-block", "head")
FISHER_MODES = ("true", "empirical")

Matvec = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------- flat vectors
def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector (P,)."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vec: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Split a flat vector (P,) into tensors shaped like ``like``."""
    out, i = [], 0
    for t in like:
        n = t.numel()
        out.append(vec[i:i + n].view_as(t))
        i += n
    return out


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run ``model`` in eval mode (BatchNorm uses, and never updates, its running statistics)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


# --------------------------------------------------------------------------- HVPs and CG
def hvp(loss_fn: Callable[[], torch.Tensor], params: Sequence[torch.Tensor],
        vec: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Hessian-vector product ``H v`` of a scalar loss by double backward.

    ``H v = d/d theta ( (d L / d theta) . v )``; costs about two backward passes and never
    forms ``H``.

    Args:
        loss_fn: Recomputes the scalar loss ``L(theta)`` from the current ``params``.
        params: The parameters ``theta`` (leaf tensors with ``requires_grad``).
        vec: ``v``, shaped like ``params``.
    """
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    dot = sum((g * v).sum() for g, v in zip(grads, vec, strict=True))
    return [h.detach() for h in torch.autograd.grad(dot, params)]


def loss_hvp(loss_fns: Sequence[Callable[[], torch.Tensor]],
             params: Sequence[torch.Tensor]) -> Matvec:
    """A flat matvec ``v -> sum_i H_i v`` for a loss split into batches ``L = sum_i L_i``.

    Memory is bounded by one batch: each product recomputes each batch's forward pass.
    """
    params = list(params)

    def matvec(v: torch.Tensor) -> torch.Tensor:
        vs = unflatten(v, params)
        total = torch.zeros_like(v)
        for fn in loss_fns:
            total += flatten(hvp(fn, params, vs))
        return total

    return matvec


def ce_ggn_vp(logits_fns: Sequence[Callable[[], tuple[torch.Tensor, torch.Tensor]]],
              params: Sequence[torch.Tensor]) -> Matvec:
    """A flat matvec ``v -> G v`` with the Gauss-Newton matrix of a weighted cross-entropy.

    For ``L = sum_n c_n CE(z_n(theta), y_n)`` the generalised Gauss-Newton matrix is
    ``G = sum_n c_n J_n^T (diag(p_n) - p_n p_n^T) J_n`` with ``J_n = d z_n / d theta`` and
    ``p_n = softmax(z_n)``: the Hessian without the network's own second derivatives. It is
    positive semi-definite (so CG is well posed even where the network is non-convex) and equal
    to the Hessian when the logits are linear in ``theta``. ``J v`` uses the double-vjp trick.

    Args:
        logits_fns: Each returns ``(logits (B, K), c (B,))`` for one batch from the current
            parameters; ``c`` are per-sample loss weights (e.g. class weight / N).
        params: The parameters ``theta``.
    """
    params = list(params)
    graphs: list[tuple] = []  # per batch: logits, dummy u, J^T u (with its graph), probs, c

    def build() -> None:
        # the forward pass and the J^T u graph do not depend on v: built once, reused by every
        # product (about half the cost of rebuilding them per product)
        for fn in logits_fns:
            z, c = fn()
            u = torch.zeros_like(z, requires_grad=True)
            jtu = torch.autograd.grad(z, params, grad_outputs=u, create_graph=True)
            graphs.append((z, u, jtu, F.softmax(z.detach(), dim=1), c.view(-1, 1)))

    def matvec(v: torch.Tensor) -> torch.Tensor:
        if not graphs:
            build()
        vs = unflatten(v, params)
        total = torch.zeros_like(v)
        for z, u, jtu, p, c in graphs:
            jv = torch.autograd.grad(jtu, u, grad_outputs=vs, retain_graph=True)[0].detach()
            m = (p * jv - p * (p * jv).sum(1, keepdim=True)) * c  # H_z (J v), (B, K)
            total += flatten(torch.autograd.grad(z, params, grad_outputs=m, retain_graph=True))
        return total

    return matvec


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`."""

    x: torch.Tensor  # (P,) approximate solution
    iterations: int  # CG iterations run (one matvec each)
    residual: float  # ||b - (A + damping I) x||
    relative_residual: float  # residual / ||b||
    negative_curvature: bool  # stopped because p^T (A + damping I) p <= 0


def conjugate_gradient(matvec: Matvec, b: torch.Tensor, *, damping: float = 0.0,
                       max_iters: int = 20, tol: float = 1e-6,
                       x0: torch.Tensor | None = None) -> CGResult:
    """Solve ``(A + damping I) x = b`` for symmetric ``A`` with conjugate gradients.

    Uses only products ``A v``. Stops after ``max_iters`` iterations, when
    ``||r|| <= tol ||b||``, or when a direction of non-positive curvature appears (possible
    for the Hessian of a non-convex network; if that happens before any step,
    ``b / damping`` -- a plain damped gradient step -- or ``b`` when undamped is returned).
    Returns the iterate with the smallest residual seen: on an ill-conditioned system in float32
    the CG residual is not monotone, and a late iterate can be far worse than an earlier one.

    Args:
        matvec: ``v -> A v`` on flat vectors.
        b: Right-hand side (P,).
        damping: ``lambda >= 0`` added to the diagonal (Levenberg-Marquardt/Tikhonov).
        max_iters: Maximum number of iterations (= matvecs).
        tol: Relative residual at which to stop.
        x0: Starting point (default zeros).
    """
    if max_iters < 1:
        raise ConfigError(f"cg_iters must be at least 1, got {max_iters}.")
    if damping < 0:
        raise ConfigError(f"damping must be non-negative, got {damping}.")

    def op(v: torch.Tensor) -> torch.Tensor:
        return matvec(v) + damping * v

    b_norm = float(b.norm())
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - op(x) if x0 is not None else b.clone()
    if b_norm == 0.0:
        return CGResult(x, 0, 0.0, 0.0, False)
    p = r.clone()
    rs = r.dot(r)
    it, neg = 0, False
    best_x, best_res = x, float(rs.sqrt())
    while it < max_iters:
        if float(rs.sqrt()) <= tol * b_norm:
            break
        ap = op(p)
        it += 1
        pap = p.dot(ap)
        if float(pap) <= 0.0:
            neg = True
            if it == 1 and x0 is None:
                best_x = b / damping if damping > 0 else b.clone()
                best_res = float((b - op(best_x)).norm())
            break
        a = rs / pap
        x = x + a * p
        r = r - a * ap
        rs_new = r.dot(r)
        p = r + (rs_new / rs) * p
        rs = rs_new
        if float(rs.sqrt()) < best_res:
            best_x, best_res = x, float(rs.sqrt())
    return CGResult(best_x, it, best_res, best_res / b_norm, neg)


# --------------------------------------------------------------------------- Fisher diagonals
def per_sample_fisher_diag(module: nn.Module, names: Sequence[str],
                           batches: Iterator[tuple[torch.Tensor, torch.Tensor]], *,
                           mode: str = "true", chunk_size: int = 32,
                           class_weight: torch.Tensor | None = None,
                           ) -> tuple[dict[str, torch.Tensor], int, int]:
    """Diagonal Fisher information of ``module``'s parameters ``names``, averaged over samples.

    * ``mode="true"``:  ``F_jj = (1/N) sum_n sum_k p_k(x_n) (d log p_k(x_n) / d theta_j)^2``
      (the expectation over the model's own predictive distribution; Golatkar et al. 2020).
    * ``mode="empirical"``: ``F_jj = (1/N) sum_n (d l(x_n, y_n) / d theta_j)^2`` with ``l`` the
      (optionally class-weighted) cross-entropy.

    Per-sample gradients come from :func:`torch.func.vmap`; the caller must put the module in
    eval mode (BatchNorm then acts per sample and its statistics do not change).

    Args:
        module: Maps a batch of inputs to logits (K classes).
        names: Names (as in ``module.named_parameters()``) of the parameters to measure.
        batches: Yields ``(inputs, labels)``; labels are used only by ``mode="empirical"``.
        mode: ``"true"`` or ``"empirical"``.
        chunk_size: Samples per vmapped chunk (bounds memory: about chunk x P floats; for the
            true Fisher the chunk shrinks by K/2 since each sample has K gradients).
        class_weight: Per-class loss weights for the empirical Fisher.

    Returns:
        ``(fisher, n_samples, n_gradient_batches)``.
    """
    from torch.func import functional_call, grad, jacrev, vmap

    if mode not in FISHER_MODES:
        raise ConfigError(f"Unknown Fisher mode {mode!r}; choose one of {FISHER_MODES}.")
    names = list(names)
    named = dict(module.named_parameters())
    params = {n: named[n].detach() for n in names}
    frozen = {n: p.detach() for n, p in named.items() if n not in params}
    frozen.update(dict(module.named_buffers()))
    acc = {n: torch.zeros_like(p) for n, p in params.items()}

    def logits_of(p: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(module, {**p, **frozen}, (x.unsqueeze(0),)).squeeze(0)  # (K,)

    def loss_of(p: dict, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        z = logits_of(p, x)
        return F.cross_entropy(z.unsqueeze(0), y.unsqueeze(0), reduction="none")[0] * w

    n, passes = 0, 0
    for xb, yb in batches:
        step = chunk_size
        if mode == "true":  # the Jacobian holds K gradients per sample: keep chunk x K bounded
            with torch.no_grad():
                k = functional_call(module, {**params, **frozen}, (xb[:1],)).shape[1]
            step = max(1, (chunk_size * 2) // max(k, 2))
        for start in range(0, len(xb), step):
            x, y = xb[start:start + step], yb[start:start + step]
            passes += 1
            n += len(x)
            if mode == "empirical":
                w = class_weight[y] if class_weight is not None else \
                    torch.ones(len(y), device=x.device)
                g = vmap(grad(loss_of), in_dims=(None, 0, 0, 0))(params, x, y, w.to(x.dtype))
                for k in acc:
                    acc[k] += g[k].pow(2).sum(0)
                continue
            with torch.no_grad():
                prob = F.softmax(functional_call(module, {**params, **frozen}, (x,)), 1)  # (B, K)
            jac = vmap(jacrev(logits_of), in_dims=(None, 0))(params, x)  # name -> (B, K, *shape)
            for k in acc:
                j = jac[k]
                shape = (j.shape[0], j.shape[1]) + (1,) * (j.dim() - 2)
                pw = prob.view(shape)
                glog = j - (pw * j).sum(1, keepdim=True)  # d log p_k = dz_k - sum_j p_j dz_j
                acc[k] += (pw * glog.pow(2)).sum((0, 1))
    if n == 0:
        raise ConfigError("Cannot estimate a Fisher diagonal from an empty sample set.")
    return {k: v / n for k, v in acc.items()}, n, passes


def squared_grad_importance(model: nn.Module, ctx: UnlearnContext, indices: torch.Tensor, *,
                            batch_size: int = 64) -> tuple[dict[str, torch.Tensor], int]:
    """Mini-batch importance ``I_j = (1/B) sum_b (d L_b / d theta_j)^2`` (SSD's estimator).

    ``L_b`` is the mean cross-entropy of mini-batch ``b`` of the training split rows
    ``indices``; ``B`` is the number of batches. This is the diagonal-Fisher approximation used
    by Selective Synaptic Dampening's reference code: one backward pass per batch. Runs in eval
    mode; calls ``ctx.seen`` for every batch. Returns ``(importance by name, batches)``.

    The rows are cut into ``ceil(len / batch_size)`` batches of equal size (they differ by at
    most one), not into full batches and a remainder: the square of a batch's mean gradient
    grows as the batch shrinks, so a small trailing batch (e.g. 6 of 70 forget images) holding
    one poorly fitted image inflated the forget importance tenfold and more, and SSD then
    dampened a fifth to a half of a TB model's weights at alpha 10 (docs/results section 4).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    acc = {n: torch.zeros_like(p) for n, p in named}
    batches = 0
    indices = torch.as_tensor(indices, dtype=torch.long)  # cpu: rows of the in-memory split
    chunks = torch.tensor_split(indices, -(-len(indices) // batch_size)) if len(indices) else ()
    with eval_mode(model):
        for chunk in chunks:
            x, y, b = next(iterate_batches(ctx.dataset.train, chunk, batch_size=len(chunk)))
            ctx.seen(b)
            loss = F.cross_entropy(model(x.to(ctx.device)), y.to(ctx.device))
            grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
            for (n, _), g in zip(named, grads, strict=True):
                if g is not None:
                    acc[n] += g.pow(2)
            batches += 1
    if batches == 0:
        raise ConfigError("Cannot measure importances on an empty sample set.")
    return {n: v / batches for n, v in acc.items()}, batches


# --------------------------------------------------------------------------- scopes
class _Tail(nn.Module):
    """The last residual stage plus pooling and the head: ``head(pool(block(z)))``."""

    def __init__(self, block: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.head = head

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.block(z), 1), 1))


class _Stop(Exception):
    pass


@dataclass
class ScopedModel:
    """A classifier cut into a frozen prefix and a trainable suffix.

    ``model(x) == suffix(prefix(x))``; the suffix's parameters are the model's own tensors
    (``model_names`` maps suffix names to the model's names), so updating them updates the model.
    """

    scope: str
    prefix: Callable[[torch.Tensor], torch.Tensor]  # run under no_grad, once per sample
    suffix: nn.Module
    names: list[str]  # suffix parameter names in scope
    model_names: dict[str, str]
    model: nn.Module | None = None  # the whole model the scope was cut from

    @property
    def params(self) -> list[torch.Tensor]:
        d = dict(self.suffix.named_parameters())
        return [d[n] for n in self.names]


def split_for_scope(model: nn.Module, scope: str) -> ScopedModel:
    """Cut ``model`` for an update restricted to ``scope``.

    * ``all``: every parameter; the prefix is the identity (each curvature product runs the
      whole network).
    * ``last-block``: the last residual stage (``backbone.layer4``) and the head; the prefix
      (stem and stages 1-3) runs once without gradients and its output is cached.
    * ``head``: the linear head only, on cached penultimate features (a convex problem for
      cross-entropy).

    Raises:
        ConfigError: unknown scope, or ``last-block`` on a backbone without ``layer4``.
    """
    if scope not in SCOPES:
        raise ConfigError(f"Unknown scope {scope!r}; choose one of {', '.join(SCOPES)}.")
    if scope != "all":  # a sharded ensemble has neither one linear head nor one last stage
        from medunlearn.models.ensemble import refuse_ensemble

        refuse_ensemble(model, f"A second-order update with scope={scope!r} (it needs one "
                        "linear last layer)")
    if scope == "all":
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        return ScopedModel(scope, lambda x: x, model, names, {n: n for n in names}, model)
    if scope == "head":
        names = [n for n, _ in model.head.named_parameters()]
        return ScopedModel(scope, model.features, model.head, names,
                           {n: f"head.{n}" for n in names}, model)
    backbone = getattr(model, "backbone", None)
    block = getattr(backbone, "layer4", None)
    if block is None:
        raise ConfigError("scope='last-block' needs a ResNet backbone with a 'layer4' stage; "
                          "use scope='head' or scope='all' for this model.")
    captured: list[torch.Tensor] = []

    def grab(_module, inputs):
        captured.append(inputs[0])
        raise _Stop

    def prefix(x: torch.Tensor) -> torch.Tensor:
        captured.clear()
        handle = block.register_forward_pre_hook(grab)
        try:
            model.features(x)
        except _Stop:
            pass
        finally:
            handle.remove()
        return captured.pop()

    tail = _Tail(block, model.head)
    names = [n for n, _ in tail.named_parameters()]
    mapping = {n: ("backbone.layer4." + n[len("block."):]) if n.startswith("block.")
               else n for n in names}
    return ScopedModel(scope, prefix, tail, names, mapping, model)


@torch.no_grad()
def cached_prefix(scoped: ScopedModel, ctx: UnlearnContext, indices: torch.Tensor, *,
                  batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen prefix on training rows ``indices`` once; return ``(Z, labels)``.

    For ``scope="head"`` the prefix is the model's penultimate features, computed by
    :func:`medunlearn.loop.infer` (so the features ``ctx.cache`` holds for this backbone are
    reused).
    """
    if scoped.scope == "head" and len(indices):
        from medunlearn.loop import infer

        idx = torch.as_tensor(indices, dtype=torch.long)  # cpu: rows of the in-memory split
        ctx.seen(idx)
        _, fe = infer(scoped.model, ctx.dataset.train, idx.numpy(), runtime=ctx.runtime,
                      batch_size=batch_size, features=True, cache=ctx.cache)
        return (torch.from_numpy(fe).to(ctx.device),
                ctx.dataset.train.labels[idx].to(ctx.device))
    zs, ys = [], []
    for x, y, b in iterate_batches(ctx.dataset.train, indices, batch_size=batch_size):
        ctx.seen(b)
        zs.append(scoped.prefix(x.to(ctx.device)))
        ys.append(y.to(ctx.device))
    if not zs:
        raise ConfigError("Cannot compute curvature on an empty sample set.")
    return torch.cat(zs), torch.cat(ys)


__all__ = [
    "CGResult", "SCOPES", "ScopedModel", "cached_prefix", "conjugate_gradient", "eval_mode",
    "ce_ggn_vp", "flatten", "hvp", "loss_hvp", "per_sample_fisher_diag", "split_for_scope",
    "squared_grad_importance", "unflatten",
]
