"""Canonical operation kinds of a traced model and their non-parametric relevance rules.

Each op evaluates its forward value from already-evaluated arguments and, for the backward pass,
maps the relevance at its output onto its tensor inputs. Affine ops (linear and convolution layers,
with any folded batch norm) delegate their relevance to a rule from :mod:`relprop.rules`.
Defaults follow zennit: winner-take-all max-pool, proportional ("Norm") average pooling and sums,
pass-through activations (Kohlbrenner et al. 2020 [Kohlbrenner2020-LRP], Sec. II).
"""

from __future__ import annotations

import copy
import operator
from typing import Any, Callable, Sequence

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .numerics import vjp

Tensor = torch.Tensor

#: the operation kinds a rule can apply to (see :mod:`relprop.rules.base`): every op has one
KINDS = ("input", "identity", "activation", "scale", "reshape", "getitem", "pad", "maxpool", "avgpool",
         "resize", "add", "multiply", "concat", "batchnorm", "affine", "layernorm", "softmax", "matmul")


class Op:
    """Base class: forward evaluation of an fx node and its trace metadata.

    ``kind`` names the operation kind (one of :data:`KINDS`) by which a composite chooses its
    relevance rule (:mod:`relprop.rules`)."""

    kind = "identity"
    #: output is non-negative whenever all tensor inputs are
    keeps_sign = False
    fx_node: fx.Node
    module: nn.Module | None = None
    #: the module path of a module call, the node name of a function or method call
    path: str = ""

    def bind(self, node: fx.Node, tensor_args: Sequence[fx.Node]) -> None:
        """Attach the fx node; in-place targets are replaced by their out-of-place twins, because
        the backward pass needs every cached value as it was (e.g. a pre-activation)."""
        self.fx_node = node
        if not self.path:
            self.path = str(node.target) if node.op == "call_module" else node.name
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
        """Forward value and whatever a relevance rule may want kept from it (``Step.state``)."""
        return self.forward(args, kwargs), None

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

    def input_vjp(self, inputs: list[Tensor], args: tuple, kwargs: dict, k: int, v: Tensor) -> Tensor:
        """Gradient of this op with respect to its k-th tensor input, applied to ``v`` (the
        relevance map of any op that is linear in that input)."""
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

    kind = "input"


class Identity(Op):
    """Identity, dropout and stochastic depth in eval mode (and the graph's output node)."""

    kind = "identity"
    keeps_sign = True

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        if not hasattr(self, "fx_node"):
            return args[0]
        return super().forward(args, kwargs)


class Activation(Identity):
    """Element-wise activation module (ReLU, ReLU6, SiLU, ...)."""

    kind = "activation"
    keeps_sign = False

    def __init__(self, module: nn.Module) -> None:
        self.set_module(module)


class FunctionalActivation(Identity):
    """Functional activation (F.relu, torch.sigmoid, Tensor.relu, ...)."""

    kind = "activation"
    keeps_sign = False

    def __init__(self, target: Any) -> None:
        self.activation = target


class Reshape(Op):
    """Flatten, view, reshape, permute, ...: every output value is one input value, moved."""

    kind = "reshape"
    keeps_sign = True

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def keeps_order(self) -> bool:
        """Whether the values keep their (row-major) order, so that relevance moves back by a reshape."""
        return self.fx_node.target in (
            "view", "reshape", "flatten", "squeeze", "unsqueeze", torch.flatten, torch.reshape,
            torch.squeeze, torch.unsqueeze,
        ) or isinstance(self.module, nn.Flatten)


class GetItem(Op):
    """Indexing/slicing of a tensor."""

    kind = "getitem"
    keeps_sign = True


class Pad(Op):
    """Constant padding; a zero padding folded into the next convolution acts as the identity."""

    kind = "pad"

    def __init__(self, module: nn.Module | None, padding: tuple | None, value: float | None) -> None:
        self.module = module
        self.padding = padding
        self.value = value
        self.keeps_sign = value is None or value >= 0
        self.folded = False

    def fold(self) -> None:
        """The padding was moved into the next convolution: this op is the identity from now on."""
        self.folded = True
        self.kind = "identity"

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


class MaxPool(Op):
    """Max pooling. 2-D max pools keep their argmax indices from the forward pass (``Step.state``),
    so the winner-take-all rule costs one scatter and no recomputation."""

    kind = "maxpool"
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

    def sum_pool(self, args: tuple, kwargs: dict) -> Callable[[Tensor], Tensor]:
        """An average pool over the same windows (for rules that split in proportion to the inputs)."""
        m = self.module
        name = type(m).__name__ if m is not None else self.fx_node.target.__name__  # type: ignore[union-attr]
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
            raise ValueError(f"the proportional max-pool rule does not support dilation (at {self.fx_node.name!r})")
        avg = getattr(F, f"avg_pool{nd}d")
        kernel = params["kernel_size"]
        stride = params.get("stride") or kernel
        return lambda t: avg(t, kernel, stride, params.get("padding", 0), params.get("ceil_mode", False), True)


def _pair(v: Any) -> list[int]:
    return list(v) if isinstance(v, (tuple, list)) else [int(v), int(v)]


_MAXPOOL_PARAMS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")


class AvgPool(Op):
    """Average pooling (also adaptive, also ``mean`` over dims): linear in its input, no bias."""

    kind = "avgpool"
    keeps_sign = True

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module


class Interpolate(AvgPool):
    """Resizing (``F.interpolate``, ``nn.Upsample``): linear in its input for every mode."""

    kind = "resize"

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
    """Sum of tensors (residual connections; also ``x + constant`` and ``x - constant``)."""

    kind = "add"
    keeps_sign = True

    def signs(self, count: int) -> list[float]:
        """The sign of each tensor term: ``-1`` for the subtrahend of ``a - b`` (also when ``a`` is a
        constant, ``c - b``)."""
        node = self.fx_node
        subtract = node.target in ("sub", "sub_") or getattr(node.target, "__name__", "") in ("sub", "isub")
        signs = [1.0] * count
        if not subtract:
            return signs
        tensors = set(self.tensor_arg_nodes)
        terms = [k for k, a in enumerate(node.args[:2]) if isinstance(a, fx.Node) and a in tensors]
        if len(terms) == count and terms and terms[-1] == 1:
            signs[-1] = -1.0
        return signs


class Multiply(Op):
    """Product: by a constant or of two tensors. ``gate``: which factor (0 or 1) of a product of two
    tensors was produced by a sigmoid or hard-sigmoid (as in squeeze-excitation), found at trace
    time; None when neither was."""

    kind = "multiply"
    keeps_sign = True
    gate: int | None = None


class ScaleByConstant(Identity):
    """Division by a constant (keeps the sign for a positive constant)."""

    kind = "scale"
    keeps_sign = True


class Normalize(ScaleByConstant):
    """``F.normalize``: division by the vector's own norm, the norm held constant, as a layer norm's
    scale (AttnLRP's identity rule on ``1/sigma``, Achtibat et al. 2024 [Achtibat2024-AttnLRP],
    Prop. 3.4; CP-LRP's LN-rule, Ali et al. 2022 [Ali2022-CPLRP]): relevance passes."""


class Concat(Op):
    """Concatenation. ``entries``: for each concatenated entry, whether it is a tensor input of the
    operation (False for a constant, e.g. a class token read from a parameter)."""

    kind = "concat"
    keeps_sign = True
    entries: list[bool]

    def bind(self, node: fx.Node, tensor_args: Sequence[fx.Node]) -> None:
        super().bind(node, tensor_args)
        tensors = set(tensor_args)
        sequence = node.args[0] if node.args else node.kwargs.get("tensors", ())
        self.entries = [isinstance(a, fx.Node) and a in tensors for a in sequence]

    @staticmethod
    def dim(args: tuple, kwargs: dict) -> int:
        """The concatenated dimension."""
        return args[1] if len(args) > 1 else kwargs.get("dim", 0)

    @staticmethod
    def sequence(args: tuple, kwargs: dict) -> Sequence[Tensor]:
        """The concatenated values (tensor inputs and constants alike), in order."""
        return args[0] if args else kwargs["tensors"]


class BatchNorm(Op):
    """Batch norm with inference semantics (running statistics, never updated), whatever the
    module's training flag, that could not be folded into an affine layer."""

    kind = "batchnorm"

    def __init__(self, module: nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d) -> None:
        self.module = module
        self.folded = False

    def fold(self) -> None:
        """The batch norm was folded into the preceding affine layer: the identity from now on."""
        self.folded = True
        self.kind = "identity"

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        if self.folded:
            return args[0]
        bn = self.module
        # a batch norm without running statistics normalises with batch statistics even in eval mode
        batch_statistics = bn.running_mean is None or bn.running_var is None
        return F.batch_norm(args[0], bn.running_mean, bn.running_var, bn.weight, bn.bias,
                            batch_statistics, 0.0, bn.eps)

    def scale(self, like: Tensor) -> Tensor:
        """The per-channel factor ``a`` of ``y = a x + c``, shaped to broadcast against ``like``."""
        return batch_norm_scale(self.module).view(1, -1, *([1] * (like.dim() - 2)))


def batch_norm_scale(bn: nn.Module) -> Tensor:
    """``weight / sqrt(running_var + eps)`` of an inference-mode batch norm."""
    if bn.running_var is None:
        raise ValueError(f"batch norm {bn} has no running statistics; relprop needs eval-mode statistics")
    scale = torch.rsqrt(bn.running_var + bn.eps)
    return scale * bn.weight if bn.weight is not None else scale


class Affine(Op):
    """Linear or convolution layer (any dimension, groups, dilation), with an optional folded BN.

    The effective weight and bias include the folded batch norm and are cached together with
    derived tensors (positive/negative parts, ...) until any source parameter changes.
    """

    kind = "affine"

    def __init__(self, module: nn.Module, path: str, layer_type: str, nd: int) -> None:
        self.module = module
        self.path = path
        self.layer_type = layer_type  # "linear" or "conv"
        self.nd = nd
        self.bn: nn.Module | None = None
        self.pre_pad: tuple[int, ...] | None = None  # a folded zero padding (F.pad order)
        #: (state of the source tensors, derived tensors): replaced as a whole, never cleared in
        #: place, so that concurrent callers each see one consistent pair
        self._cache: tuple[tuple, dict[str, Tensor]] = ((), {})
        if layer_type == "conv":
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
        return batch_norm_scale(self.bn)

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

    @property
    def positive_weight(self) -> Tensor:
        """``max(W, 0)`` of the effective weight (cached)."""
        return self.cached("w+", lambda: self.weight.clamp(min=0))

    @property
    def negative_weight(self) -> Tensor:
        """``min(W, 0)`` of the effective weight (cached)."""
        return self.cached("w-", lambda: self.weight.clamp(max=0))

    @property
    def absolute_weight(self) -> Tensor:
        """``|W|`` of the effective weight (cached)."""
        return self.cached("|w|", lambda: self.weight.abs())

    @property
    def absolute_bias(self) -> Tensor | None:
        """``|b|`` of the effective bias (cached); None without a bias."""
        return None if self.bias is None else self.cached("|b|", lambda: self.bias.abs())

    @property
    def positive_bias(self) -> Tensor | None:
        """``max(b, 0)`` of the effective bias (cached); None without a bias."""
        return None if self.bias is None else self.cached("b+", lambda: self.bias.clamp(min=0))

    @property
    def negative_bias(self) -> Tensor | None:
        """``min(b, 0)`` of the effective bias (cached); None without a bias."""
        return None if self.bias is None else self.cached("b-", lambda: self.bias.clamp(max=0))

    def broadcast_bias(self, z: Tensor) -> Tensor:
        """The effective bias shaped to broadcast against the output ``z``."""
        b = self.bias
        if b is None:
            return torch.zeros((), dtype=z.dtype, device=z.device)
        return b if self.layer_type == "linear" else b.view(1, -1, *([1] * self.nd))

    def laid_out_like(self, weight: Tensor, t: Tensor) -> Tensor:
        """``weight`` in the memory format of the feature map ``t``: a channels-last copy for a
        channels-last ``t`` (cached with the layer's weights), so that a convolution does not convert
        it at every call; ``weight`` itself otherwise, or when it is not one of this layer's cached
        tensors (a copy is only kept for a tensor the cache holds, so that it cannot go stale)."""
        if (self.layer_type != "conv" or weight.dim() != 4 or not is_channels_last(t)
                or weight.is_contiguous(memory_format=torch.channels_last)):
            return weight
        derived = self._cache[1]  # the copy goes into the dict that holds ``weight``: its id stays unique there
        if not any(v is weight for v in derived.values()):
            return weight
        key = f"channels-last:{id(weight)}"
        found = derived.get(key)
        if found is None:
            with torch.inference_mode(False), torch.no_grad():
                found = weight.detach().contiguous(memory_format=torch.channels_last)
            derived[key] = found
        return found

    # -- linear maps ---------------------------------------------------------------------------
    def apply(self, x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        """The layer's linear map with the given parameters."""
        if self.layer_type == "linear":
            return F.linear(x, weight, bias)
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        conv = (F.conv1d, F.conv2d, F.conv3d)[self.nd - 1]
        return conv(x, self.laid_out_like(weight, x), bias, self.stride, self.padding, self.dilation, self.groups)

    def transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        """Transposed map: ``W^T s`` shaped like the input ``x`` (vector-Jacobian product)."""
        if self.layer_type == "linear":
            return s.matmul(weight)
        if self._pointwise():  # a 1x1 convolution is a matrix product per sample (faster than its vjp)
            matrix = weight.reshape(weight.shape[0], -1)
            if is_channels_last(s):
                # channels-last: (B, H, W, C_out) @ (C_out, C_in), handed back as a channels-last view
                return torch.matmul(s.permute(0, 2, 3, 1), matrix).permute(0, 3, 1, 2)
            flat = torch.matmul(matrix.t(), s.reshape(*s.shape[:2], -1))
            return flat.view(s.shape[0], weight.shape[1], *s.shape[2:])
        if self._patchwise():  # non-overlapping patches (a ViT's or ConvNeXt's stem): one matrix product
            return self._patch_transpose(s, weight, x)
        if self.pre_pad is not None:
            padded = x.new_empty(F.pad(x[:1, :1], self.pre_pad).shape[2:])
            shape = (*x.shape[:2], *padded.shape)
            out = torch.ops.aten.convolution_backward(
                s, x.new_empty(shape), weight, None, list(self.stride), list(self.padding),
                list(self.dilation), False, [0] * self.nd, self.groups, [True, False, False])[0]
            return _crop(out, self.pre_pad)
        return torch.ops.aten.convolution_backward(
            s, x, self.laid_out_like(weight, s), None, list(self.stride), list(self.padding), list(self.dilation),
            False, [0] * self.nd, self.groups, [True, False, False])[0]

    @property
    def unit_kernel(self) -> bool:
        """A convolution with a 1 x 1 (x 1) kernel (any stride, padding or groups)."""
        return self.layer_type == "conv" and all(k == 1 for k in self.module.kernel_size)

    def _patchwise(self) -> bool:
        """A 2-d convolution over non-overlapping patches: stride equal to the kernel (larger than 1),
        no padding or dilation, one group."""
        return (self.layer_type == "conv" and self.nd == 2 and self.groups == 1 and self.pre_pad is None
                and tuple(self.stride) == tuple(self.module.kernel_size) and not self.unit_kernel
                and all(v == 0 for v in self.padding) and all(v == 1 for v in self.dilation))

    def _patch_transpose(self, s: Tensor, weight: Tensor, x: Tensor) -> Tensor:
        """``W^T s`` of a patchwise convolution as one matrix product: each output position's vector
        times the weight matrix fills its patch; input rows and columns that no patch covers get 0."""
        batch, _, rows, cols = s.shape
        c_in, kh, kw = weight.shape[1:]
        patches = torch.matmul(s.permute(0, 2, 3, 1), weight.reshape(weight.shape[0], -1))
        out = patches.view(batch, rows, cols, c_in, kh, kw).permute(0, 3, 1, 4, 2, 5).reshape(
            batch, c_in, rows * kh, cols * kw)
        missing = (x.shape[-1] - cols * kw, x.shape[-2] - rows * kh)
        return F.pad(out, (0, missing[0], 0, missing[1])) if any(missing) else out

    def _pointwise(self) -> bool:
        """A 1x1 convolution with stride 1, no padding and one group (input and output positions agree)."""
        return (self.unit_kernel and self.groups == 1 and self.pre_pad is None
                and all(v == 1 for v in self.stride) and all(v == 0 for v in self.padding))

    def forward(self, args: tuple, kwargs: dict) -> Tensor:
        return self.apply(args[0], self.weight, self.bias)



def channels_last_suits(x: Tensor) -> bool:
    """Whether convolutions on 4-d tensors like ``x`` run faster channels-last: in float32 or
    bfloat16 on the CPU, where oneDNN computes k x k convolutions of large feature maps up to 1.5x
    faster that way (64 channels at 224 x 224; 1 x 1 transposes become matrix products over the
    channels)."""
    return x.dim() == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)


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


class LayerNorm(Op):
    """Layer normalisation (``nn.LayerNorm``, ``F.layer_norm``):
    ``y = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias`` over the trailing ``normalized_shape``."""

    kind = "layernorm"

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def parameters(self, args: tuple, kwargs: dict) -> tuple[tuple[int, ...], Tensor | None, Tensor | None, float]:
        """``(normalized_shape, weight, bias, eps)`` as evaluated in the forward pass."""
        m = self.module
        if m is not None:
            return tuple(m.normalized_shape), m.weight, m.bias, float(m.eps)
        names = ("input", "normalized_shape", "weight", "bias", "eps")
        given = {**dict(zip(names, args)), **kwargs}
        shape = given["normalized_shape"]
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return shape, given.get("weight"), given.get("bias"), float(given.get("eps", 1e-5))


class Softmax(Op):
    """Softmax along one dimension (``nn.Softmax``, ``F.softmax``, ``torch.softmax``, ``Tensor.softmax``)."""

    kind = "softmax"
    keeps_sign = True

    def __init__(self, module: nn.Module | None) -> None:
        self.module = module

    def dim(self, args: tuple, kwargs: dict) -> int:
        """The normalised dimension."""
        if self.module is not None:
            dim = self.module.dim
        else:
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
        if dim is None:
            raise ValueError(f"softmax at {self.path!r} has no explicit dim; relprop needs one")
        return int(dim)


class MatMul(Op):
    """Product of two tensors, ``a @ b`` (``torch.matmul``, ``operator.matmul``, ``torch.bmm``,
    ``Tensor.matmul``, ``Tensor.bmm``, and ``torch.einsum`` of two operands, a contraction that is
    bilinear in them alike). ``attention``: which factor (0 or 1) holds attention
    probabilities (produced by a softmax), found at trace time; None when neither does."""

    kind = "matmul"
    attention: int | None = None

