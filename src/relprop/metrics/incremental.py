"""Incremental forward passes for perturbation curves: recompute only what a small change touches.

A region-perturbation curve evaluates the same image again and again, each step differing from the
previous one in one small region (one ``patch_size`` x ``patch_size`` patch per step in MoRF / LeRF
order). In a convolutional network such a change only reaches a window of every feature map that
grows with the receptive field, so most of every early feature map is the same as one step before.
:class:`IncrementalForward` keeps the feature maps of the previous step and recomputes, per sample,
only the window that changed (with the window's halo), while the layers where the window covers
most of the map are computed in full as usual. Kept maps and windows are channels last (a window's
rows are then contiguous runs of memory); the nodes computed in full get the usual layout.

The model is traced with ``torch.fx``. "Windowed" nodes are 2-d convolutions (zero padding),
max and average pooling (``ceil_mode=False``; average pooling counting the padding), batch norm in
eval mode, and element-wise operations (activations, ``+ - * /`` of same-shaped feature maps or of
numbers). Every other node, and every node fed by one, is computed in full on the current feature
maps, so any traceable model gives the same logits as a plain forward pass (up to float round-off:
a window is convolved separately from the rest of its map, and a convolution followed by an
eval-mode batch norm is evaluated, on windows and full maps alike, as one convolution with the batch
norm folded in). Nodes computed in full run ReLUs and sums in place on fresh maps nobody else reads.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

__all__ = ["IncrementalForward", "Box"]

#: (row start, row stop, column start, column stop) of a changed window, stops exclusive
Box = tuple[int, int, int, int]

_POINTWISE_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid,
    nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.Softplus, nn.Identity, nn.Dropout,
    nn.Dropout2d, nn.PReLU,
)
_POINTWISE_FUNCTIONS = {
    operator.add, operator.sub, operator.mul, operator.truediv, operator.neg, torch.add, torch.sub,
    torch.mul, torch.div, torch.neg, torch.relu, torch.sigmoid, torch.tanh, torch.clamp, F.relu,
    F.relu6, F.leaky_relu, F.elu, F.gelu, F.silu, F.mish, F.hardswish, F.hardsigmoid, F.hardtanh,
    F.sigmoid, F.tanh, F.softplus,
}
#: modules computed in full that take maps in any memory layout (besides window and element-wise ones)
_ANY_LAYOUT_MODULES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
_POINTWISE_METHODS = {"relu", "sigmoid", "tanh", "add", "sub", "mul", "div", "neg", "clamp", "contiguous"}


@dataclass(frozen=True)
class _Window:
    """Geometry of a sliding-window layer along (rows, columns)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    pad_value: float  # the value the padding stands for (0, or -inf for max pooling)

    def outputs(self, start: int, stop: int, dim: int, size: int) -> tuple[int, int]:
        """Output positions along ``dim`` whose window meets input positions [start, stop)."""
        k, s, p, d = self.kernel[dim], self.stride[dim], self.padding[dim], self.dilation[dim]
        lo = max(0, -(-(start + p - d * (k - 1)) // s))
        hi = min(size, (stop - 1 + p) // s + 1)
        return lo, max(lo, hi)

    def inputs(self, start: int, stop: int, dim: int) -> tuple[int, int]:
        """Input positions (may lie in the padding) that outputs [start, stop) read."""
        k, s, p, d = self.kernel[dim], self.stride[dim], self.padding[dim], self.dilation[dim]
        return start * s - p, (stop - 1) * s - p + d * (k - 1) + 1

    def span(self, length: int, dim: int) -> int:
        """The most output positions that a change of ``length`` input positions can reach."""
        k, s, d = self.kernel[dim], self.stride[dim], self.dilation[dim]
        return (length - 1 + d * (k - 1)) // s + 1


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _window_of(module: nn.Module) -> Optional[_Window]:
    """The window geometry of a module evaluated window by window, or None."""
    if isinstance(module, nn.Conv2d):
        if module.padding_mode != "zeros" or isinstance(module.padding, str):
            return None
        return _Window(_pair(module.kernel_size), _pair(module.stride), _pair(module.padding),
                       _pair(module.dilation), 0.0)
    if isinstance(module, nn.MaxPool2d):
        if module.ceil_mode or module.return_indices:
            return None
        return _Window(_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                       _pair(module.padding), _pair(module.dilation), -math.inf)
    if isinstance(module, nn.AvgPool2d):
        if module.ceil_mode or not module.count_include_pad or module.divisor_override is not None:
            return None
        return _Window(_pair(module.kernel_size), _pair(module.stride or module.kernel_size),
                       _pair(module.padding), (1, 1), 0.0)
    return None


def _apply_window(module: nn.Module, crop: Tensor, weights: Optional[tuple[Tensor, Optional[Tensor]]] = None) -> Tensor:
    """The module on an explicitly padded crop (its own padding set to 0); ``weights``: the (weight,
    bias) a convolution runs with (e.g. with the batch norm that follows it folded in)."""
    if isinstance(module, nn.Conv2d):
        weight, bias = weights if weights is not None else (module.weight, module.bias)
        return F.conv2d(crop, weight, bias, module.stride, 0, module.dilation, module.groups)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(crop, module.kernel_size, module.stride or module.kernel_size, 0, module.dilation)
    return F.avg_pool2d(crop, module.kernel_size, module.stride or module.kernel_size, 0)


def _crops(t: Tensor, samples: list[int], boxes: list[Box], value: float) -> Tensor:
    """``t[i, :, r0:r1, c0:c1]`` for ``i`` in ``samples`` and its box in ``boxes`` (all of one size), as
    one channels-last batch; a box may reach outside the map (filled with ``value``)."""
    r0, r1, c0, c1 = boxes[0]
    out = torch.empty((len(samples), t.shape[1], r1 - r0, c1 - c0), dtype=t.dtype, device=t.device,
                      memory_format=torch.channels_last)
    h, w = t.shape[-2:]
    if any(r0 < 0 or c0 < 0 or r1 > h or c1 > w for r0, r1, c0, c1 in boxes):
        out.fill_(value)
    for j, (i, (r0, r1, c0, c1)) in enumerate(zip(samples, boxes)):
        a, b, c, d = max(r0, 0), min(r1, h), max(c0, 0), min(c1, w)
        out[j, :, a - r0:b - r0, c - c0:d - c0] = t[i, :, a:b, c:d]
    return out


def _is_pointlike(window: Optional[_Window]) -> bool:
    """Whether every output position of ``window`` reads just the input position under it (1 x 1,
    stride 1, no padding): its changed boxes are those of its input."""
    return window is not None and window.kernel == (1, 1) and window.stride == (1, 1) \
        and window.padding == (0, 0)


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` as one convolution (batch norm in eval mode)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)
    return weight, bias.to(conv.weight.dtype)


def _plain(module: Optional[nn.Module], cls: type) -> bool:
    """Whether ``module`` is exactly a ``cls`` without forward hooks (its forward may be replaced by the
    functional call it makes)."""
    return type(module) is cls and not module._forward_hooks and not module._forward_pre_hooks


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` is a ReLU (module, function or method) that may run in place on a fresh tensor."""
    if node.op == "call_module":
        return type(modules[node.target]) is nn.ReLU
    if node.op == "call_function":
        return node.target in (torch.relu, F.relu) and len(node.args) == 1
    return node.op == "call_method" and node.target == "relu" and len(node.args) == 1


def _union(a: Optional[Box], b: Optional[Box]) -> Optional[Box]:
    if a is None:
        return b
    if b is None:
        return a
    return min(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), max(a[3], b[3])


def _fit(start: int, length: int, size: int) -> tuple[int, int]:
    """A window of ``length`` (at most ``size``) starting as close to ``start`` as fits in [0, size)."""
    length = min(length, size)
    start = min(max(start, 0), size - length)
    return start, start + length


class IncrementalForward:
    """Forward passes of ``model`` over a sequence of image batches that change in small windows.

    ``reset(x)`` runs the model on ``x`` (B, C, H, W) and keeps the feature maps it will update;
    ``step(x, boxes)`` runs it again after ``x`` has been changed in place inside ``boxes[i]`` (a
    :data:`Box`, or None where sample ``i`` did not change) and returns the logits. ``box_size`` is
    the largest change a step will make (rows, columns): it decides, once, which nodes are updated
    window by window (those where such a change reaches at most ``max_fraction`` of the map) and
    which are computed in full. Raises ``torch.fx`` errors for models that cannot be traced.
    """

    def __init__(self, model: nn.Module, box_size: tuple[int, int], max_fraction: float = 0.5) -> None:
        self.graph_module = fx.symbolic_trace(model)
        self.modules = dict(self.graph_module.named_modules())
        self.nodes = list(self.graph_module.graph.nodes)
        self.box_size = box_size
        self.max_fraction = max_fraction
        self.windowed: set[fx.Node] = set()
        self.transient: set[fx.Node] = set()  # windowed, but only feeding one element-wise node: no kept map
        self.values: dict[fx.Node, Any] = {}
        self._shapes: dict[fx.Node, Any] = {}
        self._pending: dict[fx.Node, Tensor] = {}
        self._fresh: dict[fx.Node, Tensor] = {}  # kept node -> the windows it recomputed this step
        # conv -> (weight, bias) it runs with: its batch norm folded in, in the memory format of its input
        self._weights: dict[fx.Node, tuple[Tensor, Optional[Tensor]]] = {}
        self._absorbed: set[fx.Node] = set()  # batch norms folded into the convolution before them
        self._in_place: dict[fx.Node, int] = {}  # node computed in full -> the input it may overwrite
        self._spans: dict[fx.Node, tuple[int, int]] = {}
        self._last_use: dict[fx.Node, int] = {}
        self._usual_layout: set[fx.Node] = set()  # nodes computed in full that need the usual layout
        self._channels_last: set[fx.Node] = set()  # nodes whose maps may be channels last
        self._planned = False

    # ------------------------------------------------------------------------------------------
    @property
    def n_windowed(self) -> int:
        """How many nodes are updated window by window (0: the model gains nothing)."""
        return len(self.windowed)

    def fully_reached(self) -> list[fx.Node]:
        """The computing nodes that a ``box_size`` change reaches in full after :meth:`reset`: those
        whose whole map it can reach, and those not evaluated window by window (linear heads,
        pooling to one value, ...). Any exact evaluation of a step has to compute these nodes in
        full, whatever ``max_fraction`` is; their cost is the floor of incremental evaluation."""
        if not self._planned:
            raise RuntimeError("call reset() before fully_reached()")
        return [node for node in self.nodes if node.op not in ("placeholder", "output", "get_attr")
                and (node not in self._spans or tuple(self._spans[node]) == tuple(self._shapes[node][-2:]))]

    def _inputs(self, node: fx.Node) -> list[fx.Node]:
        return list(node.all_input_nodes)

    def _kind(self, node: fx.Node, shapes: dict[fx.Node, Any]) -> Optional[str]:
        """``"window"``, ``"pointwise"`` or None (computed in full), from the node and the shapes."""
        out = shapes.get(node)
        if not isinstance(out, torch.Size) or len(out) != 4:
            return None
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(node.args[0], fx.Node) and len(node.args) == 1 and not node.kwargs:
                if _window_of(module) is not None:
                    return "window"
                if isinstance(module, _POINTWISE_MODULES) and not (
                        isinstance(module, (nn.Dropout, nn.Dropout2d)) and module.training):
                    return "pointwise"
                if isinstance(module, nn.BatchNorm2d) and not module.training:
                    return "pointwise"
            return None
        if node.op == "call_function" and node.target in _POINTWISE_FUNCTIONS:
            pass
        elif node.op == "call_method" and node.target in _POINTWISE_METHODS:
            pass
        else:
            return None
        tensors = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
        plain = all(isinstance(a, (fx.Node, int, float, bool)) or a is None
                    for a in list(node.args) + list(node.kwargs.values()))
        if not tensors or not plain or any(shapes.get(a) != out for a in tensors):
            return None
        return "pointwise"

    def _plan(self, shapes: dict[fx.Node, Any]) -> None:
        """Choose the windowed nodes: fed only by the input or windowed nodes, and reached by a
        ``box_size`` change in at most ``max_fraction`` of their map. Also records how far such a
        change reaches in every node that could be windowed (for :meth:`fully_reached`)."""
        spans: dict[fx.Node, tuple[int, int]] = {}
        windowed: set[fx.Node] = set()
        for node in self.nodes:
            if node.op == "placeholder":
                if isinstance(shapes.get(node), torch.Size) and len(shapes[node]) == 4:
                    spans[node] = self.box_size
                continue
            kind = self._kind(node, shapes)
            inputs = self._inputs(node)
            if kind is None or not inputs or any(a not in spans for a in inputs):
                continue
            if kind == "window":
                window = _window_of(self.modules[node.target])
                h, w = spans[inputs[0]]
                span = (window.span(h, 0), window.span(w, 1))
            else:
                span = (max(spans[a][0] for a in inputs), max(spans[a][1] for a in inputs))
            size = shapes[node][-2:]
            span = (min(span[0], size[0]), min(span[1], size[1]))
            spans[node] = span  # how far a change reaches, whether or not the node is windowed
            if span[0] * span[1] <= self.max_fraction * size[0] * size[1] \
                    and all(a in windowed or a.op == "placeholder" for a in inputs):
                windowed.add(node)
        self.windowed = windowed
        self._spans = spans
        self._shapes = shapes
        # a windowed node whose only user is an element-wise node (or a 1 x 1 window) of it alone
        # hands its windows over directly (as one batch), without writing them into a kept map
        self.transient = set()
        for node in windowed:
            users = list(node.users)
            if len(users) == 1 and users[0] in windowed and self._inputs(users[0]) == [node] \
                    and self._same_boxes(users[0], shapes):
                self.transient.add(node)
        self._absorbed = {bn for _, bn in self._foldable()}
        self._plan_in_place()
        self._plan_layouts(shapes)
        order = {n: i for i, n in enumerate(self.nodes)}
        self._last_use = {}
        for node in self.nodes:
            for a in self._inputs(node):
                self._last_use[a] = max(self._last_use.get(a, -1), order[node])
        self._planned = True

    def _plan_layouts(self, shapes: dict[fx.Node, Any]) -> None:
        """Which maps may be channels last (kept maps, and what window, element-wise and adaptive pooling
        nodes computed in full make of them: these take any layout), and which nodes need the usual
        layout (all other nodes computed in full: views, reshapes, ...)."""
        self._usual_layout = {node for node in self.nodes if node not in self.windowed
                              and node.op != "placeholder" and self._kind(node, shapes) is None
                              and not (node.op == "call_module"
                                       and isinstance(self.modules[node.target], _ANY_LAYOUT_MODULES))}
        self._channels_last = self.windowed - self.transient
        for node in self.nodes:
            if node not in self.windowed and node not in self._usual_layout \
                    and any(a in self._channels_last for a in self._inputs(node)):
                self._channels_last.add(node)

    def _same_boxes(self, node: fx.Node, shapes: dict[fx.Node, Any]) -> bool:
        """Whether ``node`` changes exactly where its inputs change (element-wise, or a 1 x 1 window)."""
        kind = self._kind(node, shapes)
        return kind == "pointwise" or (kind == "window" and _is_pointlike(_window_of(self.modules[node.target])))

    def _foldable(self) -> list[tuple[fx.Node, fx.Node]]:
        """(convolution, batch norm) pairs where the batch norm (eval mode, running statistics) is the
        convolution's only user, both windowed or both computed in full: they are computed as one
        convolution (windows and full maps alike)."""
        pairs = []
        for node in self.nodes:
            if node.op != "call_module" or len(node.users) != 1 or len(node.args) != 1 or node.kwargs:
                continue
            conv = self.modules[node.target]
            if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros":
                continue
            user = next(iter(node.users))
            bn = self.modules[user.target] if user.op == "call_module" else None
            if not isinstance(bn, nn.BatchNorm2d) or bn.training or bn.running_mean is None:
                continue
            if node in self.transient or (node not in self.windowed and user not in self.windowed
                                          and _plain(conv, nn.Conv2d) and _plain(bn, nn.BatchNorm2d)):
                pairs.append((node, user))
        return pairs

    def _plan_in_place(self) -> None:
        """Element-wise nodes computed in full that may overwrite an input: a ReLU (slot -1) or a sum of
        two maps (slot: the operand overwritten), where that input is a fresh map (of a convolution,
        batch norm, ReLU or sum computed in full) of the output's shape that nothing else reads."""
        fresh_modules = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU)
        self._in_place = {}
        for node in self.nodes:
            if node in self.windowed or node.op not in ("call_module", "call_function", "call_method"):
                continue
            if _is_relu(node, self.modules):
                slots = [0] if isinstance(node.args[0], fx.Node) else []
            elif node.op == "call_function" and node.target in (operator.add, torch.add) \
                    and len(node.args) == 2 and not node.kwargs \
                    and all(isinstance(a, fx.Node) for a in node.args):
                slots = [0, 1]
            else:
                continue
            for slot in slots:
                a = node.args[slot]
                if a in self.windowed or len(a.users) != 1 or self._shapes.get(a) != self._shapes.get(node):
                    continue
                if (a.op == "call_module" and isinstance(self.modules[a.target], fresh_modules)) \
                        or a in self._in_place or _is_relu(a, self.modules) \
                        or (a.op == "call_function" and a.target in (operator.add, torch.add)):
                    self._in_place[node] = -1 if len(slots) == 1 else slot
                    break

    # ------------------------------------------------------------------------------------------
    def _full(self, node: fx.Node, env: dict[fx.Node, Any]) -> Any:
        def value(n: fx.Node) -> Any:
            """Windowed nodes compute in channels last (the layout of kept maps), all others in the
            layout the model is written for."""
            if node in self.windowed:
                return env[n].contiguous(memory_format=torch.channels_last) if n.op == "placeholder" else env[n]
            return env[n].contiguous() if node in self._usual_layout and n in self._channels_last else env[n]
        if node in self._absorbed and node.args[0] in self._weights:  # computed with its convolution
            return env[node.args[0]]
        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        weights = self._weights.get(node)
        if weights is not None:
            conv = self.modules[node.target]
            return F.conv2d(args[0], weights[0], weights[1], conv.stride, conv.padding, conv.dilation, conv.groups)
        slot = self._in_place.get(node)
        if slot is not None:
            if slot < 0:  # a ReLU
                return torch.relu_(args[0])
            a, b = args[slot], args[1 - slot]
            if isinstance(b, Tensor) and b.shape == a.shape and torch.result_type(a, b) == a.dtype:
                return a.add_(b)
        if node.op == "get_attr":
            obj: Any = self.graph_module
            for part in node.target.split("."):
                obj = getattr(obj, part)
            return obj
        return self._call(node, args, kwargs)

    def _call(self, node: fx.Node, args: tuple, kwargs: dict) -> Any:
        """Evaluate a module, function or method node on ``args``, never in place (kept maps must not
        be overwritten; in-place modules are switched off in :meth:`_run`)."""
        if node.op == "call_module":
            return self.modules[node.target](*args, **kwargs)
        if node.op == "call_function":
            if "inplace" in kwargs:
                kwargs = {**kwargs, "inplace": False}
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            method = node.target
            if method.endswith("_") and not method.endswith("__") and isinstance(args[0], Tensor):
                args = (args[0].clone(), *args[1:])
            return getattr(args[0], method)(*args[1:], **kwargs)
        raise RuntimeError(f"unexpected fx node {node.op} {node.target}")  # pragma: no cover

    def _run(self, x: Tensor, boxes: Optional[list[Optional[Box]]]) -> Tensor:
        """One pass; ``boxes`` None: everything is computed in full (and the maps are kept)."""
        inplace = [m for m in self.modules.values() if getattr(m, "inplace", False) is True]
        for m in inplace:  # kept maps must never be overwritten by an in-place activation
            m.inplace = False
        try:
            return self._pass(x, boxes)
        finally:
            for m in inplace:
                m.inplace = True

    def _pass(self, x: Tensor, boxes: Optional[list[Optional[Box]]]) -> Tensor:
        env = self.values
        self._pending, self._fresh = {}, {}
        changed: dict[fx.Node, list[Optional[Box]]] = {}
        shapes: dict[fx.Node, Any] = {}
        result = None
        for index, node in enumerate(self.nodes):
            if node.op == "placeholder":
                if node is not self.nodes[0]:
                    raise ValueError("incremental evaluation needs a model with a single input")
                env[node] = x
                changed[node] = boxes if boxes is not None else []
            elif node.op == "output":
                result = fx.node.map_arg(node.args[0], lambda n: env[n])
            elif boxes is not None and node in self.windowed:
                changed[node] = self._update(node, changed)
            else:
                env[node] = self._full(node, env)
            if not self._planned:
                shapes[node] = env[node].shape if isinstance(env.get(node), Tensor) else None
            if self._planned:
                for a in self._inputs(node):  # free full-size maps (and windows) nobody needs any more
                    if self._last_use.get(a) != index:
                        continue
                    self._fresh.pop(a, None)
                    if a not in self.windowed and a.op != "get_attr" and a.op != "placeholder":
                        env.pop(a, None)
        if not self._planned:
            self._plan(shapes)
            for node in list(env):
                if (node not in self.windowed or node in self.transient) \
                        and node.op not in ("placeholder", "get_attr"):
                    env.pop(node)
        if not isinstance(result, Tensor):
            raise ValueError("incremental evaluation needs a model that returns one tensor")
        return result

    def _update(self, node: fx.Node, changed: dict[fx.Node, list[Optional[Box]]]) -> list[Optional[Box]]:
        """Recompute the changed windows of a windowed node in its kept map; returns its changed boxes."""
        shape = self._shapes[node]
        h, w = shape[-2:]
        inputs = self._inputs(node)
        window = _window_of(self.modules[node.target]) if node.op == "call_module" else None
        n = len(changed[inputs[0]])
        boxes: list[Optional[Box]] = [None] * n
        for a in inputs:
            for i, b in enumerate(changed[a]):
                if b is None:
                    continue
                if window is not None:
                    r = window.outputs(b[0], b[1], 0, h)
                    c = window.outputs(b[2], b[3], 1, w)
                    if r[0] >= r[1] or c[0] >= c[1]:
                        continue
                    b = (r[0], r[1], c[0], c[1])
                boxes[i] = _union(boxes[i], b)
        samples = [i for i, b in enumerate(boxes) if b is not None]
        if not samples:
            return boxes
        rows = max(boxes[i][1] - boxes[i][0] for i in samples)
        cols = max(boxes[i][3] - boxes[i][2] for i in samples)
        for i in samples:  # one window size for all samples, so that they run as one batch
            boxes[i] = (*_fit(boxes[i][0], rows, h), *_fit(boxes[i][2], cols, w))
        if window is not None:
            wanted = [(*window.inputs(boxes[i][0], boxes[i][1], 0), *window.inputs(boxes[i][2], boxes[i][3], 1))
                      for i in samples]
            crops = self._windows(inputs[0], samples, wanted, changed, window.pad_value)
            new = _apply_window(self.modules[node.target], crops, self._weights.get(node))
        elif node in self._absorbed:  # its convolution's windows already include it
            new = self._pending.pop(inputs[0])
        elif _is_relu(node, self.modules) and inputs[0] in self._pending:  # a fresh tensor: in place
            new = torch.relu_(self._pending.pop(inputs[0]))
        else:
            wanted = [boxes[i] for i in samples]
            used: list[Tensor] = []

            def stacked(a: fx.Node) -> Tensor:
                used.append(self._windows(a, samples, wanted, changed, 0.0))
                return used[-1]
            new = self._call(node, fx.node.map_arg(node.args, stacked), fx.node.map_arg(node.kwargs, stacked))
            if node in self.transient and any(new is t for t in used):  # pragma: no cover - identity
                new = new.clone()  # a pending window may be changed in place: never share one
        if node in self.transient:
            self._pending[node] = new
            return boxes
        self._fresh[node] = new
        out = self.values[node]
        if new is out:  # pragma: no cover - an identity node on a kept map
            return boxes
        for j, i in enumerate(samples):
            r0, r1, c0, c1 = boxes[i]
            out[i, :, r0:r1, c0:c1] = new[j]
        return boxes

    def _windows(self, a: fx.Node, samples: list[int], wanted: list[Box],
                 changed: dict[fx.Node, list[Optional[Box]]], pad_value: float) -> Tensor:
        """The windows ``wanted[j]`` of sample ``samples[j]`` of node ``a``'s map, as one batch: the
        windows ``a`` handed over (transient), those it just recomputed where they are the ones
        wanted, or else crops of its kept map."""
        if a in self._pending:  # a transient input: its windows are the ones wanted
            return self._pending.pop(a)
        fresh = self._fresh.get(a)
        if fresh is not None:
            have = [(i, b) for i, b in enumerate(changed[a]) if b is not None]
            if [i for i, _ in have] == samples and [b for _, b in have] == wanted:
                return fresh
        return _crops(self.values[a], samples, wanted, pad_value)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, x: Tensor) -> Tensor:
        """Logits of ``x``; keeps the feature maps that later steps update."""
        self.values = {}
        planned = self._planned
        if planned:  # weights for this pass (the model's weights may have changed since the last)
            self._weights = self._conv_weights()
        logits = self._run(x, None)
        if not planned:
            self._weights = self._conv_weights()
        self._own_storage([n for n in self.nodes if n in self.windowed and n not in self.transient])
        return logits

    def _conv_weights(self) -> dict[fx.Node, tuple[Tensor, Optional[Tensor]]]:
        """(weight, bias) of every 2-d convolution with zero padding and one input, from the current
        parameters: with the batch norm of :meth:`_foldable` folded in, and channels last where its
        input is (convolutions would otherwise convert the weight at every call)."""
        bns = dict(self._foldable())
        weights = {}
        for node in self.nodes:
            conv = self.modules.get(node.target) if node.op == "call_module" else None
            if not isinstance(conv, nn.Conv2d) or conv.padding_mode != "zeros" or len(node.args) != 1 \
                    or node.kwargs or not isinstance(node.args[0], fx.Node) \
                    or (node not in self.windowed and not _plain(conv, nn.Conv2d)):
                continue
            weight, bias = _fold(conv, self.modules[bns[node].target]) if node in bns else (conv.weight, conv.bias)
            last = node in self.windowed or node.args[0] in self._channels_last
            weights[node] = (weight.contiguous(memory_format=torch.channels_last if last else torch.contiguous_format),
                             bias)
        return weights

    def _own_storage(self, kept: list[fx.Node]) -> None:
        """Give every kept map its own channels-last storage (a map updated in place must not be a view
        of the input, of another map or of itself elsewhere; its windows are copied fastest with the
        channels last); maps that already have one are kept as they are."""
        seen = {self.values[self.nodes[0]].untyped_storage().data_ptr()}
        for node in kept:
            value = self.values[node]
            ptr = value.untyped_storage().data_ptr()
            if value._base is not None or ptr in seen \
                    or not value.is_contiguous(memory_format=torch.channels_last):
                value = value.contiguous(memory_format=torch.channels_last)
                if value.untyped_storage().data_ptr() == ptr:
                    value = value.clone(memory_format=torch.channels_last)
                ptr = value.untyped_storage().data_ptr()
            self.values[node] = value
            seen.add(ptr)

    @torch.no_grad()
    def step(self, x: Tensor, boxes: list[Optional[Box]]) -> Tensor:
        """Logits of ``x`` (the tensor given to :meth:`reset`, changed in place inside ``boxes``)."""
        if not self._planned:
            raise RuntimeError("call reset() before step()")
        if len(boxes) != x.shape[0]:
            raise ValueError(f"{len(boxes)} boxes for a batch of {x.shape[0]}")
        return self._run(x, boxes)
