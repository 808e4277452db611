"""Pairwise win rate of each trained model against its base model, under the training judge's pairwise question.

For each test prompt, the trained model's completion and the base model's for the same prompt, the same sample index
and the same decoding (sampled or greedy) go to `lib.judge.pairwise.RelativeJudge.compare`: the rubric's `relative`
question (which of two ads is better), asked in both orders so the judge's preference for option A cancels. What is
compared is the answer part (`lib.rewards.extract_answer`), as the `relative` rewards do.

    pairs = compare_pairs(completions, rows, {"grpo": "base"}, RelativeJudge(judge, rubric.relative))
    table = winrate_table(pairs)     # one row per (trained model, decoding): win_rate with its 95% interval

Each pair's outcome is a win (1) when the position-debiased P(trained better) is above 0.5, a loss (0) below, a tie
(0.5) at 0.5. A judge order that gives A/B no probability mass (flagged) counts 0.5 (RelativeJudge's rule), so a pair
flagged in both orders is a tie; `flagged` counts the pairs with a flagged order. A prompt's k samples are averaged and
the prompts resampled (a prompt's samples stay together), as the score tables do. The training judge scores it: the win
rate is NOT independent of the training judge (a policy that learned the judge's taste wins without being better).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import pandas as pd

from lib.rewards import extract_answer
from lib.eval.tables import _interval

TIE_TOLERANCE = 1e-9  # |win - 0.5| below this is a tie (debiased_win of equal P(A) in both orders is 0.5 up to rounding)
# the table's `independent` mark: the judge is the training judge's model (`lib.eval.scoring.with_judge`'s form)
NOT_INDEPENDENT = ("no: the training judge's model asking its pairwise question: a taste the policy learned from this "
                   "judge wins here too")
PAIR_COLUMNS = ("model", "base", "entity", "decoding", "sample", "win", "outcome", "p_ab", "p_ba", "position_bias",
                "judged", "flagged")
TABLE_COLUMNS = ("base", "decoding", "n", "k", "win_rate", "win_rate_lo", "win_rate_hi", "p_win", "p_win_lo",
                 "p_win_hi", "wins", "ties", "losses", "flagged", "position_bias")


class WinRateError(ValueError):
    """Win-rate input that cannot be used; one line naming the model, column or value."""


def outcome(win: float) -> float:
    """A pair's outcome from its debiased win probability: 1 (win), 0.5 (tie) or 0 (loss).

    >>> outcome(0.8), outcome(0.5), outcome(0.2), outcome(0.5 + 1e-12)
    (1.0, 0.5, 0.0, 0.5)
    """
    if abs(win - 0.5) <= TIE_TOLERANCE:
        return 0.5
    return 1.0 if win > 0.5 else 0.0


def compare_pairs(completions: Mapping[str, Sequence[str]], rows: pd.DataFrame, pairs: Mapping[str, str],
                  comparer: Any) -> pd.DataFrame:
    """Judge every trained model's completion against its base model's completion of the same row.

    `completions`: label -> completions aligned with `rows` (columns `entity`, and `decoding`, `sample` as
    `lib.eval.generation.eval_rows` writes them; without them every row is sample 0 of "sample"). `pairs`: {trained
    label: base label} (`lib.eval.scoring.base_pairs`). `comparer.compare(entities, xs, ys) -> [PairResult]`
    (`lib.judge.pairwise.RelativeJudge`; one batch per trained model, both orders). A None result counts as a tie
    and is flagged. Returns one row per pair, columns `PAIR_COLUMNS`.
    """
    if "entity" not in rows.columns:
        raise WinRateError(f"compare_pairs: rows need an 'entity' column; has {list(rows.columns)}")
    n = len(rows)
    entities = [str(e) for e in rows["entity"]]
    decoding = rows["decoding"].tolist() if "decoding" in rows.columns else ["sample"] * n
    sample = [int(s) for s in rows["sample"]] if "sample" in rows.columns else [0] * n
    out = []
    for model, base in pairs.items():
        for label in (model, base):
            if label not in completions:
                raise WinRateError(f"compare_pairs: no completions of model {label!r}; have {list(completions)}")
            if len(completions[label]) != n:
                raise WinRateError(f"compare_pairs: model {label!r} has {len(completions[label])} completions for "
                                   f"{n} rows")
        xs = [extract_answer(c) for c in completions[model]]
        ys = [extract_answer(c) for c in completions[base]]
        results = comparer.compare(entities, xs, ys)
        if len(results) != n:
            raise WinRateError(f"compare_pairs: the judge returned {len(results)} results for {n} pairs")
        for i, r in enumerate(results):
            if r is None:
                win, p_ab, p_ba, bias, judged, flagged = 0.5, None, None, None, True, True
            else:
                win, p_ab, p_ba, bias, judged = r.win, r.p_ab, r.p_ba, r.position_bias, r.judged
                flagged = judged and (p_ab is None or p_ba is None)
            out.append({"model": model, "base": base, "entity": entities[i], "decoding": decoding[i],
                        "sample": sample[i], "win": float(win), "outcome": outcome(float(win)),
                        "p_ab": _num(p_ab), "p_ba": _num(p_ba), "position_bias": _num(bias), "judged": bool(judged),
                        "flagged": bool(flagged)})
    return pd.DataFrame(out, columns=list(PAIR_COLUMNS))


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _prompt_interval(values: pd.Series, clusters: pd.Series, n_resamples: int, seed: int,
                     confidence: float) -> tuple[float, float, float]:
    """Mean of per-prompt means and its percentile bootstrap interval over prompts (the score tables' `_interval`)."""
    per_prompt = values.groupby(clusters.to_numpy(), sort=False).mean().to_numpy(dtype=float)
    return _interval(per_prompt, n_resamples, seed, confidence)


def winrate_table(pairs: pd.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                  cluster: str = "entity") -> pd.DataFrame:
    """Win rate of each trained model over its base, per decoding, from `compare_pairs`' rows.

    One row per (model, decoding), index `model` (sampled rows first): base, decoding, `n` prompts, `k` pairs per
    prompt, `win_rate` (mean outcome: wins 1, ties 0.5, losses 0) and `p_win` (mean debiased P(trained better)), each
    with a 95% percentile bootstrap interval over prompts (`cluster`), a prompt's pairs averaged first; the counts of
    wins, ties, losses and flagged pairs; `position_bias`: the judge's mean P(A) over both orders minus 0.5, over the
    pairs it judged in both orders (NaN when none).
    """
    missing = [c for c in ("model", "base", "decoding", "win", "outcome", "position_bias", "flagged", cluster)
               if c not in pairs.columns]
    if missing:
        raise WinRateError(f"winrate_table: missing column(s) {missing}; has {list(pairs.columns)}")
    rows = []
    order = sorted(dict.fromkeys(zip(pairs["model"], pairs["decoding"])),
                   key=lambda md: (md[1] != "sample",))  # stable: models in order, sampled before greedy
    for model, dec in order:
        g = pairs[(pairs["model"] == model) & (pairs["decoding"] == dec)]
        counts = g.groupby(cluster, sort=False).size()
        k = float(counts.mean())
        row: dict[str, Any] = {"model": model, "base": g["base"].iloc[0], "decoding": dec, "n": int(len(counts)),
                               "k": int(k) if k.is_integer() else round(k, 2)}
        for name, col in (("win_rate", "outcome"), ("p_win", "win")):
            row[name], row[f"{name}_lo"], row[f"{name}_hi"] = _prompt_interval(
                g[col].astype(float), g[cluster], n_resamples, seed, confidence)
        row.update(wins=int((g["outcome"] == 1.0).sum()), ties=int((g["outcome"] == 0.5).sum()),
                   losses=int((g["outcome"] == 0.0).sum()), flagged=int(g["flagged"].sum()))
        bias = g["position_bias"].astype(float).dropna()
        row["position_bias"] = float(bias.mean()) if len(bias) else float("nan")
        rows.append(row)
    table = pd.DataFrame(rows, columns=["model", *TABLE_COLUMNS]).set_index("model")
    return table


def pairwise_winrate(completions: Mapping[str, Sequence[str]], rows: pd.DataFrame, pairs: Mapping[str, str],
                     judge: Any, rubric: Any, enabled: bool = True, n_resamples: int = 1000, seed: int = 0,
                     judge_label: str = "train") -> tuple[pd.DataFrame | None, pd.DataFrame | None, str]:
    """Notebook 04's win rate: (table, pair rows, "") or (None, None, why it was skipped).

    `judge`: the training judge's `JudgeEngine` (still open); `rubric`: the training rubric (its `relative` spec).
    The table (`winrate_table`) gets the columns `judge` (`judge_label`) and `independent` (`NOT_INDEPENDENT`).
    Skipped, with the reason, when `enabled` is false (`eval.winrate`), no trained model has a base
    (`pairs` empty), the rubric has no `relative` template, or the judge's backend cannot read P(A)/P(B).
    """
    from lib.judge.preferences import pairwise_judge

    if not enabled:
        return None, None, "eval.winrate is false"
    if not pairs:
        return None, None, "no trained model (a row with an adapter) has a base row to be compared with"
    comparer, why = pairwise_judge(judge, rubric)
    if comparer is None:
        return None, None, f"the training judge cannot compare pairs: {why}"
    pair_rows = compare_pairs(completions, rows, pairs, comparer)
    table = winrate_table(pair_rows, n_resamples=n_resamples, seed=seed)
    return table.assign(judge=judge_label, independent=NOT_INDEPENDENT), pair_rows, ""


def winrate_results(table: pd.DataFrame) -> dict[str, object]:
    """{"eval.winrate.<model>": win rate, "..._lo", "..._hi", "..._position_bias"} of the sampled rows; greedy rows as
    "eval.winrate.<model>_greedy" (with _lo/_hi); NaN recorded as None."""
    out: dict[str, object] = {}
    for model, r in table.iterrows():
        key = f"eval.winrate.{model}" + ("" if r["decoding"] == "sample" else f"_{r['decoding']}")
        for suffix in ("", "_lo", "_hi"):
            out[key + suffix] = _json_float(r[f"win_rate{suffix}"])
        if r["decoding"] == "sample":
            out[f"{key}_position_bias"] = _json_float(r["position_bias"])
    return out


def _json_float(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) else x
