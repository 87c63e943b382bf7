"""Canonical operation kinds of a traced model and their non-parametric relevance rules.

Each op evaluates its forward value from already-evaluated arguments and, for the backward pass,
maps the relevance at its output onto its tensor inputs. Affine ops (linear and convolution layers,
with any folded batch norm) delegate their relevance to a rule from :mod:`relprop.rules`.
Defaults follow zennit: winner-take-all max-pool, proportional ("Norm") average pooling and sums,
pass-through activations (paper 003, Sec. II).
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

Tensor = torch.Tensor

#: stabiliser of the proportional rules for pooling and sums (as zennit's ``Norm``)
NORM_EPSILON = 1e-6


def stabilize(z: Tensor, epsilon: float) -> Tensor:
    """``z + epsilon * sign(z)`` with ``sign(0) = +1`` (paper 003, Eq. 2)."""
    if epsilon == 0:
        return z
    return _signed_epsilon(z, epsilon).add_(z)


def _signed_epsilon(z: Tensor, epsilon: float) -> Tensor:
    plus = torch.tensor(epsilon, dtype=z.dtype, device=z.device)
    return torch.where(z >= 0, plus, -plus)


def normalize(r: Tensor, z: Tensor, epsilon: float) -> Tensor:
    """``r / stabilize(z, epsilon)``; with ``epsilon = 0``, ``r / z`` with ``0/0 := 0``."""
    if epsilon == 0:
        return safe_divide(r, z)
    denominator = stabilize(z, epsilon)
    if denominator.shape != r.shape or denominator.dtype != r.dtype:
        return r / denominator
    return torch.div(r, denominator, out=denominator)


def safe_divide(numerator: Tensor, denominator: Tensor) -> Tensor:
    """``numerator / denominator`` with 0 where the denominator is exactly 0 (LRP-0 convention)."""
    zero = denominator == 0
    if torch.is_grad_enabled() and (numerator.requires_grad or denominator.requires_grad):
        # keep the gradient finite where the denominator is 0
        return torch.where(zero, torch.zeros((), dtype=numerator.dtype, device=numerator.device),
                           numerator / torch.where(zero, torch.ones_like(denominator), denominator))
    return torch.div(numerator, denominator).masked_fill_(zero, 0)


def vjp(fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """Vector-Jacobian product ``v^T d fn(x) / dx`` for ops that are linear in ``x`` (or piecewise)."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        out = fn(leaf)
    return torch.autograd.grad(out, leaf, v)[0]


def reduce_to_shape(r: Tensor, shape: torch.Size) -> Tensor:
    """Sum relevance over broadcast dimensions so that it has ``shape``."""
    if r.shape == shape:
        return r
    while r.dim() > len(shape):
        r = r.sum(0)
    dims = [i for i, (a, b) in enumerate(zip(r.shape, shape)) if b == 1 and a != 1]
    return r.sum(dim=dims, keepdim=True) if dims else r


class Op:
    """Base class: forward evaluation of an fx node and the relevance rule of its kind."""

    #: output is non-negative whenever all tensor inputs are
    keeps_sign = False
    fx_node: fx.Node
    module: nn.Module | None = None

    def bind(self, node: fx.Node, tensor_args: Sequence[fx.Node]) -> None:
        """Attach the fx node; in-place targets are replaced by their out-of-place twins, because
        the backward pass needs every cached value as it was (e.g. a pre-activation)."""
        self.fx_node = node
        self.tensor_arg_nodes = list(tensor_args)
        self.target = _OUT_OF_PLACE.get(node.target, node.target)
        self.out_of_place_kwargs = "inplace" in node.kwargs

    def set_module(self, module: nn.Module) -> None:
        """Use ``module`` for the forward, as an out-of-place copy if it works in place."""
        if getattr(module, "inplace", False):
            module = copy.copy(module)
            module.inplace = False
        self.module = module

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        node = self.fx_node
        if self.out_of_place_kwargs:
            kwargs = {**kwargs, "inplace": False}
        if node.op == "call_module":  # the module's own forward: no hooks run (see relprop.structure)
            return self.module.forward(*args, **kwargs)  # type: ignore[union-attr]
        if node.op == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)  # type: ignore[operator]

    def forward_with_state(self, args: tuple, kwargs: dict) -> tuple[Tensor, Any]:
        """Forward value and whatever the relevance rule wants kept from it (``ctx.state``)."""
        return self.forward(args, kwargs), None

    def relevance(self, inputs: list[Tensor], args: tuple, kwargs: dict, output: Tensor,
                  r: Tensor, ctx: Any) -> list[Tensor | None]:
        """Relevance of each tensor input given relevance ``r`` at the output."""
        raise NotImplementedError

    def _replace_input(self, args: tuple, kwargs: dict, k: int, value: Tensor) -> tuple[tuple, dict]:
        """Arguments with the k-th tensor input replaced (for vector-Jacobian products)."""
        target = self.tensor_arg_nodes[k]
        count = [0]

        def swap(a: Any, original: Any) -> Any:
            if isinstance(original, fx.Node) and original is target:
                if count[0] == 0:
                    count[0] += 1
                    return value
            if isinstance(original, (list, tuple)):
                return type(original)(swap(x, o) for x, o in zip(a, original))
            return a

        new_args = tuple(swap(a, o) for a, o in zip(args, self.fx_node.args))
        new_kwargs = {k2: swap(v, self.fx_node.kwargs[k2]) for k2, v in kwargs.items()}
        return new_args, new_kwargs

    def _linear_vjp(self, inputs: list[Tensor], args: tuple, kwargs: dict, k: int, v: Tensor) -> Tensor:
        """Gradient of this op w.r.t. its k-th tensor input, applied to ``v``."""
        def fn(t: Tensor) -> Tensor:
            a, kw = self._replace_input(args, kwargs, k, t)
            return self.forward(a, kw)
        return vjp(fn, inputs[k], v)


_OUT_OF_PLACE: dict[Any, Any] = {
    operator.iadd: operator.add, operator.imul: operator.mul, operator.isub: operator.sub,
    operator.itruediv: operator.truediv, torch.relu_: torch.relu, F.relu_: F.relu,
    "relu_": "relu", "add_": "add", "mul_": "mul", "sub_": "sub", "div_": "div", "clamp_": "clamp",
    "sigmoid_": "sigmoid", "tanh_": "tanh",
}


class Input(Op):
    """The model input."""


class Identity(Op):
    """Identity, dropout and stochastic depth in eval mode: relevance passes unchanged."""

    keeps_sign = True

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        if not hasattr(self, "fx_node"):
            return args[0]
        return super().forward(args, kwargs)

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        if inputs[0].shape != r.shape or inputs[0].dtype != r.dtype:
            return [self._linear_vjp(inputs, args, kwargs, 0, r)]
        return [r] + [None] * (len(inputs) - 1)


class Activation(Identity):
    """Element-wise activation module (ReLU, ReLU6, SiLU, ...): relevance passes unchanged."""

    keeps_sign = False

    def __init__(self, module: nn.Module) -> None:
        self.set_module(module)


class FunctionalActivation(Identity):
    """Functional activation (F.relu, torch.sigmoid, Tensor.relu, ...): relevance passes unchanged."""

    keeps_sign = False

    def __init__(self, target: Any) -> None:
        self.activation = target


class Reshape(Op):
    """Flatten, view, reshape, permute, ...: relevance is moved back to where each value came from."""

    keeps_sign = True

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        if r.numel() == inputs[0].numel() and self.fx_node.target in (
            "view", "reshape", "flatten", "squeeze", "unsqueeze", torch.flatten, torch.reshape,
            torch.squeeze, torch.unsqueeze,
        ) or isinstance(self.module, nn.Flatten):
            return [r.reshape(inputs[0].shape)]
        return [self._linear_vjp(inputs, args, kwargs, 0, r)]


class GetItem(Op):
    """Indexing/slicing of a tensor: relevance is scattered back into the indexed positions."""

    keeps_sign = True

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        return [self._linear_vjp(inputs, args, kwargs, 0, r)]


class Pad(Op):
    """Constant padding: relevance of padded positions is dropped (they carry no input)."""

    def __init__(self, module: nn.Module | None, padding: tuple | None, value: float | None) -> None:
        self.module = module
        self.padding = padding
        self.value = value
        self.keeps_sign = value is None or value >= 0
        self.folded = False

    def zero_padding(self) -> tuple[int, ...] | None:
        """The padding amounts if this is a constant zero padding known at trace time."""
        if self.module is not None:
            return tuple(self.padding) if self.value == 0 else None
        node = self.fx_node
        pad = node.args[1] if len(node.args) > 1 else node.kwargs.get("pad")
        mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
        value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value", None)
        if mode != "constant" or value not in (None, 0, 0.0) or not isinstance(pad, (tuple, list)):
            return None
        if not all(isinstance(p, int) for p in pad):
            return None
        return tuple(pad)

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        if self.folded:
            return args[0]
        return super().forward(args, kwargs)

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        if self.folded:
            return [r]
        return [self._linear_vjp(inputs, args, kwargs, 0, r)]


class MaxPool(Op):
    """Max pooling: winner-take-all (the gradient, default) or proportional to the inputs.

    2-D max pools keep their argmax indices from the forward pass, so the winner-take-all rule
    costs one scatter and no recomputation.
    """

    keeps_sign = True

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def _params_2d(self, args: tuple, kwargs: dict) -> dict | None:
        m = self.module
        if m is not None:
            if not isinstance(m, nn.MaxPool2d) or m.return_indices:
                return None
            params = {k: getattr(m, k) for k in _MAXPOOL_PARAMS}
        else:
            if self.fx_node.target is not F.max_pool2d or kwargs.get("return_indices"):
                return None
            params = dict(zip(_MAXPOOL_PARAMS, args[1:]))
            params.update({k: v for k, v in kwargs.items() if k in _MAXPOOL_PARAMS})
        kernel = _pair(params["kernel_size"])
        stride = params.get("stride")
        return {"kernel_size": kernel, "stride": _pair(stride) if stride else kernel,
                "padding": _pair(params.get("padding", 0)), "dilation": _pair(params.get("dilation", 1)),
                "ceil_mode": bool(params.get("ceil_mode", False))}

    def forward_with_state(self, args: tuple, kwargs: dict) -> tuple[Tensor, Any]:
        params = self._params_2d(args, kwargs)
        if params is None:
            return self.forward(args, kwargs), None
        out, indices = torch.ops.aten.max_pool2d_with_indices(args[0], **params)
        return out, (params, indices)

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        x = inputs[0]
        if ctx.maxpool == "winner":
            if ctx.state is not None:
                params, indices = ctx.state
                if x.is_contiguous() and not r.is_contiguous():  # e.g. channels-last from a hedge rule:
                    r = r.contiguous()  # one copy of the small side, not two inside the kernel
                return [torch.ops.aten.max_pool2d_with_indices_backward(
                    r, x, params["kernel_size"], params["stride"], params["padding"], params["dilation"],
                    params["ceil_mode"], indices)]
            return [self._linear_vjp(inputs, args, kwargs, 0, r)]
        pool = _matching_sum_pool(self, args, kwargs)
        z = pool(x)
        return [x * vjp(pool, x, normalize(r, z, ctx.norm_epsilon))]


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


_MAXPOOL_PARAMS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


def _matching_sum_pool(op: Op, args: tuple, kwargs: dict) -> Callable[[Tensor], Tensor]:
    """An average pool over the same windows as a max pool (for the proportional rule)."""
    m = op.module
    name = type(m).__name__ if m is not None else op.fx_node.target.__name__  # type: ignore[union-attr]
    nd = int(name.rstrip("d")[-1])
    if "daptive" in name:
        size = m.output_size if m is not None else (args[1] if len(args) > 1 else kwargs["output_size"])
        avg = getattr(F, f"adaptive_avg_pool{nd}d")
        return lambda t: avg(t, size)
    if m is not None:
        params = {k: getattr(m, k) for k in _MAXPOOL_PARAMS}
    else:
        params = dict(zip(_MAXPOOL_PARAMS, args[1:]))
        params.update({k: v for k, v in kwargs.items() if k in _MAXPOOL_PARAMS})
    dilation = params.get("dilation", 1)
    if any(d != 1 for d in (dilation if isinstance(dilation, (tuple, list)) else (dilation,))):
        raise ValueError(f"the proportional max-pool rule does not support dilation (at {op.fx_node.name!r})")
    avg = getattr(F, f"avg_pool{nd}d")
    kernel = params["kernel_size"]
    stride = params.get("stride") or kernel
    return lambda t: avg(t, kernel, stride, params.get("padding", 0), params.get("ceil_mode", False), True)


class AvgPool(Op):
    """Average pooling (also adaptive, also ``mean`` over dims): proportional rule (zennit's Norm)."""

    keeps_sign = True

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        x = inputs[0]
        s = normalize(r, output, ctx.norm_epsilon)
        return [x * self._linear_vjp(inputs, args, kwargs, 0, s)]


class Interpolate(AvgPool):
    """Resizing (``F.interpolate``, ``nn.Upsample``): linear in its input for every mode, so relevance
    follows the proportional rule as for average pooling, ``x * J^T (r / stab(z))``, which conserves
    it (zennit's Norm rule for linear maps without bias; Montavon et al. 2019)."""

    def __init__(self, module: nn.Module | None) -> None:
        super().__init__(module)
        mode = getattr(module, "mode", None)
        self.keeps_sign = mode is None or mode not in ("bicubic",)

    def bind(self, node: fx.Node, tensor_args: Sequence[fx.Node]) -> None:
        super().bind(node, tensor_args)
        if self.module is None:
            mode = node.args[3] if len(node.args) > 3 else node.kwargs.get("mode", "nearest")
            self.keeps_sign = mode != "bicubic"


class Add(Op):
    """Sum of tensors (residual connections; also ``x + constant`` and ``x - constant``).

    ``proportional`` (default, zennit's Norm): each term gets ``R * term / stab(sum)``;
    a constant term absorbs its share like a bias. ``equal``: tensor terms share ``R`` equally.
    ``absolute``: each term gets ``R * |term| / sum |terms|`` (a constant term counted with its
    magnitude absorbs its share): conservative, every share has the sign of ``R`` and is at most
    ``|R|``, however closely two signed terms cancel (hedge's default on residual networks).
    """

    keeps_sign = True

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        node = self.fx_node
        subtract = node.target in ("sub", "sub_") or getattr(node.target, "__name__", "") in ("sub",)
        signs = [1.0] * len(inputs)
        if subtract and len(inputs) == 2:
            signs[1] = -1.0
        if ctx.add == "equal":
            share = r / len(inputs)
            return [reduce_to_shape(share, x.shape) for x in inputs]
        if ctx.add == "absolute":
            return _absolute_shares(inputs, signs, output, r)
        s = normalize(r, output, ctx.norm_epsilon)
        shares = [reduce_to_shape(x * s if sign > 0 else -(x * s), x.shape) for sign, x in zip(signs[:-1], inputs)]
        last = s.mul_(inputs[-1]) if signs[-1] > 0 else s.mul_(inputs[-1]).neg_()
        return shares + [reduce_to_shape(last, inputs[-1].shape)]


def _absolute_shares(inputs: Sequence[Tensor], signs: Sequence[float], output: Tensor, r: Tensor) -> list[Tensor]:
    """``R * |term| / sum |terms|`` for each tensor term of ``output = sum signs * inputs (+ constant)``;
    a constant term (``output`` minus the signed tensor terms) counts in the denominator with its
    magnitude. ``0/0 := 0``."""
    magnitudes = [x.abs() for x in inputs]
    constant = output.detach().clone()
    for sign, x in zip(signs, inputs):
        constant = constant - x if sign > 0 else constant + x
    total = constant.abs_()
    for m in magnitudes:
        total = total + m
    s = safe_divide(r, total)
    return [reduce_to_shape(m * s, x.shape) for m, x in zip(magnitudes, inputs)]


class Multiply(Op):
    """Product: by a constant (relevance passes) or by a gate such as squeeze-excitation.

    For a product of two tensors, a gate (a factor produced by a sigmoid or hard-sigmoid) is
    treated as a constant weight: all relevance flows to the other factor. Two factors without a
    gate share the relevance equally (each half summed back to its factor's shape).
    """

    keeps_sign = True

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        if len(inputs) == 1:  # product with a constant
            return [r]
        if len(inputs) != 2:
            return [r / len(inputs)] * len(inputs)
        gate = ctx.gate_index(self)
        if gate is None:
            return [reduce_to_shape(r / 2, x.shape) for x in inputs]
        out: list[Tensor | None] = [None, None]
        out[1 - gate] = reduce_to_shape(r, inputs[1 - gate].shape)
        return out


class ScaleByConstant(Identity):
    """Division by a constant: relevance passes unchanged (keeps the sign for a positive constant)."""

    keeps_sign = True


class Concat(Op):
    """Concatenation: relevance is split back along the concatenated dimension."""

    keeps_sign = True

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        dim = args[1] if len(args) > 1 else kwargs.get("dim", 0)
        sizes = [x.shape[dim] for x in inputs]
        return list(torch.split(r, sizes, dim=dim))


class BatchNorm(Op):
    """Batch norm with inference semantics (running statistics, never updated), whatever the
    module's training flag, that could not be folded into an affine layer.

    ``identity`` (default, as zennit's Pass): relevance passes unchanged. ``epsilon``: the
    per-channel affine map ``y = a*x + c`` is treated as a layer with the epsilon rule.
    """

    def __init__(self, module: nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) -> None:
        self.module = module
        self.folded = False

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        if self.folded:
            return args[0]
        bn = self.module
        # a batch norm without running statistics normalises with batch statistics even in eval mode
        batch_statistics = bn.running_mean is None or bn.running_var is None
        return F.batch_norm(args[0], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            batch_statistics, 0.0, bn.eps)

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        if self.folded or ctx.batchnorm == "identity":
            return [r]
        if callable(ctx.batchnorm):  # a method's own batch-norm rule (see Composite.batchnorm)
            return [ctx.batchnorm(self, inputs[0], output, r)]
        x = inputs[0]
        scale = _bn_scale(self.module).view(1, -1, *([1] * (x.dim() - 2)))
        return [x * scale * normalize(r, output, ctx.epsilon_batchnorm)]


def _bn_scale(bn: nn.Module) -> Tensor:
    if bn.running_var is None:
        raise ValueError(f"batch norm {bn} has no running statistics; relprop needs eval-mode statistics")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


class Affine(Op):
    """Linear or convolution layer (any dimension, groups, dilation), with an optional folded BN.

    The effective weight and bias include the folded batch norm and are cached together with
    derived tensors (positive/negative parts, ...) until any source parameter changes.
    """

    def __init__(self, module: nn.Module, path: str, kind: str, nd: int) -> None:
        self.module = module
        self.path = path
        self.kind = kind  # "linear" or "conv"
        self.nd = nd
        self.bn: nn.Module | None = None
        self.pre_pad: tuple[int, ...] | None = None  # a folded zero padding (F.pad order)
        #: (state of the source tensors, derived tensors): replaced as a whole, never cleared in
        #: place, so that concurrent callers each see one consistent pair
        self._cache: tuple[tuple, dict[str, Tensor]] = ((), {})
        if kind == "conv":
            if module.padding_mode != "zeros":
                raise ValueError(
                    f"unsupported layer at {path!r}: convolution padding_mode={module.padding_mode!r} "
                    "(only 'zeros' is supported)"
                )
            self.stride = tuple(module.stride)
            self.dilation = tuple(module.dilation)
            self.groups = module.groups
            self.padding = _numeric_padding(module, path)

    @staticmethod
    def from_module(module: nn.Module, path: str) -> "Affine":
        if isinstance(module, nn.Linear):
            return Affine(module, path, "linear", 0)
        nd = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[type(module)] if type(module) in (
            nn.Conv1d, nn.Conv2d, nn.Conv3d) else int(type(module).__name__[-2])
        return Affine(module, path, "conv", nd)

    # -- parameters ---------------------------------------------------------------------------
    def _sources(self) -> list[Tensor]:
        tensors = [self.module.weight, self.module.bias]
        if self.bn is not None:
            tensors += [self.bn.weight, self.bn.bias, self.bn.running_mean, self.bn.running_var]
        return [t for t in tensors if t is not None]

    def cached(self, key: str, make: Callable[[], Tensor]) -> Tensor:
        """A derived tensor (e.g. the positive weights), recomputed when any source changes.

        Made outside inference mode, so that a call under ``torch.inference_mode()`` cannot leave
        an inference tensor behind for later calls that need autograd."""
        sources = self._sources()
        state = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        entry = self._cache
        if entry[0] != state:
            entry = (state, {})
            self._cache = entry
        found = entry[1].get(key)
        if found is None:
            with torch.inference_mode(False), torch.no_grad():
                found = make().detach()
            entry[1][key] = found
        return found

    def forget_cache(self) -> None:
        """Drop the derived tensors (after the sources were rewired, e.g. a folded batch norm)."""
        self._cache = ((), {})

    @property
    def weight(self) -> Tensor:
        return self.cached("weight", self._fold_weight)

    @property
    def bias(self) -> Tensor | None:
        if self.module.bias is None and self.bn is None:
            return None
        return self.cached("bias", self._fold_bias)

    def _bn_factor(self) -> Tensor:
        return _bn_scale(self.bn)

    def _fold_weight(self) -> Tensor:
        w = self.module.weight
        if self.bn is None:
            return w
        return w * self._bn_factor().view(-1, *([1] * (w.dim() - 1)))

    def _fold_bias(self) -> Tensor:
        w = self.module.weight
        b = self.module.bias if self.module.bias is not None else torch.zeros(
            w.shape[0], dtype=w.dtype, device=w.device)
        if self.bn is None:
            return b
        shift = self.bn.bias if self.bn.bias is not None else 0.0
        return (b - self.bn.running_mean) * self._bn_factor() + shift

    def broadcast_bias(self, z: Tensor) -> Tensor:
        """The effective bias shaped to broadcast against the output ``z``."""
        b = self.bias
        if b is None:
            return torch.zeros((), dtype=z.dtype, device=z.device)
        return b if self.kind == "linear" else b.view(1, -1, *([1] * self.nd))

    # -- linear maps ---------------------------------------------------------------------------
    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer's linear map with the given parameters."""
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        return conv(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        """Transposed map: ``W^T s`` shaped like the input ``x`` (vector-Jacobian product)."""
        if self.kind == "linear":
            return s.matmul(weight)
        if self._pointwise():  # a 1x1 convolution is a matrix product per sample (faster than its vjp)
            matrix = weight.reshape(weight.shape[0], -1)
            if is_channels_last(s):
                # channels-last: (B, H, W, C_out) @ (C_out, C_in), handed back as a channels-last view
                return torch.matmul(s.permute(0, 2, 3, 1), matrix).permute(0, 3, 1, 2)
            flat = torch.matmul(matrix.t(), s.reshape(*s.shape[:2], -1))
            return flat.view(s.shape[0], weight.shape[1], *s.shape[2:])
        if self.pre_pad is not None:
            padded = x.new_empty(F.pad(x[:1, :1], self.pre_pad).shape[2:])
            shape = (*x.shape[:2], *padded.shape)
            out = torch.ops.aten.convolution_backward(
                s, x.new_empty(shape), weight, None, list(self.stride), list(self.padding),
                list(self.dilation), False, [0] * self.nd, self.groups, [True, False, False])[0]
            return _crop(out, self.pre_pad)
        return torch.ops.aten.convolution_backward(
            s, x, weight, None, list(self.stride), list(self.padding), list(self.dilation), False,
            [0] * self.nd, self.groups, [True, False, False])[0]

    def _pointwise(self) -> bool:
        """A 1x1 convolution with stride 1, no padding and one group (input and output positions agree)."""
        m = self.module
        return (self.groups == 1 and self.pre_pad is None and all(k == 1 for k in m.kernel_size)
                and all(v == 1 for v in self.stride) and all(v == 0 for v in self.padding))

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        return self.apply(args[0], self.weight, self.bias)

    def relevance(self, inputs, args, kwargs, output, r, ctx):
        rule = ctx.rule(self)
        return [rule(self, inputs[0], output, r, ctx.nonnegative_input(self))]


def is_channels_last(t: Tensor) -> bool:
    """A 4-d tensor laid out channels-last (and not also plain contiguous, as size-1 dims allow)."""
    return t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last)


def _crop(t: Tensor, pad: tuple[int, ...]) -> Tensor:
    """Undo ``F.pad(t, pad)`` (pad lists (left, right) pairs from the last dimension backwards)."""
    index = [slice(None)] * t.dim()
    for k in range(len(pad) // 2):
        dim = t.dim() - 1 - k
        before, after = pad[2 * k], pad[2 * k + 1]
        index[dim] = slice(before, t.shape[dim] - after)
    return t[tuple(index)]


def _numeric_padding(module: nn.Module, path: str) -> tuple[int, ...]:
    padding = module.padding
    if padding == "valid":
        return (0,) * len(module.kernel_size)
    if padding == "same":
        pads = []
        for k, d in zip(module.kernel_size, module.dilation):
            total = d * (k - 1)
            if total % 2:
                raise ValueError(
                    f"unsupported layer at {path!r}: padding='same' with an even kernel is asymmetric"
                )
            pads.append(total // 2)
        return tuple(pads)
    return tuple(padding)
