"""Second-order and distillation methods: scrub, ssd, fisher, newton (and their curvature tools).

Small and fast: a width-8 ResNet trained for a few steps on 120 BreastMNIST images, and
float64 logistic regression for the exactness checks of the Newton step.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medunlearn.config import ModelConfig, TrainConfig
from medunlearn.data import Split, load_dataset
from medunlearn.errors import ConfigError
from medunlearn.methods import UnlearnContext, create_method
from medunlearn.methods._hessian import (
    ce_ggn_vp,
    conjugate_gradient,
    flatten,
    loss_hvp,
    split_for_scope,
    squared_grad_importance,
)
from medunlearn.methods.base import get_method_class
from medunlearn.methods.newton import newton_scrub
from medunlearn.methods.ssd import ssd_dampen_
from medunlearn.training import evaluate_split, train_model

TRAIN = TrainConfig(epochs=3, batch_size=32, progress=False, precision="fp32")

# Small budgets so every end-to-end run takes well under a second.
FAST = {
    "scrub": {"epochs": 2, "max_epochs": 1, "retain_budget": 48, "batch_size": 16},
    "ssd": {"batch_size": 32},
    "fisher": {"retain_budget": 24, "chunk_size": 8},
    "newton": {"retain_budget": 64, "cg_iters": 6, "batch_size": 32},
}


class _Trap:
    """Stands in for a split's tensors: any read is a test failure."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.n = n
        self.shape = shape

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, item):
        raise AssertionError("a method read the validation or test split")


def _trapped(split: Split) -> Split:
    n = len(split)
    return Split(split.name, _Trap(n, tuple(split.images.shape)), _Trap(n, (n,)),
                 split.native_labels, split.source_index)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a shared 2-core machine two threads spin and run ~10x slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup(medmnist_root):
    ds = load_dataset(dataset="breastmnist", data_root=str(medmnist_root), download=False,
                      verify_md5=False, train_limit=120, eval_limit=60, augment="none")
    fit, spec = train_model(ds, ModelConfig(width=8), TRAIN, seed=0)
    model = fit.model.eval()
    n = len(ds.train)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    forget, retain = perm[:12].sort().values, perm[12:].sort().values
    return ds, model, spec, forget, retain


def _ctx(ds, forget, retain, *, seed=0, on_batch=None, spec=None) -> UnlearnContext:
    return UnlearnContext(ds, forget, retain, seed=seed, train_config=TRAIN, model_spec=spec,
                          progress=False, on_batch=on_batch)


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- curvature tools
def test_cg_solves_random_spd_system_with_matvecs_only():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(40, 40, generator=g, dtype=torch.float64)
    a = q @ q.T / 40 + 0.1 * torch.eye(40, dtype=torch.float64)
    b = torch.randn(40, generator=g, dtype=torch.float64)
    calls = []

    def matvec(v):
        calls.append(1)
        return a @ v

    res = conjugate_gradient(matvec, b, max_iters=200, tol=1e-10)
    assert not res.negative_curvature and res.relative_residual <= 1e-10
    torch.testing.assert_close(res.x, torch.linalg.solve(a, b), rtol=1e-7, atol=1e-8)
    assert len(calls) == res.iterations <= 200
    damped = conjugate_gradient(matvec, b, damping=0.5, max_iters=200, tol=1e-10)
    torch.testing.assert_close(damped.x, torch.linalg.solve(a + 0.5 * torch.eye(40,
                               dtype=torch.float64), b), rtol=1e-7, atol=1e-8)
    with pytest.raises(ConfigError):
        conjugate_gradient(matvec, b, max_iters=0)


def _logreg_data(n=160, d=5, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    w = torch.randn(d, k, generator=g, dtype=torch.float64) * 1.5
    y = torch.multinomial(torch.softmax(x @ w, 1), 1, generator=g).squeeze(1)
    return x, y


def _fit_lbfgs(model: nn.Module, loss_fn) -> None:
    opt = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=1e-13,
                            tolerance_change=1e-15, history_size=50, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)


def test_ggn_product_equals_hessian_product_for_linear_logits():
    x, y = _logreg_data()
    lin = nn.Linear(5, 3).double()
    params = list(lin.parameters())
    v = torch.randn(sum(p.numel() for p in params), dtype=torch.float64)
    h = loss_hvp([lambda: F.cross_entropy(lin(x), y)], params)(v)
    c = torch.full((len(y),), 1.0 / len(y), dtype=torch.float64)
    gn = ce_ggn_vp([lambda: (lin(x), c)], params)(v)
    torch.testing.assert_close(gn, h, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("form", ["retain", "forget"])
@pytest.mark.parametrize("solver", ["cg", "exact-diag"])
def test_one_newton_step_reaches_retrained_logistic_regression(form, solver):
    """From the full-data optimum, one Newton step lands on the retrained optimum."""
    x, y = _logreg_data()
    lam = 1e-2
    forget = torch.arange(8)
    retain = torch.arange(8, len(y))
    n_f, n_r = len(forget), len(retain)

    def reg_loss(model, idx):  # mean CE + lam/2 ||theta||^2
        sq = sum(p.pow(2).sum() for p in model.parameters())
        return F.cross_entropy(model(x[idx]), y[idx]) + 0.5 * lam * sq

    torch.manual_seed(0)
    full = nn.Linear(5, 3).double()
    _fit_lbfgs(full, lambda: reg_loss(full, torch.arange(len(y))))
    retrained = nn.Linear(5, 3).double()
    retrained.load_state_dict(full.state_dict())
    _fit_lbfgs(retrained, lambda: reg_loss(retrained, retain))

    scrubbed = nn.Linear(5, 3).double()
    scrubbed.load_state_dict(full.state_dict())
    params = list(scrubbed.parameters())
    if form == "retain":  # g = grad L_r(theta*)
        grad = torch.autograd.grad(reg_loss(scrubbed, retain), params)
    else:  # g = -(n_f / n_r) grad L_f(theta*), regulariser included in L_f
        grad = [-(n_f / n_r) * gi for gi in
                torch.autograd.grad(reg_loss(scrubbed, forget), params)]
    hvp = loss_hvp([lambda: reg_loss(scrubbed, retain)], params)
    if solver == "cg":
        step = newton_scrub(params, grad, hvp, damping=0.0, cg_iters=100, cg_tol=1e-12)
        assert step.cg_residual < 1e-10 and not step.negative_curvature
    else:  # the diagonal solver with the exact Hessian diagonal is only approximate
        p_dim = sum(p.numel() for p in params)
        diag = torch.stack([hvp(torch.eye(p_dim, dtype=torch.float64)[i])[i]
                            for i in range(p_dim)])
        step = newton_scrub(params, grad, solver="diag", damping=0.0,
                            diag=[diag[:15].view(3, 5), diag[15:].view(3)])
    theta_full = flatten(list(full.parameters())).detach()
    theta_r = flatten(list(retrained.parameters())).detach()
    theta_new = flatten(params).detach()
    before = float((theta_full - theta_r).norm())
    after = float((theta_new - theta_r).norm())
    assert before > 1e-3  # removing the forget set moves the optimum
    if solver == "cg":
        assert after < 0.1 * before and after < 0.02  # second-order accurate
        # a second step from there converges quadratically (the curvature is the exact Hessian)
        grad2 = torch.autograd.grad(reg_loss(scrubbed, retain), params)
        newton_scrub(params, grad2, hvp, damping=0.0, cg_iters=100, cg_tol=1e-12)
        assert float((flatten(params).detach() - theta_r).norm()) < 1e-3 * before
    else:
        assert after < 0.8 * before  # a cruder, but still helpful step
    assert step.step_norm == pytest.approx(float((theta_new - theta_full).norm()))


def test_trust_region_clamp_bounds_the_step():
    p = torch.ones(10, dtype=torch.float64, requires_grad=True)
    g = [torch.full((10,), 100.0, dtype=torch.float64)]
    step = newton_scrub([p], g, lambda v: 1e-6 * v, damping=0.0, cg_iters=5, trust_radius=0.1)
    assert step.clamped and step.raw_step_norm > 1e6
    assert step.step_norm == pytest.approx(0.1 * 10 ** 0.5)


def test_scopes_reproduce_the_model_and_select_parameters(setup):
    ds, model, *_ = setup
    x = ds.train.images[:5].float() / 255
    with torch.no_grad():
        ref = model(x)
        for scope, prefix in (("all", ""), ("last-block", ("backbone.layer4.", "head.")),
                              ("head", "head.")):
            sc = split_for_scope(model, scope)
            torch.testing.assert_close(sc.suffix(sc.prefix(x)), ref)
            named = dict(model.named_parameters())
            assert all(sc.model_names[n].startswith(prefix) for n in sc.names)
            pairs = zip(sc.names, sc.params, strict=True)
            assert all(a is named[sc.model_names[n]] for n, a in pairs)
    with pytest.raises(ConfigError, match="scope"):
        split_for_scope(model, "middle")


# --------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("name", ["scrub", "ssd", "fisher", "newton"])
def test_method_runs_reads_only_training_data_and_records_steps(setup, name):
    ds, model, spec, forget, retain = setup
    before = _state(model)
    guarded = dataclasses.replace(ds, splits={"train": ds.train, "val": _trapped(ds.val),
                                              "test": _trapped(ds.test)})
    seen: list[torch.Tensor] = []
    ctx = _ctx(guarded, forget, retain, on_batch=seen.append, spec=spec)
    out = create_method(name, FAST[name]).unlearn(model, ctx)
    assert out.model is not model and out.steps > 0  # (the caller times a method: api)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # input untouched
    new = out.model.state_dict()
    assert any(not torch.equal(before[k], new[k]) for k in before)  # the copy changed
    read = torch.cat(seen)
    assert set(read.tolist()) <= set(forget.tolist()) | set(retain.tolist())
    if name in ("scrub", "ssd", "newton"):
        assert set(forget.tolist()) <= set(read.tolist())
    if name == "scrub":
        assert set(read.tolist()) & set(retain.tolist())
        assert len(set(read.tolist()) & set(retain.tolist())) <= FAST["scrub"]["retain_budget"]
    if name == "fisher":  # Golatkar's Fisher forgetting uses the retain set only
        assert not set(read.tolist()) & set(forget.tolist())
    assert np.isfinite(evaluate_split(out.model, ds.test)["loss"])


def test_ssd_changes_only_the_parameters_it_selects(setup):
    ds, model, spec, _, _ = setup
    forget = torch.nonzero(ds.train.labels == 1).flatten()  # a whole class: distinctive
    retain = torch.nonzero(ds.train.labels != 1).flatten()
    ctx = _ctx(ds, forget, retain, spec=spec)
    cfg = {"batch_size": 32}
    out = create_method("ssd", cfg).unlearn(model, ctx)
    # recompute the selection independently from the importances
    fi, _ = squared_grad_importance(model, ctx, forget, batch_size=32)
    gi, _ = squared_grad_importance(model, ctx, torch.arange(len(ds.train)), batch_size=32)
    old, new = dict(model.named_parameters()), dict(out.model.named_parameters())
    n_sel = 0
    for n, p in old.items():
        sel = fi[n] > 10.0 * gi[n]
        n_sel += int(sel.sum())
        assert torch.equal(new[n][~sel], p[~sel]), n  # bit-identical outside the selection
        if bool(sel.any()):
            beta = (gi[n][sel] / fi[n][sel]).clamp(max=1.0)
            torch.testing.assert_close(new[n][sel], p[sel] * beta)
    assert n_sel > 0 and out.details["selected"] == n_sel
    for k, v in model.named_buffers():  # BatchNorm statistics untouched
        assert torch.equal(v, dict(out.model.named_buffers())[k])


def test_importance_batches_have_equal_sizes_and_match_a_hand_computation(setup):
    """70 rows at batch size 64 are two batches of 35, not 64 + 6: a tiny trailing batch
    inflates the squared mean gradient of whatever image it holds."""
    ds, model, spec, forget, retain = setup
    rows = torch.arange(70)
    sizes = []
    ctx = _ctx(ds, forget, retain, spec=spec, on_batch=lambda b: sizes.append(len(b)))
    imp, batches = squared_grad_importance(model, ctx, rows, batch_size=64)
    assert sizes == [35, 35] and batches == 2
    sizes.clear()
    squared_grad_importance(model, ctx, torch.arange(len(ds.train)), batch_size=32)
    assert sum(sizes) == len(ds.train) == 120 and sizes == [30, 30, 30, 30]
    expect = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    model.eval()
    for half in (rows[:35], rows[35:]):
        x = ds.train.images[half].float().div(255)
        loss = F.cross_entropy(model(x), ds.train.labels[half])
        for (n, _), g in zip(model.named_parameters(), torch.autograd.grad(
                loss, list(model.parameters())), strict=True):
            expect[n] += g.pow(2) / 2
    for n, v in imp.items():
        torch.testing.assert_close(v, expect[n], rtol=1e-4, atol=1e-12)


def test_ssd_dampen_rule():
    p = {"w": torch.tensor([1.0, 2.0, 3.0, 4.0])}
    fi = {"w": torch.tensor([10.0, 0.5, 30.0, 0.0])}
    gi = {"w": torch.tensor([0.5, 1.0, 1.0, 0.0])}
    masks = ssd_dampen_(p, fi, gi, alpha=10.0, lam=1.0)
    assert masks["w"].tolist() == [True, False, True, False]
    torch.testing.assert_close(p["w"], torch.tensor([1.0 * 0.05, 2.0, 3.0 / 30, 4.0]))


def test_fisher_is_reproducible_from_the_seed(setup):
    ds, model, spec, forget, retain = setup
    runs = [create_method("fisher", FAST["fisher"]).unlearn(
        model, _ctx(ds, forget, retain, seed=s, spec=spec)).model.state_dict() for s in (3, 3, 4)]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert any(not torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize("extra, moved_prefix", [
    ({}, ("backbone.layer4.", "head.")),  # default: CG on the Gauss-Newton matrix, last block
    ({"solver": "diag"}, ("backbone.layer4.", "head.")),
    ({"scope": "head", "curvature": "hessian"}, ("head.",)),
])
def test_newton_raises_forget_loss_and_keeps_test_accuracy(setup, extra, moved_prefix):
    ds, model, spec, forget, retain = setup
    out = create_method("newton", FAST["newton"] | extra).unlearn(
        model, _ctx(ds, forget, retain, spec=spec))
    d = out.details
    assert d["delta_norm"] > 0 and np.isfinite(d["cg_residual"])
    assert d["cg_iterations"] >= 1 or d["solver"] == "diag"
    assert d["delta_norm"] <= 0.1 * d["param_norm"] * (1 + 1e-5)  # trust region (fp32 norms)
    b_f, a_f = (evaluate_split(m, ds.train, forget) for m in (model, out.model))
    b_t, a_t = (evaluate_split(m, ds.test) for m in (model, out.model))
    assert a_f["loss"] > b_f["loss"]  # the step ascends the forget loss (to first order)
    if not extra:  # (12 samples on a near-chance model: accuracy is only checked once)
        assert a_f["accuracy"] <= b_f["accuracy"]
    assert a_t["accuracy"] >= b_t["accuracy"] - 0.15
    # only the parameters in scope moved
    old, new = model.state_dict(), out.model.state_dict()
    moved = {k for k in old if not torch.equal(old[k], new[k])}
    assert moved and all(k.startswith(moved_prefix) for k in moved)


def test_bad_options_are_config_errors(setup):
    ds, model, spec, forget, retain = setup
    ctx = _ctx(ds, forget, retain, spec=spec)
    for name, opts in (("newton", {"solver": "lu"}), ("newton", {"scope": "middle"}),
                       ("ssd", {"reference": "test"}), ("fisher", {"fisher": "sampled"}),
                       ("scrub", {"max_epochs": 9})):
        with pytest.raises(ConfigError):
            create_method(name, opts).unlearn(model, ctx)
    with pytest.raises(ConfigError, match="valid options"):
        create_method("scrub", {"learning_rate": 1.0})


def test_runner_writes_an_unlearning_run_for_each_method(synth_root, tmp_path):
    """The four methods plug into ``run_unlearning`` (options, metrics, JSON-able details)."""
    import json

    from medunlearn.config import DataConfig
    from medunlearn.runs import run_training, run_unlearning

    data = DataConfig(dataset="breastmnist", data_root=str(synth_root), download=False,
                      verify_md5=False)
    run_training(data, ModelConfig(width=4), TrainConfig(epochs=1, batch_size=32,
                                                         progress=False),
                 seed=0, out=tmp_path / "orig")
    for name, opts in FAST.items():
        metrics = run_unlearning(tmp_path / "orig", method=name, forget="random:0.1",
                                 out=tmp_path / name, options=opts, progress=False)
        assert metrics["steps"] > 0 and metrics["unlearn_seconds"] > 0
        saved = json.loads((tmp_path / name / "metrics.json").read_text())
        assert saved["details"] == json.loads(json.dumps(metrics["details"]))
        # the run records the algorithm's revision (SSD 1), and the revision keys the run:
        # the same options under another revision are not a finished run of this one
        config = json.loads((tmp_path / name / "config.json").read_text())
        assert config["method"].get("revision", 0) == get_method_class(name).revision
    import unittest.mock as mock

    from medunlearn.errors import OutputExistsError

    with pytest.raises(OutputExistsError):  # a revision-0 SSD run is not reused as revision 1
        with mock.patch.object(get_method_class("ssd"), "revision", 0):
            run_unlearning(tmp_path / "orig", method="ssd", forget="random:0.1",
                           out=tmp_path / "ssd", options=FAST["ssd"], progress=False)
