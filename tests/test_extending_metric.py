"""docs/extending.md, "A metric": a new metric as one function plus one registration, run by the runner."""

from __future__ import annotations

import math

import pytest
from torch import Tensor

import relprop
from relprop.data.base import to_model_input
from relprop.evaluate import EvaluationConfig, Store, metric_names, metric_spec, run_evaluation
from relprop.evaluate.specs import input_spec, resolve_dataset, resolve_model
from relprop.metrics import METRICS, check_pair, register, unregister


# -- the example of docs/extending.md -------------------------------------------------------------

def peak_share(maps: Tensor, masks: Tensor) -> Tensor:
    """(B,) the largest relevance inside the mask over the largest relevance anywhere; higher is better.
    NaN for an empty mask or a map whose maximum is not positive."""
    maps, masks = check_pair(maps, masks)
    inside = maps.masked_fill(~masks, -math.inf).flatten(1).amax(1)
    peak = maps.flatten(1).amax(1)
    undefined = ~masks.flatten(1).any(1) | (peak <= 0)
    return (inside / peak).masked_fill(undefined, math.nan)


def register_peak_share() -> None:
    register("peak_share", higher_is_better=True, source="docs/extending.md (example)",
             category="localisation", fn=peak_share)

# --------------------------------------------------------------------------------------------------


@pytest.fixture
def registered():
    """``peak_share`` registered for one test, and removed afterwards."""
    register_peak_share()
    try:
        yield
    finally:
        unregister("peak_share")


def test_runner_computes_the_registered_metric(registered, tmp_path) -> None:
    assert "peak_share" in metric_names() and metric_spec("peak_share").needs_mask
    config = EvaluationConfig(dataset="shapes", dataset_options={"count": 4}, model="shapes_vgg",
                              methods=["gradient"], metrics=["peak_share"], progress=False)
    summary = run_evaluation(config, tmp_path / "peak.sqlite")
    assert summary.processed == 4 and not summary.errors
    with Store(tmp_path / "peak.sqlite", readonly=True) as db:
        stored = {(r[0], r[1]): r[4] for r in db.records(db.runs()[0]["id"], metric="peak_share")}

    model, preprocess = resolve_model("shapes_vgg", {})
    spec = input_spec(preprocess)
    expected = {}
    for sample in resolve_dataset("shapes", {"count": 4}):
        mi = to_model_input(sample, spec.size, spec.mean, spec.std)
        for label in mi.labels:
            mask = mi.masks[[k for k, o in enumerate(mi.object_labels) if o == label]].any(0)
            maps = relprop.explain(model, mi.image[None], target=label, method="gradient").sum(1)
            expected[(sample.key, label)] = float(peak_share(maps, mask[None])[0])
    assert set(stored) == set(expected)
    for key, value in expected.items():
        assert stored[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key


def test_unregister_leaves_the_registry_as_it_was(registered) -> None:
    assert METRICS["peak_share"].fn is peak_share
    with pytest.raises(ValueError, match="registered twice"):
        register_peak_share()
    unregister("peak_share")
    assert "peak_share" not in METRICS and "peak_share" not in metric_names()
    with pytest.raises(ValueError, match=r"unknown metric 'peak_share'"):
        metric_spec("peak_share")
    register_peak_share()  # the fixture removes it again


def test_unknown_metric_names_close_matches() -> None:
    with pytest.raises(ValueError, match=r"unknown metric 'pointing_gme' \(did you mean pointing_game"):
        metric_spec("pointing_gme")
    with pytest.raises(KeyError, match="not registered"):
        unregister("no_such_metric")
