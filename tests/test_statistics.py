"""The comparison statistics, checked against known answers and against scipy computed here."""

from __future__ import annotations

import math

import numpy as np
import pytest
from extras import import_extra

stats = import_extra("scipy.stats", "stats")

from tracking import statistics as st  # noqa: E402


def samples(shift: float, n: int = 400, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(10.0, 2.0, n), rng.normal(10.0 + shift, 3.0, n + 37)


def test_welch_interval_and_p_value_equal_scipy() -> None:
    base, cand = samples(0.4)
    est = st.welch(st.Summary.of(base), st.Summary.of(cand), alpha=0.05)
    ref = stats.ttest_ind(cand, base, equal_var=False)
    ci = ref.confidence_interval(0.95)
    assert est.difference == pytest.approx(cand.mean() - base.mean())
    assert (est.low, est.high) == pytest.approx((ci.low, ci.high), rel=1e-9)
    assert est.p_value == pytest.approx(ref.pvalue, rel=1e-9)
    assert (est.n_baseline, est.n_candidate) == (400, 437)


def test_summary_from_sums_equals_summary_of_values() -> None:
    values = np.random.default_rng(3).normal(5, 1, 100)
    a = st.Summary.of(values)
    b = st.Summary.from_sums(100, float(values.sum()), float((values**2).sum()))
    assert (b.n, b.mean, b.variance) == pytest.approx((a.n, a.mean, a.variance), rel=1e-9)


def test_relative_interval_is_delta_method_around_relative_difference() -> None:
    base, cand = samples(1.0)
    est = st.welch(st.Summary.of(base), st.Summary.of(cand))
    assert est.relative == pytest.approx((cand.mean() - base.mean()) / base.mean())
    assert est.relative_low < est.relative < est.relative_high
    # delta method, by hand
    b, c = base.mean(), cand.mean()
    var = cand.var(ddof=1) / cand.size / b**2 + c**2 * base.var(ddof=1) / base.size / b**4
    ref = stats.ttest_ind(cand, base, equal_var=False)
    half = stats.t.ppf(0.975, ref.df) * math.sqrt(var)
    assert est.relative_high - est.relative == pytest.approx(half, rel=1e-9)


@pytest.mark.parametrize(
    ("shift", "direction", "expected"),
    [
        (1.5, "higher", "better"),  # a clear win
        (-1.5, "higher", "worse"),  # a clear loss
        (1.5, "lower", "worse"),  # higher latency is a loss
        (0.0, "higher", "not significant"),  # no difference
        (1.5, None, "changed"),  # significant, but nobody said which way is good
    ],
)
@pytest.mark.parametrize("mode", ["fixed", "sequential"])
def test_verdicts_on_samples_with_known_difference(
    shift: float, direction: st.Direction | None, expected: str, mode: st.Mode
) -> None:
    base, cand = samples(shift, n=500)
    if shift == 0.0:
        cand = np.random.default_rng(99).normal(10.0, 3.0, 537)
    est = st.estimate_means(st.Summary.of(base), st.Summary.of(cand), mode)
    assert est is not None and est.mode == mode
    assert est.low <= shift <= est.high  # the interval covers the true difference
    assert st.verdict(est, est.p_value, direction) == expected


def test_too_few_points_give_not_enough_data_never_a_verdict() -> None:
    base, cand = samples(5.0, n=10)
    est = st.estimate_means(st.Summary.of(base), st.Summary.of(cand), "fixed", min_points=30)
    assert est is None
    assert st.verdict(est, 0.0, "higher") == "not enough data"


def test_sequential_interval_follows_the_cited_formula_and_is_wider_than_fixed() -> None:
    base, cand = samples(0.5)
    sb, sc = st.Summary.of(base), st.Summary.of(cand)
    seq = st.sequential(sb, sc, alpha=0.05, tuning_n=5000)
    fixed = st.welch(sb, sc, alpha=0.05)
    n = base.size + cand.size
    rho2 = (-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 5000
    sigma2 = n * (base.var(ddof=1) / base.size + cand.var(ddof=1) / cand.size)
    half = math.sqrt(
        sigma2 * 2 * (n * rho2 + 1) / (n**2 * rho2) * math.log(math.sqrt(n * rho2 + 1) / 0.05)
    )
    assert seq.high - seq.difference == pytest.approx(half, rel=1e-12)
    assert seq.high - seq.low > fixed.high - fixed.low
    # the always-valid p-value crosses alpha exactly where the sequence starts to exclude zero
    assert (seq.p_value < 0.05) == (seq.low > 0 or seq.high < 0)


def test_sequential_mode_keeps_false_alarms_under_alpha_when_peeking_every_day() -> None:
    rng = np.random.default_rng(7)
    alarms = 0
    trials = 200
    for _ in range(trials):
        base = rng.normal(0, 1, 1400)
        cand = rng.normal(0, 1, 1400)
        for day in range(1, 15):  # look every day for two weeks
            k = day * 100
            est = st.sequential(st.Summary.of(base[:k]), st.Summary.of(cand[:k]))
            if est.low > 0 or est.high < 0:
                alarms += 1
                break
    assert alarms / trials <= 0.05


def test_bootstrap_interval_equals_scipy_bootstrap_with_the_same_seed() -> None:
    base, cand = samples(2.0, n=200)
    est = st.bootstrap(base, cand, "p95", resamples=999, seed=5)
    ref = stats.bootstrap(
        (base, cand),
        lambda x, y: np.quantile(y, 0.95) - np.quantile(x, 0.95),
        vectorized=False,
        n_resamples=999,
        method="percentile",
        rng=np.random.default_rng(5),
    )
    assert (est.low, est.high) == pytest.approx(
        (ref.confidence_interval.low, ref.confidence_interval.high)
    )
    assert est.difference == pytest.approx(np.quantile(cand, 0.95) - np.quantile(base, 0.95))
    assert est.low < est.difference < est.high and est.p_value < 0.05


def test_bootstrap_refuses_unknown_statistic() -> None:
    with pytest.raises(ValueError, match="unknown statistic 'p101'"):
        st.bootstrap([1.0, 2.0, 3.0], [1.0, 2.0, 4.0], "p101")


def test_adjusted_p_values_are_benjamini_hochberg() -> None:
    p = [0.01, 0.04, 0.03, 0.2, math.nan]
    # BH by hand: sorted 0.01,0.03,0.04,0.2 -> 0.01*4/1, 0.03*4/2, 0.04*4/3, 0.2*4/4, monotone
    assert st.adjust(p)[:4] == pytest.approx([0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.2])
    assert math.isnan(st.adjust(p)[4])


@pytest.mark.parametrize(
    ("name", "direction"),
    [
        ("accuracy", "higher"),
        ("val_loss", "lower"),
        ("error_rate", "lower"),
        ("latency_ms", "lower"),
        ("p95Latency", "lower"),
        ("f1", "higher"),
        ("widgets", None),
    ],
)
def test_direction_from_known_names(name: str, direction: str | None) -> None:
    assert st.direction_of(name) == direction


def test_declared_direction_wins_and_is_validated() -> None:
    assert st.direction_of("accuracy", {"accuracy": "lower"}) == "lower"
    with pytest.raises(ValueError, match="'higher' or 'lower'"):
        st.direction_of("accuracy", {"accuracy": "up"})


def test_sample_ratio_mismatch_is_flagged_below_one_in_a_thousand() -> None:
    fine = st.sample_ratio([5000, 5080])
    bad = st.sample_ratio([5000, 5400])
    assert not fine.mismatch and fine.p_value == pytest.approx(stats.chisquare([5000, 5080]).pvalue)
    assert bad.mismatch and bad.p_value < 0.001
    weighted = st.sample_ratio([9000, 1000], [0.9, 0.1])
    assert not weighted.mismatch
