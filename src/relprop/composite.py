"""Rule maps: which rule each operation of a traced model uses, for every operation kind alike.

A :class:`Composite` holds ``(selector, rule)`` entries; for each operation, the first entry whose
rule applies to the operation's kind (``rule.kinds``) and whose selector matches decides its rule.
Operations that no entry claims take the composite's default for their kind (:data:`DEFAULT_RULES`,
adjusted by the shorthand options ``maxpool``, ``add`` and ``batchnorm``); an affine layer that no
entry claims is an error. Selectors match by kind or layer type (``"conv"``, ``"linear"``, ``"add"``,
or module classes), by module path (glob patterns) or by position in EXECUTION order among the
operations of the same kind (``first(n)``, ``last(n)``), which is what LRP_CMP needs
(Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. III).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Callable, Sequence

from .numerics import NORM_EPSILON
from .graph import known_kinds
from .ops import Op
from .options import number
from .rules import (AbsoluteSum, BatchNormEpsilon, EqualSum, GateProduct, LayerNormEpsilon, MatMulValue, MoveBack,
                    PassThrough, Proportional, ProportionalPool, ProportionalSum, Rule, SoftmaxConstant, SplitConcat,
                    WinnerTakeAll)

#: (operation, index among the operations of its kind in execution order, number of them) -> match
Selector = Callable[[Op, int, int], bool]

#: the rule of each operation kind that no entry of a composite claims (affine layers have none);
#: transformers' kinds take the conservative CP-LRP rules (Ali et al. 2022 [Ali2022-CPLRP])
DEFAULT_RULES: dict[str, Rule] = {
    "identity": PassThrough(),
    "activation": PassThrough(),
    "scale": PassThrough(),
    "batchnorm": PassThrough(),
    "reshape": MoveBack(),
    "getitem": MoveBack(),
    "pad": MoveBack(),
    "concat": SplitConcat(),
    "multiply": GateProduct(),
    "maxpool": WinnerTakeAll(),
    "avgpool": Proportional(),
    "resize": Proportional(),
    "add": ProportionalSum(),
    "layernorm": LayerNormEpsilon(),
    "softmax": SoftmaxConstant(),
    "matmul": MatMulValue(),
}

#: the shorthand names of the options ``maxpool``, ``add`` and ``batchnorm``
MAXPOOL_RULES = ("winner", "proportional")
ADD_RULES = ("proportional", "equal", "absolute")
BATCHNORM_RULES = ("identity", "epsilon")


def by_type(*kinds: str | type) -> Selector:
    """Operations of the given kinds: ``"conv"`` or ``"linear"`` (affine layers of that type), an
    operation kind (``"add"``, ``"maxpool"``, ... see :data:`relprop.ops.KINDS`), or module classes
    (e.g. ``torch.nn.Conv2d``)."""
    known = ("conv", "linear") + known_kinds()
    for kind in kinds:
        if isinstance(kind, str) and kind not in known:
            raise ValueError(f"unknown layer kind {kind!r}; use 'conv', 'linear', an operation kind "
                             f"({', '.join(known[2:])}) or a module class")

    def match(op: Op, index: int, count: int) -> bool:
        for k in kinds:
            if isinstance(k, str):
                if k == op.kind or k == getattr(op, "layer_type", None):
                    return True
            elif isinstance(op.module, k):
                return True
        return False
    return match


def by_name(*patterns: str) -> Selector:
    """Operations whose module path (or, for a function call, node name) matches one of the glob
    patterns (e.g. ``"features.0"``, ``"layer4.*"``)."""
    def match(op: Op, index: int, count: int) -> bool:
        return any(fnmatch.fnmatchcase(op.path, p) for p in patterns)
    return match


def first(n: int) -> Selector:
    """The first ``n`` operations of their kind in execution order (e.g. the first affine layers)."""
    return lambda op, index, count: index < n


def last(n: int) -> Selector:
    """The last ``n`` operations of their kind in execution order."""
    return lambda op, index, count: index >= count - n


def everywhere() -> Selector:
    """Every operation that the entry's rule applies to."""
    return lambda op, index, count: True


@dataclass
class Composite:
    """A rule map for every operation kind.

    ``rules``: ``(selector, rule)`` entries, for affine layers (every one must be matched) and for
    any other kind (e.g. ``(by_type("add"), AbsoluteSum())``). The shorthand options choose the
    defaults of three kinds; each also takes a rule object:

    - ``maxpool``: ``"winner"`` (winner-take-all, the gradient) or ``"proportional"``;
    - ``add``: ``"proportional"`` (zennit's Norm), ``"equal"`` or ``"absolute"`` (each term's share
      in proportion to its magnitude; :mod:`relprop.rules.sums`);
    - ``batchnorm`` (unfolded batch norms only): ``"identity"`` or ``"epsilon"``.

    ``norm_epsilon`` stabilises the proportional rules of pooling and sums, ``epsilon_batchnorm``
    the batch-norm epsilon rule.
    """

    rules: Sequence[tuple[Selector, Rule]]
    maxpool: str | Rule = "winner"
    add: str | Rule = "proportional"
    batchnorm: str | Rule = "identity"
    norm_epsilon: float = NORM_EPSILON
    epsilon_batchnorm: float = 1e-6
    name: str = "composite"

    def __post_init__(self) -> None:
        for option in ("norm_epsilon", "epsilon_batchnorm"):
            number(low=0).check(getattr(self, option), f"'{option}' of Composite {self.name!r}")
        self.defaults()  # refuses unknown shorthand names
        for k, entry in enumerate(self.rules):
            if not (isinstance(entry, tuple) and len(entry) == 2 and callable(entry[0])):
                raise ValueError(f"{self.name}: entry {k} must be a (selector, rule) pair, got {entry!r}")
            if not isinstance(entry[1], Rule):
                raise ValueError(f"{self.name}: entry {k} holds {entry[1]!r}, which is not a rule "
                                 "(a subclass of relprop.rules.Rule, e.g. relprop.rules.Epsilon())")

    def defaults(self) -> dict[str, Rule]:
        """The rule of each kind that no entry claims, with the shorthand options applied."""
        defaults = dict(DEFAULT_RULES)
        defaults["maxpool"] = _shorthand("maxpool", self.maxpool, {
            "winner": lambda: WinnerTakeAll(), "proportional": lambda: ProportionalPool(self.norm_epsilon)})
        defaults["add"] = _shorthand("add", self.add, {
            "proportional": lambda: ProportionalSum(self.norm_epsilon), "equal": lambda: EqualSum(),
            "absolute": lambda: AbsoluteSum()})
        defaults["batchnorm"] = _shorthand("batchnorm", self.batchnorm, {
            "identity": lambda: PassThrough(), "epsilon": lambda: BatchNormEpsilon(self.epsilon_batchnorm)})
        defaults["avgpool"] = defaults["resize"] = Proportional(self.norm_epsilon)
        return defaults

    def assign(self, operations: Sequence[Op]) -> dict[int, Rule]:
        """The rule of each operation (keyed by ``id(op)``; the model input has none). Every affine
        layer must match an entry."""
        defaults = self.defaults()
        by_kind: dict[str, list[Op]] = {}
        for op in operations:
            by_kind.setdefault(op.kind, []).append(op)
        assigned: dict[int, Rule] = {}
        for kind, group in by_kind.items():
            if kind == "input":
                continue
            entries = [(selector, rule) for selector, rule in self.rules if kind in rule.kinds]
            for index, op in enumerate(group):
                for selector, rule in entries:
                    if selector(op, index, len(group)):
                        assigned[id(op)] = rule
                        break
                else:
                    if kind not in defaults:
                        what = "layer" if kind == "affine" else f"operation of kind {kind!r}"
                        raise ValueError(f"{self.name}: no rule matches {what} {op.path!r} ({type(op.module).__name__})")
                    assigned[id(op)] = defaults[kind]
        return assigned


def _shorthand(option: str, value: str | Rule, named: dict[str, Callable[[], Rule]]) -> Rule:
    """The rule a shorthand option names, or the rule object it holds."""
    if isinstance(value, Rule):
        if option not in value.kinds:
            raise ValueError(f"{option}={value!r} is a rule for {', '.join(value.kinds) or 'no kind'}, not for {option}")
        return value
    if isinstance(value, str) and value in named:
        return named[value]()
    raise ValueError(f"{option} must be one of {tuple(named)} or a rule object, got {value!r}")


__all__ = ["Composite", "DEFAULT_RULES", "Selector", "by_name", "by_type", "everywhere", "first", "last"]
