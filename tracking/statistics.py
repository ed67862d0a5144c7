"""The statistics behind ``tracking.compare``: pure, typed functions with no I/O.

Everything here works on numbers handed in (sufficient statistics or arrays of values), so it
is tested against ``scipy.stats`` directly and the dashboard only draws what it returns.

Conventions:

* A difference is always ``candidate - baseline``; a relative difference is that divided by the
  baseline's value.
* ``fixed`` mode is the classical fixed-horizon interval (Welch's t for means, a bootstrap for
  other statistics). It is valid when looked at once.
* ``sequential`` mode is an always-valid confidence sequence: the probability that it *ever*
  excludes the true difference, however often one looks, is at most ``alpha``. This is what
  GrowthBook and Eppo offer for peeking. The half-width is the asymptotic confidence sequence of
  Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and
  asymptotic confidence sequences" (Annals of Statistics, 2024; arXiv:2103.06476), with the
  conjugate-mixture boundary (their eq. (14), as in the ``confseq`` package's
  ``std_conjmix_margin``)::

      half_width(N) = sigma * sqrt( 2 (N rho2 + 1) / (N^2 rho2) * log( sqrt(N rho2 + 1) / alpha ) )

  where ``N = n_baseline + n_candidate``, ``sigma^2 = N * (var_b / n_b + var_c / n_c)`` is the
  per-observation variance of the difference, and ``rho2`` is tuned so the sequence is tightest
  at ``N = tuning_n`` (Howard et al. 2021, "Time-uniform, nonparametric, nonasymptotic confidence
  sequences", eq. (3.7): ``rho2 = (-2 log alpha + log(-2 log alpha + 1)) / tuning_n``; GrowthBook
  calls ``tuning_n`` the sequential tuning parameter and defaults it to 5000). Its always-valid
  p-value is the smallest ``alpha`` at which the sequence excludes zero, which has a closed form.
* p-values of several metrics are adjusted with **Benjamini-Hochberg** (false discovery rate,
  ``scipy.stats.false_discovery_control``); intervals are not adjusted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import stats

Direction = Literal["higher", "lower"]
Mode = Literal["fixed", "sequential"]
Verdict = Literal["better", "worse", "not significant", "not enough data", "changed"]

#: The correction applied to p-values of several metrics (named in every comparison).
CORRECTION = "benjamini-hochberg"
DEFAULT_ALPHA = 0.05
DEFAULT_TUNING_N = 5000
#: A comparison needs at least this many points on each side before it gives a verdict.
DEFAULT_MIN_POINTS = 30
#: A sample-ratio mismatch is flagged below this chi-square p-value (the usual industry bar).
SRM_THRESHOLD = 0.001

#: Statistics a metric can be compared on: the mean (Welch's t) or a quantile (bootstrap).
STATISTICS = ("mean", "median", "p90", "p95", "p99")

_LOWER_IS_BETTER = re.compile(
    r"(loss|error|err|latency|duration|time|seconds|ms|mae|mse|rmse|mape|cost|brier|"
    r"perplexity|wer|cer|fpr|fnr|miss|churn|bounce|crash|drift)",
    re.I,
)
_HIGHER_IS_BETTER = re.compile(
    r"(acc|accuracy|auc|roc|precision|recall|f1|ap|map|ndcg|mrr|hit|ctr|conversion|revenue|"
    r"reward|score|r2|iou|bleu|rouge|throughput|retention|coverage|success)",
    re.I,
)


@dataclass(frozen=True)
class Summary:
    """Sufficient statistics of one sample: size, mean and unbiased variance (``ddof=1``)."""

    n: int
    mean: float
    variance: float

    @classmethod
    def of(cls, values: Sequence[float] | np.ndarray) -> Summary:
        """The summary of an array of values (variance 0 for fewer than two)."""
        array = np.asarray(values, dtype=float)
        n = int(array.size)
        if n == 0:
            return cls(0, math.nan, math.nan)
        return cls(n, float(array.mean()), float(array.var(ddof=1)) if n > 1 else 0.0)

    def combine(self, other: Summary) -> Summary:
        """The summary of both samples together (Chan et al.'s pairwise update: exact, and
        stable for values far from 0, where a sum of squares loses every digit)."""
        if other.n == 0:
            return self
        if self.n == 0:
            return other
        n = self.n + other.n
        delta = other.mean - self.mean
        mean = self.mean + delta * other.n / n
        m2 = (
            self.variance * (self.n - 1)
            + other.variance * (other.n - 1)
            + delta * delta * self.n * other.n / n
        )
        return Summary(n, mean, m2 / (n - 1))

    @classmethod
    def from_sums(cls, n: int, total: float, total_sq: float) -> Summary:
        """From a count, a sum and a sum of squares. Loses precision for values far from 0
        relative to their spread (1e8 +- 1: every digit); prefer :meth:`combine`."""
        if n <= 0:
            return cls(0, math.nan, math.nan)
        mean = total / n
        variance = max((total_sq - n * mean * mean) / (n - 1), 0.0) if n > 1 else 0.0
        return cls(int(n), mean, variance)


@dataclass(frozen=True)
class Estimate:
    """A difference between two samples, with its interval and p-value.

    Attributes:
        statistic: ``mean`` or a quantile name (``median``, ``p95``, ...).
        mode: ``fixed`` or ``sequential`` (see the module docstring).
        baseline: the baseline's value of the statistic.
        candidate: the candidate's value.
        difference: ``candidate - baseline``.
        low, high: the interval of the difference at level ``1 - alpha``.
        relative: ``difference / |baseline|`` (NaN when the baseline is 0).
        relative_low, relative_high: its interval (delta method; bootstrap for quantiles).
        p_value: two-sided, unadjusted (always-valid in sequential mode).
        n_baseline, n_candidate: sample sizes.
    """

    statistic: str
    mode: Mode
    baseline: float
    candidate: float
    difference: float
    low: float
    high: float
    relative: float
    relative_low: float
    relative_high: float
    p_value: float
    n_baseline: int
    n_candidate: int


def _mean_estimate(
    mode: Mode,
    baseline: Summary,
    candidate: Summary,
    half: float,
    rel: float,
    rel_half: float,
    p_value: float,
) -> Estimate:
    """An estimate of the difference of means, symmetric around it (half-widths given)."""
    diff = candidate.mean - baseline.mean
    return Estimate(
        "mean",
        mode,
        baseline.mean,
        candidate.mean,
        diff,
        diff - half,
        diff + half,
        rel,
        rel - rel_half,
        rel + rel_half,
        p_value,
        baseline.n,
        candidate.n,
    )


def welch(baseline: Summary, candidate: Summary, *, alpha: float = DEFAULT_ALPHA) -> Estimate:
    """Welch's unequal-variance t interval and test for ``candidate.mean - baseline.mean``.

    Equal to ``scipy.stats.ttest_ind(candidate, baseline, equal_var=False)`` and its
    ``confidence_interval(1 - alpha)``; the relative interval uses the delta method with the
    same t quantile.

    Raises:
        ValueError: a side has fewer than two points.
    """
    _check_sizes(baseline, candidate)
    se2_b, se2_c = baseline.variance / baseline.n, candidate.variance / candidate.n
    se = math.sqrt(se2_b + se2_c)
    diff = candidate.mean - baseline.mean
    if se == 0.0:
        p_value = 1.0 if diff == 0 else 0.0
        half = 0.0
        crit = math.inf
    else:
        df = (se2_b + se2_c) ** 2 / (
            _ratio(se2_b**2, baseline.n - 1) + _ratio(se2_c**2, candidate.n - 1)
        )
        crit = float(stats.t.ppf(1 - alpha / 2, df))
        half = crit * se
        p_value = float(2 * stats.t.sf(abs(diff) / se, df))
    rel, rel_half = _relative(baseline, candidate, crit if se else 0.0)
    return _mean_estimate("fixed", baseline, candidate, half, rel, rel_half, p_value)


def tuned_rho2(alpha: float = DEFAULT_ALPHA, tuning_n: int = DEFAULT_TUNING_N) -> float:
    """The mixture parameter that makes the confidence sequence tightest at ``tuning_n`` points.

    Howard et al. (2021), eq. (3.7): ``(-2 log alpha + log(-2 log alpha + 1)) / tuning_n``.
    """
    a = -2 * math.log(alpha)
    return (a + math.log(a + 1)) / tuning_n


def sequence_margin(n: int, alpha: float, rho2: float) -> float:
    """The conjugate-mixture margin for unit variance at ``n`` points (see the module docstring)."""
    return math.sqrt(
        2 * (n * rho2 + 1) / (n * n * rho2) * math.log(math.sqrt(n * rho2 + 1) / alpha)
    )


def sequential(
    baseline: Summary,
    candidate: Summary,
    *,
    alpha: float = DEFAULT_ALPHA,
    tuning_n: int = DEFAULT_TUNING_N,
) -> Estimate:
    """The always-valid confidence sequence for ``candidate.mean - baseline.mean``.

    See the module docstring for the formula and its source. The p-value is always-valid:
    ``min(1, sqrt(N rho2 + 1) * exp(-d^2 N^2 rho2 / (2 sigma^2 (N rho2 + 1))))``, the smallest
    ``alpha`` whose sequence excludes zero at this ``N``.

    Raises:
        ValueError: a side has fewer than two points.
    """
    _check_sizes(baseline, candidate)
    n = baseline.n + candidate.n
    rho2 = tuned_rho2(alpha, tuning_n)
    var_diff = baseline.variance / baseline.n + candidate.variance / candidate.n
    sigma = math.sqrt(n * var_diff)
    margin = sequence_margin(n, alpha, rho2)
    diff = candidate.mean - baseline.mean
    half = sigma * margin
    if sigma == 0.0:
        p_value = 1.0 if diff == 0 else 0.0
    else:
        exponent = diff * diff * n * n * rho2 / (2 * sigma * sigma * (n * rho2 + 1))
        p_value = min(1.0, math.sqrt(n * rho2 + 1) * math.exp(-exponent))
    rel, rel_half = _relative(baseline, candidate, margin * math.sqrt(n))
    return _mean_estimate("sequential", baseline, candidate, half, rel, rel_half, p_value)


def statistic_function(name: str) -> Callable[[np.ndarray], float]:
    """The function computing statistic ``name`` (``mean``, ``median``, ``p90``, ``p95``, ...).

    Raises:
        ValueError: not one of :data:`STATISTICS`.
    """
    if name == "mean":
        return lambda values: float(np.mean(values))
    if name == "median":
        return lambda values: float(np.median(values))
    match = re.fullmatch(r"p(\d{1,2})", name) if name in STATISTICS else None
    if match is None:
        raise ValueError(f"unknown statistic {name!r}; use one of {', '.join(STATISTICS)}")
    q = int(match.group(1)) / 100
    return lambda values: float(np.quantile(values, q))


def bootstrap(
    baseline: Sequence[float] | np.ndarray,
    candidate: Sequence[float] | np.ndarray,
    statistic: str,
    *,
    alpha: float = DEFAULT_ALPHA,
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """A percentile-bootstrap interval for ``stat(candidate) - stat(baseline)`` (fixed mode).

    The interval is ``scipy.stats.bootstrap`` with ``method="percentile"``, the two samples
    resampled independently, and ``rng=numpy.random.default_rng(seed)`` (so it is
    reproducible). The p-value is the two-sided bootstrap p-value
    ``min(1, 2 * min(P(d* <= 0), P(d* >= 0)))`` over the resampled differences ``d*``; the
    relative interval is the same percentiles of ``d* / stat*(baseline)``.

    Raises:
        ValueError: a side has fewer than two points, or an unknown statistic.
    """
    b = np.asarray(baseline, dtype=float)
    c = np.asarray(candidate, dtype=float)
    _check_sizes(Summary(b.size, 0.0, 0.0), Summary(c.size, 0.0, 0.0))
    func = statistic_function(statistic)
    rng = np.random.default_rng(seed)
    result = stats.bootstrap(
        (b, c),
        lambda x, y: func(y) - func(x),
        vectorized=False,
        paired=False,
        n_resamples=resamples,
        confidence_level=1 - alpha,
        method="percentile",
        rng=rng,
    )
    dist = np.asarray(result.bootstrap_distribution, dtype=float)
    base_value, cand_value = func(b), func(c)
    diff = cand_value - base_value
    p_value = min(1.0, 2 * min(float(np.mean(dist <= 0)), float(np.mean(dist >= 0))))
    if base_value != 0:
        rel_dist = dist / abs(base_value)
        rel_low, rel_high = np.quantile(rel_dist, [alpha / 2, 1 - alpha / 2])
        rel = diff / abs(base_value)
    else:
        rel = rel_low = rel_high = math.nan
    return Estimate(
        statistic,
        "fixed",
        base_value,
        cand_value,
        diff,
        float(result.confidence_interval.low),
        float(result.confidence_interval.high),
        rel,
        float(rel_low),
        float(rel_high),
        p_value,
        int(b.size),
        int(c.size),
    )


def adjust(p_values: Sequence[float]) -> list[float]:
    """p-values adjusted for the number of tests by Benjamini-Hochberg (NaNs pass through)."""
    values = [float(p) for p in p_values]
    finite = [i for i, p in enumerate(values) if not math.isnan(p)]
    if not finite:
        return values
    adjusted = stats.false_discovery_control([values[i] for i in finite], method="bh")
    out = list(values)
    for i, p in zip(finite, adjusted, strict=True):
        out[i] = float(p)
    return out


def direction_of(metric: str, declared: Mapping[str, str] | None = None) -> Direction | None:
    """Whether higher or lower is better for ``metric``: as declared, else from its name.

    ``loss``, ``error``, ``latency``, ``rmse``, ``cost`` ... are lower-is-better; ``accuracy``,
    ``auc``, ``f1``, ``precision``, ``recall``, ``conversion`` ... higher-is-better. None when
    the name says neither.

    Raises:
        ValueError: a declared direction that is not ``higher`` or ``lower``.
    """
    if declared and metric in declared:
        value = declared[metric]
        if value not in ("higher", "lower"):
            raise ValueError(f"direction of {metric!r} must be 'higher' or 'lower', not {value!r}")
        return value  # type: ignore[return-value]
    words = re.split(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])", metric)
    lower = any(_LOWER_IS_BETTER.fullmatch(w) for w in words if w)
    higher = any(_HIGHER_IS_BETTER.fullmatch(w) for w in words if w)
    if lower and not higher:
        return "lower"
    if higher and not lower:
        return "higher"
    return None


def verdict(
    estimate: Estimate | None,
    adjusted_p: float,
    direction: Direction | None,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> Verdict:
    """The verdict on one metric: ``not enough data`` without an estimate; ``not significant``
    when the adjusted p-value is at least ``alpha``; otherwise ``better`` or ``worse`` by the
    sign of the difference and the metric's direction, or ``changed`` when the direction is
    unknown."""
    if estimate is None:
        return "not enough data"
    if not adjusted_p < alpha or estimate.difference == 0:
        return "not significant"
    if direction is None:
        return "changed"
    up = estimate.difference > 0
    return "better" if up == (direction == "higher") else "worse"


@dataclass(frozen=True)
class SampleRatio:
    """A sample-ratio check: the traffic each side got against the split expected.

    Attributes:
        counts: points counted per side (baseline, candidate).
        expected: the expected share of each side (sums to 1).
        p_value: the chi-square goodness-of-fit p-value (``scipy.stats.chisquare``).
        mismatch: ``p_value < SRM_THRESHOLD``: the comparison should not be trusted.
    """

    counts: tuple[int, ...]
    expected: tuple[float, ...]
    p_value: float
    mismatch: bool


def sample_ratio(counts: Sequence[int], expected: Sequence[float] | None = None) -> SampleRatio:
    """Chi-square test of ``counts`` against the ``expected`` shares (default: equal).

    Raises:
        ValueError: fewer than two counts, negative counts, or shares that do not match.
    """
    observed = [int(c) for c in counts]
    if len(observed) < 2 or any(c < 0 for c in observed):
        raise ValueError("a sample-ratio check needs two or more non-negative counts")
    shares = [1.0 / len(observed)] * len(observed) if expected is None else list(expected)
    if len(shares) != len(observed) or any(s <= 0 for s in shares):
        raise ValueError("expected shares must be positive, one per count")
    total_share = sum(shares)
    shares = [s / total_share for s in shares]
    total = sum(observed)
    if total == 0:
        return SampleRatio(tuple(observed), tuple(shares), 1.0, False)
    result = stats.chisquare(observed, [s * total for s in shares])
    p_value = float(result.pvalue)
    return SampleRatio(tuple(observed), tuple(shares), p_value, p_value < SRM_THRESHOLD)


def estimate_means(
    baseline: Summary,
    candidate: Summary,
    mode: Mode,
    *,
    alpha: float = DEFAULT_ALPHA,
    min_points: int = DEFAULT_MIN_POINTS,
    tuning_n: int = DEFAULT_TUNING_N,
) -> Estimate | None:
    """:func:`welch` or :func:`sequential`, or None with fewer than ``min_points`` a side."""
    if min(baseline.n, candidate.n) < max(min_points, 2):
        return None
    if mode == "sequential":
        return sequential(baseline, candidate, alpha=alpha, tuning_n=tuning_n)
    return welch(baseline, candidate, alpha=alpha)


def _check_sizes(baseline: Summary, candidate: Summary) -> None:
    if baseline.n < 2 or candidate.n < 2:
        raise ValueError(
            f"each side needs at least two points (baseline {baseline.n}, candidate {candidate.n})"
        )


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _relative(baseline: Summary, candidate: Summary, crit: float) -> tuple[float, float]:
    """Relative difference ``(c - b) / |b|`` and its half-width by the delta method."""
    if baseline.mean == 0 or math.isnan(baseline.mean):
        return math.nan, math.nan
    b, c = baseline.mean, candidate.mean
    rel = (c - b) / abs(b)
    # Var(c/b) ~ var_c/(n_c b^2) + c^2 var_b / (n_b b^4)
    var = candidate.variance / candidate.n / b**2 + c**2 * baseline.variance / baseline.n / b**4
    return rel, crit * math.sqrt(var)
