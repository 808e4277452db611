"""Notebook 02's calibration summary: the numbers it records, the same in plain sentences, both saved to files.

`calibration_summary` computes the numbers, `describe_calibration` words them, `save_summary` writes
`summary.json` / `summary.md`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lib.judge.calibration.agreement import label_metrics
from lib.stats import as_labels, as_probs, bootstrap_ci, kappa_ci, threshold_sweep


def save_summary(summary: Mapping[str, Any], words: str, folder: str | Path) -> dict[str, Path]:
    """Write `summary.json` (NaN as null) and `summary.md` (the words) into `folder`; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in summary.items()}
    out = {"json": folder / "summary.json", "md": folder / "summary.md"}
    out["json"].write_text(json.dumps(clean, ensure_ascii=False, indent=2), encoding="utf-8")
    out["md"].write_text(words + "\n", encoding="utf-8")
    return out


def calibration_summary(
    long: pd.DataFrame,
    agreement: pd.DataFrame,
    length: pd.DataFrame,
    relevance: pd.DataFrame,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    judgements_per_s: float = float("nan"),
    judge_model: str = "",
) -> dict[str, Any]:
    """The numbers notebook 02 records and `describe_calibration` puts into words.

    `long`: labels merged with the soft judgements (label, p_yes, flagged); `agreement`:
    `mode_agreement` output; `length`: `run_length_probe` output; `relevance`: `run_relevance_probe`
    output. Intervals are bootstrap percentile intervals (`lib.stats.bootstrap_ci`, `kappa_ci`).
    """
    y = as_labels(long["label"], "label")
    p = as_probs(long["p_yes"], y.size)
    seen = ~np.isnan(p)
    correct = (p[seen] >= threshold) == y[seen]
    acc = bootstrap_ci(correct.astype(float), n_resamples=n_resamples, seed=seed)
    kap = kappa_ci(y[seen], p[seen] >= threshold, n_resamples=n_resamples, seed=seed)

    def agree(b: str, col: str) -> float:
        row = agreement[(agreement["a"] == "label") & (agreement["b"] == b)]
        return float(row[col].iloc[0]) if len(row) else float("nan")

    levels = sorted(length["pad_level"].unique())
    lo_lvl, hi_lvl = levels[0], levels[-1]
    wide = length.pivot(index="id", columns="pad_level", values="p_yes")
    diff = bootstrap_ci((wide[hi_lvl] - wide[lo_lvl]).to_numpy(dtype=float), n_resamples=n_resamples, seed=seed)
    ok = length.dropna(subset=["p_yes"])
    slope = float(np.polyfit(ok["pad_level"].astype(float), ok["p_yes"], 1)[0]) if ok["pad_level"].nunique() > 1 else float("nan")
    drop = bootstrap_ci(relevance["drop"].to_numpy(dtype=float), n_resamples=n_resamples, seed=seed)
    overall = label_metrics(y, p, threshold)
    sweep = threshold_sweep(y, p)
    best = sweep.loc[sweep["kappa"].idxmax()] if sweep["kappa"].notna().any() else None
    return {
        "judge_model": judge_model, "threshold": float(threshold),
        "n_labels": int(y.size), "n_missing": int((~seen).sum()),
        "flagged_share": float(pd.Series(long["flagged"]).astype(bool).mean()) if len(long) else float("nan"),
        "accuracy": acc[0], "accuracy_ci": [acc[1], acc[2]],
        "kappa": kap[0], "kappa_ci": [kap[1], kap[2]],
        "ece": overall["ece"], "auroc": overall["auroc"],
        "best_threshold": float(best["threshold"]) if best is not None else float("nan"),
        "best_threshold_kappa": float(best["kappa"]) if best is not None else float("nan"),
        "label_yes_rate": float(y.mean()) if y.size else float("nan"),
        "pred_yes_rate": float((p[seen] >= threshold).mean()) if seen.any() else float("nan"),
        "hard_accuracy": agree("hard", "agreement"), "seed_accuracy": agree("seed", "agreement"),
        "seed_kappa": agree("seed", "kappa"),
        "length_pad_levels": [int(lo_lvl), int(hi_lvl)], "length_probe_diff": diff[0],
        "length_probe_diff_ci": [diff[1], diff[2]], "length_probe_slope": slope,
        "relevance_drop": drop[0], "relevance_drop_ci": [drop[1], drop[2]],
        "judgements_per_s": float(judgements_per_s),
    }


def _ci(x: Any) -> str:
    """'[low, high]', or '' when no interval was computed."""
    if not isinstance(x, (list, tuple, np.ndarray)) or len(x) != 2:
        return ""
    return f"[{x[0]:.2f}, {x[1]:.2f}]"


def kappa_words(kappa: float, ci: Sequence[float] | None = None) -> str:
    """What a kappa says, after Landis & Koch's bands; an interval reaching 0 is 'not distinguishable from chance'.

    >>> kappa_words(0.03, [0.01, 0.06])
    'the judge is barely better than chance'
    >>> kappa_words(0.7, [0.6, 0.8])
    'substantial agreement with the labels'
    """
    if kappa is None or np.isnan(kappa):
        return "kappa is undefined: the judge (and the labels) gave a single answer throughout"
    if isinstance(ci, (list, tuple, np.ndarray)) and len(ci) == 2 and ci[0] <= 0 <= ci[1]:
        return "the judge is not distinguishable from chance"
    if kappa < 0:
        return "the judge agrees with the labels less often than chance"
    for upper, words in ((0.2, "the judge is barely better than chance"), (0.4, "fair agreement with the labels"),
                         (0.6, "moderate agreement with the labels"), (0.8, "substantial agreement with the labels")):
        if kappa < upper:
            return words
    return "almost perfect agreement with the labels"


def describe_calibration(summary: Mapping[str, Any]) -> str:
    """`calibration_summary`'s numbers in plain sentences, one per line (no judgement is hard-coded).

    >>> s = {"n_labels": 240, "accuracy": 0.55, "accuracy_ci": [0.49, 0.61], "kappa": 0.03, "kappa_ci": [-0.05, 0.1],
    ...      "ece": 0.21, "flagged_share": 0.0, "label_yes_rate": 0.55, "pred_yes_rate": 0.9}
    >>> describe_calibration(s).splitlines()[0]
    'Overall kappa 0.03 [-0.05, 0.10] on 240 labels (accuracy 0.55 [0.49, 0.61]): the judge is not distinguishable from chance.'
    """
    def g(key: str) -> Any:
        return summary.get(key, float("nan"))  # a missing number reads as NaN

    lines = []
    model = f" ({summary['judge_model']})" if summary.get("judge_model") else ""
    yes, pred = g("label_yes_rate"), g("pred_yes_rate")
    words = kappa_words(g("kappa"), g("kappa_ci"))
    if pred in (0.0, 1.0):
        words = f"the judge says {'yes' if pred else 'no'} to every question, so its verdicts carry no information"
    lines.append(f"Overall kappa {g('kappa'):.2f} {_ci(g('kappa_ci'))} on {int(g('n_labels'))} labels "
                 f"(accuracy {g('accuracy'):.2f} {_ci(g('accuracy_ci'))}): {words}.")
    if not np.isnan(pred):
        lean = "says yes more often than" if pred > yes + 0.1 else "says no more often than" if pred < yes - 0.1 else "says yes about as often as"
        lines.append(f"At threshold {g('threshold'):.2f} the judge{model} says yes to {pred:.0%} of the questions; "
                     f"the labels say yes to {yes:.0%}: it {lean} a strict reviewer.")
    ece = g("ece")
    if not np.isnan(ece):
        quality = "well calibrated" if ece < 0.05 else "roughly calibrated" if ece < 0.1 else "poorly calibrated"
        lines.append(f"ECE {ece:.3f}: its P(yes) is {quality} as a probability of the label being yes.")
    auroc = g("auroc")
    if not np.isnan(auroc):
        ranks = ("ranks yes-labelled questions above no-labelled ones better than chance" if auroc >= 0.6 else
                 "hardly ranks yes-labelled questions above no-labelled ones" if auroc >= 0.4 else
                 "ranks no-labelled questions above yes-labelled ones")
        lines.append(f"AUROC {auroc:.2f} (0.5 is chance): its P(yes) {ranks}; the threshold with the best kappa on these "
                     f"labels is {g('best_threshold'):.2f} (kappa {g('best_threshold_kappa'):.2f}; chosen on the same labels, so optimistic).")
    flagged = g("flagged_share")
    if not np.isnan(flagged):
        lines.append(f"{flagged:.1%} of the judgements saw neither 是 nor 否 among the top tokens"
                     + (" (they count 0.5 in soft mode)." if flagged > 0 else "."))
    seed_acc = g("seed_accuracy")
    if not np.isnan(seed_acc):
        better = "better than" if seed_acc > g("accuracy") + 0.02 else "worse than" if seed_acc < g("accuracy") - 0.02 else "about as well as"
        lines.append(f"The original's seed mode (greedy 3 tokens, no 否 = yes) matches the labels on {seed_acc:.0%} "
                     f"of the questions (kappa {g('seed_kappa'):.2f}), {better} the soft judge at the threshold.")
    d, dci = g("length_probe_diff"), g("length_probe_diff_ci")
    if not np.isnan(d):
        lo, hi = summary.get("length_pad_levels", [0, "k"])
        verdict = ("the judge rewards length" if dci[0] > 0 else "the judge penalizes padding" if dci[1] < 0
                   else "no clear length bias at this sample size")
        lines.append(f"Padding good answers with {hi} bland sentences instead of {lo} changes mean P(yes) by {d:+.3f} "
                     f"{_ci(dci)} (slope {g('length_probe_slope'):+.4f} per sentence): {verdict}.")
    r, rci = g("relevance_drop"), g("relevance_drop_ci")
    if not np.isnan(r):
        verdict = ("it notices copy about another product" if rci[0] > 0 else
                   "it rates copy about another product as more relevant" if rci[1] < 0 else
                   "it does not reliably notice copy about another product")
        lines.append(f"Swapping in an unrelated entity changes relevancy P(yes) by {-r:+.3f} {_ci([-rci[1], -rci[0]])}: {verdict}.")
    jps = g("judgements_per_s")
    if not np.isnan(jps):
        lines.append(f"Speed: {jps:.1f} judgements per second in soft mode.")
    return "\n".join(lines)

