"""Non-trivial random parameters for whole-model parity tests (torchvision leaves biases at 0 and
batch-norm statistics at 0 / 1, which would hide bias and batch-norm handling)."""

from __future__ import annotations

import torch
from torch import nn


def randomize_parameters(model: nn.Module, g: torch.Generator) -> nn.Module:
    """In place: He (fan-in) weights for layers without a batch norm after them (all of VGG-16's,
    ResNet-50's ``fc``), so activations keep their scale; non-zero biases; random batch-norm
    statistics and affine parameters. Returns ``model``."""
    has_bn = any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and not has_bn):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                m.bias.normal_(0.0, 0.05, generator=g)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0.0, 0.2, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.normal_(0.0, 0.1, generator=g)
    return model


def randn(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """A seeded standard-normal tensor (independent of the global random state)."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def randomise_batch_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """In place: non-trivial batch-norm statistics and affine parameters (signed mean and shift).
    Returns ``model``."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                shape = m.running_mean.shape
                m.running_mean.copy_(torch.randn(shape, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(shape, generator=gen) * 1.5 + 0.5)
                if m.affine:
                    m.weight.copy_(torch.rand(shape, generator=gen) + 0.5)
                    m.bias.copy_(torch.randn(shape, generator=gen) * 0.1)
    return model
