"""Rule maps: which rule each affine layer uses, plus the options of the fixed-rule ops.

A :class:`Composite` holds ``(selector, rule)`` entries; the first entry whose selector matches a
layer decides its rule. Selectors match by layer type (``"conv"``, ``"linear"``, or module classes),
by module name (glob patterns) or by position in EXECUTION order among the affine layers
(``first(n)``, ``last(n)``), which is what paper 003's LRP_CMP needs.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Callable, Sequence


from .ops import Affine
from .options import number
from .rules import AffineRule

#: (layer, index among affine layers in execution order, number of affine layers) -> match
Selector = Callable[[Affine, int, int], bool]


def by_type(*kinds: str | type) -> Selector:
    """Layers of the given kinds: ``"conv"``, ``"linear"``, or module classes (e.g. ``torch.nn.Conv2d``)."""
    for kind in kinds:
        if isinstance(kind, str) and kind not in ("conv", "linear"):
            raise ValueError(f"unknown layer kind {kind!r}; use 'conv', 'linear' or a module class")

    def match(layer: Affine, index: int, count: int) -> bool:
        return any(layer.kind == k if isinstance(k, str) else isinstance(layer.module, k) for k in kinds)
    return match


def by_name(*patterns: str) -> Selector:
    """Layers whose module path matches one of the glob patterns (e.g. ``"features.0"``, ``"layer4.*"``)."""
    def match(layer: Affine, index: int, count: int) -> bool:
        return any(fnmatch.fnmatchcase(layer.path, p) for p in patterns)
    return match


def first(n: int) -> Selector:
    """The first ``n`` affine layers in execution order."""
    return lambda layer, index, count: index < n


def last(n: int) -> Selector:
    """The last ``n`` affine layers in execution order."""
    return lambda layer, index, count: index >= count - n


@dataclass
class Composite:
    """A rule map for affine layers and the options of the other ops.

    ``maxpool``: ``"winner"`` (winner-take-all, the gradient) or ``"proportional"``.
    ``add``: ``"proportional"`` (zennit's Norm), ``"equal"`` or ``"absolute"`` (each term's share in
    proportion to its magnitude, :class:`relprop.ops.Add`).
    ``batchnorm`` (unfolded batch norms only): ``"identity"``, ``"epsilon"``, or a callable
    ``rule(op, x, y, r) -> relevance at x`` given the batch norm's input ``x``, output ``y`` and the
    relevance ``r`` at its output (methods with their own batch-norm rule, e.g. ``rap-journal``).
    """

    rules: Sequence[tuple[Selector, AffineRule]]
    maxpool: str = "winner"
    add: str = "proportional"
    batchnorm: str | Callable = "identity"
    norm_epsilon: float = 1e-6
    epsilon_batchnorm: float = 1e-6
    name: str = "composite"
    _checked: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        for option, allowed in (("maxpool", ("winner", "proportional")), ("add", ("proportional", "equal", "absolute")),
                                ("batchnorm", ("identity", "epsilon"))):
            if option == "batchnorm" and callable(self.batchnorm):
                continue
            if getattr(self, option) not in allowed:
                raise ValueError(f"{option} must be one of {allowed}, got {getattr(self, option)!r}")
        for option in ("norm_epsilon", "epsilon_batchnorm"):
            number(low=0).check(getattr(self, option), f"'{option}' of Composite {self.name!r}")

    def assign(self, layers: Sequence[Affine]) -> dict[int, AffineRule]:
        """Rule for each affine layer (keyed by ``id(layer)``); every layer must match an entry."""
        assigned: dict[int, AffineRule] = {}
        for index, layer in enumerate(layers):
            for selector, rule in self.rules:
                if selector(layer, index, len(layers)):
                    assigned[id(layer)] = rule
                    break
            else:
                raise ValueError(f"{self.name}: no rule matches layer {layer.path!r} ({type(layer.module).__name__})")
        return assigned


__all__ = ["Composite", "Selector", "by_name", "by_type", "first", "last"]
