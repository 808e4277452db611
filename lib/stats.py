"""General statistics of the project: bootstrap intervals, Cohen's kappa, calibration bins and ECE, threshold sweeps.

Every bootstrap in lib goes through `bootstrap_interval`; the threshold sweep is that of a yes/no judge.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import cohen_kappa_score

BOOTSTRAP_METHODS = ("percentile", "basic", "BCa")
ECE_BINS = 10
DEFAULT_THRESHOLDS = np.linspace(0.05, 0.95, 19)


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
    low, high = bootstrap_interval((x,), stat, n_resamples=n_resamples, seed=seed, confidence=confidence, method=method)
    return point, low, high


def bootstrap_interval(
    samples: tuple[np.ndarray, ...],
    stat: Callable[..., float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    method: str = "percentile",
    paired: bool = False,
    vectorized: bool | None = None,
) -> tuple[float, float]:
    """(low, high) of `scipy.stats.bootstrap(samples, stat, ...)` with `numpy.random.default_rng(seed)`.

    `paired`: the samples are resampled together (e.g. label and verdict of one question); otherwise each
    sample is resampled on its own (e.g. first vs last training steps). No degenerate-input handling here.
    """
    res = stats.bootstrap(samples, stat, n_resamples=n_resamples, confidence_level=confidence, method=method,
                          paired=paired, vectorized=vectorized, rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def as_labels(y_true: Any, what: str = "y_true") -> np.ndarray:
    """Human yes/no labels as a bool array: true/false or 0/1, none missing."""
    y = pd.Series(y_true).reset_index(drop=True)
    if y.isna().any():
        raise StatsError(f"{what}: labels must not be missing ({int(y.isna().sum())} missing)")
    bad = ~y.isin([0, 1, True, False])
    if bad.any():
        raise StatsError(f"{what}: labels must be true/false or 0/1, got {y[bad].iloc[0]!r}")
    return y.astype(bool).to_numpy()


def as_probs(p_yes: Any, n: int) -> np.ndarray:
    """P(yes) values as a float array of length `n` in [0, 1]; NaN (no answer) allowed."""
    p = pd.to_numeric(pd.Series(p_yes).reset_index(drop=True), errors="raise").to_numpy(dtype=float)
    if p.shape[0] != n:
        raise StatsError(f"p_yes has {p.shape[0]} values, y_true has {n}")
    ok = p[~np.isnan(p)]
    if ok.size and (ok.min() < 0 or ok.max() > 1):
        raise StatsError(f"p_yes must lie in [0, 1], got values from {ok.min():g} to {ok.max():g}")
    return p


def cohen_kappa(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Cohen's kappa (sklearn). NaN, without a warning, when there are no pairs or labels and
    predictions all use the same single class: chance agreement is then 1 and kappa is 0/0."""
    y_true, y_pred = np.asarray(y_true, dtype=bool), np.asarray(y_pred, dtype=bool)
    if y_true.size == 0 or np.unique(np.concatenate([y_true, y_pred])).size < 2:
        return float("nan")
    return float(cohen_kappa_score(y_true, y_pred, labels=[False, True]))


def calibration_bins(y_true: Any, p_yes: Any, n_bins: int = ECE_BINS) -> pd.DataFrame:
    """Equal-width bins of P(yes): bin k holds k/n_bins <= p < (k+1)/n_bins (the last also p = 1).

    Returns one row per bin (empty ones included): lo, hi, n, mean_p, frac_yes (NaN when empty).
    Missing P(yes) values are dropped.
    """
    if n_bins < 1:
        raise StatsError(f"n_bins must be >= 1, got {n_bins}")
    y = as_labels(y_true)
    p = as_probs(p_yes, y.size)
    keep = ~np.isnan(p)
    y, p = y[keep], p[keep]
    # the tiny tolerance keeps a value such as 0.3 (stored as 0.29999...) in bin [0.3, 0.4)
    idx = np.minimum(np.floor(p * n_bins + 1e-9).astype(int), n_bins - 1)
    rows = []
    for k in range(n_bins):
        m = idx == k
        rows.append({
            "lo": k / n_bins, "hi": (k + 1) / n_bins, "n": int(m.sum()),
            "mean_p": float(p[m].mean()) if m.any() else np.nan,
            "frac_yes": float(y[m].mean()) if m.any() else np.nan,
        })
    return pd.DataFrame(rows)


def expected_calibration_error(y_true: Any, p_yes: Any, n_bins: int = ECE_BINS) -> float:
    """ECE = sum over bins of (n_bin / n) * |frac_yes(bin) - mean_p(bin)|, equal-width bins
    (see `calibration_bins`). NaN when no P(yes) is present.

    >>> expected_calibration_error([0, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], n_bins=2)
    0.25
    """
    bins = calibration_bins(y_true, p_yes, n_bins)
    n = bins["n"].sum()
    if n == 0:
        return float("nan")
    full = bins[bins["n"] > 0]
    return float((full["n"] / n * (full["frac_yes"] - full["mean_p"]).abs()).sum())


def threshold_sweep(y_true: Any, p_yes: Any, thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> pd.DataFrame:
    """Accuracy, kappa and predicted yes-rate of the verdict `p >= t` for each threshold t.

    Columns: threshold, n, accuracy, kappa, yes_rate. Missing P(yes) values are left out.
    """
    y = as_labels(y_true)
    p = as_probs(p_yes, y.size)
    keep = ~np.isnan(p)
    y, p = y[keep], p[keep]
    rows = []
    for t in thresholds:
        pred = p >= t
        rows.append({
            "threshold": float(t), "n": int(y.size),
            "accuracy": float((pred == y).mean()) if y.size else np.nan,
            "kappa": cohen_kappa(y, pred),
            "yes_rate": float(pred.mean()) if y.size else np.nan,
        })
    return pd.DataFrame(rows)


def kappa_ci(
    y_true: Any, y_pred: Any, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Cohen's kappa with a paired bootstrap interval over (label, verdict) pairs: (kappa, low, high).

    Pairs are resampled independently (questions about one text are treated as independent, which
    makes the interval somewhat narrow). Fewer than 2 pairs or a constant kappa: (k, k, k).
    """
    y = as_labels(y_true)
    pred = as_labels(y_pred, "y_pred")
    if pred.size != y.size:
        raise StatsError(f"kappa_ci: y_pred has {pred.size} values, y_true has {y.size}")
    k = cohen_kappa(y, pred)
    if y.size < 2 or np.isnan(k):
        return k, k, k
    low, high = bootstrap_interval((y, pred), cohen_kappa, n_resamples=n_resamples, seed=seed, confidence=confidence,
                                   paired=True, vectorized=False)
    return (k, k, k) if np.isnan(low) or np.isnan(high) else (k, low, high)
