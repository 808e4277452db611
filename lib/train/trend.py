"""Whether a training metric rises: its first vs its last logged steps, with a HAC interval, a verdict, a sentence.

The interval allows for the dependence between steps (Newey-West); notebook 03 reports it.

    comparison = first_last_comparison(log, "rewards/format_reward/mean", k=5)   # log: lib.train.logs.read_log input
    describe_comparison(comparison)
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lib.train.logs import TrainLogError, read_log

VERDICTS = ("rises", "no clear change", "falls", "too few steps")


def hac_lags(n: int) -> int:
    """Newey-West's rule of thumb for the Bartlett lag, floor(4 (n/100)^(2/9)), at least 1 and below n.

    >>> hac_lags(5), hac_lags(2), hac_lags(100)
    (2, 1, 4)
    """
    return max(0, min(n - 1, max(1, math.floor(4 * (n / 100) ** (2 / 9)))))


def hac_variance_of_mean(values: Sequence[float], lags: int | None = None) -> float:
    """Newey-West (Bartlett kernel) variance of the mean of a series: (gamma_0 + 2 sum_l (1 - l/(L+1)) gamma_l) / n,
    autocovariances gamma_l of the deviations from the mean (divided by n). Positive autocorrelation (and a trend
    within the series, which shows as such) widens it; never negative."""
    x = np.asarray(values, dtype=float)
    n = x.size
    e = x - x.mean()
    lags = hac_lags(n) if lags is None else lags
    s = float(e @ e)
    for lag in range(1, min(lags, n - 1) + 1):
        s += 2 * (1 - lag / (lags + 1)) * float(e[lag:] @ e[:-lag])
    return max(s, 0.0) / n**2


def first_last_comparison(
    log: str | Path | pd.DataFrame | Sequence[Mapping],
    metric: str = "rewards/format_reward/mean",
    k: int = 5,
    confidence: float = 0.95,
) -> dict:
    """Mean of `metric` over the first `k` vs the last `k` logged steps, with an interval that respects the
    dependence between steps.

    Interval of the difference (last - first): diff ± t(2k-2) * SE with SE^2 the sum of the two windows'
    Newey-West (HAC, Bartlett kernel, `hac_lags(k)` lags) variances of their means (`hac_variance_of_mean`).
    Consecutive steps of one policy are autocorrelated and trend; a bootstrap that resamples steps as independent
    draws is too narrow for that. Here each window's deviations from its mean, trend included, enter as
    autocovariance, and the t quantile allows for the few steps. The two windows are taken as independent of each
    other (they are the ends of the run). Deterministic. With fewer than 2k logged steps, k shrinks to half of them;
    with fewer than 2 values per side there is no interval (None: the result is JSON-safe) and the verdict is
    "too few steps". Otherwise the verdict is "rises" when the interval lies above 0, "falls" when below, else
    "no clear change".

    >>> r = first_last_comparison([{"step": i, "m": 0.1 * i} for i in range(1, 21)], "m", k=5)
    >>> r["verdict"], round(r["diff"], 2)
    ('rises', 1.5)
    """
    from scipy import stats

    if k < 1:
        raise TrainLogError(f"first_last_comparison: k must be >= 1, got {k}")
    if not 0 < confidence < 1:
        raise TrainLogError(f"first_last_comparison: confidence must be in (0, 1), got {confidence!r}")
    df = read_log(log)
    if metric not in df.columns:
        known = ", ".join(c for c in df.columns if c != "step")
        raise TrainLogError(f"metric {metric!r} is not in the training log; logged: {known or 'nothing'}")
    d = df[["step", metric]].dropna()
    values = d[metric].to_numpy(dtype=float)
    steps = d["step"].to_numpy()
    kk = min(k, len(values) // 2)
    first, last = values[:kk], values[len(values) - kk:]
    out = {
        "metric": metric, "k": kk, "n_steps": int(len(values)),
        "first_steps": [int(steps[0]), int(steps[kk - 1])] if kk else [],
        "last_steps": [int(steps[len(values) - kk]), int(steps[-1])] if kk else [],
        "first_mean": float(first.mean()) if kk else None,
        "last_mean": float(last.mean()) if kk else None,
    }
    out["diff"] = out["last_mean"] - out["first_mean"] if kk else None
    if kk < 2:
        out.update(diff_lo=None, diff_hi=None, interval="none", verdict="too few steps")
        return out
    se = math.sqrt(hac_variance_of_mean(first) + hac_variance_of_mean(last))
    half = float(stats.t.ppf((1 + confidence) / 2, df=2 * kk - 2)) * se
    lo, hi = out["diff"] - half, out["diff"] + half
    out.update(diff_lo=lo, diff_hi=hi, interval=f"Newey-West HAC, {hac_lags(kk)} lags, t with {2 * kk - 2} df")
    out["verdict"] = "rises" if lo > 0 else "falls" if hi < 0 else "no clear change"
    return out


def describe_comparison(result: Mapping) -> str:
    """One sentence for a `first_last_comparison` result."""
    m = result["metric"]
    if result["verdict"] == "too few steps":
        return f"{m}: only {result['n_steps']} logged steps, too few to compare the first and last steps."
    return (
        f"{m}: mean {result['first_mean']:.3f} over steps {result['first_steps'][0]}-{result['first_steps'][1]}, "
        f"{result['last_mean']:.3f} over steps {result['last_steps'][0]}-{result['last_steps'][1]}; "
        f"difference {result['diff']:+.3f} (95% interval {result['diff_lo']:+.3f} to {result['diff_hi']:+.3f}, "
        f"{result.get('interval', 'HAC')}): "
        f"it {result['verdict'] if result['verdict'] != 'no clear change' else 'shows no clear change'}."
    )
