"""Unlearning methods on synthetic data: data access, mask correctness, CRA losses, options."""

from __future__ import annotations

import copy
import dataclasses
import math

import pytest
import torch

from medunlearn.config import ModelConfig, TrainConfig, parse_option_pairs
from medunlearn.data import load_dataset
from medunlearn.errors import ConfigError
from medunlearn.forget_set import select_forget
from medunlearn.methods import UnlearnContext, create_method, get_method_class
from medunlearn.methods._common import random_wrong_labels, relabel_weights, retain_quota
from medunlearn.methods.base import config_dict, resolve_method, takes_retain_budget
from medunlearn.methods.salun import saliency_masks
from medunlearn.methods.salun_cra import IGNORE, cra_per_sample_loss, cra_targets
from medunlearn.training import build_for, evaluate_split, fit, seed_everything

PART_A = ("retrain", "finetune", "gradient-ascent", "neggrad-plus", "random-label",
          "boundary-shrink", "l1-sparse", "salun", "salun-cra")
FAST = {"epochs": 1, "batch_size": 32, "augment": False}
# "constant": the onecycle schedule of training.make_optimizer fails for runs of <= 3 steps
RECIPE = TrainConfig(epochs=1, batch_size=32, threads=1, progress=False, select="last",
                     schedule="constant")


@pytest.fixture(scope="module")
def ds(synth_root):
    return load_dataset(dataset="breastmnist", data_root=str(synth_root), download=False,
                        verify_md5=False, augment="none")


@pytest.fixture(scope="module")
def trained(ds):
    """A width-8 model trained briefly on the synthetic data, and its spec."""
    seed_everything(0)
    model, spec = build_for(ds, ModelConfig(width=8))
    fit(model, ds, None, RECIPE, seed=0)
    return model, spec


def make_ctx(ds, spec, *, forget="random:0.25", exclude=None, seed=0, log=None,
             recipe=RECIPE):
    fs = select_forget(ds, forget=forget, seed=seed, exclude=exclude)
    return UnlearnContext(dataset=ds, forget=fs.forget, retain=fs.retain, seed=seed,
                          train_config=recipe, model_spec=spec, progress=False,
                          on_batch=(log.append if log is not None else None))


def fast_options(name):
    if name == "retrain":
        return {}
    fields = set(get_method_class(name).Config.__dataclass_fields__)
    return {k: v for k, v in FAST.items() if k in fields}


@pytest.mark.parametrize("name", PART_A)
def test_method_reads_only_its_data_and_leaves_original_untouched(ds, trained, name):
    model, spec = trained
    before = copy.deepcopy(model.state_dict())
    excluded = [0, 1, 2, 3]
    log: list[torch.Tensor] = []
    ctx = make_ctx(ds, spec, exclude=excluded, log=log)
    out = create_method(name, fast_options(name)).unlearn(model, ctx)
    seen = set(torch.cat(log).tolist())
    assert seen and not seen & set(excluded), "an excluded (already forgotten) sample was read"
    forget = set(ctx.forget.tolist())
    if name in ("retrain", "finetune", "l1-sparse"):
        assert not seen & forget, f"{name} read a forget sample"
    if name in ("gradient-ascent", "boundary-shrink"):
        assert seen <= forget, f"{name} read retain samples"
    assert out.model is not model and out.steps > 0  # (the caller times a method: api)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), f"{name} changed the original model ({k})"
    assert not any(torch.equal(p, model.state_dict()[k])
                   for k, p in out.model.state_dict().items() if k.endswith("head.weight"))


def test_retrain_is_seeded_and_sees_every_retain_sample(ds, trained):
    _, spec = trained
    log: list[torch.Tensor] = []
    ctx = make_ctx(ds, spec, log=log)
    a = create_method("retrain").unlearn(None, ctx).model
    b = create_method("retrain").unlearn(None, make_ctx(ds, spec)).model
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    seen = torch.cat(log)
    # one epoch with drop_last: every batch comes from the retain set, no sample twice
    assert set(seen.tolist()) <= set(ctx.retain.tolist()) and len(seen) == len(set(seen.tolist()))
    # seed_offset: an independent retraining (another seed) of the same retain set
    c = create_method("retrain", {"seed_offset": 1}).unlearn(None, make_ctx(ds, spec)).model
    assert not all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                      c.state_dict().values(), strict=True))


def test_gradient_ascent_raises_forget_loss(ds, trained):
    model, spec = trained
    ctx = make_ctx(ds, spec)
    before = evaluate_split(model, ds.train, ctx.forget)["loss"]
    out = create_method("gradient-ascent", {"epochs": 3, "lr": 0.01}).unlearn(model, ctx)
    after = evaluate_split(out.model, ds.train, ctx.forget)["loss"]
    assert after > before + 0.05
    assert math.isfinite(after)


@pytest.mark.parametrize("name", ["salun", "salun-cra"])
@pytest.mark.parametrize("freeze_bn", [False, True])
def test_salun_leaves_unmasked_weights_bit_identical(ds, trained, name, freeze_bn):
    model, spec = trained
    ctx = make_ctx(ds, spec)
    opts = {"epochs": 2, "batch_size": 32, "lr": 0.05, "momentum": 0.9, "weight_decay": 0.05,
            "mask_fraction": 0.3, "freeze_bn": freeze_bn}
    out = create_method(name, opts).unlearn(model, ctx)
    masks = saliency_masks(copy.deepcopy(model), ctx, ctx.forget, fraction=0.3)
    total = sum(m.numel() for m in masks.values())
    assert sum(int(m.sum()) for m in masks.values()) == round(0.3 * total)
    new = dict(out.model.named_parameters())
    changed = 0
    for n, p in model.named_parameters():
        m = masks[n]
        assert torch.equal(new[n][~m], p[~m]), f"{n}: a weight outside the mask moved"
        changed += int((new[n][m] != p[m]).sum())
    assert changed > 0.5 * sum(int(m.sum()) for m in masks.values())
    bn_old = {k: v for k, v in model.state_dict().items() if "running" in k}
    bn_new = out.model.state_dict()
    same_bn = all(torch.equal(v, bn_new[k]) for k, v in bn_old.items())
    assert same_bn == freeze_bn


def test_cra_targets_split_positive_and_negative_forget_samples():
    labels = torch.tensor([0, 1, 1, 0, 1, 0, 1, 0])
    forget = torch.tensor([1, 2, 3, 5])  # labels 1, 1, 0, 0
    g = torch.Generator().manual_seed(0)
    targets, entropy = cra_targets(labels, forget, positive_labels=(1,), num_classes=2,
                                   generator=g)
    assert entropy.tolist() == [False, True, True, False, False, False, False, False]
    assert targets[[1, 2]].tolist() == [IGNORE, IGNORE]  # positives: entropy, no label
    assert targets[[3, 5]].tolist() == [1, 1]  # negatives: random (= the only wrong) label
    retain = torch.tensor([0, 4, 6, 7])
    assert torch.equal(targets[retain], labels[retain])


def test_cra_targets_multiclass_positive_set():
    labels = torch.arange(7).repeat(20)  # DermaMNIST-like native labels
    forget = torch.arange(0, 140, 2)
    g = torch.Generator().manual_seed(1)
    targets, entropy = cra_targets(labels, forget, positive_labels=(0, 1, 4), num_classes=7,
                                   generator=g)
    is_pos = torch.isin(labels, torch.tensor([0, 1, 4]))
    in_forget = torch.zeros(140, dtype=torch.bool)
    in_forget[forget] = True
    assert torch.equal(entropy, is_pos & in_forget)
    neg_forget = in_forget & ~is_pos
    assert (targets[neg_forget] != labels[neg_forget]).all()
    assert ((targets[neg_forget] >= 0) & (targets[neg_forget] < 7)).all()
    assert torch.equal(targets[~in_forget], labels[~in_forget])


def test_cra_loss_is_entropy_on_flagged_samples_and_ce_elsewhere():
    torch.manual_seed(0)
    logits = torch.randn(6, 3) * 3
    targets = torch.tensor([0, 2, IGNORE, 1, IGNORE, 0])
    entropy = torch.tensor([False, False, True, False, True, False])
    per = cra_per_sample_loss(logits, targets, entropy)
    ce = torch.nn.functional.cross_entropy(logits, targets.clamp_min(0), reduction="none")
    assert torch.allclose(per[~entropy], ce[~entropy])
    logp = torch.log_softmax(logits, 1)
    kl = (torch.full((6, 3), 1 / 3) * (math.log(1 / 3) - logp)).sum(1)  # KL(uniform || p)
    assert torch.allclose(per[entropy], kl[entropy], atol=1e-6)
    # the entropy loss ignores the target and is zero exactly at the uniform prediction
    other = cra_per_sample_loss(logits, torch.zeros(6, dtype=torch.long), entropy)
    assert torch.allclose(other[entropy], per[entropy])
    flat = cra_per_sample_loss(torch.zeros(2, 3), torch.tensor([IGNORE, IGNORE]),
                               torch.tensor([True, True]))
    assert torch.allclose(flat, torch.zeros(2), atol=1e-7)


def test_salun_cra_needs_positive_labels(tmp_path, trained):
    from medunlearn.testing import make_synthetic_npz

    make_synthetic_npz(tmp_path / "bloodmnist.npz", n_classes=8, n_channels=3, n_train=40)
    blood = load_dataset(dataset="bloodmnist", data_root=str(tmp_path), download=False,
                         verify_md5=False)
    model, spec = build_for(blood, ModelConfig(width=4))
    with pytest.raises(ConfigError, match="which labels mean disease"):
        create_method("salun-cra", FAST).unlearn(model, make_ctx(blood, spec))


def test_random_wrong_labels_are_never_the_true_label():
    y = torch.randint(0, 5, (500,), generator=torch.Generator().manual_seed(0))
    r = random_wrong_labels(y, 5, torch.Generator().manual_seed(1))
    assert (r != y).all() and set(r.tolist()) == set(range(5))


def test_retain_quota_scales_the_budget_with_the_forget_set():
    assert retain_quota(1024, None, 5000) == 1024  # fixed budget
    assert retain_quota(None, 2.0, 5000) is None  # every retain image stays every retain image
    assert retain_quota(1024, 2.0, 100) == 1024  # a small forget set keeps the budget
    assert retain_quota(1024, 2.0, 941) == 1882
    assert retain_quota(10, 0.5, 3) == 10 and retain_quota(1, 0.5, 3) == 2  # rounded up
    with pytest.raises(ConfigError, match="retain_per_forget.*positive"):
        create_method("salun", {"retain_per_forget": 0}).validate()


@pytest.mark.parametrize("name", ("random-label", "salun", "salun-cra"))
def test_relabelling_reads_retain_images_in_proportion_to_the_forget_set(ds, trained, name):
    """retain_per_forget raises a small retain budget so that retain images are not outnumbered
    by relabelled forget images."""
    model, spec = trained
    counts = {}
    for per_forget in (None, 2.0):
        log: list[torch.Tensor] = []
        ctx = make_ctx(ds, spec, forget="random:0.25", log=log)
        opts = fast_options(name) | {"retain_budget": 4, "retain_per_forget": per_forget}
        create_method(name, opts).unlearn(model, ctx)
        counts[per_forget] = len(set(torch.cat(log).tolist()) & set(ctx.retain.tolist()))
    n_forget = len(ctx.forget)
    assert counts[None] == 4
    assert counts[2.0] == min(2 * n_forget, len(ctx.retain)) > 4


def test_relabelling_class_weights_from_the_trained_targets(ds, trained):
    """weight_by="targets" balances the labels really trained on (relabelled forget samples
    included, entropy samples left out); "retain" keeps the retain set's balance."""
    _, spec = trained
    recipe = dataclasses.replace(RECIPE, class_weights="balanced")
    ctx = make_ctx(ds, spec, forget="random:0.25", recipe=recipe)
    targets = ds.train.labels.clone()
    targets[ctx.forget] = 1 - targets[ctx.forget]
    targets[ctx.forget[:3]] = IGNORE
    idx = torch.cat([ctx.forget, ctx.retain])
    w = relabel_weights(ctx, "targets", targets, idx).cpu()
    counts = torch.bincount(targets[idx][targets[idx] >= 0], minlength=2).float()
    assert torch.allclose(w * counts, torch.full((2,), counts.sum() / 2))  # equal class totals
    retain_counts = torch.bincount(ds.train.labels[ctx.retain], minlength=2).float()
    w_retain = relabel_weights(ctx, "retain", targets, idx).cpu()
    assert torch.allclose(w_retain * retain_counts, torch.full((2,), retain_counts.sum() / 2))
    unweighted = make_ctx(ds, spec, recipe=dataclasses.replace(RECIPE, class_weights="none"))
    assert relabel_weights(unweighted, "targets", targets, idx) is None
    with pytest.raises(ConfigError, match="weight_by.*retain or targets"):
        create_method("random-label", {"weight_by": "forget"})
    # the three relabelling methods share the option and its default
    for name in ("random-label", "salun", "salun-cra"):
        assert create_method(name).config.weight_by == "targets", name
        assert create_method(name, {"weight_by": "retain"}).config.weight_by == "retain"


def test_option_precedence_and_errors(monkeypatch):
    import medunlearn.methods.base as unlearning

    # Config default < toml [default] < toml [dataset] < user (a fixed table: the published one
    # comes from tuning)
    table = {"version": 1, "default": {"salun": {"epochs": 2}},
             "breastmnist": {"salun": {"epochs": 5}}}
    monkeypatch.setattr(unlearning, "load_defaults", lambda: table)
    base = resolve_method("salun", dataset=None)
    assert base.config.epochs == 2 and base.config.mask_fraction == 0.5  # Config default
    breast = resolve_method("salun", dataset="breastmnist")
    assert breast.config.epochs == 5
    user = resolve_method("salun", dataset="breastmnist", options={"epochs": 1},
                          retain_budget=50)
    assert user.config.epochs == 1 and user.config.retain_budget == 50
    with pytest.raises(ConfigError, match="Unknown option.*valid options"):
        resolve_method("salun", dataset=None, options={"learning_rate": 0.1})
    # retrain reads every retain image by definition: a retain budget does not apply to it
    assert not takes_retain_budget("retrain") and takes_retain_budget("finetune")
    assert config_dict(resolve_method("retrain", dataset=None, retain_budget=10)) == \
        config_dict(resolve_method("retrain", dataset=None))
    assert resolve_method("finetune", dataset=None, retain_budget=10).config.retain_budget == 10
    with pytest.raises(ConfigError, match="non-negative"):
        resolve_method("finetune", dataset=None, retain_budget=-1)
    with pytest.raises(ConfigError, match="valid methods: retrain, finetune"):
        resolve_method("salun-x", dataset=None)
    with pytest.raises(ConfigError, match="must be positive"):
        create_method("finetune", {"lr": -1.0}).unlearn(None, None)


def test_parse_option_pairs():
    got = parse_option_pairs(["lr=0.01", "epochs=3", "freeze-bn=true", "retain_budget=none",
                              "schedule=constant"])
    assert got == {"lr": 0.01, "epochs": 3, "freeze_bn": True, "retain_budget": None,
                   "schedule": "constant"}
    with pytest.raises(ConfigError, match="key=value"):
        parse_option_pairs(["lr"])
    with pytest.raises(ConfigError, match="twice"):
        parse_option_pairs(["lr=1", "lr=2"])


def test_defaults_toml_is_versioned_and_every_section_is_valid():
    from medunlearn.methods import method_names
    from medunlearn.methods.base import load_defaults

    data = load_defaults()
    assert data["version"] == 1
    names = set(method_names())
    for section, methods in data.items():
        if section == "version":
            continue
        for name, opts in methods.items():
            assert name in names, f"[{section}.{name}] names no registered method"
            create_method(name, opts)  # unknown or ill-typed keys raise ConfigError
