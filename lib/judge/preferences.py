"""Human preferences as a second yardstick of the judge: how often its pairwise verdict prefers the text people chose.

A preference file holds JSON lines `{"prompt": ..., "chosen": ..., "rejected": ...}` (the layout of public writing-
preference sets) with an optional `entity` (the product the texts advertise; without it the prompt stands in for it in
the judge's question). Other fields are ignored, so a public set's extra columns load as they are. A bad line raises
`PreferenceError("<file>:<line>: field '<name>': ...")`.

The project's own set, `lib/assets/preferences.jsonl`, is derived from the calibration set (`build_preference_pairs`):
for each entity, pairs of its answer texts whose human-labelled rubric score (`lib.rubric.section_score` on the 0/1
labels) differs by at least a margin, the better one chosen. Rebuild it with `python -m lib.judge.preferences`.

`preference_agreement` asks the pairwise judge (`lib.judge.pairwise.RelativeJudge`, both orders) about every pair and
`summarize_agreement` reports: accuracy (the judge's position-debiased win of `chosen` above 0.5; a tie counts half),
a bootstrap 95% interval of it over prompts (pairs of one prompt resampled together), position consistency (the share
of pairs where both orders pick the same text) and the mean position bias (mean P(A) minus 0.5).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import pandas as pd

from lib import paths
from lib.yamlio import jsonl_objects
from lib.stats import bootstrap_interval

if TYPE_CHECKING:  # pragma: no cover
    from lib.judge.pairwise import RelativeJudge
    from lib.rubric import Rubric

PREFERENCES_FILE = paths.DATA_DIR / "preferences.jsonl"
REQUIRED = ("prompt", "chosen", "rejected")
OPTIONAL = ("entity",)
COLUMNS = ("line", "prompt", "entity", "chosen", "rejected")
DEFAULT_MARGIN = 0.3  # labelled score difference of a derived pair (scores: 0, 0.05, 0.38, 0.72, 1 on the default rubric)
DEFAULT_PER_ENTITY = 2  # derived pairs per entity (the widest gaps first)


class PreferenceError(ValueError):
    """A preference file or pair that cannot be used; one line naming the file, line and field."""


def load_preferences(path: str | Path | None = None) -> pd.DataFrame:
    """Read a preference file (None: `lib/assets/preferences.jsonl`); one row per pair.

    Columns: line (in the file), prompt, entity (the prompt when the line has none), chosen, rejected. Blank lines are
    skipped; `prompt`, `chosen` and `rejected` must be non-empty strings, `entity` a non-empty string when present, and
    `chosen` must differ from `rejected`.
    """
    p = Path(path) if path is not None else PREFERENCES_FILE
    if not p.exists():
        raise PreferenceError(f"{p}: preference file not found")
    rows = []
    for lineno, where, obj in jsonl_objects(p, PreferenceError):
        for f in REQUIRED + OPTIONAL:
            if f not in obj:
                if f in REQUIRED:
                    raise PreferenceError(f"{where}: field {f!r}: missing")
                continue
            if not isinstance(obj[f], str) or not obj[f].strip():
                raise PreferenceError(f"{where}: field {f!r}: expected a non-empty string, got {obj[f]!r}")
        if obj["chosen"].strip() == obj["rejected"].strip():
            raise PreferenceError(f"{where}: field 'rejected': the same text as 'chosen'")
        rows.append({"line": lineno, "prompt": obj["prompt"], "entity": obj.get("entity", obj["prompt"]),
                     "chosen": obj["chosen"], "rejected": obj["rejected"]})
    if not rows:
        raise PreferenceError(f"{p}: no pairs")
    return pd.DataFrame(rows, columns=list(COLUMNS))


def labelled_scores(calib: pd.DataFrame, rubric: "Rubric", section: str = "answer") -> pd.Series:
    """The rubric score of each text of `section` computed from its human labels (0/1 indicators), by row."""
    from lib.rubric import section_score

    sec = rubric[section]
    rows = calib[calib["section"] == section]
    return pd.Series([section_score(sec, {k: float(v) for k, v in lab.items()}) for lab in rows["labels"]],
                     index=rows.index, dtype=float)


def build_preference_pairs(calib: pd.DataFrame, rubric: "Rubric", margin: float = DEFAULT_MARGIN,
                           per_entity: int = DEFAULT_PER_ENTITY) -> pd.DataFrame:
    """Preference pairs derived from the calibration set's answers (`lib.judge.calibration.load_calibration_set`).

    For each entity (in file order), every pair of its answer texts whose labelled scores (`labelled_scores`) differ by
    at least `margin`, the higher one chosen; the `per_entity` widest gaps are kept (ties: file order). The prompt is the
    user request of training (`lib.data.USER_TEMPLATE`). Columns: prompt, entity, chosen, rejected, chosen_id,
    rejected_id, margin.
    """
    from lib.data import USER_TEMPLATE

    scores = labelled_scores(calib, rubric)
    answers = calib.loc[scores.index].assign(score=scores)
    out = []
    for entity in dict.fromkeys(answers["entity"]):
        group = answers[answers["entity"] == entity]
        pairs = []
        for order_a, a in enumerate(group.itertuples()):
            for order_b, b in enumerate(group.itertuples()):
                if a.score - b.score >= margin - 1e-12:
                    pairs.append((-(a.score - b.score), order_a, order_b, a, b))
        for _, _, _, a, b in sorted(pairs, key=lambda t: t[:3])[:per_entity]:
            out.append({"prompt": USER_TEMPLATE.format(entity=entity), "entity": entity, "chosen": a.text,
                        "rejected": b.text, "chosen_id": a.id, "rejected_id": b.id, "margin": round(a.score - b.score, 6)})
    return pd.DataFrame(out, columns=["prompt", "entity", "chosen", "rejected", "chosen_id", "rejected_id", "margin"])


def write_preferences(pairs: pd.DataFrame, path: str | Path) -> Path:
    """Write pairs as JSON lines: prompt, entity, chosen, rejected, then any other columns (ids, margin)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}, ensure_ascii=False)
             for row in pairs.to_dict(orient="records")]
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def pairwise_judge(engine: Any, rubric: "Rubric") -> tuple["RelativeJudge | None", str]:
    """The pairwise judge on `engine`'s backend with the rubric's `relative` question, or (None, why not): a rubric
    without one, or a backend that cannot read P(A)/P(B)."""
    from lib.judge.backends import JudgeError
    from lib.judge.pairwise import RelativeJudge

    if getattr(rubric, "relative", None) is None:
        return None, (f"the rubric {getattr(rubric, 'source', '')} has no `relative` template and question: "
                      "no pairwise judge")
    try:
        return RelativeJudge(engine, rubric.relative), ""
    except JudgeError as exc:
        return None, str(exc)


def preference_agreement(judge: "RelativeJudge", prefs: pd.DataFrame) -> pd.DataFrame:
    """Ask the pairwise judge about every pair (both orders, one batch): is `chosen` the better ad?

    Returns `prefs` with columns win (P(chosen better), position bias cancelled: `lib.judge.pairwise.debiased_win`),
    p_ab (P(A) with chosen as A), p_ba (P(A) with rejected as A), correct (1 when win > 0.5, 0.5 at a tie, else 0),
    consistent (both orders pick the same text; NaN when an order saw neither A nor B), position_bias.
    """
    results = judge.compare(list(prefs["entity"]), list(prefs["chosen"]), list(prefs["rejected"]))
    out = prefs.reset_index(drop=True).copy()
    out["win"] = [r.win for r in results]
    out["p_ab"] = [np.nan if r.p_ab is None else r.p_ab for r in results]
    out["p_ba"] = [np.nan if r.p_ba is None else r.p_ba for r in results]
    return with_verdicts(out)


def with_verdicts(pairs: pd.DataFrame) -> pd.DataFrame:
    """`pairs` (columns win, p_ab, p_ba) with correct, consistent and position_bias added (see `preference_agreement`)."""
    out = pairs.copy()
    win = out["win"].to_numpy(dtype=float)
    out["correct"] = np.where(win > 0.5, 1.0, np.where(win < 0.5, 0.0, 0.5))
    p_ab, p_ba = out["p_ab"].to_numpy(dtype=float), out["p_ba"].to_numpy(dtype=float)
    seen = ~np.isnan(p_ab) & ~np.isnan(p_ba)
    # chosen as A wins (p_ab > 0.5) and chosen as B wins (p_ba < 0.5), or rejected wins in both orders
    same = (p_ab > 0.5) == (p_ba < 0.5)
    out["consistent"] = np.where(seen, same.astype(float), np.nan)
    out["position_bias"] = np.where(seen, (p_ab + p_ba) / 2 - 0.5, np.nan)
    return out


def _ratio(correct_sums: np.ndarray, counts: np.ndarray) -> float:
    return float(np.sum(correct_sums) / np.sum(counts))


def summarize_agreement(pairs: pd.DataFrame, n_resamples: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict[str, Any]:
    """The agreement's numbers: n_pairs, n_prompts, accuracy (share of pairs the judge gets right) with a bootstrap
    interval over prompts (`lib.stats.bootstrap_interval`, prompts resampled with their pairs: a ratio of sums),
    position_consistency, position_bias (mean), chance (0.5).

    One prompt, or every prompt with the same accuracy: the interval is the point (no resample differs)."""
    if not len(pairs):
        raise PreferenceError("summarize_agreement: no pairs")
    by_prompt = pairs.groupby("prompt", sort=False)["correct"].agg(["sum", "count"])
    sums, counts = by_prompt["sum"].to_numpy(dtype=float), by_prompt["count"].to_numpy(dtype=float)
    acc = _ratio(sums, counts)
    rates = sums / counts
    if len(by_prompt) < 2 or np.all(rates == rates[0]):
        low, high = acc, acc
    else:
        low, high = bootstrap_interval((sums, counts), _ratio, n_resamples=n_resamples, seed=seed, confidence=confidence,
                                       paired=True, vectorized=False)
    cons = pairs["consistent"].dropna() if "consistent" in pairs else pd.Series(dtype=float)
    bias = pairs["position_bias"].dropna() if "position_bias" in pairs else pd.Series(dtype=float)
    return {
        "n_pairs": int(len(pairs)), "n_prompts": int(len(by_prompt)),
        "accuracy": acc, "accuracy_ci": [float(low), float(high)],
        "position_consistency": float(cons.mean()) if len(cons) else float("nan"),
        "position_bias": float(bias.mean()) if len(bias) else float("nan"),
        "chance": 0.5,
    }


def describe_agreement(summary: dict[str, Any]) -> str:
    """One sentence on the preference agreement.

    >>> describe_agreement({"n_pairs": 30, "n_prompts": 20, "accuracy": 0.8, "accuracy_ci": [0.65, 0.9],
    ...                     "position_consistency": 0.7, "position_bias": 0.1})
    'The pairwise judge prefers the human-chosen text in 80% of 30 pairs (95% interval over 20 prompts [65%, 90%]: above chance); both orders agree on 70% of pairs, mean position bias +0.10 toward A.'
    """
    lo, hi = summary["accuracy_ci"]
    verdict = "above chance" if lo > 0.5 else "below chance" if hi < 0.5 else "not distinguishable from chance"
    return (f"The pairwise judge prefers the human-chosen text in {summary['accuracy']:.0%} of {summary['n_pairs']} pairs "
            f"(95% interval over {summary['n_prompts']} prompts [{lo:.0%}, {hi:.0%}]: {verdict}); both orders agree on "
            f"{summary['position_consistency']:.0%} of pairs, mean position bias {summary['position_bias']:+.2f} toward A.")


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m lib.judge.preferences [--out PATH]`: derive the project's preference set from the calibration set and
    the default rubric (default output: lib/assets/preferences.jsonl)."""
    import argparse

    from lib.judge.calibration import load_calibration_set, rubric_keys
    from lib.rubric import load_rubric

    parser = argparse.ArgumentParser(prog="python -m lib.judge.preferences",
                                     description="derive preference pairs from the calibration set")
    parser.add_argument("--out", default=str(PREFERENCES_FILE), help="where to write the pairs (JSON lines)")
    parser.add_argument("--margin", type=float, default=DEFAULT_MARGIN, help="least labelled-score gap of a pair")
    parser.add_argument("--per-entity", type=int, default=DEFAULT_PER_ENTITY, help="pairs per entity, widest gaps first")
    args = parser.parse_args(argv)
    rubric = load_rubric()
    pairs = build_preference_pairs(load_calibration_set(rubric_keys=rubric_keys(rubric)), rubric, margin=args.margin,
                                   per_entity=args.per_entity)
    write_preferences(pairs, args.out)
    print(f"{len(pairs)} pairs about {pairs['entity'].nunique()} entities -> {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
