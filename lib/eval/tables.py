"""Evaluation metrics: completion diagnostics, score tables with intervals, the reward-hacking test.

Diagnostics of completions, score tables with bootstrap intervals, a two-judge comparison that flags likely reward
hacking, and the bar chart of the scores.

Pure logic: the evaluation notebook generates and judges; this module only counts and summarises.

Text measures work on characters, not words: Chinese has no spaces, so "distinct-n" counts
character n-grams and self-BLEU is character-level BLEU-4 (whitespace removed first).
"""
from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from lib.rewards import CLAUSE_DELIMITERS, extract_answer, extract_think
from lib.rubric import TEMPLATE_PLACEHOLDER
from lib.stats import bootstrap_ci, bootstrap_interval


class EvaluateError(ValueError):
    """Input the evaluation cannot use; one line naming the file, column or value."""


# ----------------------------------------------------------------------------------------------
# Diagnostics of completions
# ----------------------------------------------------------------------------------------------

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
# The diagnostic's clause rule: the reward's delimiters plus line breaks, whitespace removed, empty pieces dropped
# (`rewards.repetition_ratio` keeps the original's own rule, empty pieces included, for the reward).
DIAGNOSTIC_CLAUSE_SPLIT = re.compile(f"[{CLAUSE_DELIMITERS}\n]")
_WS = re.compile(r"\s+")


def _part(fn: Callable[[str], str | None], text: str) -> str:
    return (fn(text) or "").strip()


def _chars(text: str) -> str:
    """The text without whitespace: the unit of every character n-gram measure here."""
    return _WS.sub("", text)


def char_ngrams(text: str, n: int) -> list[str]:
    """Character n-grams of `text` with whitespace removed.

    >>> char_ngrams("好 喝的", 2)
    ['好喝', '喝的']
    """
    s = _chars(text)
    return [s[i : i + n] for i in range(len(s) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Distinct-n (Li et al., 2016) over character n-grams pooled across `texts`:
    distinct n-grams / all n-grams; NaN when there are no n-grams.

    >>> distinct_n(["好好好", "好的"], 1)
    0.4
    """
    grams: list[str] = []
    for t in texts:
        grams.extend(char_ngrams(t, n))
    return len(set(grams)) / len(grams) if grams else float("nan")


def sentence_bleu_chars(hypothesis: str, references: Sequence[str], max_n: int = 4) -> float:
    """Character-level sentence BLEU-`max_n` of one text against references (see `self_bleu`)."""
    return _bleu_scores([hypothesis, *references], max_n=max_n, only_first=True)[0]


def self_bleu(texts: Sequence[str], max_n: int = 4) -> float:
    """Self-BLEU (Zhu et al., 2018): the mean over texts of each one's BLEU against all the others.

    Higher means the texts repeat each other (less diverse). No BLEU package is a dependency (one function
    does not need one), so this is a compact sentence-BLEU: character n-grams (whitespace removed), clipped counts
    against the max count over references, geometric mean of p_1..p_4 with add-one smoothing for
    n >= 2 (Lin & Och, 2004) and none for unigrams (no shared character: BLEU 0), brevity penalty
    against the closest reference length. Empty texts are left out; NaN with fewer than 2 texts.

    >>> self_bleu(["今天天气很好", "今天天气很好"])
    1.0
    """
    kept = [t for t in texts if _chars(t)]
    if len(kept) < 2:
        return float("nan")
    return float(np.mean(_bleu_scores(kept, max_n=max_n)))


def _bleu_scores(texts: Sequence[str], max_n: int = 4, only_first: bool = False) -> list[float]:
    """BLEU of each text against all the others (or of the first only). Linear in the n-grams:
    the max reference count of an n-gram excluding text i is its top count, or its second-best
    count when text i holds the top one."""
    toks = [_chars(t) for t in texts]
    lengths = [len(t) for t in toks]
    counts = [[Counter(t[k : k + n] for k in range(len(t) - n + 1)) for n in range(1, max_n + 1)] for t in toks]
    top: list[dict[str, tuple[int, int, int]]] = []  # per n: gram -> (best count, its text, second best)
    for n in range(max_n):
        best: dict[str, tuple[int, int, int]] = {}
        for i, c in enumerate(counts):
            for g, v in c[n].items():
                b1, i1, b2 = best.get(g, (0, -1, 0))
                best[g] = (v, i, b1) if v > b1 else (b1, i1, max(b2, v))
        top.append(best)
    scores = []
    for i in range(1 if only_first else len(toks)):
        c = lengths[i]
        if c == 0:
            scores.append(0.0)
            continue
        log_p = 0.0
        for n in range(max_n):
            total = max(c - n, 0)
            matched = 0
            for g, v in counts[i][n].items():
                b1, i1, b2 = top[n][g]
                matched += min(v, b2 if i1 == i else b1)
            if n == 0:
                if matched == 0:
                    log_p = float("-inf")
                    break
                log_p += math.log(matched / total)
            else:
                log_p += math.log((matched + 1) / (total + 1))
        if log_p == float("-inf"):
            scores.append(0.0)
            continue
        others = [lengths[j] for j in range(len(toks)) if j != i]
        r = min(others, key=lambda x: (abs(x - c), x))
        bp = 1.0 if c > r else math.exp(1 - r / c)
        scores.append(bp * math.exp(log_p / max_n))
    return scores


def clauses(text: str) -> list[str]:
    """Non-empty clauses of `text`, split on 。？，！ and line breaks, whitespace removed.

    >>> clauses("清爽一夏，就喝它！ 真的。")
    ['清爽一夏', '就喝它', '真的']
    """
    return [c for c in (_chars(x) for x in DIAGNOSTIC_CLAUSE_SPLIT.split(text)) if c]


def clause_overlap(think: str, answer: str) -> float:
    """Share of the think part's clauses that occur among the answer's clauses (copying the draft
    into the answer verbatim); NaN when the think part has no clause."""
    t = clauses(think)
    if not t:
        return float("nan")
    a = set(clauses(answer))
    return sum(c in a for c in t) / len(t)


def tag_counts(completion: str) -> dict[str, int]:
    """How often each of the four tags occurs."""
    return {tag: completion.count(tag) for tag in TAGS}


COPY_NGRAM = 4  # copy_ratio's character n-gram: long enough that shared words of the language rarely match by chance
# diagnostics are rules on the texts: no judge scores them, so they are independent of the training judge
DIAGNOSTICS_JUDGE = "none (rules on the texts)"
DIAGNOSTICS_INDEPENDENT = "yes: computed from the texts by rules, no judge involved"


def entity_mentioned(entity: str, answer: str) -> bool:
    """Whether the answer names the entity (whitespace removed from both, case ignored).

    >>> entity_mentioned("Coca Cola", "就喝cocacola！"), entity_mentioned("可乐", "好喝")
    (True, False)
    """
    e = _chars(entity).lower()
    return bool(e) and e in _chars(answer).lower()


def _grams_outside(text: str, n: int, cut: str) -> list[str]:
    """Character n-grams of `text` (whitespace removed) that do not overlap an occurrence of `cut`."""
    s = _chars(text)
    pieces = s.split(_chars(cut)) if _chars(cut) else [s]
    return [p[i : i + n] for p in pieces for i in range(len(p) - n + 1)]


def copy_ratio(answer: str, reference: str, entity: str = "", n: int = COPY_NGRAM) -> float:
    """Share of the answer's character n-grams (whitespace removed) that occur in `reference` (the prompt the model
    was given: system prompt with its format example, and the request). N-grams overlapping the entity's name are
    left out on both sides, so naming the product is not copying. NaN when the answer has no n-gram left.

    >>> copy_ratio("这里写下你的广告文案", "<answer>这里写下你的广告文案</answer>", n=4)
    1.0
    >>> copy_ratio("可乐真好喝", "请为可乐设计一段创意广告文案", entity="可乐", n=2)
    0.0
    """
    grams = _grams_outside(answer, n, entity)
    if not grams:
        return float("nan")
    ref = set(_grams_outside(reference, n, entity))
    return sum(g in ref for g in grams) / len(grams)


def prompt_text(entity: str | None) -> str:
    """The text of the prompt a model answered (lib.data.make_prompt: system prompt, then the request), or the system
    prompt alone when the entity is not known."""
    from lib.data import SYSTEM_PROMPT, make_prompt

    if entity is None:
        return SYSTEM_PROMPT
    return "\n".join(m["content"] for m in make_prompt(entity))


def _nanmean(values: Sequence[float]) -> float:
    v = [x for x in values if not math.isnan(x)]
    return float(np.mean(v)) if v else float("nan")


def diagnostics(completions: list[str], entities: Sequence[str] | None = None) -> dict[str, float]:
    """Diagnostics of one model's completions (full `<think>…</think><answer>…</answer>` outputs,
    possibly malformed); `entities`: each completion's prompt entity (aligned; None: unknown). Keys:

    - n: completions; mean_length_chars: mean completion length in characters
    - think_length_chars, answer_length_chars: mean length of the think and answer parts in characters (stripped)
    - distinct_1, distinct_2: character distinct-n of the answer parts, pooled (see `distinct_n`)
    - self_bleu: character BLEU-4 of each answer against the others, averaged (see `self_bleu`)
    - think_answer_overlap: mean `clause_overlap` over completions that have both `</think>` and
      `<answer>` and a think clause (NaN when none has)
    - entity_mention_rate: share of answers that name their prompt's entity (`entity_mentioned`; NaN without
      `entities`)
    - copy_ratio: mean over answers of the share of their character 4-grams found in the prompt they answered
      (`copy_ratio` against `prompt_text`: system prompt and request; the system prompt alone without `entities`):
      a copy of the format example scores near 1; answers without a 4-gram left out (NaN when none has one)
    - placeholder_share: share containing the template placeholder 这里写下你的
    - missing_tag_share: share where any of the four tags is absent
    - one_of_each_tag_share: share with exactly one of each tag

    Answers and think parts come from lib.rewards.extract_answer / extract_think, as the judges
    see them (the original's extraction: with a tag missing, that is the whole text). Every key is a rule on the
    texts: independent of the judges (`DIAGNOSTICS_JUDGE`).

    >>> d = diagnostics(["<think>想</think><answer>好喝</answer>", "好喝"])
    >>> d["missing_tag_share"], d["one_of_each_tag_share"]
    (0.5, 0.5)
    """
    n = len(completions)
    if n == 0:
        raise EvaluateError("diagnostics: no completions given")
    if entities is not None and len(entities) != n:
        raise EvaluateError(f"diagnostics: {len(entities)} entities for {n} completions; they must be aligned")
    ents: list[str | None] = list(entities) if entities is not None else [None] * n
    answers = [_part(extract_answer, c) for c in completions]
    thinks = [_part(extract_think, c) for c in completions]
    tags = [tag_counts(c) for c in completions]
    # extract_* return the whole text when a tag is missing: overlap only where both parts exist
    both = [("</think>" in c and "<answer>" in c) for c in completions]
    pairs = [(t, a) for t, a, ok in zip(thinks, answers, both) if ok]
    overlaps = [o for o in (clause_overlap(t, a) for t, a in pairs) if not math.isnan(o)]
    prompts = {e: prompt_text(e) for e in dict.fromkeys(ents)}
    copies = [copy_ratio(a, prompts[e], e or "") for a, e in zip(answers, ents)]
    return {
        "n": n,
        "mean_length_chars": float(np.mean([len(c) for c in completions])),
        "think_length_chars": float(np.mean([len(t) for t in thinks])),
        "answer_length_chars": float(np.mean([len(a) for a in answers])),
        "distinct_1": distinct_n(answers, 1),
        "distinct_2": distinct_n(answers, 2),
        "self_bleu": self_bleu(answers),
        "think_answer_overlap": float(np.mean(overlaps)) if overlaps else float("nan"),
        "entity_mention_rate": (float(np.mean([entity_mentioned(e, a) for e, a in zip(ents, answers)]))
                                if entities is not None else float("nan")),
        "copy_ratio": _nanmean(copies),
        "placeholder_share": sum(TEMPLATE_PLACEHOLDER in c for c in completions) / n,
        "missing_tag_share": sum(any(v == 0 for v in t.values()) for t in tags) / n,
        "one_of_each_tag_share": sum(all(v == 1 for v in t.values()) for t in tags) / n,
    }


def diagnostics_table(completions_by_model: Mapping[str, list[str]],
                      entities: Sequence[str] | None = None) -> pd.DataFrame:
    """`diagnostics` for each model, one row each (index: model label); `entities`: the prompt entity of each
    completion, aligned with every model's list (None: entity mention rate NaN, copy ratio against the system prompt
    only). Columns `judge` and `independent` say that no judge scored them (independent of the training judge)."""
    rows = {label: diagnostics(list(comps), entities) for label, comps in completions_by_model.items()}
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "model"
    return df.assign(judge=DIAGNOSTICS_JUDGE, independent=DIAGNOSTICS_INDEPENDENT)


# ----------------------------------------------------------------------------------------------
# Score tables with bootstrap intervals
# ----------------------------------------------------------------------------------------------

def _interval(values: np.ndarray, n_resamples: int, seed: int, confidence: float) -> tuple[float, float, float]:
    """Point estimate (mean) and bootstrap interval; NaN interval below 2 values, a zero-width
    one when every value is equal (every resample has the same mean)."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return float("nan"), float("nan"), float("nan")
    point = float(values.mean())
    if values.size < 2:
        return point, float("nan"), float("nan")
    if np.all(values == values[0]):
        return point, point, point
    p, lo, hi = bootstrap_ci(values, stat=np.mean, n_resamples=n_resamples, seed=seed, confidence=confidence)
    return float(p), float(lo), float(hi)


def _check_columns(df: pd.DataFrame, cols: Iterable[str], what: str) -> None:
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise EvaluateError(f"{what}: missing column(s) {missing}; has {list(df.columns)}")


def score_table(
    per_item: pd.DataFrame,
    metrics: Sequence[str] = ("format", "think", "answer"),
    by: str = "model",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    cluster: str | None = None,
) -> pd.DataFrame:
    """Mean score and bootstrap interval per group (model) and metric.

    `per_item` has one row per judged completion: a `by` column and one column per metric. With `cluster` (the
    prompt id, e.g. "entity"), the samples of a prompt are nested in it: each prompt's samples are averaged and the
    prompts are resampled (a prompt's samples stay together), so k samples of one prompt do not count as k
    independent prompts; the mean is that of the prompt means. Returns one row per group (in order of first
    appearance; index named `by`) with columns `n` (completions, or with `cluster` prompts), with `cluster` also `k`
    (samples per prompt: their mean count, an integer when every prompt has as many), then `<metric>`,
    `<metric>_lo`, `<metric>_hi` for each metric. NaN scores are left out (a prompt with none is left out); a group
    with one score (prompt) gets a NaN interval (shown as the point alone), one whose scores are all equal a
    zero-width one.
    """
    _check_columns(per_item, [by, *metrics, *([cluster] if cluster else [])], "score_table")
    rows = {}
    for label, g in per_item.groupby(by, sort=False):
        if cluster:
            counts = g.groupby(cluster, sort=False).size()
            k = float(counts.mean())
            row: dict[str, Any] = {"n": int(len(counts)), "k": int(k) if k.is_integer() else round(k, 2)}
            g = g.groupby(cluster, sort=False)[list(metrics)].mean()  # NaN left out of a prompt's mean
        else:
            row = {"n": int(len(g))}
        for m in metrics:
            row[m], row[f"{m}_lo"], row[f"{m}_hi"] = _interval(g[m].to_numpy(dtype=float), n_resamples, seed, confidence)
        rows[label] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = by
    return table


def interval_columns(table: pd.DataFrame) -> list[str]:
    """Columns `c` of `table` that come with `c_lo` and `c_hi`."""
    return [c for c in table.columns if f"{c}_lo" in table.columns and f"{c}_hi" in table.columns]


def _fmt(x: Any, digits: int) -> str:
    if x is pd.NA:
        return "—"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return "—" if math.isnan(x) else f"{x:.{digits}f}"
    return str(x)


def display_table(table: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """Strings for reading: each metric with `_lo`/`_hi` becomes one "0.812 [0.771, 0.850]" cell;
    other numbers are rounded to `digits`; NaN shows as —."""
    metrics = interval_columns(table)
    hidden = {f"{m}_{s}" for m in metrics for s in ("lo", "hi")}
    out = pd.DataFrame(index=table.index.astype(str))
    out.index.name = table.index.name
    for c in table.columns:
        if c in hidden:
            continue
        if c in metrics:
            out[c] = [
                _fmt(p, digits) if math.isnan(lo) and math.isnan(hi) else f"{_fmt(p, digits)} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"
                for p, lo, hi in zip(table[c], table[f"{c}_lo"].astype(float), table[f"{c}_hi"].astype(float))
            ]
        else:
            out[c] = [_fmt(v, digits) for v in table[c]]
    return out


def markdown_table(df: pd.DataFrame, index: bool = True) -> str:
    """A GitHub pipe table of `df`'s cells as strings, as given (pandas.to_markdown, through tabulate,
    re-formats number-like strings: "1.000" becomes "1"); `|` in cells is escaped."""
    def cell(x: Any) -> str:
        return str(x).replace("|", r"\|").replace("\n", " ")

    headers = ([df.index.name or ""] if index else []) + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cell(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for idx, row in zip(df.index, df.itertuples(index=False)):
        cells = ([idx] if index else []) + list(row)
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def format_table_markdown(table: pd.DataFrame, digits: int = 3) -> str:
    """A score (or gain) table as Markdown with "0.812 [0.771, 0.850]" cells.

    >>> t = pd.DataFrame({"format": [0.8125], "format_lo": [0.771], "format_hi": [0.85]}, index=["base"])
    >>> print(format_table_markdown(t).splitlines()[2])
    | base | 0.812 [0.771, 0.850] |
    """
    return markdown_table(display_table(table, digits))


def save_table(df: pd.DataFrame, stem_path: str | Path, digits: int = 3, index: bool = True) -> dict[str, Path]:
    """Write `stem.csv` (raw numbers), `stem.md` and `stem.html` (the `display_table` form): the one table
    writer of the stages (the run report collects the `.md` files). Returns the three paths by suffix."""
    stem = Path(stem_path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown = display_table(df, digits)
    out = {"csv": stem.with_suffix(".csv"), "md": stem.with_suffix(".md"), "html": stem.with_suffix(".html")}
    df.to_csv(out["csv"], index=index)
    out["md"].write_text(markdown_table(shown, index=index), encoding="utf-8")
    out["html"].write_text(shown.to_html(index=index, escape=True, border=0), encoding="utf-8")
    return out


# ----------------------------------------------------------------------------------------------
# Training judge vs held-out judge
# ----------------------------------------------------------------------------------------------

def paired_gain_ci(
    a: Sequence[float],
    b: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Mean gain of `b` over `a` on aligned per-prompt scores, with a paired bootstrap interval
    (prompts resampled, both models' scores kept together: the bootstrap of the differences).
    Pairs with a NaN are left out. Returns (gain, low, high).
    """
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise EvaluateError(f"paired_gain_ci: a and b must be aligned 1-d scores, got shapes {a_arr.shape} and {b_arr.shape}")
    return _interval(b_arr - a_arr, n_resamples, seed, confidence)


def _per_prompt(items: pd.DataFrame, by: str, on: str, metrics: Sequence[str], what: str) -> pd.DataFrame:
    _check_columns(items, [by, on, *metrics], what)
    # several samples of one prompt are averaged: the prompt is the unit that is resampled
    return items.groupby([by, on], sort=False)[list(metrics)].mean()


def paired_gains(
    items: pd.DataFrame,
    pairs: Mapping[str, str],
    metric: str = "format",
    by: str = "model",
    on: str = "entity",
    n_resamples: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Gain of each trained model over its base on one metric (one judge), paired bootstrap over shared prompts.

    `pairs`: {trained label: base label}. Returns one row per trained model: model, base, n_prompts, gain,
    gain_lo, gain_hi, significant (the interval excludes 0 on either side).
    """
    t = _per_prompt(items, by, on, [metric], "paired_gains")
    rows = []
    for model, base in pairs.items():
        common = t.loc[model].index.intersection(t.loc[base].index)
        g, lo, hi = paired_gain_ci(t.loc[base].loc[common, metric].to_numpy(), t.loc[model].loc[common, metric].to_numpy(),
                                   n_resamples=n_resamples, seed=seed)
        rows.append({"model": model, "base": base, "n_prompts": int(len(common)), "gain": g, "gain_lo": lo, "gain_hi": hi,
                     "significant": bool(lo > 0 or hi < 0)})
    return pd.DataFrame(rows, columns=["model", "base", "n_prompts", "gain", "gain_lo", "gain_hi", "significant"])


# The original project's published table (its 50 test prompts, scored by Qwen2.5-7B-Instruct as the judge).
# Only the rule-based format score is comparable with ours; think/answer depend on the judge that gave them.
ORIGINAL_REPORTED = {
    "original: Qwen2.5-0.5B-Instruct (reported)": {"format": 0.41, "think": 0.11, "answer": 0.16},
    "original: Qwen2.5-0.5B-GRPO (reported)": {"format": 0.97, "think": 0.88, "answer": 0.42},
}
REPORTED_HEADER = "── the original's published numbers ──"
REPORTED_CAVEAT = ("not comparable with the rows above: another test set (its 50 prompts), judge prompt and judge "
                   "(Qwen2.5-7B-Instruct); format is rule-based but scored on other prompts")


def with_reported_rows(table: pd.DataFrame, reported: Mapping[str, Mapping[str, float]] = ORIGINAL_REPORTED) -> pd.DataFrame:
    """`table` (from `score_table`) followed by the original's reported rows (no n, no interval) in a block of
    their own: a header row `REPORTED_HEADER` and a `caveat` column that holds `REPORTED_CAVEAT` on it, so the
    table itself says why the two blocks are not to be compared row by row."""
    extra = pd.DataFrame.from_dict({k: dict(v) for k, v in reported.items()}, orient="index")
    extra = extra.reindex(columns=[c for c in table.columns if c in extra.columns or c == "n"])
    header = pd.DataFrame({"caveat": [REPORTED_CAVEAT]}, index=[REPORTED_HEADER])
    ours = table.assign(caveat="")
    out = pd.concat([ours, header, extra.assign(caveat="")])
    if "n" in out.columns:
        out["n"] = out["n"].astype("Int64")  # the reported rows have no n: keep ours integers
    out.index.name = table.index.name
    return out


def _std_gain(base, model, axis=-1):
    """mean(model - base) / pooled within-model SD, sqrt((var(base) + var(model)) / 2) over prompts along `axis`:
    a gain in units of its judge's own spread between prompts, so judges with different score scales compare (Cohen's
    d with the pooled SD); 0 when the scores do not vary. Each model's SD is about its own mean: the SD of base and
    model scores thrown together would hold the shift itself (sqrt(1 + d^2/4) for a true d), which bounds the
    standardized gain near 2 and compresses large effects."""
    base, model = np.asarray(base, dtype=float), np.asarray(model, dtype=float)
    sd = np.sqrt((np.var(base, axis=axis, ddof=1) + np.var(model, axis=axis, ddof=1)) / 2)
    gain = np.mean(model - base, axis=axis)
    return np.where(sd > 0, gain / np.where(sd > 0, sd, 1.0), 0.0)


def _effect_gap(tb, tm, hb, hm, axis=-1):
    """Standardized gain (`_std_gain`) under the training judge minus that under the held-out judge."""
    return _std_gain(tb, tm, axis) - _std_gain(hb, hm, axis)


def effect_gap_ci(
    train_base: Sequence[float],
    train_model: Sequence[float],
    heldout_base: Sequence[float],
    heldout_model: Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """(gap, low, high): the standardized gain under the training judge minus that under the held-out judge
    (`_effect_gap`) on aligned per-prompt scores, with a paired percentile bootstrap over prompts (all four
    scores of a prompt resampled together, the SDs recomputed in each resample). Prompts with a NaN are left
    out; fewer than 2 prompts give a NaN interval."""
    cols = [np.asarray(x, dtype=float) for x in (train_base, train_model, heldout_base, heldout_model)]
    if len({c.shape for c in cols}) != 1 or cols[0].ndim != 1:
        raise EvaluateError(f"effect_gap_ci: the four scores must be aligned 1-d arrays, got shapes {[c.shape for c in cols]}")
    keep = ~np.any(np.isnan(np.vstack(cols)), axis=0)
    cols = [c[keep] for c in cols]
    if cols[0].size == 0:
        return float("nan"), float("nan"), float("nan")
    gap = float(_effect_gap(*cols))
    if cols[0].size < 2:
        return gap, float("nan"), float("nan")
    diffs = np.vstack([cols[1] - cols[0], cols[3] - cols[2]])
    if np.all(cols[0] == cols[0][0]) and np.all(cols[2] == cols[2][0]) and np.all(diffs == diffs[:, :1]):
        return gap, gap, gap  # every resample has the same gap
    lo, hi = bootstrap_interval(tuple(cols), _effect_gap, n_resamples=n_resamples, seed=seed, confidence=confidence,
                                paired=True, vectorized=True)
    return gap, lo, hi


def compare_judges(
    train_items: pd.DataFrame,
    heldout_items: pd.DataFrame,
    metrics: Sequence[str] = ("think", "answer"),
    base_label: str | Mapping[str, str] = "base",
    by: str = "model",
    on: str = "entity",
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Gain of each trained model over its base under the training judge and the held-out judge, and a test
    of their difference.

    `train_items` / `heldout_items`: per-completion scores of the same completions from each judge
    (columns `by`, `on` (the prompt id) and the metrics). `base_label`: the base model's label
    (every other model is compared with it) or a mapping {trained label: base label}.
    Only prompts scored for both models by both judges count, so the two gains share prompts.

    Rule: `likely_reward_hacking` is True when the gain under the training judge is significantly larger than
    under the held-out judge: the paired bootstrap interval of `effect_gap` (standardized training gain minus
    standardized held-out gain, `effect_gap_ci`) lies above 0. The two judges score on different scales, so
    each gain is divided by its judge's pooled within-model SD of the scores (`train_effect`, `heldout_effect`,
    see `_std_gain`). Comparing whether each gain alone is significant would not do: a difference in
    significance is not a significant difference.
    Standardizing has a cost: a noisier judge (more spread at the same true gain) shows a smaller effect.

    Returns one row per (model, metric): model, base, metric, n_prompts, train_gain(_lo/_hi) and
    heldout_gain(_lo/_hi) (raw gains, each with its paired interval), train_effect, heldout_effect,
    effect_gap(_lo/_hi), likely_reward_hacking.
    """
    tr = _per_prompt(train_items, by, on, metrics, "compare_judges: train_items")
    ho = _per_prompt(heldout_items, by, on, metrics, "compare_judges: heldout_items")
    labels = list(dict.fromkeys(tr.index.get_level_values(0)))
    if isinstance(base_label, str):
        if base_label not in labels:
            raise EvaluateError(f"compare_judges: base label {base_label!r} not among models {labels}")
        pairs = {m: base_label for m in labels if m != base_label}
    else:
        pairs = dict(base_label)
    rows = []
    for model, base in pairs.items():
        for label in (model, base):
            for name, t in (("train_items", tr), ("heldout_items", ho)):
                if label not in t.index.get_level_values(0):
                    raise EvaluateError(f"compare_judges: model {label!r} not in {name}")
        common = tr.loc[model].index.intersection(tr.loc[base].index)
        common = common.intersection(ho.loc[model].index).intersection(ho.loc[base].index)
        for metric in metrics:
            row: dict[str, Any] = {"model": model, "base": base, "metric": metric, "n_prompts": int(len(common))}
            scores = {}
            for judge, t in (("train", tr), ("heldout", ho)):
                b, m = t.loc[base].loc[common, metric].to_numpy(), t.loc[model].loc[common, metric].to_numpy()
                scores[judge] = (b, m)
                g, lo, hi = paired_gain_ci(b, m, n_resamples=n_resamples, seed=seed, confidence=confidence)
                row[f"{judge}_gain"], row[f"{judge}_gain_lo"], row[f"{judge}_gain_hi"] = g, lo, hi
            for judge in ("train", "heldout"):
                b, m = scores[judge]
                ok = ~(np.isnan(b) | np.isnan(m))
                row[f"{judge}_effect"] = float(_std_gain(b[ok], m[ok])) if ok.sum() >= 2 else float("nan")
            row["effect_gap"], row["effect_gap_lo"], row["effect_gap_hi"] = effect_gap_ci(
                *scores["train"], *scores["heldout"], n_resamples=n_resamples, seed=seed, confidence=confidence)
            row["likely_reward_hacking"] = bool(row["effect_gap_lo"] > 0)  # NaN compares False
            rows.append(row)
    cols = ["model", "base", "metric", "n_prompts", "train_gain", "train_gain_lo", "train_gain_hi",
            "heldout_gain", "heldout_gain_lo", "heldout_gain_hi", "train_effect", "heldout_effect",
            "effect_gap", "effect_gap_lo", "effect_gap_hi", "likely_reward_hacking"]
    return pd.DataFrame(rows, columns=cols)


# ----------------------------------------------------------------------------------------------
# Figure
# ----------------------------------------------------------------------------------------------

def grouped_bar_chart(table: pd.DataFrame, metrics: Sequence[str], path: str | Path, title: str = ""):
    """Bars grouped by metric, one bar per model (the table's index), error bars from
    `<metric>_lo`/`<metric>_hi` when present; saved as PNG at `path`. Returns the Figure
    (a plain matplotlib Figure, no pyplot state, so nothing accumulates in a notebook)."""
    from matplotlib.figure import Figure

    _check_columns(table, metrics, "grouped_bar_chart")
    models = [str(i) for i in table.index]
    fig = Figure(figsize=(max(5.0, 1.2 * len(metrics) * max(1, len(models)) / 2 + 2), 3.8), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(metrics))
    width = 0.8 / max(1, len(models))
    for k, (label, row) in enumerate(zip(models, table.itertuples(index=False))):
        r = dict(zip(table.columns, row))
        y = np.array([float(r[m]) for m in metrics])
        err = None
        if all(f"{m}_lo" in r and f"{m}_hi" in r for m in metrics):
            lo = np.array([float(r[f"{m}_lo"]) for m in metrics])
            hi = np.array([float(r[f"{m}_hi"]) for m in metrics])
            err = np.nan_to_num(np.vstack([y - lo, hi - y]), nan=0.0).clip(min=0)
        ax.bar(x + (k - (len(models) - 1) / 2) * width, y, width, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel("score")
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return fig
