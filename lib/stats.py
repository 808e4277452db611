"""Small statistics shared by calibration and evaluation: bootstrap confidence intervals."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import stats

BOOTSTRAP_METHODS = ("percentile", "basic", "BCa")


class StatsError(ValueError):
    """Bad arguments to a statistics helper; one line naming the argument and value."""


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    stat: Callable[..., float] = np.mean,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "percentile",
) -> tuple[float, float, float]:
    """Point estimate `stat(values)` and a bootstrap confidence interval, as (point, low, high).

    Uses `scipy.stats.bootstrap` with a fixed `numpy.random.default_rng(seed)`, so the same call
    gives the same interval. NaN values are dropped first. Degenerate inputs give no error:
    no values -> (nan, nan, nan); one value, or all values equal -> (s, s, s) with
    s = stat(values), since every resample has the same statistic. `method` is "percentile" (default: robust for 0/1 data and
    small n, where BCa can fail), "basic" or "BCa". `stat` must accept an array (and, for speed,
    an `axis` keyword, as numpy reductions do).

    >>> bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_resamples=200)[0]
    2.5
    >>> bootstrap_ci([0.5, 0.5, 0.5])
    (0.5, 0.5, 0.5)
    """
    if not 0 < confidence < 1:
        raise StatsError(f"bootstrap_ci: confidence must be in (0, 1), got {confidence!r}")
    if n_resamples < 1:
        raise StatsError(f"bootstrap_ci: n_resamples must be >= 1, got {n_resamples!r}")
    if method not in BOOTSTRAP_METHODS:
        raise StatsError(f"bootstrap_ci: unknown method {method!r}; known: {', '.join(BOOTSTRAP_METHODS)}")
    x = np.asarray(values, dtype=float).ravel()
    x = x[~np.isnan(x)]
    if x.size == 0:
        nan = float("nan")
        return nan, nan, nan
    point = float(stat(x))
    if x.size < 2 or np.all(x == x[0]):
        return point, point, point
    res = stats.bootstrap(
        (x,),
        stat,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method=method,
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return point, low, high
