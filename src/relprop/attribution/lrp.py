"""LRP methods: initial relevance at the target logit plus a rule map (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP]; Nam, Choi and Lee [Nam-RAP-Journal]).

Each method is a configuration of the engine in :mod:`relprop.propagate`. Dense-layer epsilon
defaults: 0.25 for network-wide ``lrp-epsilon``; 0.1 on the dense layers of the composites and
presets (the value of iNNvestigate's presets A and B, which Nam, Choi and Lee [Nam-RAP-Journal] compare against).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..composite import Composite, by_type, first
from ..multi_target import expand_targets
from ..needs import rules_known
from ..propagate import forward_for
from .registry import register_method
from ..options import bound, choice, integer, names, number
from ..rules import AlphaBeta, Epsilon, Flat, ZBox, ZRule
from ..rules.lrp import Bound
from ..targets import Target, resolve_selection
from .method import Attribution

Tensor = torch.Tensor
_ALL = by_type("conv", "linear")
#: the options every LRP method shares
COMMON = {"maxpool": choice("winner", "proportional"), "add": choice("proportional", "equal"),
          "batchnorm": choice("identity", "epsilon"), "record": names()}


def propagate_lrp(model: nn.Module, x: Tensor, target: Target, composite: Composite,
                  record: Sequence[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
    """Relevance of ``x`` for ``target`` under ``composite``, starting from one-hot times logit (or,
    for an output selector, :meth:`relprop.targets.Selection.initial_relevance`). For
    :class:`~relprop.multi_target.ClassTargets`, one row per sample and target."""
    with rules_known(composite):  # a memory plan keeps only what its rules read
        # channels-last on the CPU where every rule is relprop's own (they keep that layout; a
        # user's rule may expect the usual one)
        propagator, cache = forward_for(model, x, channels_last=all(
            type(rule).__module__.startswith("relprop.") for _, rule in composite.rules))
    cache, target = expand_targets(propagator, cache, target)
    logits = cache.outputs[-1]
    initial = resolve_selection(target, logits).initial_relevance(logits)
    return propagator.backward(cache, initial, composite, record)


def _composite(name: str, rules: list, maxpool: str, add: str, batchnorm: str,
               norm_epsilon: float = 1e-6) -> Composite:
    return Composite(rules, maxpool=maxpool, add=add, batchnorm=batchnorm, name=name, norm_epsilon=norm_epsilon)


@register_method("lrp-z", multi_target=True, summary="LRP-0 on every layer (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 1); equals gradient x input on ReLU nets", **COMMON)
def lrp_z(model: nn.Module, x: Tensor, target: Target, *,
          maxpool="winner", add="proportional", batchnorm="identity", record=()) -> Attribution:
    composite = _composite("lrp-z", [(_ALL, ZRule())], maxpool, add, batchnorm, norm_epsilon=0.0)
    return Attribution(*propagate_lrp(model, x, target, composite, record))


@register_method("lrp-epsilon", multi_target=True, summary="LRP-epsilon on every layer (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 2), epsilon=0.25", epsilon=number(low=0),
                 **COMMON)
def lrp_epsilon(model: nn.Module, x: Tensor, target: Target, *, epsilon=0.25, maxpool="winner", add="proportional",
                batchnorm="identity", record=()) -> Attribution:
    composite = _composite("lrp-epsilon", [(_ALL, Epsilon(epsilon))], maxpool, add, batchnorm)
    return Attribution(*propagate_lrp(model, x, target, composite, record))


@register_method("lrp-alpha1beta0", multi_target=True, summary="LRP-alpha1beta0 (z+) on every layer (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 3)", **COMMON)
def lrp_alpha1beta0(model: nn.Module, x: Tensor, target: Target, *,
                    maxpool="winner", add="proportional", batchnorm="identity",
                    record=()) -> Attribution:
    composite = _composite("lrp-alpha1beta0", [(_ALL, AlphaBeta(1.0, 0.0))], maxpool, add, batchnorm)
    return Attribution(*propagate_lrp(model, x, target, composite, record))


@register_method("lrp-alpha2beta1", multi_target=True, summary="LRP-alpha2beta1 on every layer (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Eq. 3; its alpha=2, beta=-1)",
                 **COMMON)
def lrp_alpha2beta1(model: nn.Module, x: Tensor, target: Target, *,
                    maxpool="winner", add="proportional", batchnorm="identity",
                    record=()) -> Attribution:
    composite = _composite("lrp-alpha2beta1", [(_ALL, AlphaBeta(2.0, 1.0))], maxpool, add, batchnorm)
    return Attribution(*propagate_lrp(model, x, target, composite, record))


def cmp_composite(alpha: float = 1.0, epsilon: float = 0.1, first_rule: str = "flat", n_first: int = 1,
                  low: Bound = None, high: Bound = None, maxpool: str = "winner", add: str = "proportional",
                  batchnorm: str = "identity") -> Composite:
    """LRP_CMP (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. II): epsilon on dense layers, alpha-beta on convolutions, and
    flat on the first ``n_first`` affine layers (``first_rule="flat"``), z^B on the input layer
    (``"zb"``, bounds ``low``/``high``, per image when None) or nothing special (``"none"``)."""
    if alpha not in (1, 2) and alpha < 1:
        raise ValueError(f"alpha must be >= 1 (alpha - beta = 1, beta >= 0), got {alpha}")
    rules: list = []
    if first_rule == "flat":
        if n_first < 1:
            raise ValueError(f"n_first must be >= 1 with first_rule='flat', got {n_first}")
        rules.append((first(n_first), Flat()))
    elif first_rule == "zb":
        if n_first != 1:
            raise ValueError("the z^B rule applies to the input layer only: use n_first=1")
        rules.append((first(1), ZBox(low, high)))
    elif first_rule != "none":
        raise ValueError(f"first_rule must be 'flat', 'zb' or 'none', got {first_rule!r}")
    rules += [(by_type("linear"), Epsilon(epsilon)), (by_type("conv"), AlphaBeta(alpha, alpha - 1.0))]
    return _composite("lrp-cmp", rules, maxpool, add, batchnorm)


@register_method("lrp-cmp", multi_target=True, summary="LRP_CMP composite (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP]): epsilon dense, alpha-beta conv, flat first layer",
                 alpha=number(low=1), epsilon=number(low=0), first_rule=choice("flat", "zb", "none"),
                 n_first=integer(low=1), low=bound(), high=bound(), **COMMON)
def lrp_cmp(model: nn.Module, x: Tensor, target: Target, *,
            alpha=1.0, epsilon=0.1, first_rule="flat", n_first=1, low=None, high=None,
            maxpool="winner", add="proportional", batchnorm="identity", record=()) -> Attribution:
    composite = cmp_composite(alpha, epsilon, first_rule, n_first, low, high, maxpool, add, batchnorm)
    return Attribution(*propagate_lrp(model, x, target, composite, record))


@register_method("lrp-preset-a", multi_target=True, summary="LRP preset A (Nam, Choi and Lee [Nam-RAP-Journal], Sec. V): epsilon dense, alpha1beta0 conv",
                 epsilon=number(low=0), **COMMON)
def lrp_preset_a(model: nn.Module, x: Tensor, target: Target, *,
                 epsilon=0.1, maxpool="winner", add="proportional", batchnorm="identity",
                 record=()) -> Attribution:
    rules = [(by_type("linear"), Epsilon(epsilon)), (by_type("conv"), AlphaBeta(1.0, 0.0))]
    return Attribution(*propagate_lrp(model, x, target, _composite("lrp-preset-a", rules, maxpool, add, batchnorm),
                                      record))


@register_method("lrp-preset-b", multi_target=True, summary="LRP preset B (Nam, Choi and Lee [Nam-RAP-Journal], Sec. V): epsilon dense, alpha2beta1 conv",
                 epsilon=number(low=0), **COMMON)
def lrp_preset_b(model: nn.Module, x: Tensor, target: Target, *,
                 epsilon=0.1, maxpool="winner", add="proportional", batchnorm="identity",
                 record=()) -> Attribution:
    rules = [(by_type("linear"), Epsilon(epsilon)), (by_type("conv"), AlphaBeta(2.0, 1.0))]
    return Attribution(*propagate_lrp(model, x, target, _composite("lrp-preset-b", rules, maxpool, add, batchnorm),
                                      record))
