"""Bootstrap intervals, paired permutation tests and Holm's correction (relprop.metrics.aggregate)."""

from __future__ import annotations

import math
import time

import pytest
import torch

from relprop.metrics.aggregate import (Sums, bootstrap_interval, bootstrap_sums, holm, paired_bootstrap,
                                       paired_test, permutation_test, resample_weights, sums_by_group)


def test_holm_hand_worked() -> None:
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06
    got = holm([0.01, 0.04, 0.03, 0.005])
    assert torch.allclose(got, torch.tensor([0.03, 0.06, 0.06, 0.02], dtype=torch.float64))
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # capped at 1
    nan = holm([0.01, math.nan, 0.02])  # NaN left out of the family (m = 2)
    assert nan[0].item() == pytest.approx(0.02) and math.isnan(nan[1].item()) and nan[2].item() == pytest.approx(0.02)
    assert holm([]).numel() == 0


def test_paired_test_identical_and_shifted() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.randn(40, generator=g, dtype=torch.float64)
    same = paired_test(a, a.clone())
    assert same.p_value == 1.0 and same.difference == 0.0 and same.n == 40
    shifted = paired_test(a + 1.0 + 0.1 * torch.randn(40, generator=g, dtype=torch.float64), a)
    assert shifted.p_value < 1e-3 and shifted.difference == pytest.approx(1.0, abs=0.1)
    assert not shifted.exact and shifted.p_value > 0  # Monte Carlo p is never 0


def test_paired_test_exact_small_n_and_nan_pairs() -> None:
    a = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, math.nan, 7.0])
    b = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 6.0, math.nan])
    t = paired_test(a, b)
    # 5 pairs left, all differences +1: only the identity and the full flip reach |T| -> p = 2 / 32
    assert t.n == 5 and t.exact and t.p_value == pytest.approx(2 / 32) and t.difference == pytest.approx(1.0)
    # zero differences never move the statistic: left out of the swaps
    z = paired_test(torch.tensor([1.0, 1.0, 1.0, 2.0]), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert z.n == 4 and z.p_value == 1.0  # one differing image: the flip reaches |T| too
    assert paired_test(torch.tensor([math.nan]), torch.tensor([1.0])).p_value == 1.0
    with pytest.raises(ValueError):
        paired_test(torch.zeros(3), torch.zeros(4))


def test_paired_test_is_calibrated_under_a_symmetric_null() -> None:
    rejections = 0
    trials = 300
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(25, generator=g, dtype=torch.float64) * 3
        d = torch.randn(25, generator=g, dtype=torch.float64)  # symmetric differences around 0
        rejections += paired_test(base + d, base, resamples=999, seed=seed).p_value <= 0.05
    rate = rejections / trials
    assert 0.02 <= rate <= 0.09, rate


def test_paired_test_has_power_for_a_moderate_shift() -> None:
    hits = 0
    for seed in range(100):
        g = torch.Generator().manual_seed(1000 + seed)
        d = torch.randn(25, generator=g, dtype=torch.float64) + 0.8
        hits += paired_test(d, torch.zeros(25), resamples=999, seed=seed).p_value <= 0.05
    assert hits >= 90


def test_interval_covers_the_true_mean() -> None:
    covered, trials = 0, 300
    for seed in range(trials):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(60, generator=g, dtype=torch.float64) + 2.0
        iv = bootstrap_interval(x, resamples=1000, seed=seed)
        covered += iv.low <= 2.0 <= iv.high
    assert 0.90 <= covered / trials <= 0.985, covered / trials


def test_interval_nan_seed_and_edge_cases() -> None:
    x = torch.tensor([1.0, math.nan, 2.0, 3.0, 10.0, math.nan])
    a = bootstrap_interval(x, seed=3)
    assert a.n == 4 and a.estimate == pytest.approx(4.0) and a.low < 4.0 < a.high
    assert a == bootstrap_interval(x, seed=3)
    y = torch.linspace(0, 1, 50)
    assert bootstrap_interval(y, seed=3) == bootstrap_interval(y, seed=3) != bootstrap_interval(y, seed=4)
    assert 1.0 <= a.low and a.high <= 10.0
    empty = bootstrap_interval(torch.tensor([math.nan, math.nan]))
    assert empty.n == 0 and math.isnan(empty.estimate) and math.isnan(empty.low)
    one = bootstrap_interval(torch.tensor([5.0]))
    assert (one.low, one.high, one.n) == (5.0, 5.0, 1)
    wide, narrow = bootstrap_interval(x, confidence=0.99), bootstrap_interval(x, confidence=0.5)
    assert wide.low <= narrow.low and narrow.high <= wide.high
    with pytest.raises(ValueError):
        bootstrap_interval(x, confidence=1.5)


def test_groups_resample_images_not_pairs() -> None:
    # two pairs per image with identical values: grouped, the interval is that of 10 images; as
    # independent pairs it would be narrower by about sqrt(2)
    g = torch.Generator().manual_seed(0)
    img = torch.randn(10, generator=g, dtype=torch.float64)
    v = img.repeat_interleave(2)
    groups = [i // 2 for i in range(20)]
    grouped = bootstrap_interval(v, groups=groups, resamples=4000)
    pairs = bootstrap_interval(v, resamples=4000)
    alone = bootstrap_interval(img, resamples=4000)
    assert grouped.n == 10 and pairs.n == 20
    assert grouped.estimate == pytest.approx(alone.estimate)
    width = lambda i: i.high - i.low  # noqa: E731
    assert width(grouped) == pytest.approx(width(alone), rel=0.15)
    assert width(pairs) < 0.85 * width(grouped)


def test_paired_difference_is_narrower_than_unpaired() -> None:
    g = torch.Generator().manual_seed(2)
    shared = torch.randn(80, generator=g, dtype=torch.float64) * 5  # image difficulty, common to both
    a = shared + 0.1 * torch.randn(80, generator=g, dtype=torch.float64)
    b = shared + 0.3 + 0.1 * torch.randn(80, generator=g, dtype=torch.float64)
    pb = paired_bootstrap(torch.stack([a, b], 1), resamples=2000, seed=0)
    paired = pb.difference(1, 0)
    ua = bootstrap_sums([sums_by_group(a)], resamples=2000, seed=1).replicates[:, 0]
    ub = bootstrap_sums([sums_by_group(b)], resamples=2000, seed=2).replicates[:, 0]
    unpaired = torch.quantile(ub - ua, torch.tensor([0.025, 0.975], dtype=torch.float64))
    assert paired.estimate == pytest.approx(float(b.mean() - a.mean()))
    assert paired.low > 0  # the shift of 0.3 is clear once paired
    assert (paired.high - paired.low) < 0.2 * float(unpaired[1] - unpaired[0])
    assert float(unpaired[0]) < 0  # unpaired, image variation hides it
    assert pb.intervals[0].estimate == pytest.approx(float(a.mean()))


def test_sums_statistics_match_the_aggregates() -> None:
    from relprop.metrics.aggregate import per_class_mean

    v = torch.tensor([1.0, 0.0, 1.0, math.nan, 1.0, 0.0])
    cls = [0, 1, 1, 2, 0, 0]
    img = ["a", "a", "b", "b", "c", "c"]
    s = sums_by_group(v, img, cls)
    assert s.sums.shape == (3, 3) and s.n == 3
    assert s.estimate() == pytest.approx(per_class_mean(v, torch.tensor(cls)).macro)
    assert Sums(torch.tensor([[1.0], [2.0]]), torch.tensor([[1.0], [2.0]])).estimate() == 1.0
    w = resample_weights(7, 50, seed=0)
    assert w.shape == (50, 7) and torch.all(w.sum(1) == 7) and torch.equal(w, resample_weights(7, 50, seed=0))


def test_permutation_test_on_macro_statistics() -> None:
    # per-class macro means of two methods that hit (a) or miss (b) everywhere, over 20 images
    img = [i for i in range(20) for _ in range(2)]
    cls = [k for _ in range(20) for k in (0, 1)]
    index = {i: i for i in range(20)}
    a = sums_by_group(torch.ones(40), img, cls, group_index=index)
    b = sums_by_group(torch.zeros(40), img, cls, group_index=index)
    t = permutation_test(a, b, resamples=999, seed=0)
    assert t.difference == 1.0 and t.p_value < 0.01 and t.n == 20
    assert permutation_test(a, a).p_value == 1.0


def test_bootstrap_of_500_values_is_fast() -> None:
    x = torch.randn(500, dtype=torch.float64)
    bootstrap_interval(x, resamples=100)
    start = time.perf_counter()
    bootstrap_interval(x, resamples=10_000, seed=0)
    assert time.perf_counter() - start < 5.0


# ------------------------------------------------------------------------------------------------
# verdicts of docs/results.md


def test_verdict_counts_agree_reversed_undecided_after_holm() -> None:
    from relprop.reproduce.paper_orders import Order, decide, verdict

    order = Order("test", (("a",), ("b",), ("c",)), why="reason")
    ours = {"a": 3.0, "b": 1.0, "c": 2.0}  # a > b holds, a > c holds, b > c reversed
    # raw p: a-b 0.001, a-c 0.04, b-c 0.02 -> Holm 0.003, 0.04, 0.04 (sorted 0.001*3, 0.02*2, 0.04*1 -> max)
    p = {("a", "b"): 0.001, ("a", "c"): 0.04, ("b", "c"): 0.02}
    d = decide([("a", "b"), ("a", "c"), ("b", "c")], ours, True, p)
    assert d[("a", "b")] == ("agrees", pytest.approx(0.003))
    assert d[("a", "c")] == ("agrees", pytest.approx(0.04)) and d[("b", "c")] == ("reversed", pytest.approx(0.04))
    text = verdict(order, ours, higher=True, p_values=p)
    assert "**partly agrees**" in text and "2 agree, 1 reversed, 0 undecided" in text
    assert "c before b (p_Holm=0.04)" in text
    assert "Why: no cause specific to this table was measured. Differences from the paper's setting: reason" in text
    # the same point estimates, without significance: every pair undecided, not "agrees"
    weak = verdict(order, ours, higher=True, p_values={k: 0.3 for k in p})
    assert "**undecided**" in weak and "0 agree, 0 reversed, 3 undecided" in weak
    assert "point estimates: 2 hold, 1 reversed" in weak
    # a pair without a test counts as undecided, and still enters Holm's family (m = 3)
    part = decide([("a", "b"), ("a", "c"), ("b", "c")], ours, True, {("a", "b"): 0.02})
    assert part[("a", "b")] == ("undecided", pytest.approx(0.06)) and part[("a", "c")][0] == "undecided"
    # lower is better: the direction flips
    assert decide([("a", "b")], {"a": 1.0, "b": 2.0}, False, {("a", "b"): 0.001})[("a", "b")][0] == "agrees"


def test_a_significant_reversal_gets_its_measured_reason_not_noise() -> None:
    from relprop.reproduce.diagnosis import Profile, reversal_reasons
    from relprop.reproduce.paper_orders import _DATA, Order, verdict

    order = Order("test", (("a",), ("b",)), why=f"{_DATA}; method: m")
    ours, p = {"a": 1.0, "b": 2.0}, {("a", "b"): 0.001}
    found = {"a": Profile(inside=0.70, silent=0.03, negative=0.30, positive=0.50),
             "b": Profile(inside=0.96, silent=0.99, negative=0.00, positive=0.05)}
    text = verdict(order, ours, higher=True, p_values=p, measured=lambda rev: reversal_reasons(rev, found))
    assert "b before a (p_Holm=0.001)" in text
    assert ("Why: measured on the same images and classes: b keeps 96% of its positive relevance inside the "
            "objects (a: 70%) and leaves 99% of the background at zero (a: 3%) and has 0% of its |R| negative "
            "(a: 30%) and marks 5% of the pixels positive (a: 50%).") in text
    assert "within the noise" not in text and "method: m" in text
    # undecided pairs keep the noise as their reason
    assert "within the noise" in verdict(order, ours, higher=True, p_values={("a", "b"): 0.5})
    # one method ranked ahead of several: grouped; a pair that no statistic separates (here the paper's
    # better one keeps more inside): said so, with the numbers
    found["c"] = Profile(inside=0.80, silent=0.10, negative=0.28, positive=0.45)
    found["d"] = Profile(inside=0.90, silent=0.05, negative=0.25, positive=0.50)
    assert reversal_reasons([("a", "b"), ("c", "b"), ("d", "c")], found) == (
        "measured on the same images and classes: b keeps 96% of its positive relevance inside the objects "
        "(a: 70%, c: 80%) and leaves 99% of the background at zero (a: 3%, c: 10%) and has 0% of its |R| "
        "negative (a: 30%, c: 28%) and marks 5% of the pixels positive (a: 50%, c: 45%); no measured map "
        "property favours c over d (inside the objects 80% vs 90%, background at zero 10% vs 5%)")
    # no profile of a pair's methods: nothing measured
    assert reversal_reasons([("a", "e")], found) == ""
    # a random baseline's expected profile (share inside = the box fraction; no sign statistics):
    # compared on what it has
    found["random"] = Profile(inside=0.41, silent=0.0, negative=math.nan, positive=math.nan)
    found["g"] = Profile(inside=0.35, silent=0.02, negative=0.30, positive=0.50)
    assert reversal_reasons([("g", "random")], found) == (
        "measured on the same images and classes: random keeps 41% of its positive relevance inside the "
        "objects (g: 35%)")


def test_results_items_give_tests_and_intervals() -> None:
    from relprop.reproduce.document import fmt_ci
    from relprop.reproduce.rundata import intervals, pair_p_values

    # 20 images; "good" hits every class, "bad" misses; "same" equals "good"
    good = [(f"i{k}", c, 1.0, 1.0) for k in range(20) for c in (0, 1)]
    bad = [(s, c, 0.0, 1.0) for s, c, _, _ in good]
    items = {"good": good, "bad": bad, "same": list(good), "none": []}
    p = pair_p_values(items, [("good", "bad"), ("good", "same"), ("good", "none")])
    assert p[("good", "bad")] < 0.001 and p[("good", "same")] == 1.0 and ("good", "none") not in p
    iv = intervals(items)
    assert "none" not in iv and iv["good"].estimate == 1.0 and (iv["good"].low, iv["good"].high) == (1.0, 1.0)
    assert fmt_ci(0.5, iv["good"], 1, 100) == "0.5 [100.0, 100.0]" and fmt_ci(math.nan, iv["good"]) == "–"
    # pooled ratio items (sum, count): 4/4 and 0/4 pool to 0.5, as the segmentation table does
    pooled = intervals({"m": [("a", 0, 4.0, 4.0), ("b", 0, 0.0, 4.0)]})["m"]
    assert pooled.estimate == 0.5 and (pooled.low, pooled.high) == (0.0, 1.0)


def test_chunked_resampling_equals_one_block(monkeypatch) -> None:
    import relprop.metrics.aggregate as A

    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, generator=g, dtype=torch.float64)
    y = x + 0.05 * torch.randn(40, generator=g, dtype=torch.float64) + 0.02
    whole = (bootstrap_interval(x, resamples=3000), paired_test(y, x, resamples=3000),
             paired_test(y[:10], x[:10]))
    monkeypatch.setattr(A, "CHUNK", 40 * 7)  # 7 resamples per chunk (and 7 swaps of 10 images)
    assert resample_weights(40, 3000).shape == (3000, 40)
    chunked = (bootstrap_interval(x, resamples=3000), paired_test(y, x, resamples=3000),
               paired_test(y[:10], x[:10]))
    assert chunked[2] == whole[2]  # exact enumeration does not depend on the chunks
    assert chunked[0].estimate == whole[0].estimate and chunked[0].low == pytest.approx(whole[0].low, abs=0.05)
    assert chunked[1].p_value == pytest.approx(whole[1].p_value, abs=0.02)


def test_empty_inputs() -> None:
    iv = bootstrap_interval(torch.zeros(0))
    assert iv.n == 0 and math.isnan(iv.estimate)
    t = paired_test(torch.zeros(0), torch.zeros(0))
    assert t.n == 0 and t.p_value == 1.0
