"""Vision transformers (torchvision's ``VisionTransformer``, random weights) explained with CP-LRP and
AttnLRP: the attention decomposition equals ``nn.MultiheadAttention``, CP-LRP conserves, AttnLRP's
softmax rule absorbs exactly what its formula says, every LRP method runs on a ViT, the user's model
is left as it was, and CP-LRP equals lxt 2.1's efficient CP-LRP patches."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from engine_checks import (REFUSALS_ON_TRANSFORMERS, assert_batch_equals_samples, assert_cp_lrp_conserves,
                           assert_explains_or_refuses)
from relprop.attribution.registry import get_method
from relprop.attention import DecomposedAttention
from relprop.structure import inference_copy

sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent / "misuse"))
from model_state import assert_unchanged, snapshot  # noqa: E402

DOUBLE = torch.float64
SMALL = dict(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)


def small_vit(seed: int = 0, conservative: bool = False, **config) -> nn.Module:
    """A random ViT in float64. torchvision zeroes the head; it is drawn here. ``conservative``:
    every bias, layer-norm beta, the class token and the positional embedding are zero."""
    torch.manual_seed(seed)
    model = torchvision.models.VisionTransformer(**{**SMALL, **config}).double().eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.5)
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("class_token", "encoder.pos_embedding"):
                p.zero_() if conservative else p.normal_(0, 0.1)
    return model


def image(batch: int = 2, side: int = 32, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, side, side, dtype=DOUBLE, generator=torch.Generator().manual_seed(seed))


# -- the attention decomposition -----------------------------------------------------------------
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("self_attention", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_decomposed_attention_equals_multihead_attention(batch_first, self_attention, bias):
    torch.manual_seed(2)
    mha = nn.MultiheadAttention(12, 3, bias=bias, batch_first=batch_first).double().eval()
    shape = (2, 5, 12) if batch_first else (5, 2, 12)
    q = torch.randn(shape, dtype=DOUBLE)
    k, v = (q, q) if self_attention else (torch.randn(shape, dtype=DOUBLE), torch.randn(shape, dtype=DOUBLE))
    decomposed = DecomposedAttention(mha, "attention")
    with torch.no_grad():
        want, want_weights = mha(q, k, v)
        got, got_weights = decomposed(q, k, v)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got_weights, want_weights, rtol=1e-12, atol=1e-12)
        assert decomposed(q, k, v, need_weights=False)[1] is None
    assert decomposed.in_proj.weight is mha.in_proj_weight and decomposed.out_proj.weight is mha.out_proj.weight


def test_inference_copy_decomposes_attention_and_shares_tensors():
    model = small_vit()
    copy = inference_copy(model)
    attention = copy.encoder.layers.encoder_layer_0.self_attention
    original = model.encoder.layers.encoder_layer_0.self_attention
    assert isinstance(attention, DecomposedAttention) and isinstance(original, nn.MultiheadAttention)
    assert attention.in_proj.weight is original.in_proj_weight
    x = image()
    with torch.no_grad():
        torch.testing.assert_close(copy(x), model(x), rtol=1e-12, atol=1e-12)


class _Attending(nn.Module):
    def __init__(self, **options) -> None:
        super().__init__()
        self.attention = nn.MultiheadAttention(8, 2, batch_first=True, **options)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(4, 4, dtype=torch.bool) if self.masked else None
        return self.head(self.attention(x, x, x, attn_mask=mask)[0][:, 0])

    masked = False


@pytest.mark.parametrize("case", ["bias_kv", "kdim", "mask"])
def test_unsupported_attention_is_named(case):
    options = {"bias_kv": {"add_bias_kv": True}, "kdim": {"kdim": 5}, "mask": {}}[case]
    model = _Attending(**options).eval()
    model.masked = case == "mask"
    x = torch.randn(2, 4, 8)
    with pytest.raises(relprop.UnsupportedOperationError, match="MultiheadAttention at 'attention'"):
        relprop.explain(model, x, target=0, method="cp-lrp")


# -- parameters read in a forward ----------------------------------------------------------------
class _Tokens(nn.Module):
    """A class token concatenated before the tokens, a positional embedding added, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.randn(1, 1, 3))
        self.position = nn.Parameter(torch.randn(1, 5, 3))
        self.head = nn.Linear(15, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = torch.cat([self.token.expand(x.shape[0], -1, -1), x], dim=1) + self.position
        return self.head(torch.flatten(t, 1))


def test_constant_token_and_embedding_absorb_their_share():
    torch.manual_seed(3)
    model = _Tokens().double().eval()
    x = torch.randn(2, 4, 3, dtype=DOUBLE)
    composite = relprop.Composite([(relprop.composite.by_type("linear"), relprop.rules.Epsilon(0.0))], norm_epsilon=0.0)
    r, rec = relprop.Explainer(model, composite).explain(x, target=1, record=["add"])
    with torch.no_grad():
        summed = torch.cat([model.token.expand(2, -1, -1), x], dim=1) + model.position
    # the sum gives the tokens x / (c + x + p) of its relevance, the class token's row goes nowhere
    torch.testing.assert_close(r, x * (rec["add"] / summed)[:, 1:], rtol=1e-12, atol=1e-12)


def test_parameters_in_other_operations_are_still_refused():
    class Permuted(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer("index", torch.tensor([2, 0, 1]))
            self.head = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(x[:, self.index])

    with pytest.raises(relprop.UnsupportedOperationError, match="reads the parameter or buffer 'index' directly"):
        relprop.explain(Permuted().eval(), torch.randn(2, 3), target=0, method="lrp-z")


# -- conservation ----------------------------------------------------------------------------------
def test_cp_lrp_conserves_the_target_logit():
    """Without biases, beta, class token and positional embedding, and without stabilisers, CP-LRP
    is a chain of conservative rules: the map sums to the logit (measured: about 1e-15 relative)."""
    model = small_vit(conservative=True)
    x = image()
    target = torch.tensor([1, 7])
    assert_cp_lrp_conserves(model, x, target)


def test_rap_conserves_the_target_logit_and_rap_journal_sums_to_zero():
    """RAP on a ViT (signed inputs split, attention products by RAP's linear rule on the value mix,
    layer norms unchanged): with nothing that absorbs relevance its map sums to the target logit
    (measured: about 1e-15 relative). With random biases in every layer (ignored, as RAP's biases
    are) the class token, a parameter, is the only absorber: the map plus the relevance of the class
    token's row of the concatenation sums to the logit. rap-journal's map sums to 0 (its Eq. 6)."""
    x, target = image(), torch.tensor([1, 7])
    for conservative in (True, False):
        model = small_vit(conservative=conservative)
        with torch.no_grad():
            model.encoder.pos_embedding.zero_()
            logits = model(x).gather(1, target[:, None]).flatten()
        r, recorded = relprop.Explainer(model, "rap").explain(x, target=target, record=["cat"])
        assert r.shape == x.shape and bool(r.isfinite().all())
        absorbed = recorded["cat"][:, 0].sum(-1)
        if conservative:
            assert float(absorbed.abs().max()) == 0.0
        else:
            assert float(absorbed.abs().min()) > 1e-3
        torch.testing.assert_close(r.flatten(1).sum(1) + absorbed, logits, rtol=1e-9, atol=0.0)
    journal = relprop.explain(model, x, target=target, method="rap-journal")
    torch.testing.assert_close(journal.flatten(1).sum(1), torch.zeros(2, dtype=DOUBLE), rtol=0, atol=1e-9)
    assert journal.abs().sum() > 0


def _softmax_nodes(model: nn.Module) -> list[tuple[str, str]]:
    """(softmax node, its input node) of each attention head, in the traced graph."""
    from relprop.propagate import propagator_for

    graph = propagator_for(model).graph
    return [(n.name, graph.nodes[n.inputs[0]].name) for n in graph.nodes if n.op.kind == "softmax"]


def test_attnlrp_loses_exactly_what_its_softmax_rule_absorbs():
    """With the same zeroed model, every AttnLRP rule but the softmax's conserves; the softmax rule
    keeps ``sum_j (x_j - sum_i s_i x_i) R_j`` of each head's ``sum_j R_j`` (Prop. 3.1). The total it
    absorbs equals the gap between the logit and the map's sum (to 1e-9 relative); on these random
    ViTs the map keeps between 20% and 80% of the logit (measured: 45% and 48% here, 28% to 71% over
    seeds 1 to 5)."""
    model = small_vit(conservative=True)
    x = image()
    target = torch.tensor([1, 7])
    pairs = _softmax_nodes(model)
    assert len(pairs) == 2
    record = [name for pair in pairs for name in pair]
    result = relprop.Explainer(model, "attnlrp", epsilon=0.0).explain(x, target=target, record=record)
    r, rec = result
    absorbed = sum(rec[out].sum((1, 2, 3)) - rec[logits].sum((1, 2, 3)) for out, logits in pairs)
    with torch.no_grad():
        logit = model(x).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(logit - r.sum((1, 2, 3)), absorbed, rtol=1e-9, atol=1e-9 * float(logit.abs().max()))
    kept = r.sum((1, 2, 3)) / logit
    assert bool(((kept > 0.2) & (kept < 0.8)).all()), kept


# -- every LRP method ------------------------------------------------------------------------------
#: the LRP methods (LRP rules, contrastive and softmax-gradient variants, excitation backprop);
#: rap, rap-journal, hedge and rsp do not explain token sequences yet
LRP_METHODS = [m for m in relprop.methods()
               if m.startswith("lrp-") or m in ("cp-lrp", "attnlrp", "clrp", "sglrp", "contrastive-eb",
                                                "excitation-backprop")]


def test_lrp_methods_listed():
    assert {"cp-lrp", "attnlrp", "lrp-epsilon", "lrp-z"} <= set(LRP_METHODS)
    assert all("record" in get_method(m).options() for m in LRP_METHODS)


@pytest.mark.parametrize("method", LRP_METHODS)
def test_lrp_method_explains_a_vit(method):
    model = small_vit()
    x = image()
    target = torch.tensor([2, 5])
    r = relprop.explain(model, x, target=target, method=method)
    assert r.shape == x.shape and bool(r.isfinite().all())
    assert r.abs().sum() > 0
    for i in range(2):
        one = relprop.explain(model, x[i:i + 1], target=target[i:i + 1], method=method)
        torch.testing.assert_close(one, r[i:i + 1], rtol=1e-9, atol=1e-12 * float(r.abs().max()))


def test_model_unchanged_after_explaining():
    model = small_vit()
    model.train()
    model.encoder.layers.encoder_layer_1.eval()
    handle = model.heads.register_full_backward_hook(lambda *args: None)
    before = snapshot(model)
    x = image()
    for method in ("cp-lrp", "attnlrp", "lrp-epsilon", "gradient", "attention-rollout", "transformer-attribution"):
        relprop.explain(model, x, target=3, method=method)
        assert_unchanged(model, before)
    assert isinstance(model.encoder.layers.encoder_layer_0.self_attention, nn.MultiheadAttention)
    handle.remove()


# -- parity with lxt 2.1 ---------------------------------------------------------------------------
_LXT_SIDE = textwrap.dedent('''
    import os, sys, types
    from functools import partial

    import torch
    import lxt

    # lxt.efficient/__init__ imports the language-model patches, which import transformers:
    # load the efficient package's modules without it
    efficient = types.ModuleType("lxt.efficient")
    efficient.__path__ = [os.path.join(os.path.dirname(lxt.__file__), "efficient")]
    sys.modules["lxt.efficient"] = efficient
    from lxt.efficient.patches import (cp_multi_head_attention_forward, layer_norm_forward,
                                       non_linear_forward, patch_method, wrap_attention_forward)
    from torchvision.models import vision_transformer

    def eager_attention(module, query, key, value):
        """Scaled dot-product attention of (batch, heads, tokens, width) tensors, written out as the
        eager attention functions that lxt's AttnLRP wrapper is made for."""
        scores = torch.matmul(query, key.transpose(-2, -1)) / query.shape[-1] ** 0.5
        return torch.matmul(torch.softmax(scores, dim=-1), value)

    def attnlrp_multi_head_attention_forward(self, query, key, value, *args, **kwargs):
        """torchvision's self-attention (packed projections, batch first, no mask, no dropout) with
        lxt's AttnLRP attention wrapper (query and key gradients divided by 4, value by 2: the uniform
        rule of both matrix products; the softmax left to gradient x input, its Taylor rule)."""
        e, h = self.embed_dim, self.num_heads
        n, length = query.shape[:2]
        q, k, v = torch.nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias).split(e, dim=-1)
        q, k, v = (t.reshape(n, length, h, e // h).transpose(1, 2) for t in (q, k, v))
        out = wrap_attention_forward(eager_attention)(self, q, k, v).transpose(1, 2).reshape(n, length, e)
        # the output projection as torch's own attention applies it (no module call: no zennit hook)
        return torch.nn.functional.linear(out, self.out_proj.weight, self.out_proj.bias), None

    # lxt/efficient/models/vit_torch.py: cp_LRP, as monkey_patch(vision_transformer) applies it;
    # "attnlrp": the same with lxt's AttnLRP attention wrapper in place of its CP-LRP attention
    attention = {"cp-lrp": cp_multi_head_attention_forward, "attnlrp": attnlrp_multi_head_attention_forward}
    patches = {
        vision_transformer.nn.GELU: partial(patch_method, non_linear_forward, keep_original=True),
        vision_transformer.nn.LayerNorm: partial(patch_method, layer_norm_forward),
        vision_transformer.nn.MultiheadAttention: partial(patch_method, attention[sys.argv[3]],
                                                          keep_original=True),
    }
    for target, patch in patches.items():
        assert patch(target), target
    state, x, c, config = torch.load(sys.argv[1])
    model = vision_transformer.VisionTransformer(**config).double()
    model.load_state_dict(state)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = x.clone().requires_grad_(True)
    gamma = float(sys.argv[4])
    if gamma > 0:  # lxt's ViT example: zennit Gamma on convolutions and linear layers, through lxt's bridge
        from lxt.efficient.zennit_patches import monkey_patch_zennit
        from zennit.composites import LayerMapComposite
        from zennit.rules import Gamma

        monkey_patch_zennit()
        rule = Gamma(gamma, stabilizer=float(sys.argv[5]))
        with LayerMapComposite([(torch.nn.Conv2d, rule), (torch.nn.Linear, rule)]).context(model):
            y = model(x)
            y[0, c].backward()
    else:
        y = model(x)
        y[0, c].backward()
    torch.save(((x * x.grad).sum(1).detach(), y.detach()), sys.argv[2])
''')


def _lxt_map(model: nn.Module, x: torch.Tensor, target: int, config: dict, tmp_path,
             variant: str = "cp-lrp", gamma: float = 0.0, stabilizer: float = 1e-6) -> torch.Tensor:
    if importlib.util.find_spec("lxt") is None:
        pytest.skip("lxt 2.1 is not installed (pip install lxt==2.1 --no-deps; its ViT patches need only torch)")
    if gamma > 0 and importlib.util.find_spec("zennit") is None:
        pytest.skip("zennit is not installed (test extra)")
    (tmp_path / "lxt_side.py").write_text(_LXT_SIDE)
    torch.save((model.state_dict(), x, target, config), tmp_path / "in.pt")
    done = subprocess.run([sys.executable, str(tmp_path / "lxt_side.py"), str(tmp_path / "in.pt"),
                           str(tmp_path / "out.pt"), variant, str(gamma), str(stabilizer)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    reference, logits = torch.load(tmp_path / "out.pt")
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), rtol=1e-12, atol=1e-12)  # the same model
    return reference


def _parity(config: dict, tmp_path, seed: int, variant: str = "cp-lrp", gamma: float = 0.0) -> float:
    model = small_vit(seed, **config)
    x = image(1, config.get("image_size", 32), seed)
    stabilizer = 1e-12  # zennit's stabiliser of the gamma ratios; relprop's is epsilon=0 (0/0 := 0)
    reference = _lxt_map(model, x, 3, {**SMALL, **config}, tmp_path, variant, gamma, stabilizer)
    options = {"gamma": gamma} if gamma > 0 else {}
    ours = relprop.explain(model, x, target=3, method=variant, epsilon=0.0, **options).sum(1)
    return float((ours - reference).norm() / reference.norm())


def test_cp_lrp_equals_lxt(tmp_path):
    """relprop: ``method="cp-lrp", epsilon=0.0`` (LRP-0 on every convolution and linear layer,
    attention projections included, with biases absorbing; layer norm with sigma constant and beta
    absorbing; softmax output constant, all relevance to the values; identity rule on GELU; residual
    sums in proportion to their terms; class token and positional embedding absorb their share).
    lxt 2.1 (run in a fresh process, its patches replace torch classes process-wide): the efficient
    CP-LRP patches of ``lxt/efficient/models/vit_torch.py`` (GELU identity rule, LayerNorm with sigma
    detached, nn.MultiheadAttention with query and key detached), no zennit composite, so every
    linear and convolution layer is LRP-0 through gradient x input; float64 model, parameters frozen,
    ``y[0, c].backward()``, map ``(x * x.grad).sum(channel)``. Both on the same random
    ``VisionTransformer`` with every bias, beta, class token and positional embedding drawn (not
    zero). Agreement: relative L2 error of the channel-summed maps below 1e-6 (measured: about 4e-9,
    the rest being lxt's identity-rule stabiliser 1e-10); AttnLRP's map differs by about 50%."""
    error = _parity({}, tmp_path, seed=4)
    assert error < 1e-6, error


def test_attnlrp_equals_lxt(tmp_path):
    """relprop: ``method="attnlrp", epsilon=0.0``: as cp-lrp above, except inside attention, where the
    softmax gets AttnLRP's Taylor rule (Prop. 3.1) and both matrix products the uniform rule over their
    two factors (Prop. 3.3). lxt 2.1 does not patch torchvision's attention for AttnLRP (its ViT
    configuration detaches query and key, the CP-LRP rule), but it implements AttnLRP's attention for
    eager attention functions (``lxt.efficient.patches.wrap_attention_forward``: gradients of query
    and key divided by 4, of the value by 2, softmax by gradient x input). The lxt side here replaces
    ``nn.MultiheadAttention.forward`` by torchvision's arithmetic (packed input projection, heads,
    scaled scores, softmax, weighted values, output projection) with that wrapper around the eager
    attention, and keeps lxt's GELU and LayerNorm patches; everything else as in the cp-lrp test.
    Agreement: relative L2 error below 1e-6."""
    error = _parity({}, tmp_path, seed=6, variant="attnlrp")
    assert error < 1e-6, error


@pytest.mark.parametrize("variant", ["cp-lrp", "attnlrp"])
def test_gamma_equals_lxt_with_zennit_gamma(tmp_path, variant):
    """``gamma=0.25``: relprop puts LRP-gamma on the convolution and linear layers outside attention;
    the lxt side is its ViT example's configuration, lxt's patches (as in the two tests above) plus
    zennit's ``Gamma(0.25)`` on every ``nn.Conv2d`` and ``nn.Linear`` module through lxt's zennit bridge
    (``monkey_patch_zennit``). The attention projections are applied functionally on both lxt sides, so
    zennit's rules never reach them, and relprop keeps LRP-epsilon there. Agreement: relative L2 error
    below 1e-6; the gamma map differs from the epsilon map by far more (checked)."""
    error = _parity({}, tmp_path, seed=7, variant=variant, gamma=0.25)
    assert error < 1e-6, error
    model, x = small_vit(7), image(1, 32, 7)
    plain, raised = (relprop.explain(model, x, target=3, method=variant, epsilon=0.0, **options).sum(1)
                     for options in ({}, {"gamma": 0.25}))
    assert float((plain - raised).norm() / raised.norm()) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["cp-lrp", "attnlrp"])
def test_equals_lxt_on_vit_b_16_config(tmp_path, variant):
    """As above on the ``vit_b_16`` configuration (224 pixels, 16-pixel patches, 12 layers of 12
    heads, 768 wide, random weights: nothing is downloaded)."""
    config = dict(image_size=224, patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072,
                  num_classes=1000)
    error = _parity(config, tmp_path, seed=5, variant=variant)
    assert error < 1e-6, error


#: methods that are not defined on token sequences, and the words of their clear refusal
REFUSED_ON_TOKENS = {**REFUSALS_ON_TRANSFORMERS}


@pytest.mark.parametrize("method", sorted(relprop.methods()))
def test_every_method_explains_a_vit_or_refuses_clearly(method):
    """No method fails on a ViT with an obscure error from deep inside a rule: it explains (finite,
    shaped like the image) or raises a ValueError that says why."""
    model, x = small_vit(), image()
    assert_explains_or_refuses(model, x, method, REFUSED_ON_TOKENS)


@pytest.mark.parametrize("method", sorted(set(relprop.methods()) - set(REFUSED_ON_TOKENS)))
def test_a_batch_equals_its_samples(method):
    """Every method that explains a ViT gives each sample of a batch the map of its own call (cheap
    settings of tests/engine_checks.py; the sampling methods draw per sample)."""
    assert_batch_equals_samples(small_vit(), image(3), torch.tensor([2, 5, 9]), method)


@pytest.mark.slow
def test_cp_lrp_conserves_on_vit_b_16():
    """torchvision's ``vit_b_16`` itself (random weights, float64, 224 pixels, 12 blocks) with every
    bias, beta, class token and positional embedding zero: the map sums to the target logit."""
    torch.manual_seed(0)
    model = torchvision.models.vit_b_16().double().eval()
    with torch.no_grad():
        nn.init.normal_(model.heads.head.weight, std=0.05)
        for name, p in model.named_parameters():
            if name.endswith("bias") or name in ("class_token", "encoder.pos_embedding"):
                p.zero_()
    x = image(batch=1, side=224)
    r = relprop.explain(model, x, target=3, method="cp-lrp", epsilon=0.0)
    with torch.no_grad():
        logit = model(x)[0, 3]
    assert r.shape == x.shape and abs(float(logit)) > 1e-3
    torch.testing.assert_close(r.sum(), logit, rtol=1e-6, atol=0.0)


# -- ConvNeXt: layer norms over channels, a learned per-channel layer scale ------------------------
def test_cp_lrp_conserves_on_convnext_tiny():
    """Random-init torchvision convnext_tiny in float64 with every bias and layer-norm beta zeroed:
    CP-LRP's input relevance sums to the target logit (its channels-first layer norms are traced
    through their permutes, its layer scale is a product with a constant)."""
    torch.manual_seed(0)
    model = torchvision.models.convnext_tiny().double().eval()
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "bias", None) is not None:
                module.bias.zero_()
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.5, 1.5)  # not the tiny 1e-6 of the initialisation
    x = image(batch=1, side=64)
    assert_cp_lrp_conserves(model, x, 3)


#: methods not defined on ConvNeXt's channels-last linear layers, and the words of their refusal
REFUSED_ON_CONVNEXT = {"attention-rollout": "ConvNeXt has no attention",
                       "transformer-attribution": "ConvNeXt has no attention", **REFUSALS_ON_TRANSFORMERS}


@pytest.fixture(scope="module")
def convnext() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.convnext_tiny(num_classes=10).eval()


@pytest.mark.parametrize("method", sorted(relprop.methods()))
def test_every_method_explains_a_convnext_or_refuses_clearly(method, convnext):
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert_explains_or_refuses(convnext, x, method, REFUSED_ON_CONVNEXT)


@pytest.mark.parametrize("method", sorted(set(relprop.methods()) - set(REFUSED_ON_CONVNEXT)))
def test_a_batch_equals_its_samples_on_convnext(method):
    """As for the ViT, on a small random ConvNeXt (torchvision's blocks: channels-first layer norms,
    layer scale; two stages of one block, float64, 32 pixels: its last feature map is 2 x 2)."""
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    torch.manual_seed(0)
    model = ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10).double().eval()
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "layer_scale"):
                module.layer_scale.uniform_(0.5, 1.5)  # not the tiny 1e-6 of the initialisation
    assert_batch_equals_samples(model, image(3), torch.tensor([2, 5, 9]), method)
