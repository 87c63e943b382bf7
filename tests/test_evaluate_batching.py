"""The evaluation's shared work: explanation maps kept across jobs, frozen forward passes, chunking.

Every shortcut must give the values of the plain computation: maps from the cache equal freshly
computed ones, metrics through the frozen forward pass equal the per-sample computation with the
module itself (up to float round-off), and the runner's records do not change.
"""

from __future__ import annotations

import sqlite3
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relprop.evaluate import EvaluationConfig, run_evaluation  # noqa: E402
from relprop.evaluate import runner  # noqa: E402
from relprop.evaluate.mapcache import MapCache, image_digests  # noqa: E402
from relprop.evaluate.metricset import PairBatch, metric_spec  # noqa: E402
from relprop.metrics.inference import FrozenForward, MemoisedForward, eager_module, frozen_forward  # noqa: E402
from relprop.metrics.perturbation import region_perturbation  # noqa: E402
from relprop.models.shapes_models import load_shapes_model  # noqa: E402

#: the forward-only metrics of the runner, with options that keep them short
FORWARD_METRICS = [
    ("aopc_morf", {"counts": [0, 40, 400, 4096], "restrict": "positive", "removal": "min"}),
    ("aopc_morf", {"counts": [0, 40, 400], "removal": "shuffle"}),
    ("aopc_lerf", {"counts": [0, 8, 16, 24], "removal": "zero"}),
    ("aopc_morf", {"patch_size": 8, "counts": [0, 4, 8, 12], "removal": "zero"}),
    ("blurred_insertion", {"fractions": [0.05, 0.1]}),
    ("maximal_patch_masking", {}),
    ("maximal_patch_masking", {"location": "random"}),
    ("rise_deletion_auc", {"step": 1024}),
    ("object_context_occlusion", {}),
    ("target_score", {}),
]


def _shapes(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return load_shapes_model(arch, weights=False).eval()


def _batch(model: nn.Module, n: int = 3) -> PairBatch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, 64, 64, generator=g)
    masks = torch.zeros(n, 64, 64, dtype=torch.bool)
    masks[:, 16:40, 20:44] = True
    with torch.no_grad():
        t = model(x).argmax(1)
    return PairBatch(images=x, masks=masks, targets=t, seeds=[11, 12, 13][:n], model=model)


def _pairs(batch: PairBatch, i: int) -> PairBatch:
    return PairBatch(images=batch.images[i:i + 1], masks=batch.masks[i:i + 1], targets=batch.targets[i:i + 1],
                     seeds=batch.seeds[i:i + 1], model=batch.model)


def _close(a: list, b: list, tol: float = 1e-4) -> None:
    assert len(a) == len(b)
    for (sa, va), (sb, vb) in zip(a, b):
        assert sa == pytest.approx(sb, rel=tol, abs=tol), (sa, sb)
        if isinstance(va, dict) and "correct" in va:
            assert va["correct"] == vb["correct"]


@pytest.mark.parametrize("arch", ["shapes_vgg", "shapes_resnet"])
def test_frozen_forward_matches_the_module(arch: str) -> None:
    model = _shapes(arch)
    x = torch.randn(5, 3, 64, 64)
    fast = frozen_forward(model, x)
    assert isinstance(fast, FrozenForward) and fast.module is model
    with torch.no_grad():
        for n in (1, 2, 5):
            assert torch.allclose(fast(x[:n]), model(x[:n]), rtol=1e-4, atol=1e-4)
    assert frozen_forward(model, x) is fast  # kept


def test_frozen_forward_follows_weight_changes_and_declines_what_it_cannot_do() -> None:
    model = _shapes("shapes_vgg")
    x = torch.randn(2, 3, 64, 64)
    fast = frozen_forward(model, x)
    with torch.no_grad():
        next(model.parameters()).mul_(2.0)
        again = frozen_forward(model, x)
        assert again is not fast and torch.allclose(again(x), model(x), rtol=1e-4, atol=1e-4)
    assert frozen_forward(model.train(), x) is model
    model.eval()
    assert frozen_forward(model.double(), x.double()) is model
    plain = lambda z: z.flatten(1)[:, :3]  # noqa: E731
    assert frozen_forward(plain, x) is plain


@pytest.mark.parametrize("name,options", FORWARD_METRICS, ids=[f"{n}-{i}" for i, (n, _) in enumerate(FORWARD_METRICS)])
def test_forward_metrics_through_the_frozen_copy_equal_the_per_sample_computation(name: str, options: dict) -> None:
    model = _shapes("shapes_resnet")
    batch = _batch(model)
    maps = torch.randn(3, 64, 64, generator=torch.Generator().manual_seed(2), dtype=torch.float32)
    spec = metric_spec(name, options, 64)
    fast = spec.compute(replace(batch, forward=frozen_forward(model, batch.images)), maps, spec.options)
    slow = [spec.compute(_pairs(batch, i), maps[i:i + 1], dict(spec.options, **(
        {"internal_batch_size": 1} if "internal_batch_size" in _option_names(name) else {})))[0]
        for i in range(3)]
    _close(fast, slow)


def _option_names(name: str) -> set:
    from relprop.evaluate.metricset import _options
    from relprop.metrics import METRICS

    return _options(METRICS[name])


def test_incremental_evaluation_uses_the_module_behind_a_frozen_copy() -> None:
    model = _shapes("shapes_vgg")
    batch = _batch(model, 2)
    maps = torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(3))
    fast = frozen_forward(model, batch.images)
    kw = dict(counts=[0, 1, 2, 3], patch_size=8, removal="zero")
    a = region_perturbation(fast, batch.images, maps, batch.targets, incremental=True, **kw)
    b = region_perturbation(model, batch.images, maps, batch.targets, incremental=False, **kw)
    assert torch.allclose(a.scores, b.scores, rtol=1e-4, atol=1e-4)


class _Counting(nn.Module):
    """A small conv net that records how many rows each call pushes through it."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5))
        self.rows: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.rows.append(x.shape[0])
        return self.net(x)


def test_memoised_forward_runs_each_distinct_row_once_with_the_module_logits() -> None:
    model = _Counting().eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    memo = MemoisedForward(model)
    assert eager_module(memo) is model
    with torch.no_grad():
        first = memo(torch.stack([x[0], x[1], x[0], x[2]]))  # a repeated row within a call
        second = memo(torch.stack([x[2], x[3], x[1], x[3]]))  # rows of the call before, a new one twice
        want = model.net(x)
    assert model.rows == [3, 1] and (memo.misses, memo.hits) == (4, 4)
    assert torch.allclose(first, want[[0, 1, 0, 2]], rtol=1e-6, atol=1e-7)
    assert torch.allclose(second, want[[2, 3, 1, 3]], rtol=1e-6, atol=1e-7)
    assert torch.equal(first[0], first[2]) and torch.equal(second[1], second[3])
    seen: list[int] = []

    def head(z: torch.Tensor) -> torch.Tensor:
        seen.append(z.shape[0])
        return z.flatten(1)[:, :2].float()
    raw = MemoisedForward(head)
    with torch.no_grad():  # another dtype or another shape of the same bytes is another input
        raw(x[:1])
        raw(x[:1].view(torch.int32))
        raw(x[:1].reshape(1, 3, 4, 16))
        raw(x[:1])
    assert seen == [1, 1, 1] and raw.hits == 1
    with torch.no_grad():  # the module's weights changed in place: nothing kept is used again
        model.net[-1].bias.add_(1.0)
        again = memo(x[:2])
        assert model.rows[-1] == 2 and torch.allclose(again, model.net(x[:2]), rtol=1e-6, atol=1e-7)


def test_memoised_forward_passes_through_what_it_cannot_keep() -> None:
    model = _Counting().eval()
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    memo = MemoisedForward(model)
    out = memo(x)  # gradients wanted: the module's own call, every time
    out.sum().backward()
    memo(x)
    assert model.rows == [2, 2] and memo.hits == memo.misses == 0 and x.grad is not None
    whole = MemoisedForward(lambda z: z.sum())  # not one row per input row: declined from then on
    with torch.no_grad():
        assert torch.equal(whole(x), x.sum()) and torch.equal(whole(x), x.sum())
    small = MemoisedForward(model, max_bytes=2 * 5 * 4)  # two rows of five float32 logits
    with torch.no_grad():
        small(x[:1].detach())
        small(x.detach() + 1)
        assert small.bytes <= small.max_bytes and len(small._kept) == 2
        small(x[:1].detach())  # dropped as the oldest: computed again
    assert model.rows[-3:] == [1, 2, 1]
    with torch.no_grad():
        half = torch.randn(2, 3, 8, 8).bfloat16()
        assert torch.equal(MemoisedForward(lambda z: z.flatten(1)[:, :3])(half), half.flatten(1)[:, :3])


def test_runner_memoises_the_forward_passes_and_keeps_the_records(tmp_path: Path, monkeypatch) -> None:
    """Two methods' curves on the same images start from the same clean image, and a randomly placed
    patch does not depend on the map: the runner pushes each once, with the records of a run without."""
    made: list = []

    class Spy(MemoisedForward):
        def __init__(self, *a, **k) -> None:
            super().__init__(*a, **k)
            made.append(self)
    monkeypatch.setattr(runner, "MemoisedForward", Spy)
    cfg = EvaluationConfig(dataset="evaluate_fixtures:tiny_dataset", dataset_options={"count": 4},
                           model="evaluate_fixtures:tiny_model", methods=["gradient", "lrp-epsilon"],
                           batch_size=4, progress=False, targets="predicted",
                           metrics=["aopc_morf", "maximal_patch_masking"],
                           metric_options={"aopc_morf": {"counts": [0, 10, 20]},
                                           "maximal_patch_masking": {"location": "random"}})
    run_evaluation(cfg, tmp_path / "memo.sqlite")
    assert made and sum(m.hits for m in made) > 0
    run_evaluation(replace(cfg, memoised_forward=False), tmp_path / "plain.sqlite")
    memo, plain = _records(tmp_path / "memo.sqlite", "predicted"), _records(tmp_path / "plain.sqlite", "predicted")
    assert memo.keys() == plain.keys() and memo
    for k, v in plain.items():
        assert memo[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


@pytest.mark.parametrize("method", ["lrp-cmp", "hedge", "gradient"])
def test_pairs_of_one_image_are_explained_in_one_pass(method: str) -> None:
    """The label pairs of a scene show the same image: a method that explains several targets at once
    gets each image once with its K classes; the maps equal one row per pair."""
    from relprop import Explainer
    from relprop.evaluate.runner import explain_pairs

    model = _shapes("shapes_resnet")
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    owners = [0, 0, 1, 2, 2, 2, 3, 1]
    x, targets = images[torch.tensor(owners)], torch.tensor([1, 2, 3, 0, 4, 5, 2, 1])
    explainer = Explainer(model, method)
    seen: list[int] = []
    explain = explainer.explain

    def spy(inputs: torch.Tensor, target=None, record=None):
        seen.append(inputs.shape[0])
        return explain(inputs, target, record)
    explainer.explain = spy  # type: ignore[method-assign]
    maps = explain_pairs(explainer, x, targets, owners)
    want = explain(x, targets).sum(1)
    assert maps.shape == want.shape
    assert torch.allclose(maps, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    at_once = explainer.method.multi_target
    assert sorted(seen) == ([1, 1, 2] if at_once else [8])  # K = 1, 2 and 3: one call each, each image once


def test_map_cache_keeps_whole_batches() -> None:
    cache = MapCache()
    x = torch.randn(4, 3, 8, 8)
    digests = image_digests(x)
    targets = torch.tensor([0, 1, 0, 1])
    calls = []

    def explain(idx: list[int]):
        def run() -> torch.Tensor:
            calls.append(idx)
            return x[idx].sum(1) * (targets[idx] + 1)[:, None, None]
        return run

    first = cache.maps("m", digests, targets, explain([0, 1, 2, 3]))
    again = cache.maps("m", digests, targets, explain([0, 1, 2, 3]))
    assert calls == [[0, 1, 2, 3]] and torch.equal(first, again)
    assert (cache.hits, cache.misses) == (4, 4)
    cache.maps("m", digests[:2], targets[:2], explain([0, 1]))  # another batch
    cache.maps("other", digests, targets, explain([0, 1, 2, 3]))  # another method
    cache.maps("m", digests, targets.flip(0), explain([0, 1, 2, 3]))  # other classes
    assert len(calls) == 4 and len(cache) == 4


def test_map_cache_drops_the_least_recently_used_beyond_its_size() -> None:
    cache = MapCache(max_bytes=2 * 16 * 4)  # two 4 x 4 float32 maps
    for i in range(3):
        cache.put(("m", bytes([i]), 0), torch.full((4, 4), float(i)))
    assert len(cache) == 2 and cache.get(("m", bytes([0]), 0)) is None
    assert cache.get(("m", bytes([2]), 0)) is not None


def _records(store: Path, targets: str) -> dict:
    con = sqlite3.connect(store)
    rows = con.execute("SELECT c.sample, c.target, c.method, c.metric, c.scalar FROM records c JOIN runs r "
                       "ON r.id = c.run WHERE r.targets = ?", (targets,)).fetchall()
    con.close()
    return {r[:4]: r[4] for r in rows}


def test_shared_model_reuses_maps_across_jobs_and_keeps_the_records(tmp_path: Path) -> None:
    """Jobs with the same batches (targets, batch size, data set order) reuse the maps; the records
    equal those of separate runs (to the bit for map metrics, up to the frozen forward's round-off)."""
    base = dict(dataset="evaluate_fixtures:tiny_dataset", dataset_options={"count": 6},
                model="evaluate_fixtures:tiny_model", methods=["gradient", "lrp-epsilon"], batch_size=4,
                progress=False)
    first = EvaluationConfig(targets="predicted", metrics=["pointing_game"], **base)
    second = EvaluationConfig(targets="predicted", metrics=["mu", "aopc_morf"],
                              metric_options={"aopc_morf": {"counts": [0, 10, 20]}}, **base)
    try:
        for cfg in (first, second):
            run_evaluation(replace(cfg, share_model=True), tmp_path / "shared.sqlite")
        (cache,) = [entry[4] for entry in runner._SHARED.values()]
        assert cache.hits > 0
    finally:
        runner._SHARED.clear()
    for cfg in (first, second):
        run_evaluation(replace(cfg, frozen_forward=False, memoised_forward=False), tmp_path / "plain.sqlite")
    shared, plain = _records(tmp_path / "shared.sqlite", "predicted"), _records(tmp_path / "plain.sqlite", "predicted")
    assert shared.keys() == plain.keys() and shared
    for k, v in plain.items():
        if k[3].startswith("aopc"):
            assert shared[k] == pytest.approx(v, rel=1e-4, abs=1e-5), k
        else:
            assert shared[k] == v, k


def test_shared_maps_are_dropped_when_the_model_weights_change(tmp_path: Path) -> None:
    """A shared model changed in place between two evaluations: its kept maps are not reused (the
    second run's maps are those of the changed weights)."""
    cfg = EvaluationConfig(dataset="evaluate_fixtures:tiny_dataset", dataset_options={"count": 4},
                           model="evaluate_fixtures:tiny_model", methods=["gradient"], batch_size=4,
                           progress=False, targets="labels", metrics=["pointing_game"], share_model=True)
    try:
        run_evaluation(cfg, tmp_path / "a.sqlite")
        (entry,) = runner._SHARED.values()
        model, cache = entry[0], entry[4]
        misses = cache.misses
        with torch.no_grad():
            next(model.parameters()).mul_(-1.0)
        run_evaluation(cfg, tmp_path / "b.sqlite")
        assert cache.misses > misses and cache.hits == 0
    finally:
        runner._SHARED.clear()


def test_expanding_methods_run_in_chunks_with_the_same_maps() -> None:
    from relprop.api import Explainer
    from relprop.evaluate.runner import Evaluation

    cfg = EvaluationConfig(dataset="shapes", model="shapes_vgg", model_options={"weights": False}, limit=2,
                           methods=["integrated-gradients", "gradient"], progress=False)
    ev = Evaluation(cfg)
    (ig_key, _, ig_opts, ig), (_, _, _, grad) = ev.methods
    assert ig_key == "integrated-gradients" and ig_opts == {} and ig.options == {"internal_batch_size": 16}
    assert grad.options == {}
    x = torch.randn(3, 3, 64, 64)
    t = torch.tensor([0, 1, 2])
    assert torch.equal(ig.explain(x, t), Explainer(ev.model, "integrated-gradients").explain(x, t))


def test_smoothgrad_in_chunks_of_16_rows_gives_the_same_maps_on_a_residual_network() -> None:
    from relprop.api import Explainer
    from relprop.evaluate import runner
    from relprop.models import load_model

    model = load_model("shapes_resnet", weights=False)
    model = (model[0] if isinstance(model, tuple) else model).eval()
    options = runner._explain_options("smoothgrad", {"samples": 6}, 64 * 64, torch.device("cpu"))
    assert options == {"samples": 6, "internal_batch_size": runner.EXPLAIN_CHUNK_ROWS} and runner.EXPLAIN_CHUNK_ROWS == 16
    x = torch.randn(5, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 1, 2, 0, 1])
    chunked = Explainer(model, "smoothgrad", **options).explain(x, t)
    assert torch.equal(chunked, Explainer(model, "smoothgrad", samples=6).explain(x, t))


def test_volumes_run_in_chunks_of_4_rows_with_the_same_maps() -> None:
    from relprop.api import Explainer
    from relprop.evaluate import runner
    from relprop.models import load_model

    options = runner._explain_options("integrated-gradients", {"steps": 3}, 32 ** 3, torch.device("cpu"))
    assert options == {"steps": 3, "internal_batch_size": 4}
    assert runner._explain_options("integrated-gradients", {}, 224 * 224, torch.device("cpu")) == {
        "internal_batch_size": 3}
    model = load_model("nodules3d_vgg", weights=False)
    model = (model[0] if isinstance(model, tuple) else model).eval()
    x = torch.randn(3, 1, 32, 32, 32, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 1, 0])
    chunked = Explainer(model, "integrated-gradients", steps=8, internal_batch_size=4).explain(x, t)
    # the chunks of 12 rows used before: each row's gradient is the same to the bit
    assert torch.equal(chunked, Explainer(model, "integrated-gradients", steps=8, internal_batch_size=12).explain(x, t))
