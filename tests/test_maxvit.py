"""torchvision's MaxViT (random weights) explained with CP-LRP and AttnLRP: its attention written with
``torch.chunk`` and two-operand ``torch.einsum`` (products of two tensors), its relative position
bias (a constant added to the scores), the grid partition's ``swapaxes``, MBConv with an unfolded
pre-norm batch norm and squeeze-excitation (a gated product)."""

from __future__ import annotations


import pytest
import torch
import torch.nn as nn
import torchvision
from torchvision.models.maxvit import MaxVit

import relprop
from engine_checks import assert_cp_lrp_conserves, assert_explains_or_refuses  # noqa: E402

DOUBLE = torch.float64
#: two stages of one block, 2 x 2 windows and grids, 4-wide heads, 32-pixel images
SMALL = dict(input_size=(32, 32), stem_channels=8, partition_size=2, block_channels=[16, 32], block_layers=[1, 1],
             head_dim=4, stochastic_depth_prob=0.0, num_classes=10)


def _zero_biases(model: nn.Module) -> None:
    """Every bias, relative position bias table and batch-norm shift (beta and running mean) zero;
    batch-norm scales drawn away from 1."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or name.endswith("relative_position_bias_table"):
                p.zero_()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.zero_()
                module.running_var.uniform_(0.5, 1.5)


def small_maxvit(seed: int = 0, conservative: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    model = MaxVit(**SMALL).double().eval()
    if conservative:
        _zero_biases(model)
    return model


def image(batch: int = 2, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_cp_lrp_conserves_on_a_small_maxvit():
    """Measured: about 1e-15 relative (slow: a process's first float64 convolutions of these shapes
    take seconds; later calls well under one)."""
    model = small_maxvit(conservative=True)
    x = image()
    target = torch.tensor([3, 8])
    assert_cp_lrp_conserves(model, x, target)


def test_attention_products_are_marked():
    """Each attention's second einsum has the softmax output as its attention factor (so CP-LRP
    gives all to the values); the first has none."""
    from relprop.propagate import propagator_for

    graph = propagator_for(small_maxvit()).graph
    products = [n.op for n in graph.nodes if n.op.kind == "matmul"]
    assert len(products) == 8  # two per attention, window and grid attention in two blocks
    assert [p.attention for p in products] == [None, 0] * 4


@pytest.mark.slow
def test_cp_lrp_conserves_on_maxvit_t():
    """torchvision's ``maxvit_t`` architecture at 224 pixels (its 7 x 7 partitions need it)."""
    torch.manual_seed(0)
    model = torchvision.models.maxvit_t(num_classes=10).double().eval()
    _zero_biases(model)
    x = image(1, 224)
    assert_cp_lrp_conserves(model, x, 3)


#: methods not defined here, and the words of their clear refusal: the pattern methods do not support
#: the squeeze-and-excitation gates of MaxViT's MBConv blocks (a sigmoid gating the features)
REFUSED_ON_MAXVIT = {"attention-rollout": "global self-attention", "transformer-attribution": "global self-attention",
                     "patternnet": "(Sigmoid): an activation other than", "pattern-attribution": "(Sigmoid): an activation other than"}


@pytest.fixture(scope="module")
def maxvit() -> nn.Module:
    return small_maxvit()


@pytest.mark.parametrize("method", sorted(relprop.methods()))
def test_every_method_explains_a_maxvit_or_refuses_clearly(method, maxvit):
    x = image()
    assert_explains_or_refuses(maxvit, x, method, REFUSED_ON_MAXVIT)


@pytest.mark.parametrize("method", ["cp-lrp", "attnlrp"])
def test_a_batch_equals_its_samples(method, maxvit):
    x = image(3)
    target = torch.tensor([2, 5, 9])
    r = relprop.explain(maxvit, x, target=target, method=method)
    assert r.abs().sum() > 0
    for i in range(3):
        one = relprop.explain(maxvit, x[i:i + 1], target=target[i:i + 1], method=method)
        torch.testing.assert_close(one, r[i:i + 1], rtol=1e-9, atol=1e-12 * float(r.abs().max()))


def test_einsum_of_other_than_two_tensors_is_refused_clearly():
    class Traced(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.einsum("bi,bi,bi->b", self.a(x), x, x)[:, None]

    with pytest.raises(relprop.UnsupportedOperationError, match="einsum .* other than two operands"):
        relprop.explain(Traced().eval(), torch.randn(2, 3), target=0, method="cp-lrp")
