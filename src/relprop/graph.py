"""Trace a model into an ordered graph of typed operations.

The model is traced with ``torch.fx``; every node that carries a tensor is mapped onto one of
relprop's canonical operation kinds (see :mod:`relprop.ops`). Anything that cannot be mapped raises
:class:`UnsupportedOperationError` naming the operation and where it sits in the model.
"""

from __future__ import annotations

import contextlib
import inspect
import operator
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from . import ops
from .rewrite import attention_bias, decompose_attention, split_into_selections


class UnsupportedOperationError(ValueError):
    """An operation in the model has no relevance rule."""


@dataclass
class Node:
    """One tensor operation of the traced model, in execution order.

    ``inputs`` are positions of producer nodes in the graph (``-1`` for the model input) for each
    tensor argument of the operation; ``op`` computes the forward value and owns the
    non-parametric relevance rule; ``name`` is the module path (or fx name for functional calls).
    """

    name: str
    op: ops.Op
    inputs: list[int]
    nonnegative: bool = False
    users: list[int] = field(default_factory=list)
    scopes: tuple[str, ...] = ()  # paths of the modules the node runs inside, outermost first


@dataclass
class Graph:
    """Nodes in execution order; node 0 is the model input, the last node is the model output."""

    nodes: list[Node]
    fx_graph: fx.Graph
    position: dict[fx.Node, int]

    def affine_positions(self) -> list[int]:
        """Positions of affine (linear and convolution) nodes in execution order."""
        return [i for i, n in enumerate(self.nodes) if isinstance(n.op, ops.Affine)]

    def find(self, name: str) -> int:
        """Position of the node called ``name``.

        ``name`` is a node name (module path of a layer, ``path:k`` for the k-th reuse of a module,
        or the fx name of a functional call such as ``add_3``), or the path of a container module
        (``"layer4"``, ``"features"``), which stands for the last node that runs inside it: its output.
        """
        for i, node in enumerate(self.nodes):
            if node.name == name:
                return i
        inside = [i for i, node in enumerate(self.nodes) if name in node.scopes]
        if inside:
            return inside[-1]
        known = ", ".join(n.name for n in self.nodes[1:])
        raise ValueError(f"no node or module named {name!r} in the traced model; known nodes: {known}")


_LEAF_TYPES: tuple[type, ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Sigmoid,
    nn.Hardsigmoid, nn.Softplus, nn.Mish,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d,
    nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity, nn.Flatten,
    nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d,
    nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d, nn.LayerNorm, nn.Softmax,
    nn.StochasticDepth if hasattr(nn, "StochasticDepth") else nn.Identity,
)


class _Tracer(fx.Tracer):
    """fx tracer that keeps torch.nn built-ins and torchvision's StochasticDepth as leaves, and
    refuses custom ``torch.autograd.Function`` calls (fx would inline their forward, losing their
    backward)."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if (type(m).__name__ == "StochasticDepth" or getattr(type(m), "traced_as_leaf", False)
                or _registered_op(m, module_qualified_name) is not None):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def trace(self, root: Any, concrete_args: Any = None) -> fx.Graph:  # type: ignore[override]
        with _refusing_autograd_functions(self):
            return super().trace(root, concrete_args)


#: serialises tracing: fx patches ``nn.Module.__call__`` globally while it traces, and so do we
#: ``torch.autograd.Function.apply``; two interleaved traces would restore each other's patches
_TRACE_LOCK = threading.RLock()


def _holds_proxy(value: Any, tracer: fx.Tracer) -> bool:
    return any(isinstance(v, fx.Proxy) and v.tracer is tracer for v in _flatten(value))


@contextlib.contextmanager
def _refusing_autograd_functions(tracer: fx.Tracer) -> Iterator[None]:
    """While ``tracer`` traces, a ``Function.apply`` on its proxies raises; other calls (other
    threads, plain tensors) are delegated unchanged."""
    original = torch.autograd.Function.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        if _holds_proxy((args, kwargs), tracer):
            where = tracer.scope.module_path or "the model's own forward"
            raise UnsupportedOperationError(
                f"custom autograd function {cls.__module__}.{cls.__qualname__} is called in module "
                f"{where!r}: relprop cannot trace its backward (torch.fx would inline its forward), "
                "so it cannot explain a model that uses one"
            )
        return original.__get__(None, cls)(*args, **kwargs)

    torch.autograd.Function.apply = classmethod(apply)  # type: ignore[assignment, method-assign]
    try:
        yield
    finally:
        torch.autograd.Function.apply = original  # type: ignore[method-assign]


_ACTIVATION_FUNCS: dict[Any, bool] = {
    # function -> output is non-negative
    F.relu: True, torch.relu: True, F.relu6: True, F.hardtanh: False, F.silu: False,
    F.hardswish: False, F.gelu: False, F.leaky_relu: False, F.elu: False, torch.tanh: False,
    torch.sigmoid: True, F.sigmoid: True, F.hardsigmoid: True, F.softplus: True, F.mish: False,
    torch.relu_: True, F.relu_: True,
}
_ACTIVATION_METHODS = {"relu": True, "relu_": True, "sigmoid": True, "tanh": False}
_NONNEG_MODULES = (nn.ReLU, nn.ReLU6, nn.Sigmoid, nn.Hardsigmoid, nn.Softplus)
_IDENTITY_FUNCS = {F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout}
_IDENTITY_METHODS = {"contiguous", "clone", "detach", "float", "double", "to", "type_as"}
_RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "roll",
                    "swapaxes", "swapdims", "movedim"}


#: module classes that users registered as operations of their own kind, with their op factory
_LEAF_OPS: dict[type, type[ops.Op]] = {}
_LEAF_VERSION = [0]


def register_module(module_class: type, op_class: type[ops.Op]) -> None:
    """Trace instances of ``module_class`` as one operation, ``op_class(module)``: a subclass of
    :class:`relprop.ops.Op` whose ``kind`` names the operation kind its rules apply to (a new kind,
    or one of :data:`relprop.ops.KINDS`). A new kind has no default rule: every composite used with
    it gives it one (docs/extending.md). Models traced before are traced again."""
    if not (isinstance(module_class, type) and issubclass(module_class, nn.Module)):
        raise ValueError(f"register_module needs a torch.nn.Module subclass, got {module_class!r}")
    if not (isinstance(op_class, type) and issubclass(op_class, ops.Op)):
        raise ValueError(f"register_module needs a relprop.ops.Op subclass, got {op_class!r}")
    with _TRACE_LOCK:
        _LEAF_OPS[module_class] = op_class
        _LEAF_VERSION[0] += 1


def known_kinds() -> tuple[str, ...]:
    """The built-in operation kinds and those of registered modules."""
    return ops.KINDS + tuple(sorted({c.kind for c in _LEAF_OPS.values()} - set(ops.KINDS)))


def unregister_module(module_class: type) -> None:
    """Undo :func:`register_module` (models traced before are traced again)."""
    with _TRACE_LOCK:
        if _LEAF_OPS.pop(module_class, None) is not None:
            _LEAF_VERSION[0] += 1


def registrations() -> int:
    """A counter that changes with every (un)registration: part of the key of cached traces."""
    return _LEAF_VERSION[0]


def _registered_op(module: nn.Module, path: str) -> ops.Op | None:
    op_class = next((c for cls, c in _LEAF_OPS.items() if isinstance(module, cls)), None)
    if op_class is None:
        return None
    op = op_class(module)  # type: ignore[call-arg]
    op.path = path
    return op


def _module_op(module: nn.Module, path: str) -> tuple[ops.Op, bool | None]:
    """Map a leaf module onto an op; the flag is True/False for activations (non-negative output)."""
    registered = _registered_op(module, path)
    if registered is not None:
        return registered, None
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return ops.Affine.from_module(module, path), None
    if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        return ops.BatchNorm(module), None
    if isinstance(module, _NONNEG_MODULES):
        return ops.Activation(module), True
    if isinstance(module, (nn.SiLU, nn.Hardswish, nn.GELU, nn.LeakyReLU, nn.ELU, nn.Tanh, nn.Mish)):
        return ops.Activation(module), False
    if isinstance(module, (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d,
                           nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)):
        return ops.MaxPool(module), None
    if isinstance(module, (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
                           nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)):
        return ops.AvgPool(module), None
    if isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                           nn.Identity)) or type(module).__name__ == "StochasticDepth":
        return ops.Identity(), None
    if isinstance(module, nn.Flatten):
        return ops.Reshape(module), None
    if isinstance(module, nn.LayerNorm):
        return ops.LayerNorm(module), None
    if isinstance(module, nn.Softmax):
        return ops.Softmax(module), True
    if isinstance(module, nn.Upsample):  # also UpsamplingBilinear2d and UpsamplingNearest2d
        return ops.Interpolate(module), None
    if isinstance(module, (nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d, nn.ConstantPad1d,
                           nn.ConstantPad2d, nn.ConstantPad3d)):
        return ops.Pad(module, tuple(module.padding), float(module.value)), None
    raise UnsupportedOperationError(
        f"unsupported layer {type(module).__name__} at {path!r}: relprop has no relevance rule for it"
    )


def _where(node: fx.Node) -> str:
    """Human-readable location of an fx node: its enclosing module path when known."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        path = path[0] if isinstance(path, tuple) else path
        return f"node {node.name!r} in module {path!r}"
    return f"node {node.name!r}"


def trace(model: nn.Module, output: str | int | None = None) -> Graph:
    """Trace ``model`` into a :class:`Graph` of typed operations. The model is traced as it is
    (relprop traces an eval-mode copy, see :func:`relprop.structure.inference_copy`).

    ``output`` names the entry of a dict (``ModelOutput``) or the position in a tuple that the graph
    ends in, for models with several outputs (torchvision's segmentation models return
    ``{"out": ..., "aux": ...}``); the other entries are computed but receive no relevance.
    """
    tracer = _Tracer()
    try:
        with _TRACE_LOCK:
            fx_graph = tracer.trace(model, concrete_args=_optional_arguments(model))
            _drop_specialised_arguments(fx_graph)
    except UnsupportedOperationError:
        raise
    except Exception as error:  # fx raises many types; make the failure explicit
        raise UnsupportedOperationError(
            f"could not trace {type(model).__name__} with torch.fx ({type(error).__name__}: {error}); "
            "relprop needs a model without data-dependent control flow"
        ) from error
    modules = dict(model.named_modules())
    decompose_attention(fx_graph)
    split_into_selections(fx_graph)
    _redirect_uses_after_in_place_ops(fx_graph, modules)
    if output is not None:
        _select_output(next(n for n in fx_graph.nodes if n.op == "output"), output, type(model).__name__)
        _drop_unused(fx_graph)
    constants = _read_constants(fx_graph, model)
    nodes: list[Node] = []
    position: dict[fx.Node, int] = {}
    output_seen = False
    names_seen: dict[str, int] = {}

    for node in fx_graph.nodes:
        if node.op == "placeholder":
            if nodes:
                raise UnsupportedOperationError(
                    f"models with several inputs are not supported (extra input {node.name!r})"
                )
            nodes.append(Node(name="input", op=ops.Input(), inputs=[]))
            position[node] = 0
            continue
        if node.op == "output":
            result = node.args[0] if output is not None else _select_output(node, None, type(model).__name__)
            if not isinstance(result, fx.Node) or result not in position:
                kind = type(result).__name__ if not isinstance(result, fx.Node) else "a value computed without the input"
                raise UnsupportedOperationError(
                    "forward must return one tensor of shape (batch, classes) (the class scores), "
                    f"but {type(model).__name__}.forward returns {kind}; for models with several outputs "
                    "pass target=relprop.targets.Output(name, ...)"
                )
            nodes.append(Node(name="output", op=ops.Identity(), inputs=[position[result]]))
            position[node] = len(nodes) - 1
            output_seen = True
            continue
        op, nonneg_flag = _classify(node, modules, position)
        read = _constants_read(node, constants)
        if op is None:  # a non-tensor helper (shape arithmetic) or a constant: needs no relevance
            if read:
                constants[node] = read
            continue
        if read and op.kind not in _TAKE_CONSTANTS:
            raise UnsupportedOperationError(
                f"{_where(node)} reads the parameter or buffer {read[0]!r} directly; "
                "relprop needs parameters to live in supported layers"
            )
        tensor_args = _tensor_args(node, position)
        if not tensor_args:
            raise UnsupportedOperationError(f"{_where(node)} creates a tensor from no input: {node.target}")
        idx = len(nodes)
        name = str(node.target if node.op == "call_module" else node.name)
        uses = names_seen.get(name, 0)
        names_seen[name] = uses + 1
        if uses:
            name = f"{name}:{uses}"
        stack = node.meta.get("nn_module_stack") or {}
        scopes = tuple(v[0] if isinstance(v, tuple) else str(k) for k, v in stack.items())
        nodes.append(Node(name=name, op=op, inputs=[position[a] for a in tensor_args], scopes=scopes))
        op.bind(node, tensor_args)
        if node.op == "call_module" and op.module is None:
            op.set_module(modules[node.target])
        position[node] = idx
        if nonneg_flag is not None:
            nodes[idx].nonnegative = nonneg_flag
        else:
            nodes[idx].nonnegative = (op.keeps_sign and _constants_keep_sign(node, op, position)
                                      and all(nodes[i].nonnegative for i in nodes[idx].inputs))
    if not output_seen:
        raise UnsupportedOperationError("traced graph has no output")
    for i, n in enumerate(nodes):
        for j in n.inputs:
            nodes[j].users.append(i)
    _mark_gates(nodes)
    _mark_attention(nodes)
    return Graph(nodes, fx_graph, position)


def _optional_arguments(model: nn.Module) -> dict[str, Any] | None:
    """The arguments of ``model.forward`` after the input that have defaults (timm's
    ``forward(x, attn_mask=None, is_causal=False)``), traced at their default values."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    optional = {p.name: p.default for p in parameters[1:]
                if p.default is not inspect.Parameter.empty
                and p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return optional or None


def _drop_specialised_arguments(fx_graph: fx.Graph) -> None:
    """Remove the placeholders of the arguments traced at their defaults (and the guards fx adds
    that check their values); the graph keeps one input."""
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    for node in placeholders[1:]:
        dependent = {node}
        for later in fx_graph.nodes:
            if any(a in dependent for a in later.all_input_nodes):
                dependent.add(later)
        if any(n.op == "output" for n in dependent):
            continue  # used by the result: left for the trace to refuse as a second input
        for later in reversed(list(fx_graph.nodes)):
            if later in dependent:
                fx_graph.erase_node(later)


#: the operation kinds that take constants (parameters and buffers read in a forward, and values
#: computed from them alone) besides their tensor inputs: a sum with a constant term (absorbing
#: its share like a bias), a concatenation with constant entries (which receive nothing), a layer
#: norm with its weight and bias, and a product with or division by a constant factor (a learned
#: per-channel scale such as ConvNeXt's layer scale: relevance passes to the tensor factor)
_TAKE_CONSTANTS = ("add", "concat", "layernorm", "multiply", "scale")


@dataclass(frozen=True)
class ConstantRef:
    """A parameter or buffer that the traced model reads in its own forward (``self.class_token``),
    read from the traced module tree whenever the graph runs (so in-place updates are seen)."""

    root: nn.Module
    target: str

    def __call__(self) -> torch.Tensor:
        value: Any = self.root
        for name in self.target.split("."):
            value = getattr(value, name)
        return value.detach() if isinstance(value, torch.Tensor) else value


def read_constant(ref: ConstantRef) -> torch.Tensor:
    """The current value of a parameter or buffer read in a forward (a node of the traced graph)."""
    return ref()


def _read_constants(fx_graph: fx.Graph, model: nn.Module) -> dict[fx.Node, list[str]]:
    """Replace each ``get_attr`` node by a call that reads the value when the graph runs; returns
    the new nodes with the names they read."""
    read: dict[fx.Node, list[str]] = {}
    for node in list(fx_graph.nodes):
        if node.op != "get_attr":
            continue
        with fx_graph.inserting_before(node):
            reader = fx_graph.call_function(read_constant, (ConstantRef(model, str(node.target)),))
        reader.meta = dict(node.meta)
        node.replace_all_uses_with(reader)
        fx_graph.erase_node(node)
        read[reader] = [str(node.target)]
    return read


def _constants_read(node: fx.Node, constants: dict[fx.Node, list[str]]) -> list[str]:
    """The parameters and buffers that the arguments of ``node`` were computed from."""
    names: list[str] = []
    for a in _flatten((node.args, node.kwargs)):
        if isinstance(a, fx.Node) and a in constants:
            names += [n for n in constants[a] if n not in names]
    return names


def _mark_gates(nodes: list[Node]) -> None:
    """For each product of two tensors (:class:`relprop.ops.Multiply`), which factor is a gate:
    produced by a sigmoid or a hard-sigmoid (as in squeeze-excitation)."""
    gate_kinds = (torch.sigmoid, "sigmoid", F.sigmoid, F.hardsigmoid)
    for node in nodes:
        if not isinstance(node.op, ops.Multiply) or len(node.inputs) != 2:
            continue
        found = None
        for k, i in enumerate(node.inputs):
            producer = nodes[i].op
            if isinstance(producer, ops.Activation) and isinstance(producer.module, (nn.Sigmoid, nn.Hardsigmoid)):
                found = k
            if isinstance(producer, ops.FunctionalActivation) and producer.activation in gate_kinds:
                found = k
        node.op.gate = found


def _mark_attention(nodes: list[Node]) -> None:
    """For each product of two tensors (:class:`relprop.ops.MatMul`), which factor holds attention
    probabilities: the output of a softmax, possibly through identities (dropout in eval mode)."""
    for node in nodes:
        if not isinstance(node.op, ops.MatMul) or len(node.inputs) != 2:
            continue
        found = None
        for k, i in enumerate(node.inputs):
            while nodes[i].op.kind == "identity" and nodes[i].inputs:
                i = nodes[i].inputs[0]
            if isinstance(nodes[i].op, ops.Softmax):
                found = k if found is None else None  # both factors: no single attention factor
        node.op.attention = found


def _select_output(node: fx.Node, output: str | int | None, model_name: str) -> Any:
    """The value the graph ends in: the model's result, or its entry ``output`` (a dict key or a
    tuple position); the result's other entries are left out of the graph's output."""
    result = node.args[0]
    if output is None:
        if isinstance(result, (dict, tuple, list)):
            kind = f"a {'dict' if isinstance(result, dict) else type(result).__name__} with entries {_entry_names(result)}"
            raise UnsupportedOperationError(
                "forward must return one tensor of shape (batch, classes); for models with several "
                f"outputs pass target=relprop.targets.Output(name, ...) ({model_name}.forward returns {kind})"
            )
        return result
    if isinstance(result, dict):
        if output not in result:
            raise ValueError(f"Output({output!r}): {model_name}.forward returns no entry {output!r}; "
                             f"its entries are {_entry_names(result)}")
    elif isinstance(result, (tuple, list)):
        if isinstance(output, bool) or not isinstance(output, int) or not -len(result) <= output < len(result):
            raise ValueError(f"Output({output!r}): {model_name}.forward returns a {type(result).__name__} "
                             f"of {len(result)} entries; name one by its position 0..{len(result) - 1}")
    else:
        raise ValueError(f"Output({output!r}) names an entry of the model's output, but "
                         f"{model_name}.forward returns one tensor; pass the target without Output")
    selected = result[output]
    node.args = (selected,)
    return selected


def _drop_unused(fx_graph: fx.Graph) -> None:
    """Remove the nodes the output does not depend on (the unselected entries, e.g. an auxiliary
    head), so that they are not computed and rule maps by position (``last(1)``) see the selected
    head only. Runs after :func:`_redirect_uses_after_in_place_ops`, so in-place ops that later
    readers depend on are kept."""
    nodes = list(fx_graph.nodes)
    needed = {nodes[-1]}
    for node in reversed(nodes):
        if node in needed:
            needed.update(node.all_input_nodes)
    for node in reversed(nodes):
        if node not in needed and node.op != "placeholder":
            fx_graph.erase_node(node)


def _entry_names(result: dict | tuple | list) -> str:
    if isinstance(result, dict):
        return ", ".join(repr(k) for k in result)
    return f"0..{len(result) - 1}"


def _mutates_first_argument(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` writes its result into its first argument (``x.mul_(g)``, inplace=True)."""
    if node.op == "call_method":
        return node.target.endswith("_") and not node.target.startswith("__")
    if node.op == "call_module":
        return bool(getattr(modules.get(node.target), "inplace", False))
    if node.op == "call_function":
        return bool(node.kwargs.get("inplace", False)) or node.target in (
            operator.iadd, operator.isub, operator.imul, operator.itruediv)
    return False


def _redirect_uses_after_in_place_ops(fx_graph: fx.Graph, modules: dict[str, nn.Module]) -> None:
    """Make every later reader of a tensor changed in place read the in-place op's result.

    fx records ``out.mul_(gate)`` as a node whose result may go unused while later nodes read
    ``out``; the model itself reads the changed values. relprop computes every op out of place, so
    the later readers are pointed at the in-place node to explain what the model computes.
    """
    order = {n: i for i, n in enumerate(fx_graph.nodes)}
    for node in list(fx_graph.nodes):
        if not node.args or not isinstance(node.args[0], fx.Node):
            continue
        if not _mutates_first_argument(node, modules):
            continue
        changed = node.args[0]
        for user in list(changed.users):
            if user is not node and order[user] > order[node]:
                user.replace_input_with(changed, node)


def _flatten(args: Any) -> list[Any]:
    out: list[Any] = []
    if isinstance(args, (list, tuple)):
        for a in args:
            out.extend(_flatten(a))
    elif isinstance(args, dict):
        for a in args.values():
            out.extend(_flatten(a))
    else:
        out.append(args)
    return out


def _tensor_args(node: fx.Node, position: dict[fx.Node, int]) -> list[fx.Node]:
    return [a for a in _flatten((node.args, node.kwargs)) if isinstance(a, fx.Node) and a in position]


#: functions of other libraries that read only the size, dtype and device of one tensor argument
#: (its position) and compute a constant: timm's additive attention mask from the scores' dtype
_METADATA_ONLY = {"timm.layers.attention.resolve_self_attn_mask": 1}
#: functions of other libraries that add their tensor arguments (timm's ``maybe_add_mask(scores,
#: mask)``: the scores plus the mask, or the scores alone without one)
_ADDITIONS = {"timm.layers.attention.maybe_add_mask"}


def _qualified(target: Any) -> str:
    return f"{getattr(target, '__module__', '')}.{getattr(target, '__qualname__', '')}"


def _classify(node: fx.Node, modules: dict[str, nn.Module],
              position: dict[fx.Node, int]) -> tuple[ops.Op | None, bool | None]:
    """Map one fx node onto an op. Returns (None, None) for nodes that carry no tensor."""
    if node.op == "call_module":
        return _module_op(modules[node.target], node.target)
    if not _tensor_args(node, position):
        return None, None  # e.g. arithmetic on sizes
    target = node.target
    if node.op == "call_function":
        metadata_only = _METADATA_ONLY.get(_qualified(target))
        if metadata_only is not None:
            others = [a for k, a in enumerate(node.args) if k != metadata_only] + list(node.kwargs.values())
            if not any(isinstance(a, fx.Node) and a in position for a in _flatten(others)):
                return None, None  # a constant computed from a tensor's size, dtype and device
        if target in _ACTIVATION_FUNCS:
            return ops.FunctionalActivation(target), _ACTIVATION_FUNCS[target]
        if target in _IDENTITY_FUNCS:
            return ops.Identity(), None
        if target in (operator.add, operator.iadd, torch.add) or _qualified(target) in _ADDITIONS:
            return ops.Add(), None
        if target in (operator.mul, operator.imul, torch.mul):
            return ops.Multiply(), None
        if target in (operator.truediv, torch.div) and _is_constant(node.args[1], position):
            return ops.ScaleByConstant(), None
        if target in (operator.sub, torch.sub):  # a - b of two tensors can be negative
            return ops.Add(), None if _is_constant(node.args[1], position) else False
        if target in (torch.cat, torch.concat):
            return ops.Concat(), None
        if target in (torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                      torch.transpose, torch.roll, torch.swapaxes, torch.swapdims, torch.movedim):
            return ops.Reshape(None), None
        if target in (operator.getitem, torch.select, torch.narrow):
            return ops.GetItem(), None
        if target in (F.max_pool1d, F.max_pool2d, F.max_pool3d, F.adaptive_max_pool1d,
                      F.adaptive_max_pool2d, F.adaptive_max_pool3d):
            return ops.MaxPool(None), None
        if target in (F.avg_pool1d, F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d,
                      F.adaptive_avg_pool2d, F.adaptive_avg_pool3d, torch.mean):
            return ops.AvgPool(None), None
        if target is F.pad:
            return ops.Pad(None, None, None), None
        if target in (F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest):
            return ops.Interpolate(None), None
        if target is getattr or target is read_constant:
            return None, None
        if target is F.normalize:
            return _single_input(ops.Normalize(), node, position), None
        if target in (F.layer_norm,):
            return _single_input(ops.LayerNorm(None), node, position), None
        if target in (F.softmax, torch.softmax):
            return _single_input(ops.Softmax(None), node, position), True
        if target in (torch.matmul, operator.matmul, torch.bmm):
            return _two_factors(node, position), None
        if target is torch.einsum:  # a contraction of two tensors is a product like a @ b
            return _two_factors(node, position, "einsum"), None
        if target is attention_bias:
            raise UnsupportedOperationError(
                f"unsupported attention mask at {_where(node)}: the mask of scaled_dot_product_attention "
                "is computed from the input; relprop adds a mask as a constant (from parameters, buffers "
                "or sizes only)")
    if node.op == "call_method":
        if target in _ACTIVATION_METHODS:
            return ops.FunctionalActivation(target), _ACTIVATION_METHODS[target]
        if target in _IDENTITY_METHODS:
            return ops.Identity(), None
        if target in _RESHAPE_METHODS:
            return ops.Reshape(None), None
        if target in ("add", "add_"):
            return ops.Add(), None
        if target in ("mul", "mul_"):
            return ops.Multiply(), None
        if target == "mean":
            return ops.AvgPool(None), None
        if target in ("size", "dim"):
            return None, None
        if target in ("select", "narrow"):
            return ops.GetItem(), None
        if target == "softmax":
            return _single_input(ops.Softmax(None), node, position), True
        if target in ("matmul", "bmm"):
            return _two_factors(node, position), None
    name = getattr(target, "__name__", str(target))
    raise UnsupportedOperationError(
        f"unsupported operation {name!r} at {_where(node)}: relprop has no relevance rule for it"
    )


def _single_input(op: ops.Op, node: fx.Node, position: dict[fx.Node, int]) -> ops.Op:
    """``op`` if ``node`` has one tensor input, its first argument (e.g. a layer norm whose weight
    is not computed from the input); else a clear error."""
    args = _tensor_args(node, position)
    if len(args) != 1 or not node.args or node.args[0] is not args[0]:
        raise UnsupportedOperationError(
            f"unsupported operation {op.kind} at {_where(node)}: relprop supports it with one tensor "
            "input (its other arguments constant)")
    return op


def _two_factors(node: fx.Node, position: dict[fx.Node, int], name: str = "matmul") -> ops.Op:
    """A matrix product (or an einsum contraction) of two tensors computed from the input; else a
    clear error."""
    if len(_tensor_args(node, position)) != 2:
        raise UnsupportedOperationError(
            f"unsupported operation {name} at {_where(node)} with a constant factor or other than two "
            "operands: relprop explains products of two tensors computed from the input; put a constant "
            "weight into nn.Linear")
    return ops.MatMul()


def _constants_keep_sign(node: fx.Node, op: ops.Op, position: dict[fx.Node, int]) -> bool:
    """Whether the constant operands of an arithmetic node keep non-negative inputs non-negative.

    ``x + c`` and ``x * c`` do so only for a number ``c >= 0``, ``x - c`` only for ``c <= 0`` and
    ``x / c`` only for ``c > 0``; a tensor constant (a buffer, a parameter) has no known sign.
    """
    if not isinstance(op, (ops.Add, ops.Multiply, ops.ScaleByConstant)):
        return True
    constants = [a for a in (*node.args, *node.kwargs.values()) if _is_constant(a, position)]
    if any(not isinstance(c, (int, float)) or isinstance(c, bool) for c in constants):
        return False
    name = getattr(node.target, "__name__", node.target)
    if name in ("sub", "sub_", "isub"):
        return all(c <= 0 for c in constants)
    if name in ("truediv", "div", "div_", "itruediv"):
        return all(c > 0 for c in constants)
    return all(c >= 0 for c in constants)


def _is_constant(arg: Any, position: dict[fx.Node, int]) -> bool:
    return not (isinstance(arg, fx.Node) and arg in position)


def describe(graph: Graph) -> str:
    """One line per node: position, name, op kind and producers (for debugging rule maps)."""
    lines = []
    for i, n in enumerate(graph.nodes):
        lines.append(f"{i:4d} {n.name:40s} {type(n.op).__name__:20s} <- {n.inputs}")
    return "\n".join(lines)


__all__ = ["Graph", "Node", "UnsupportedOperationError", "trace", "describe"]
