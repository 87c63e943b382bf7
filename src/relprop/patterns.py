"""Signal patterns of PatternNet and PatternAttribution (Kindermans et al., ICLR 2018 [Kindermans2018-PatternNet]).

For every affine layer (Linear, Conv1d/2d/3d) with weight ``W``, each output unit is a neuron and
every input patch a sample: ``x`` is the layer's input (the patch a convolution sees, zero padding
included) and ``y = w^T x`` the unit's output without bias. The two-component estimator ``S_a+``
(paper, section "Learning to estimate signal"; iNNvestigate 1.0.8 ``tools/pattern.py``) keeps, per
unit,

    cov = E+[x y] - E+[x] E[y],        a = cov / (w^T cov)

where ``E+`` averages over the samples in which the unit is active (its output with bias ``> 0``,
the ReLU regime that the backward gate keeps) and ``E`` over all samples; a zero denominator is
replaced by 1 (iNNvestigate's ``safe_divide``). ``kind="linear"`` averages over all samples (the
linear estimator ``S_a`` of the same section). A Linear layer on tokens ``(B, T, C)`` or on a
channels-last map ``(B, H, W, C)`` has one sample per token or position. On networks that are not
ReLU networks (transformers) ``kind="relu"`` chooses the estimator per layer
(:func:`layer_estimators`): ``S_a+`` before a ReLU, GELU or SiLU, ``S_a`` elsewhere. The patterns
are computed on the model as relprop propagates through it, batch norms folded into the preceding
layer (:mod:`relprop.canonize`), so ``W`` is the folded weight and the pattern has its shape.

:func:`compute_patterns` makes one pass over an iterable of input batches, accumulating
``sum m x y``, ``sum m x``, ``sum m``, ``sum y`` and the sample count per unit in float64 (the sums
over patches are the weight gradients of the layer for the output gradients ``m y`` and ``m``);
:class:`Patterns` holds the result, keyed by layer (module path), with :meth:`Patterns.save` and
:meth:`Patterns.load`. The shipped models ``shapes_vgg``, ``shapes_resnet``, ``shapes_vit`` and
``nodules3d_vgg`` have shipped patterns (:func:`shipped_patterns`), computed on their training data with
``relprop patterns``.
"""

from __future__ import annotations

import hashlib
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import ops

Tensor = torch.Tensor

__all__ = ["KINDS", "Patterns", "PatternsError", "compute_patterns", "layer_fingerprint", "pattern_layers",
           "layer_estimators", "register_patterns", "resolve_patterns", "shipped_patterns", "weights_digest"]

#: pattern estimators: ``"relu"`` (two-component S_a+, the active regime) and ``"linear"`` (S_a)
KINDS = ("relu", "linear")
#: the version of the file format written by :meth:`Patterns.save`
FORMAT_VERSION = 1
#: the folder of the shipped pattern files, one per shipped model
SHIPPED_DIR = Path(__file__).resolve().parent / "models" / "patterns"
#: the models with shipped patterns: ``relprop patterns <model> --data <data set> ...`` made them
SHIPPED = {"shapes_vgg": "shapes", "shapes_resnet": "shapes", "nodules3d_vgg": "nodules3d",
           "shapes_vit": "shapes"}
#: what to tell a user whose model has no patterns
HOW_TO = ("compute them on training data with relprop.patterns.compute_patterns(model, batches) (then "
          "Patterns.save(path)) or `relprop patterns MODEL --data DATASET --out FILE`, and pass them "
          "(or the file's path) as patterns=, or register them with relprop.patterns.register_patterns(model, patterns)")


class PatternsError(ValueError):
    """A patterns file that cannot be read, or patterns that do not belong to the model."""


# -- the layers ------------------------------------------------------------------------------------
def pattern_layers(propagator) -> list[tuple[str, ops.Affine]]:
    """``(module path, op)`` of every affine layer of the traced model, in execution order; a
    ValueError for a layer called more than once (one weight, several patterns)."""
    layers: list[tuple[str, ops.Affine]] = []
    seen: set[str] = set()
    for node in propagator.graph.nodes:
        if isinstance(node.op, ops.Affine):
            path = node.op.path or node.name
            if path in seen:
                raise ValueError(f"layer {path!r} is called more than once: PatternNet needs one pattern per "
                                 "layer call and supports layers used once only")
            seen.add(path)
            layers.append((path, node.op))
    return layers


def layer_fingerprint(propagator) -> tuple[tuple[str, str, tuple[int, ...]], ...]:
    """``(module path, "linear" or "conv", weight shape)`` of every affine layer, in execution order."""
    return tuple((path, op.layer_type, tuple(op.weight.shape)) for path, op in pattern_layers(propagator))


_DIGESTS: "weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]]" = weakref.WeakKeyDictionary()
_DIGEST_LOCK = threading.Lock()


def weights_digest(propagator) -> str:
    """SHA-256 of the affine layers' parameters (weight, bias and folded batch norm), as float32 on
    the CPU, so that a float64 or GPU copy of the same model has the same digest. Cached per model
    until a parameter changes."""
    model = propagator.model_ref()
    sources = [t for _, op in pattern_layers(propagator) for t in op._sources()]
    state = tuple((id(t), t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
    with _DIGEST_LOCK:
        found = _DIGESTS.get(model) if model is not None else None
        if found is not None and found[0] == state:
            return found[1]
    h = hashlib.sha256()
    with torch.no_grad():
        for t in sources:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    digest = h.hexdigest()
    if model is not None:
        with _DIGEST_LOCK:
            _DIGESTS[model] = (state, digest)
    return digest


#: ops through which a layer's output still is its own output, for the choice of its estimator
_SAME_OUTPUT_KINDS = ("identity", "batchnorm", "reshape", "getitem", "pad", "scale")


def _activation_follows(nodes: list, pos: int) -> bool:
    """Whether every path from node ``pos`` reaches a ReLU, GELU or SiLU through ops that keep the
    value as it is (dropout, folded batch norms, reshapes, padding, constant scales)."""
    from .attribution.pattern import rectifier_like

    users = nodes[pos].users
    return bool(users) and all(rectifier_like(nodes[u].op) or (nodes[u].op.kind in _SAME_OUTPUT_KINDS
                                                               and _activation_follows(nodes, u)) for u in users)


def layer_estimators(propagator, kind: str) -> dict[str, str]:
    """The estimator of every affine layer (module path -> ``"relu"`` or ``"linear"``) for ``kind``.

    ``"linear"``: the linear estimator ``S_a`` everywhere. ``"relu"``: on a ReLU network (affine layers,
    ReLU, pooling, sums; Kindermans et al. 2018, Sec. 4) the two-component estimator ``S_a+`` on every
    layer, as the paper and iNNvestigate use it; on other networks (transformers) it is chosen per
    layer from the graph: ``S_a+`` for a layer whose output goes into a ReLU, GELU or SiLU (the split
    ``y > 0`` / ``y <= 0`` of the paper's Sec. 5, nearly the regimes of GELU and SiLU), the linear
    estimator for a layer with no activation after it (attention projections, an MLP's second layer,
    a patch projection, the head), which the paper uses for linear neurons (Sec. 5)."""
    from .attribution.pattern import relu_network

    layers = pattern_layers(propagator)
    if kind == "linear":
        return {path: "linear" for path, _ in layers}
    if relu_network(propagator):
        return {path: "relu" for path, _ in layers}
    positions = {id(node.op): pos for pos, node in enumerate(propagator.graph.nodes)}
    nodes = propagator.graph.nodes
    return {path: "relu" if _activation_follows(nodes, positions[id(op)]) else "linear" for path, op in layers}


def _describe(fp: tuple) -> str:
    return ", ".join(f"{p} {t} {list(s)}" for p, t, s in fp)


# -- the patterns ------------------------------------------------------------------------------------
@dataclass
class Patterns:
    """The pattern ``A`` of every affine layer (module path -> tensor shaped like its folded weight),
    the estimator ``kind``, the layers' fingerprint (path, type, weight shape), the digest of the
    weights they were computed for and the number of input samples seen."""

    patterns: dict[str, Tensor]
    kind: str = "relu"
    fingerprint: tuple = ()
    digest: str = ""
    samples: int = 0
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, layer: str) -> Tensor:
        return self.patterns[layer]

    def __len__(self) -> int:
        return len(self.patterns)

    def __repr__(self) -> str:
        return f"Patterns(kind={self.kind!r}, layers={list(self.patterns)}, samples={self.samples})"

    # -- file -----------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write the patterns with ``torch.save`` (a dict with the format version, the kind, the
        fingerprint, the digest and the tensors, optionally cast to ``dtype``, e.g. float16 to halve
        the file; a layer whose values do not fit float16 stays float32)."""
        tensors = {}
        for name, a in self.patterns.items():
            a = a.detach().cpu()
            if dtype is not None:
                cast = a.to(dtype)
                if not torch.isfinite(cast).all() and torch.isfinite(a).all():
                    cast = a.to(torch.float32)
                a = cast
            tensors[name] = a.contiguous()
        path = Path(path)
        torch.save({"format": "relprop-patterns", "version": FORMAT_VERSION, "kind": self.kind,
                    "fingerprint": [[p, t, list(s)] for p, t, s in self.fingerprint], "digest": self.digest,
                    "samples": int(self.samples), "info": dict(self.info), "patterns": tensors}, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Patterns":
        """Read a file written by :meth:`save` (``torch.load(weights_only=True)``); a
        :class:`PatternsError` (a ValueError) naming the file when it is not one."""
        path = Path(path)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except IsADirectoryError:
            raise PatternsError(f"patterns file {path} is a folder") from None
        except Exception as err:  # noqa: BLE001 - any unreadable content
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise PatternsError(f"{path} is not a readable relprop patterns file ({first})") from None
        if not isinstance(data, dict) or data.get("format") != "relprop-patterns":
            raise PatternsError(f"{path} is not a relprop patterns file (written by Patterns.save / "
                                "`relprop patterns`)")
        if data.get("version") != FORMAT_VERSION:
            raise PatternsError(f"{path} has patterns format version {data.get('version')!r}; this relprop "
                                f"reads version {FORMAT_VERSION}: compute them again")
        try:
            tensors = data["patterns"]
            fingerprint = tuple((str(p), str(t), tuple(int(v) for v in s)) for p, t, s in data["fingerprint"])
            kind = str(data["kind"])
            ok = isinstance(tensors, dict) and all(isinstance(v, Tensor) and v.is_floating_point()
                                                   for v in tensors.values())
            ok = ok and [p for p, _, _ in fingerprint] == list(tensors) and kind in KINDS and all(
                tuple(tensors[p].shape) == s for p, _, s in fingerprint)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise PatternsError(f"{path} is a damaged relprop patterns file (its layers, shapes or kind do not agree)")
        return cls(dict(tensors), kind, fingerprint, str(data.get("digest", "")), int(data.get("samples", 0)),
                   dict(data.get("info", {})))

    # -- checks ---------------------------------------------------------------------------------
    def check(self, propagator, what: str = "these patterns") -> None:
        """A :class:`PatternsError` naming the first difference when the patterns were computed for
        another model: other layers or shapes, or other weights."""
        mine = layer_fingerprint(propagator)
        if mine != self.fingerprint:
            missing = [f for f in mine if f not in self.fingerprint]
            extra = [f for f in self.fingerprint if f not in mine]
            detail = []
            if missing:
                detail.append(f"the model has {_describe(missing[:3])} where the patterns have none")
            if extra:
                detail.append(f"the patterns have {_describe(extra[:3])}, which the model lacks")
            if not detail:
                detail.append("the layers come in another order")
            raise PatternsError(f"{what} belong to another model: {'; '.join(detail)} ({HOW_TO})")
        if self.digest and self.digest != weights_digest(propagator):
            raise PatternsError(f"{what} were computed for other weights of this architecture (weights digest "
                                f"{self.digest[:12]}, the model's {weights_digest(propagator)[:12]}): {HOW_TO}")


# -- the estimator -----------------------------------------------------------------------------------
def _weight_sums(op: ops.Affine, x: Tensor, g: Tensor, weight: Tensor) -> Tensor:
    """``sum_{samples, positions} g[o] * patch[i]`` for every weight entry ``(o, i)``: the weight
    gradient of the layer at input ``x`` for the output gradient ``g`` (shaped like the weight)."""
    if op.layer_type == "linear":
        return g.reshape(-1, g.shape[-1]).t().matmul(x.reshape(-1, x.shape[-1]))
    if op.pre_pad is not None:
        x = F.pad(x, op.pre_pad)
    return torch.ops.aten.convolution_backward(
        g, x, weight, None, list(op.stride), list(op.padding), list(op.dilation), False, [0] * op.nd,
        op.groups, [False, True, False])[1]


def _units(op: ops.Affine, t: Tensor) -> Tensor:
    """Sum of a layer output ``t`` over everything but its units (per output unit)."""
    if op.layer_type == "linear":
        return t.reshape(-1, t.shape[-1]).sum(dim=0)
    return t.transpose(0, 1).reshape(t.shape[1], -1).sum(dim=1)


class _Stats:
    """Running float64 sums of one layer."""

    def __init__(self) -> None:
        self.xy: Tensor | None = None
        self.x: Tensor | None = None
        self.active: Tensor | None = None
        self.y: Tensor | None = None
        self.n = 0

    def update(self, op: ops.Affine, x: Tensor, output: Tensor, kind: str) -> None:
        weight = op.weight.detach().to(torch.float64)
        x = x.detach().to(torch.float64)
        y = op.apply(x, weight)  # w^T x without bias, float64
        mask = (output.detach() > 0).to(torch.float64) if kind == "relu" else torch.ones_like(y)
        xy = _weight_sums(op, x, mask * y, weight)
        xs = _weight_sums(op, x, mask, weight)
        active, ys = _units(op, mask), _units(op, y)
        if self.xy is None:
            self.xy, self.x, self.active, self.y = xy, xs, active, ys
        else:
            self.xy += xy
            self.x += xs
            self.active += active
            self.y += ys
        self.n += y.numel() // y.shape[1 if op.layer_type == "conv" else -1]

    def pattern(self, weight: Tensor) -> Tensor:
        """``A = cov / (w^T cov)`` per unit, ``cov = E+[x y] - E+[x] E[y]`` (zero denominators -> 1)."""
        assert self.xy is not None and self.x is not None and self.active is not None and self.y is not None
        shape = (-1,) + (1,) * (weight.dim() - 1)
        count = self.active.clamp(min=1).view(shape)
        mean_y = (self.y / max(self.n, 1)).view(shape)
        cov = self.xy / count - (self.x / count) * mean_y
        denominator = (weight.to(torch.float64) * cov).flatten(1).sum(dim=1).view(shape)
        denominator = torch.where(denominator == 0, torch.ones_like(denominator), denominator)
        return cov / denominator


def _batches(data: Any) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield data
        return
    for item in data:
        if isinstance(item, (tuple, list)):  # (inputs, labels, ...) as a DataLoader gives
            item = item[0]
        if not isinstance(item, Tensor):
            raise TypeError(f"compute_patterns takes an iterable of input tensors (or (input, label) pairs), "
                            f"got {type(item).__name__}")
        yield item


def compute_patterns(model: nn.Module, data: Iterable[Tensor] | Tensor, kind: str = "relu", *,
                     progress: bool = False, total: int | None = None, device: torch.device | str | None = None,
                     info: Mapping[str, Any] | None = None) -> Patterns:
    """The patterns of every affine layer of ``model`` from one pass over ``data``.

    ``data``: an input batch, or an iterable of batches (or of ``(input, label)`` pairs, as a
    DataLoader gives), preprocessed as the model expects. ``kind``: ``"relu"`` (default; the
    two-component estimator, samples where the unit's output with bias is > 0, on the layers that
    :func:`layer_estimators` gives it: all of a ReLU network, those followed by an activation in a
    transformer, which records the choice in ``info["estimators"]``) or ``"linear"`` (all samples).
    Every token of a linear layer on tokens ``(B, T, C)`` or channels-last maps ``(B, H, W, C)`` is a
    sample, as every patch of a convolution is. ``progress`` shows a progress bar (tqdm, on stderr) with ``total`` batches.
    ``device``: where batches are moved (default: the model's). Statistics accumulate in float64;
    the model is not changed (relprop traces an inference copy of it).
    """
    from .propagate import propagator_for

    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, KINDS))}, got {kind!r}")
    from .attribution.pattern import check_pattern_ops

    propagator = propagator_for(model)
    check_pattern_ops(propagator, "PatternNet")
    layers = pattern_layers(propagator)
    if not layers:
        raise ValueError(f"{type(model).__name__} has no Linear or convolution layer: nothing to compute patterns for")
    positions = {id(node.op): pos for pos, node in enumerate(propagator.graph.nodes)}
    estimators = layer_estimators(propagator, kind)
    if device is None:
        param = next(iter(model.parameters()), None)
        device = param.device if param is not None else "cpu"
    stats = {path: _Stats() for path, _ in layers}
    samples = 0
    bar = None
    if progress:
        import sys

        from tqdm import tqdm

        bar = tqdm(total=total, unit="batch", desc="patterns", file=sys.stderr)
    try:
        for x in _batches(data):
            param = next(iter(model.parameters()), None)
            dtype = param.dtype if param is not None and x.is_floating_point() else None
            x = x.to(device=device, dtype=dtype) if dtype is not None else x.to(device)
            propagator.check_input(x)
            cache = propagator.forward(x.detach())
            for path, op in layers:
                pos = positions[id(op)]
                stats[path].update(op, cache.args[pos][0], cache.outputs[pos], estimators[path])
            samples += x.shape[0]
            del cache
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if samples == 0:
        raise ValueError("compute_patterns got no input batch")
    patterns = {path: stats[path].pattern(op.weight.detach().to(torch.float64)).cpu() for path, op in layers}
    info = dict(info or {})
    if len(set(estimators.values())) > 1:
        info["estimators"] = dict(estimators)
    return Patterns(patterns, kind, layer_fingerprint(propagator), weights_digest(propagator), samples, info)


# -- for the methods ---------------------------------------------------------------------------------
_SHIPPED: dict[str, Patterns] = {}
_SHIPPED_LOCK = threading.Lock()


def shipped_patterns(name: str) -> Patterns:
    """The shipped patterns of the shipped model ``name`` (one of :data:`SHIPPED`)."""
    if name not in SHIPPED:
        raise ValueError(f"no shipped patterns for {name!r}; shipped: {', '.join(SHIPPED)}")
    with _SHIPPED_LOCK:
        found = _SHIPPED.get(name)
    if found is None:
        found = Patterns.load(SHIPPED_DIR / f"{name}.pt")
        with _SHIPPED_LOCK:
            _SHIPPED[name] = found
    return found


_REGISTERED: "weakref.WeakKeyDictionary[nn.Module, Patterns]" = weakref.WeakKeyDictionary()
_REGISTERED_LOCK = threading.Lock()


def register_patterns(model: nn.Module, patterns: "Patterns | str | os.PathLike | None") -> None:
    """Make ``patterns`` (a :class:`Patterns` or a file path) the default patterns of ``model`` for
    ``patternnet`` and ``pattern-attribution`` (held as long as the model lives; ``None`` removes
    them). They are checked against the model now and at every use, so patterns never outlive a
    change of the model's layers or weights unnoticed."""
    from .propagate import propagator_for

    if patterns is None:
        with _REGISTERED_LOCK:
            _REGISTERED.pop(model, None)
        return
    if isinstance(patterns, (str, os.PathLike)):
        patterns = Patterns.load(patterns)
    if not isinstance(patterns, Patterns):
        raise ValueError(f"patterns must be a relprop.patterns.Patterns or the path of a patterns file, "
                         f"got {type(patterns).__name__}")
    patterns.check(propagator_for(model), f"the patterns registered for {type(model).__name__}")
    with _REGISTERED_LOCK:
        _REGISTERED[model] = patterns


def _shipped_for(propagator) -> Patterns | None:
    """The shipped patterns whose layers and weights are the model's, if any."""
    fingerprint = layer_fingerprint(propagator)
    for name in SHIPPED:
        if not (SHIPPED_DIR / f"{name}.pt").is_file():
            continue
        candidate = shipped_patterns(name)
        if candidate.fingerprint == fingerprint and candidate.digest == weights_digest(propagator):
            return candidate
    return None


def resolve_patterns(propagator, patterns: "Patterns | str | os.PathLike | None", method: str) -> Patterns:
    """The patterns to explain the propagator's model with: ``patterns`` (a :class:`Patterns` or a
    file path) checked against the model, or with None those registered for the model
    (:func:`register_patterns`), else the shipped ones of a shipped model; a
    ValueError saying how to compute them otherwise."""
    if patterns is None:
        model = propagator.model_ref()
        with _REGISTERED_LOCK:
            registered = _REGISTERED.get(model) if model is not None else None
        if registered is not None:
            registered.check(propagator, f"the patterns registered for {type(model).__name__}")
            return registered
        found = _shipped_for(propagator)
        if found is None:
            model = propagator.model_ref()
            raise ValueError(f"{method} needs the signal patterns of {type(model).__name__}: relprop ships them only "
                             f"for {', '.join(SHIPPED)} with their shipped weights; {HOW_TO}")
        return found
    if isinstance(patterns, (str, os.PathLike)):
        patterns = Patterns.load(patterns)
    if not isinstance(patterns, Patterns):
        raise ValueError(f"patterns must be a relprop.patterns.Patterns or the path of a patterns file, "
                         f"got {type(patterns).__name__}")
    patterns.check(propagator, f"the patterns given to {method}")
    return patterns
