"""Unsupported operations raise :class:`relprop.UnsupportedOperationError` naming op and place."""

from __future__ import annotations

import pytest

import relprop
from relprop.attribution.registry import get_method
from engine_checks import METHODS, randn
from user_cnns import GroupNormNet, SortNet


# -- unsupported operations ------------------------------------------------------------------------
def test_unsupported_layer_names_op_and_path():
    with pytest.raises(relprop.UnsupportedOperationError) as info:
        relprop.explain(GroupNormNet().eval(), randn(1, 3, 8, 8), method="lrp-z")
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "GroupNorm" in message and "block.norm" in message, message


def test_unsupported_function_names_op_and_path():
    with pytest.raises(relprop.UnsupportedOperationError) as info:
        relprop.explain(SortNet().eval(), randn(1, 3, 8, 8), method="lrp-epsilon")
    message = str(info.value)
    assert "sort" in message and "ranker" in message, message


#: methods that propagate through relprop's traced graph (they can record intermediate relevance);
#: the others (plain autograd gradients) may well explain a GroupNorm
GRAPH_METHODS = [m for m in METHODS if "record" in get_method(m).options()]


def test_graph_methods_include_lrp():
    assert {"lrp-z", "lrp-epsilon", "lrp-cmp"} <= set(GRAPH_METHODS)


@pytest.mark.parametrize("method", GRAPH_METHODS)
def test_every_graph_method_rejects_unsupported_ops(method):
    with pytest.raises(relprop.UnsupportedOperationError, match="GroupNorm"):
        relprop.explain(GroupNormNet().eval(), randn(1, 3, 8, 8), method=method)
