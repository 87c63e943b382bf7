"""The model is never modified, is explained in eval mode, and gets its training flags back, also
when an error is raised half-way."""

from __future__ import annotations

import copy

import pytest
import torch

import relprop
from model_init import randomise_batch_norms
from engine_checks import METHODS, assert_unchanged, explain, randn, snapshot
from user_cnns import GroupNormNet, mixed_net


# -- the model is never modified -------------------------------------------------------------------
def test_model_unchanged_by_every_method():
    model = randomise_batch_norms(mixed_net())
    model.train()
    model.se_reduce.eval()  # a mix of flags, each must come back as it was
    x = randn(2, 3, 16, 16, seed=21)
    x_before = x.clone()
    before = snapshot(model)
    for method in METHODS:
        explain(model, x, method)
        assert_unchanged(model, before)
        assert torch.equal(x, x_before), f"{method} modified the input"
        assert not x.requires_grad and x.grad is None


def test_train_mode_model_is_explained_in_eval_mode():
    eval_model = randomise_batch_norms(mixed_net()).eval()
    train_model = copy.deepcopy(eval_model).train()
    x = randn(2, 3, 16, 16, seed=22)
    # the set-up is meaningful: in train mode the model computes something else (batch statistics, dropout)
    with torch.no_grad():
        assert not torch.allclose(copy.deepcopy(train_model)(x), eval_model(x))
    before = snapshot(train_model)
    for method in METHODS:
        expected = explain(eval_model, x, method, target=1)
        got = explain(train_model, x, method, target=1)
        torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=lambda m: f"{method}: {m}")
        assert train_model.training and all(m.training for m in train_model.modules())
        assert_unchanged(train_model, before)
    # the propagator traced in eval mode is reused for the train-mode model, and the other way round
    train_model.eval()
    torch.testing.assert_close(relprop.explain(train_model, x, target=1, method="lrp-epsilon"),
                               relprop.explain(eval_model, x, target=1, method="lrp-epsilon"), rtol=0, atol=0)


def test_model_unchanged_when_target_is_out_of_range():
    model = randomise_batch_norms(mixed_net()).train()
    model.se_reduce.eval()
    before = snapshot(model)
    x = randn(2, 3, 16, 16, seed=23)
    with pytest.raises(ValueError, match="range"):
        relprop.explain(model, x, target=10, method="lrp-epsilon")
    assert_unchanged(model, before)
    # the failed call did not leave anything behind: a good call still works and agrees with eval mode
    good = relprop.explain(model, x, target=3, method="lrp-epsilon")
    assert_unchanged(model, before)
    torch.testing.assert_close(good, relprop.explain(copy.deepcopy(model).eval(), x, target=3,
                                                     method="lrp-epsilon"), rtol=0, atol=0)


def test_model_unchanged_when_recording_fails_midway():
    model = randomise_batch_norms(mixed_net()).train()
    before = snapshot(model)
    with pytest.raises(ValueError):
        relprop.Explainer(model, "lrp-z").explain(randn(2, 3, 16, 16), record=["fc", "nowhere"])
    assert_unchanged(model, before)


def test_model_unchanged_when_an_unsupported_op_is_found():
    model = GroupNormNet().train()
    before = snapshot(model)
    with pytest.raises(relprop.UnsupportedOperationError):
        relprop.explain(model, randn(2, 3, 8, 8), method="lrp-z")
    assert_unchanged(model, before)
