"""Figures of judge calibration: the reliability diagram, the threshold sweep and probe summaries.

Each returns a matplotlib `Figure` built without pyplot state (safe headless; `display()` it in a notebook) and
saves a PNG when given a path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from lib.stats import ECE_BINS, calibration_bins, expected_calibration_error


def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def reliability_diagram(
    y_true: Any, p_yes: Any, path: str | Path | None, n_bins: int = ECE_BINS, title: str = "Judge reliability"
) -> Figure:
    """Fraction of yes labels per P(yes) bin against the diagonal, a histogram of P(yes) under it.

    Saves a PNG at `path` (parents created; None: not saved) and returns the Figure.
    """
    bins = calibration_bins(y_true, p_yes, n_bins)
    ece = expected_calibration_error(y_true, p_yes, n_bins)
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    full = bins[bins["n"] > 0]
    top.bar(full["lo"], full["frac_yes"], width=width, align="edge", alpha=0.6, edgecolor="black", label="fraction labelled yes")
    top.plot(full["mean_p"], full["frac_yes"], "o", color="C3", label="bin mean P(yes)")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("fraction labelled yes")
    top.set_title(f"{title} (ECE {ece:.3f}, n={int(bins['n'].sum())})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(bins["lo"], bins["n"], width=width, align="edge", color="C0", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("judge P(yes)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def plot_threshold_sweep(
    df: pd.DataFrame, path: str | Path | None, title: str = "Hard-verdict threshold", label_yes_rate: float | None = None
) -> Figure:
    """Accuracy, kappa and predicted yes-rate against the threshold (`threshold_sweep` output).

    Marks the threshold of best accuracy; `label_yes_rate` draws the labels' yes-rate for reference.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for col in ("accuracy", "kappa", "yes_rate"):
        ax.plot(df["threshold"], df[col], marker="o", markersize=3, label=col)
    if label_yes_rate is not None:
        ax.axhline(float(label_yes_rate), linestyle=":", color="C2", label="label yes-rate")
    if df["accuracy"].notna().any():
        best = df.loc[df["accuracy"].idxmax(), "threshold"]
        ax.axvline(best, linestyle="--", color="grey", label=f"best accuracy at {best:.2f}")
    ax.set_xlabel("threshold on P(yes)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_probe(
    summary: pd.DataFrame,
    group_col: str,
    path: str | Path | None,
    title: str = "Probe",
    ylabel: str = "mean judge score",
    xlabel: str | None = None,
) -> Figure:
    """The `summarize_probe` table as points with interval bars (a line when groups are numeric)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    numeric = pd.api.types.is_numeric_dtype(summary[group_col])
    x = summary[group_col].to_numpy(dtype=float) if numeric else np.arange(len(summary))
    yerr = np.vstack([summary["mean"] - summary["low"], summary["high"] - summary["mean"]])
    ax.errorbar(x, summary["mean"], yerr=yerr, marker="o", capsize=4, linestyle="-" if numeric else "none")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in summary[group_col]])
    ax.set_xlabel(xlabel or group_col)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)

