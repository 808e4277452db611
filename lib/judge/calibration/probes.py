"""Bias probes of the judge: whether it rewards length, and whether it notices copy about another product.

The length probe pads good answers with bland sentences; the relevance probe asks about the same answer with a
swapped entity. Probe texts, runs and summaries.
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd

from lib import paths
from lib.judge.calibration.dataset import CalibrationError, judge_calibration_set
from lib.stats import bootstrap_ci
from lib.yamlio import read_yaml

if TYPE_CHECKING:  # pragma: no cover
    from lib.judge.types import SectionJudge
    from lib.rubric import RubricSection


PROBES_FILE = paths.DATA_DIR / "probes.yaml"  # filler sentences for the length probe


def load_probes(path: str | Path | None = None) -> dict[str, Any]:
    """Read `lib/assets/probes.yaml`: at least `filler_sentences`, a non-empty list of strings."""
    p = Path(path) if path is not None else PROBES_FILE
    if not p.exists():
        raise CalibrationError(f"{p}: probe file not found")
    data = read_yaml(p, CalibrationError)
    fillers = data.get("filler_sentences") if isinstance(data, dict) else None
    if not isinstance(fillers, list) or not fillers or not all(isinstance(s, str) and s.strip() for s in fillers):
        raise CalibrationError(f"{p}: field 'filler_sentences': expected a non-empty list of non-empty strings")
    return data


def length_probe_texts(
    good_texts: Mapping[str, str] | Sequence[str],
    filler_sentences: Sequence[str],
    pad_levels: Sequence[int] = (0, 1, 2, 4, 8),
    seed: int = 0,
) -> pd.DataFrame:
    """Good answers padded with k bland filler sentences for each k in `pad_levels`.

    Does the judge reward length rather than content? Each text draws one random order of the filler
    sentences (`numpy.random.default_rng(seed)`), and level k appends the first k of them, so a
    higher level only adds sentences (beyond the pool size the order repeats). `good_texts`: {id:
    text}, or a sequence (ids "0", "1", ...). Returns columns id, pad_level, text, n_chars.
    """
    items = list(good_texts.items()) if isinstance(good_texts, Mapping) else [(str(i), t) for i, t in enumerate(good_texts)]
    fillers = [s.strip() for s in filler_sentences]
    if not fillers or not all(fillers):
        raise CalibrationError("length_probe_texts: filler_sentences must be a non-empty list of non-empty strings")
    levels = [int(k) for k in pad_levels]
    if not levels or min(levels) < 0:
        raise CalibrationError(f"length_probe_texts: pad_levels must be non-negative integers, got {list(pad_levels)}")
    rng = np.random.default_rng(seed)
    top = max(levels)
    rows = []
    for tid, text in items:
        if not isinstance(text, str) or not text.strip():
            raise CalibrationError(f"length_probe_texts: text {tid!r} is empty")
        n_perm = max(1, -(-top // len(fillers)))
        order = np.concatenate([rng.permutation(len(fillers)) for _ in range(n_perm)])[:top]
        for k in levels:
            padded = text.strip() + "".join(fillers[i] for i in order[:k])
            rows.append({"id": str(tid), "pad_level": k, "text": padded, "n_chars": len(padded)})
    return pd.DataFrame(rows, columns=["id", "pad_level", "text", "n_chars"])


def relevance_probe_pairs(df_answers: pd.DataFrame, seed: int = 0, pool: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each answer paired with an unrelated entity, to check that `relevancy` drops when it should.

    `df_answers`: columns id, text, entity (and optionally domain). The swapped entity is drawn
    (`numpy.random.default_rng(seed)`) from `pool` (columns entity[, domain]; default: the answers
    themselves) among entities other than the answer's own and, when both have a domain, from
    another domain. Returns id, text, true_entity, swapped_entity (and true_domain, swapped_domain).
    """
    missing = [c for c in ("id", "text", "entity") if c not in df_answers.columns]
    if missing:
        raise CalibrationError(f"relevance_probe_pairs: missing column(s) {missing}; has {list(df_answers.columns)}")
    pool = df_answers if pool is None else pool
    if "entity" not in pool.columns:
        raise CalibrationError(f"relevance_probe_pairs: pool needs an 'entity' column; has {list(pool.columns)}")
    use_domain = "domain" in df_answers.columns and "domain" in pool.columns
    cand = pool[["entity", "domain"]] if use_domain else pool[["entity"]].assign(domain="")
    cand = cand.drop_duplicates("entity").sort_values("entity").reset_index(drop=True)  # sorted: pool order does not matter
    rng = np.random.default_rng(seed)
    rows = []
    for r in df_answers.itertuples(index=False):
        dom = getattr(r, "domain", "") if use_domain else ""
        ok = cand[(cand["entity"] != r.entity) & ((cand["domain"] != dom) | (not use_domain) | (dom == ""))]
        if ok.empty:
            raise CalibrationError(f"relevance_probe_pairs: no unrelated entity for {r.id!r} ({r.entity!r}, domain {dom!r})")
        pick = ok.iloc[int(rng.integers(len(ok)))]
        row = {"id": r.id, "text": r.text, "true_entity": r.entity, "swapped_entity": pick["entity"]}
        if use_domain:
            row.update(true_domain=dom, swapped_domain=pick["domain"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_probe(
    df: pd.DataFrame,
    value_col: str,
    group_col: str,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    stat: Callable[..., float] = np.mean,
) -> pd.DataFrame:
    """Mean (or `stat`) of `value_col` per group with a bootstrap interval (`lib.stats.bootstrap_ci`).

    Returns columns <group_col>, n, mean, low, high; groups sorted. NaN values are left out.
    """
    for c in (value_col, group_col):
        if c not in df.columns:
            raise CalibrationError(f"summarize_probe: missing column {c!r}; has {list(df.columns)}")
    rows = []
    for g, sub in df.groupby(group_col, sort=True):
        vals = pd.to_numeric(sub[value_col], errors="raise").to_numpy(dtype=float)
        point, low, high = bootstrap_ci(vals, stat=stat, n_resamples=n_resamples, seed=seed, confidence=confidence)
        rows.append({group_col: g, "n": int((~np.isnan(vals)).sum()), "mean": point, "low": low, "high": high})
    return pd.DataFrame(rows, columns=[group_col, "n", "mean", "low", "high"])


def one_item_section(section: "RubricSection", key: str) -> "RubricSection":
    """The section with only item `key` (same template): ask one question without the others."""
    return replace(section, items=(section.item(key),))


def _probe_rubric(section: "RubricSection") -> dict[str, "RubricSection"]:
    return {section.name: section}  # judge_calibration_set only indexes the rubric by section name


def run_length_probe(
    judge: "SectionJudge", section: "RubricSection", good: pd.DataFrame, filler_sentences: Sequence[str],
    pad_levels: Sequence[int] = (0, 1, 2, 4, 8), seed: int = 0,
) -> pd.DataFrame:
    """Judge good texts padded with 0..k bland sentences (`length_probe_texts`) on every item of `section`.

    `good`: columns id, entity, text. Returns one row per (id, pad_level): id, pad_level, n_chars,
    p_yes (mean P(yes) over the items the judge answered), score (`section_score` of the soft
    indicators, flagged items counting 0.5 as in training), flagged (items without an answer).
    """
    from lib.judge.types import soft_indicator
    from lib.rubric import section_score

    pads = length_probe_texts(dict(zip(good["id"], good["text"])), filler_sentences, pad_levels, seed=seed)
    entity = dict(zip(good["id"].astype(str), good["entity"]))
    probe = pads.assign(pid=pads["id"] + "@" + pads["pad_level"].astype(str), section=section.name,
                        entity=pads["id"].map(entity))
    judged = judge_calibration_set(judge, _probe_rubric(section), probe.rename(columns={"id": "text_id", "pid": "id"}))
    rows = []
    for r in probe.itertuples(index=False):
        sub = judged[judged["id"] == r.pid]
        ind = {k: soft_indicator(p) for k, p in zip(sub["key"], sub["p_yes"])}
        rows.append({"id": r.id, "pad_level": r.pad_level, "n_chars": r.n_chars, "p_yes": float(sub["p_yes"].mean()),
                     "score": section_score(section, ind), "flagged": int(sub["flagged"].sum())})
    return pd.DataFrame(rows, columns=["id", "pad_level", "n_chars", "p_yes", "score", "flagged"])


def run_relevance_probe(
    judge: "SectionJudge", section: "RubricSection", pairs: pd.DataFrame, key: str = "relevancy"
) -> pd.DataFrame:
    """Ask item `key` about each text twice: with its own entity and with the swapped one.

    `pairs`: `relevance_probe_pairs` output. Returns id, true_entity, swapped_entity, p_true, p_swapped,
    drop (p_true - p_swapped; positive when the judge notices the copy is about something else).
    """
    sec = one_item_section(section, key)
    both = pd.concat([
        pairs.assign(pid=pairs["id"].astype(str) + "@true", entity=pairs["true_entity"]),
        pairs.assign(pid=pairs["id"].astype(str) + "@swapped", entity=pairs["swapped_entity"]),
    ])
    probe = both.assign(section=section.name).rename(columns={"id": "text_id", "pid": "id"})
    p = judge_calibration_set(judge, _probe_rubric(sec), probe).set_index("id")["p_yes"]
    out = pairs[["id", "true_entity", "swapped_entity"]].copy()
    out["p_true"] = [p[f"{i}@true"] for i in pairs["id"].astype(str)]
    out["p_swapped"] = [p[f"{i}@swapped"] for i in pairs["id"].astype(str)]
    out["drop"] = out["p_true"] - out["p_swapped"]
    return out.reset_index(drop=True)


def summarize_relevance(relevance: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean relevancy P(yes) with the text's own entity and with the swapped one (`summarize_probe` columns).

    Rows "own entity", "swapped entity" (in that order); `relevance`: `run_relevance_probe` output.
    """
    long = pd.concat([
        pd.DataFrame({"entity": "own entity", "p_yes": relevance["p_true"]}),
        pd.DataFrame({"entity": "swapped entity", "p_yes": relevance["p_swapped"]}),
    ])
    return summarize_probe(long, "p_yes", "entity", n_resamples=n_resamples, seed=seed)

