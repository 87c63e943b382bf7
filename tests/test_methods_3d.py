"""Every explanation method on a 3-D CNN (``Nodules3DVGG``: Conv3d-BN-ReLU, MaxPool3d, BN in the
classifier), and RAP's conservation on volumes (as ``test_rap_conserves_on_small_residual_net_both_starts``
in 2-D)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import relprop
from relprop.attribution.attention_maps import ATTENTION_METHODS
from relprop.models.nodules3d_models import Nodules3DVGG
from relprop.patterns import compute_patterns, register_patterns

DT = torch.float64


def _model(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = Nodules3DVGG()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial batch-norm statistics, as after training
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm3d)):
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) * 0.2 - 0.1)
    model = model.to(dtype).eval()
    # the pattern methods' default patterns for it (other weights than the shipped model's), from random cubes
    register_patterns(model, compute_patterns(model, torch.randn(4, 1, 32, 32, 32, generator=g, dtype=dtype)))
    return model


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def volume():
    return torch.randn(1, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("method", [m for m in relprop.methods() if m not in ATTENTION_METHODS])
def test_every_method_runs_on_volumes_or_names_its_2d_limit(model, volume, method):
    try:
        r = relprop.explain(model, volume, target=torch.tensor([1]), method=method)
    except ValueError as err:  # a method defined for images only must say so
        assert "2-D" in str(err) or "2D" in str(err), f"{method}: unclear error {err}"
        return
    assert r.shape == volume.shape
    assert torch.isfinite(r).all()
    assert r.abs().sum() > 0


def _per_sample(r: torch.Tensor) -> torch.Tensor:
    return r.flatten(1).sum(1)


def test_rap_conserves_the_logit_on_volumes():
    model = _model(DT)
    x = torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(3), dtype=DT)
    with torch.no_grad():
        logits = model(x)
    t = logits.argmax(1)
    z_t = logits.gather(1, t[:, None]).flatten()
    explainer = relprop.Explainer(model, "rap", start="one-hot")
    both = explainer.explain(x, target=t)
    assert both.shape == x.shape and torch.isfinite(both).all()
    torch.testing.assert_close(_per_sample(both), z_t, rtol=1e-5, atol=0.0)
    single = explainer.explain(x[1:], target=t[1:])
    torch.testing.assert_close(single[0], both[1], rtol=1e-6, atol=1e-9 * float(both[1].abs().max()))
    logit_start = relprop.explain(model, x[:1], target=t[:1], method="rap", start="logit")
    torch.testing.assert_close(_per_sample(logit_start), z_t[:1], rtol=1e-5, atol=0.0)
    # both signs are present, as in the paper's positive / negative volumes
    assert (both > 0).any() and (both < 0).any()
