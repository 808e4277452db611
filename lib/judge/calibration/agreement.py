"""Agreement and calibration of the judge against the human labels, per question and overall; the judge modes compared.

`metrics_table`: accuracy, kappa, Brier, ECE, log loss and AUROC per question and overall; `mode_frame` and
`mode_agreement`: how the soft, hard and seed judge modes agree with the labels and with each other.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from lib.judge.calibration.dataset import CalibrationError
from lib.stats import as_labels, as_probs, cohen_kappa, expected_calibration_error


LOG_LOSS_EPS = 1e-6  # P(yes) is clipped to [eps, 1 - eps]: one confident miss costs at most ~13.8 nats
MODES = ("soft", "hard", "seed")
OVERALL = "overall"


def label_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    """One row of `metrics_table` (labels `y`, P(yes) `p` of one group): NaN P(yes) left out and counted."""
    keep = ~np.isnan(p)
    out: dict[str, float] = {"n": int(keep.sum()), "n_missing": int((~keep).sum()), "yes_rate": float(y.mean()) if y.size else np.nan}
    y, p = y[keep], p[keep]
    nan = float("nan")
    if y.size == 0:
        out.update(pred_yes_rate=nan, accuracy=nan, kappa=nan, brier=nan, ece=nan, log_loss=nan, auroc=nan)
        return out
    pred = p >= threshold  # the same rule as a hard-mode Judgement.verdict
    yi = y.astype(int)
    out.update(
        pred_yes_rate=float(pred.mean()),
        accuracy=float((pred == y).mean()),
        kappa=cohen_kappa(y, pred),
        brier=float(brier_score_loss(yi, p, labels=[0, 1])),
        ece=expected_calibration_error(y, p),
        log_loss=float(log_loss(yi, np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS), labels=[0, 1])),
        auroc=float(roc_auc_score(yi, p)) if np.unique(y).size == 2 else nan,
    )
    return out


def metrics_table(y_true: Any, p_yes: Any, threshold: float = 0.5, by: Any = None) -> pd.DataFrame:
    """Agreement and calibration of P(yes) against human labels, per group and overall.

    `y_true`: bools (or 0/1); `p_yes`: the judge's P(yes), NaN where it saw neither yes nor no
    (those pairs are left out and counted in `n_missing`); `by`: optional group labels aligned with
    them (e.g. "answer/humor"). Rows: each group in order of first appearance, then "overall".
    Columns: n, n_missing, yes_rate (labels), pred_yes_rate (p >= threshold), accuracy, kappa
    (NaN when one class only, see `cohen_kappa`), brier, ece (10 equal-width bins), log_loss
    (P clipped to [1e-6, 1 - 1e-6]), auroc (NaN unless both classes are present).
    """
    y = as_labels(y_true)
    p = as_probs(p_yes, y.size)
    rows: dict[str, dict[str, float]] = {}
    if by is not None:
        groups = pd.Series(by).reset_index(drop=True)
        if groups.shape[0] != y.size:
            raise CalibrationError(f"by has {groups.shape[0]} values, y_true has {y.size}")
        if (groups.astype(str) == OVERALL).any():
            raise CalibrationError(f"by: the group name {OVERALL!r} is reserved for the overall row")
        for g in pd.unique(groups):
            m = (groups == g).to_numpy()
            rows[str(g)] = label_metrics(y[m], p[m], threshold)
    rows[OVERALL] = label_metrics(y, p, threshold)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "group"
    return table


def mode_frame(labels: pd.DataFrame, **judged: pd.DataFrame) -> pd.DataFrame:
    """The labels and each mode's answers side by side, for `mode_agreement`.

    `labels`: `long_labels` output; `judged`: `judge_calibration_set` outputs keyed by mode
    (`soft=`, `hard=`, `seed=`). Column `soft` holds P(yes); `hard` and `seed` hold the verdict
    (a seed-mode item that was not asked counts as "no", as in the section score).
    Returns id, section, key, label and one column per mode given.
    """
    unknown = [m for m in judged if m not in MODES]
    if unknown:
        raise CalibrationError(f"mode_frame: unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    frame = labels[["id", "section", "key", "label"]]
    for mode, j in judged.items():
        col = j[["id", "section", "key", "p_yes" if mode == "soft" else "verdict"]].rename(
            columns={"p_yes": mode, "verdict": mode})
        frame = frame.merge(col, on=["id", "section", "key"], how="left", validate="one_to_one")
        if frame[mode].isna().all():
            raise CalibrationError(f"mode_frame: the {mode!r} judgements share no (id, key) with the labels")
    return frame


def mode_agreement(frame: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """How the judge modes agree with the labels and with each other.

    `frame` has a `label` column (bool) and any of the mode columns `soft` (P(yes), turned into a
    verdict by `p >= threshold`), `hard` (bool) and `seed` (bool). Rows with a missing value are
    left out pair by pair. Returns one row per pair (a, b): first each mode against `label` (its
    agreement is the accuracy), then each pair of modes; columns a, b, n, agreement, kappa.
    """
    if "label" not in frame.columns:
        raise CalibrationError(f"mode_agreement: frame needs a 'label' column; has {list(frame.columns)}")
    modes = [m for m in MODES if m in frame.columns]
    if not modes:
        raise CalibrationError(f"mode_agreement: frame needs at least one of the columns {list(MODES)}; has {list(frame.columns)}")
    cols: dict[str, pd.Series] = {"label": pd.Series(as_labels(frame["label"], "label"), dtype="boolean")}
    for m in modes:
        v = frame[m].reset_index(drop=True)
        if m == "soft":
            p = as_probs(v, len(frame))
            cols[m] = pd.Series(np.where(np.isnan(p), None, p >= threshold), dtype="boolean")
        else:
            cols[m] = v.astype("boolean")
    pairs = [("label", m) for m in modes] + [(a, b) for i, a in enumerate(modes) for b in modes[i + 1:]]
    rows = []
    for a, b in pairs:
        both = cols[a].notna() & cols[b].notna()
        va, vb = cols[a][both].to_numpy(dtype=bool), cols[b][both].to_numpy(dtype=bool)
        rows.append({
            "a": a, "b": b, "n": int(both.sum()),
            "agreement": float((va == vb).mean()) if va.size else np.nan,
            "kappa": cohen_kappa(va, vb),
        })
    return pd.DataFrame(rows, columns=["a", "b", "n", "agreement", "kappa"])

