"""Relative Attributing Propagation, journal version (Nam, Choi and Lee [Nam-RAP-Journal], Sec. IV-B, Eq. 5-11).

The target logit is propagated once through the output layer (Eq. 5-6); from there two flows run
over the same forward pass: the normal flow along promoting contributions (Eq. 7) and the inversion
flow along inhibiting ones with the sign switched (Eq. 8), each with its bias (Eq. 10) and batch-norm
(Eq. 11) compensation. The explanation is their sum (Eq. 9). Batch norms stay unfolded, since Eq. 11
needs their own input and output; max pooling is winner-take-all, average pooling and concatenations
are split in proportion to the inputs without epsilon (as relprop's ``rap``), residual sums in
proportion to the magnitudes of their terms (``add="absolute"``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from ..composite import Composite, by_type, last
from ..multi_target import expand_targets
from ..propagate import forward_for
from .registry import register_method
from ..options import choice, flag, names
from ..rules.rap_journal import BN_TERMS, BatchNormFlow, FirstPropagation, Flow, check_flow
from ..targets import Target, one_hot, one_hot_logit, resolve_target
from .method import Attribution

Tensor = torch.Tensor

#: the maps the method can return: the sum of both flows (Eq. 9) or one flow
FLOWS = ("final", "normal", "inversion")
STARTS = ("logit", "one-hot")


ADDS = ("absolute", "proportional", "equal")


def rap_journal_composite(flow: str, bias: bool = True, batchnorm: bool = True, center: bool = True,
                          bn_term: str = "scaled", add: str = "absolute") -> Composite:
    """The rule map of one flow ("normal" or "inversion"): Eq. 5-6 at the output layer, Eq. 7 or 8
    with Eq. 10 at the other affine layers, Eq. 11 at batch norms (``bn_term``: see
    :class:`~relprop.rules.rap_journal.BatchNormFlow`), residual sums split by ``add``
    (:mod:`relprop.rules.sums`)."""
    check_flow(flow)
    rules: list = [(last(1), FirstPropagation(center)), (by_type("conv", "linear"), Flow(flow, bias, center))]
    return Composite(rules, maxpool="winner", add=add,
                     batchnorm=BatchNormFlow(flow, bn_term) if batchnorm and bn_term != "off" else "identity", norm_epsilon=0.0,
                     name=f"rap-journal ({flow})")


def _split_record_name(name: str, default: str) -> tuple[str, str]:
    """``"node@flow"`` -> ``("node", flow)``; a plain ``"node"`` gets the ``default`` flow."""
    base, sep, flow = name.rpartition("@")
    if not sep:
        return name, default
    if flow not in FLOWS:
        raise ValueError(f"record name {name!r}: the flow after '@' must be one of {FLOWS}, got {flow!r}")
    return base, flow


@register_method("rap-journal", multi_target=True, summary="Relative Attributing Propagation, journal version: normal and inversion flows "
                                "with bias and batch-norm handling (Nam, Choi and Lee [Nam-RAP-Journal], Eq. 5-11)",
                 flow=choice(*FLOWS), start=choice(*STARTS), bias=flag(), batchnorm=flag(),
                 bn_term=choice(*BN_TERMS), add=choice(*ADDS), center=flag(), record=names())
def rap_journal(model: nn.Module, x: Tensor, target: Target, *,
                flow: str = "final", start: str = "logit", bias: bool = True,
                batchnorm: bool = True, bn_term: str = "scaled", add: str = "absolute", center: bool = True,
                record: Sequence[str] = ()) -> Attribution:
    """RAP (journal). ``flow``: the returned map, ``"final"`` (normal + inversion, Eq. 9), ``"normal"``
    or ``"inversion"`` (Nam, Choi and Lee [Nam-RAP-Journal], Fig. 4). ``start``: ``"logit"`` (R = f(x) at the target, Nam, Choi and Lee [Nam-RAP-Journal]
    Sec. III-A) or ``"one-hot"`` (R = 1). ``bias`` / ``batchnorm``: apply Eq. 10 / Eq. 11; ``bn_term``: Eq. 11's term
    ``"scaled"`` to relevance units (default), ``"literal"`` (as printed) or ``"off"`` (see
    :class:`~relprop.rules.rap_journal.BatchNormFlow` and docs/methods.md). ``add``: how a residual
    sum ``a + b`` splits its relevance, ``"absolute"`` (default, ``|a| / (|a| + |b|)``),
    ``"proportional"`` (``a / (a + b)``, no stabiliser) or ``"equal"``.
    ``center``: the zero-sum step of Eq. 6 after every affine layer. ``record`` names nodes; a name
    ``"node@normal"``, ``"node@inversion"`` or ``"node@final"`` picks that flow's map, a plain name
    the map of ``flow``."""
    if flow not in FLOWS:
        raise ValueError(f"flow must be one of {FLOWS}, got {flow!r}")
    if add not in ADDS:
        raise ValueError(f"add must be one of {ADDS}, got {add!r}")
    if bn_term not in BN_TERMS:
        raise ValueError(f"bn_term must be one of {BN_TERMS}, got {bn_term!r}")
    if start not in STARTS:
        raise ValueError(f"start must be one of {STARTS}, got {start!r}")
    requests = [(name, *_split_record_name(name, flow)) for name in record]
    wanted = {flow} | {f for _, _, f in requests}
    passes = [f for f in ("normal", "inversion") if f in wanted or "final" in wanted]

    propagator, cache = forward_for(model, x, fold_batchnorm=False)
    cache, target = expand_targets(propagator, cache, target)
    # one name per node: two names of the same node (a module path and its last node) share a record
    node_of = {base: propagator.graph.find(base) for _, base, _ in requests}
    name_of: dict[int, str] = {}
    for base, pos in node_of.items():
        name_of.setdefault(pos, base)
    bases = list(name_of.values())
    logits = cache.outputs[-1]
    indices = resolve_target(target, logits)
    if start == "logit":
        initial = one_hot_logit(logits, indices)
    else:
        initial = one_hot(logits, indices)

    maps: dict[str, Tensor] = {}
    recorded: dict[str, dict[str, Tensor]] = {}
    for k, name in enumerate(passes):
        composite = rap_journal_composite(name, bias, batchnorm, center, bn_term, add)
        maps[name], recorded[name] = propagator.backward(cache, initial, composite, bases,
                                                         release=k == len(passes) - 1)
    if "final" in wanted:
        maps["final"] = maps["normal"] + maps["inversion"]  # Eq. 9
        recorded["final"] = {b: recorded["normal"][b] + recorded["inversion"][b] for b in bases}
    return Attribution(maps[flow], {name: recorded[f][name_of[node_of[base]]] for name, base, f in requests})
