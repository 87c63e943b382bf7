"""Conservation on the model zoo: with LRP-0 (``lrp-z``) and every bias and batch-norm shift set to
zero, the input relevance of every sample sums to its target logit (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. II), on VGG-16
(+BN), ResNet-50, Inception-v3, DenseNet-121 and AlexNet in float64, with batch norms whose running
variance and scale are random positive numbers, so that folding them is not the identity."""

from __future__ import annotations

import copy

import pytest
import torch

import relprop
from engine_checks import F64, ZOO_SMALL, assert_conserved, logits_of, randn


# -- conservation on the zoo -----------------------------------------------------------------------
@pytest.mark.parametrize("name,size", ZOO_SMALL + [("resnet50", 224)],
                         ids=[f"{n}-{s}" for n, s in ZOO_SMALL] + ["resnet50-224"])
def test_lrp_z_conserves_the_target_logit(zoo, name, size):
    model = zoo.get(name, "conservative-f64")
    x = randn(2, 3, size, size, dtype=F64, seed=size)
    logits = logits_of(model, x)
    # one sample explained for its predicted class, the other for a fixed class it did not predict
    other = 7 if int(logits[1].argmax()) != 7 else 8
    target = torch.tensor([int(logits[0].argmax()), other])
    relevance = relprop.explain(model, x, target=target.tolist(), method="lrp-z")
    assert relevance.shape == x.shape and relevance.dtype == F64
    assert torch.isfinite(relevance).all()
    assert_conserved(relevance, logits, target)


def test_conservation_check_detects_a_bias(zoo):
    """The conservation tests are not vacuous: a non-zero bias in the classifier leaks relevance."""
    model = copy.deepcopy(zoo.get("alexnet", "conservative-f64"))
    with torch.no_grad():
        model.classifier[-1].bias.fill_(0.5)
    x = randn(2, 3, 96, 96, dtype=F64, seed=1)
    logits = logits_of(model, x)
    target = logits.argmax(dim=1)
    relevance = relprop.explain(model, x, target=target, method="lrp-z")
    with pytest.raises(AssertionError):
        assert_conserved(relevance, logits, target)
    # ... and the leak is exactly the bias: the relevance sums to logit - bias
    assert_conserved(relevance, logits - 0.5, target)
