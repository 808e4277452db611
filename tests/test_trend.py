"""lib.train.trend: the first-vs-last interval's variance by hand, its simulated critical value, and its coverage
when nothing rises (Monte Carlo, AR(1) noise)."""
import math

import numpy as np
import pandas as pd
import pytest

from lib.train import trend
from lib.train.trend import first_last_comparison


def _ar1(rng: np.random.Generator, reps: int, n: int, rho: float, burn: int = 60) -> np.ndarray:
    """`reps` stationary AR(1) series of `n` steps, unit innovations."""
    e = rng.standard_normal((reps, n + burn))
    x = np.empty_like(e)
    x[:, 0] = e[:, 0] / math.sqrt(1 - rho**2)
    for t in range(1, n + burn):
        x[:, t] = rho * x[:, t - 1] + e[:, t]
    return x[:, burn:]


def test_contrast_variance_by_hand():
    x = np.array([1.0, 3.0, 2.0, 5.0, 4.0, 4.0])
    t = np.arange(6)
    e = x - np.polyval(np.polyfit(t, x, 1), t)  # residuals from the straight line
    gamma = [float(e[h:] @ e[:6 - h]) / 6 for h in range(6)]
    c = np.array([-0.5, -0.5, 0, 0, 0.5, 0.5])
    cov = np.array([[gamma[abs(i - j)] * (1 - abs(i - j) / 6) for j in range(6)] for i in range(6)])
    assert trend.contrast_variance(x, 2) == pytest.approx(float(c @ cov @ c))
    assert trend.contrast_variance(2.0 + 0.3 * t, 2) == pytest.approx(0.0, abs=1e-20)
    with pytest.raises(trend.TrainLogError, match="k must lie"):
        trend.contrast_variance(x, 4)


def test_vectorized_statistic_is_the_interval_statistic():
    # the simulation behind the critical value studentizes exactly as first_last_comparison does
    rng = np.random.default_rng(3)
    y = rng.normal(size=(4, 17))
    t = trend._contrast_statistics(y, 4)
    c = trend.window_contrast(17, 4)
    assert t == pytest.approx([abs(row @ c) / math.sqrt(trend.contrast_variance(row, 4)) for row in y])
    r = first_last_comparison(pd.DataFrame({"step": range(1, 18), "m": y[0]}), "m", k=4)
    half = trend.critical_value(17, 4) * math.sqrt(trend.contrast_variance(y[0], 4))
    assert (r["diff_lo"], r["diff_hi"]) == pytest.approx((r["diff"] - half, r["diff"] + half))
    assert "HAC" in r["interval"] and f"{trend.critical_value(17, 4):.2f}" in r["interval"]


def test_critical_value_is_deterministic_and_above_the_normal():
    # fixed-b: the SE's own noise puts the quantile above 1.96, more so with few steps
    assert trend.critical_value(24, 5) == trend.critical_value.__wrapped__(24, 5)
    assert trend.critical_value(24, 5) > trend.critical_value(100, 5) > 1.96


def test_first_last_interval_covers_when_nothing_rises():
    # No true rise, n = 24 steps, first 5 vs last 5, through first_last_comparison itself. 250 series per noise:
    # a coverage of 0.95 (0.90) is measured within about +-0.014 (+-0.019), one SD; the bounds sit about 2.5 SD
    # below the design's coverage (0.95 independent, 0.90 at AR(1) 0.5, test below) and far above a Newey-West
    # window interval's (about 0.84 and 0.66).
    rng = np.random.default_rng(7)
    for rho, bound in ((0.0, 0.91), (0.5, 0.85)):
        ys = _ar1(rng, 250, 24, rho) * 0.1 + 0.5
        covered = [(lambda r: r["diff_lo"] <= 0 <= r["diff_hi"])(
            first_last_comparison(pd.DataFrame({"step": range(1, 25), "m": y}), "m", k=5)) for y in ys]
        assert np.mean(covered) >= bound, (rho, np.mean(covered))


@pytest.mark.parametrize("n, rho, bound", [(24, 0.0, 0.94), (24, 0.5, 0.885), (100, 0.8, 0.90)])
def test_coverage_of_the_design(n, rho, bound):
    # the same statistic vectorized (test above: it is the interval's), 20,000 series: coverage within about
    # +-0.002 (one SD). Measured: 0.95 (independent steps) and 0.90 (AR(1) 0.5) at 24 steps; slow noise (AR(1) 0.8)
    # needs more steps: 0.79 at 24, 0.91 at 100.
    rng = np.random.default_rng(11)
    t = trend._contrast_statistics(_ar1(rng, 20_000, n, rho), 5)
    assert np.mean(t <= trend.critical_value(n, 5)) >= bound
