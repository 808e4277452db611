"""Reward functions with TRL's signature `(completions, **kwargs) -> list[float]`, each in [0, 1].

- `format_reward`: the original's rule-based format check (`<think>…</think><answer>…</answer>`).
- `think_quality_reward`, `answer_quality_reward`: a judge answers a rubric section's yes/no checklist
  (lib.rubric) about the think / answer part; the section score is the reward. Configure the judge once
  with `configure(judge, rubric)`; TRL passes the dataset's `entity` column as a list aligned with the
  completions.
- `diversity_reward`, `tag_count_reward`: optional helpers (within-group novelty; partial credit for tags).

Completions may be plain strings or TRL's conversational form `[{"role": "assistant", "content": ...}]`.
The details of the last judged call are kept in `LAST_DETAILS` for training logs.

One batch per step: `configure(judge, rubric, sections=["think", "answer"])` (e.g. the keys of
`train.reward_weights`) makes the first judge reward of a call judge both sections of the same completions
in one `judge_sections` batch; the other section's judgements wait, keyed by the completions and entities,
until its reward function asks for them. A section not named is never judged ahead.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Sequence

from lib.judge.types import Judgement, SectionJudge
from lib.rubric import Rubric, load_rubric, section_score, think_shortcut

FORMAT_PATTERN = re.compile(r"^<think>(?P<think>[^>]+)</think>\s{,2}<answer>(?P<answer>[^>]+)</answer>$")
TAG_PATTERN = re.compile(r"</*(?P<tag>[^>]+)>")
CLAUSE_DELIMITERS = "。？，！"  # the original's clause delimiters (full-width only)
CLAUSE_SPLIT = f"[{CLAUSE_DELIMITERS}]"
NGRAM = 4  # diversity_reward's character n-gram size (the original's)


class RewardError(RuntimeError):
    """A reward that cannot be computed as called; one line saying what to fix."""


# Module-level configuration set by `configure`; kwargs `judge=`/`rubric=` override it per call.
_JUDGE: SectionJudge | None = None
_RUBRIC: Rubric | None = None
JUDGED_SECTIONS = ("think", "answer")
_TOGETHER: tuple[str, ...] = ()  # the sections one reward call judges together (configure's `sections`)
# Judged ahead, per section: (key of the call: judge, rubric, completions, entities; {completion index: judgements}).
_AHEAD: dict[str, tuple[tuple, dict[int, dict[str, Judgement]]]] = {}

# Per completion of the last call of each judge reward: score, shortcut, entity, items {key: p_yes/verdict/flagged}.
LAST_DETAILS: dict[str, list[dict]] = {"think": [], "answer": []}
# Running totals since `configure`/`reset_stats` (completions, judged, shortcut, flagged, truncated).
STATS: dict[str, Counter] = {"think": Counter(), "answer": Counter()}


def configure(judge: SectionJudge, rubric: Rubric | None = None, sections: Sequence[str] = ()) -> None:
    """Set the judge (and rubric; None: `load_rubric()`) the judge rewards use. Resets the stats.

    `sections`: the reward names the caller will compute for the same completions (e.g. `train.reward_weights`;
    names other than think/answer are ignored). When both think and answer are named, the first of the two
    reward functions called judges both sections in one batch; otherwise each judges only its own.
    """
    global _JUDGE, _RUBRIC
    _JUDGE = judge
    _RUBRIC = rubric if rubric is not None else load_rubric()
    judge_together(sections)
    reset_stats()


def judge_together(sections: Sequence[str]) -> None:
    """Name the rewards computed for the same completions (see `configure`); think and answer, when both are
    named, are then judged in one batch by whichever of the two is called first."""
    global _TOGETHER
    _TOGETHER = tuple(n for n in JUDGED_SECTIONS if n in set(sections))
    _AHEAD.clear()


def reset_stats() -> None:
    for name in JUDGED_SECTIONS:
        LAST_DETAILS[name] = []
        STATS[name] = Counter()
    _AHEAD.clear()


def completion_text(c: Any) -> str:
    """The text of one completion: a string, or the contents of a conversational message list.

    >>> completion_text([{"role": "assistant", "content": "<think>a</think>"}])
    '<think>a</think>'
    """
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return _content_text(c.get("content"))
    if isinstance(c, (list, tuple)):
        return "".join(completion_text(m) for m in c)
    raise RewardError(f"a completion must be a string or a list of {{'role', 'content'}} messages, got {type(c).__name__}")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multimodal parts: [{"type": "text", "text": ...}]
        return "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def extract_answer(text: str) -> str:
    """The text after the last `<answer>`, with `</answer>` removed (the original's extraction)."""
    return text.split("<answer>")[-1].replace("</answer>", "")


def extract_think(text: str) -> str:
    """The text before the first `</think>`, with `<think>` removed (the original's extraction)."""
    return text.split("</think>")[0].replace("<think>", "")


def repetition_ratio(think: str, answer: str) -> float:
    """Share of the think's clauses (split on 。？，！, empty pieces kept) that also occur in the answer."""
    think_clauses = re.split(CLAUSE_SPLIT, think)
    answer_clauses = set(re.split(CLAUSE_SPLIT, answer))
    return sum(1 for c in think_clauses if c in answer_clauses) / len(think_clauses)


def format_score(text: str) -> float:
    """The original's format score of one completion text (see `format_reward`)."""
    m = FORMAT_PATTERN.match(text)
    if not m:
        return 0.0
    tags: Counter = Counter()
    for t in TAG_PATTERN.finditer(text):
        if t["tag"] not in ("think", "answer"):
            return 0.0
        tags[t["tag"]] += 1
    if tags["think"] != 2 or tags["answer"] != 2:
        return 0.0
    return 0.5 + 0.5 * (1.0 - repetition_ratio(m["think"], m["answer"]))


def format_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """The original's format reward: 0, or 0.5 + 0.5 * (1 - think/answer clause repetition).

    0 unless the text matches `^<think>[^>]+</think>\\s{,2}<answer>[^>]+</answer>$` (`re.match`, so one
    trailing newline passes), holds no tag but think/answer and exactly one opening and one closing tag
    of each. Then r is the share of think clauses that occur among the answer's clauses.

    >>> format_reward(["<think>先想想。</think><answer>喝可乐！</answer>"])
    [0.75]
    """
    return [format_score(completion_text(c)) for c in completions]


def _entities(entity: Any, n: int, fn: str) -> list[str]:
    if entity is None:
        raise RewardError(f"{fn}: no 'entity' given; the dataset needs an 'entity' column (or pass entity=[...])")
    if isinstance(entity, str):
        return [entity] * n
    ents = list(entity)
    if len(ents) != n:
        raise RewardError(f"{fn}: {len(ents)} entities for {n} completions; they must be aligned")
    return [str(e) for e in ents]


def _judge_sections(judge: SectionJudge, jobs: list[tuple]) -> list[list[dict[str, Judgement]]]:
    """One `judge_sections` batch when the judge has it, else one `judge_section` call per job."""
    if hasattr(judge, "judge_sections"):
        return judge.judge_sections(jobs)
    return [judge.judge_section(*job) for job in jobs]


def _judge_parts(judge: SectionJudge, rubric: Rubric, names: list[str], texts: list[str],
                 ents: list[str]) -> dict[str, tuple[list[str | None], dict[int, dict[str, Judgement]]]]:
    """Per section name: the shortcut reason of each completion, and the judgements of those without one.

    Every named section's questions go to the judge in one batch."""
    plans = {}
    for name in names:
        parts = [EXTRACT[name](t) for t in texts]
        reasons = [SHORTCUT[name](p) for p in parts]
        plans[name] = (parts, reasons, [i for i, r in enumerate(reasons) if r is None])
    jobs = [(rubric[name], [ents[i] for i in todo], [parts[i] for i in todo])
            for name, (parts, _, todo) in plans.items() if todo]
    outs = iter(_judge_sections(judge, jobs) if jobs else [])
    found = {}
    for name, (_, reasons, todo) in plans.items():
        out = next(outs) if todo else []
        if len(out) != len(todo):
            raise RewardError(f"{name}_quality_reward: the judge returned {len(out)} results for {len(todo)} texts")
        found[name] = (reasons, dict(zip(todo, out)))
    return found


def _judge_reward(section_name: str, completions: Sequence[Any], entity: Any, judge: SectionJudge | None,
                  rubric: Rubric | None) -> list[float]:
    fn = f"{section_name}_quality_reward"
    judge = judge if judge is not None else _JUDGE
    if judge is None:
        raise RewardError(f"{fn}: no judge configured; call lib.rewards.configure(judge, rubric) first")
    rubric = rubric if rubric is not None else (_RUBRIC if _RUBRIC is not None else load_rubric())
    ents = _entities(entity, len(completions), fn)
    texts = [completion_text(c) for c in completions]
    key = (id(judge), id(rubric), tuple(texts), tuple(ents))
    ahead = _AHEAD.pop(section_name, None)
    if ahead is not None and ahead[0] == key:  # judged with the other section's reward of this call
        reasons = [SHORTCUT[section_name](EXTRACT[section_name](t)) for t in texts]
        judged = ahead[1]
    else:
        others = [n for n in _TOGETHER if n != section_name] if section_name in _TOGETHER else []
        found = _judge_parts(judge, rubric, [section_name, *others], texts, ents)
        for name in others:
            _AHEAD[name] = (key, found[name][1])
        reasons, judged = found[section_name]
    return _score(section_name, rubric[section_name], judge.mode, ents, reasons, judged)


def _score(section_name: str, section, mode: str, ents: list[str], reasons: list[str | None],
           judged: dict[int, dict[str, Judgement]]) -> list[float]:
    """Section scores of one call (0 for a shortcut), and its LAST_DETAILS and STATS."""
    scores: list[float] = []
    details: list[dict] = []
    stats = STATS[section_name]
    for i in range(len(reasons)):
        js = judged.get(i, {})
        score = _shortcut_or_score(reasons[i], section, {k: j.indicator(mode) for k, j in js.items()})
        n_flagged = sum(j.flagged for j in js.values())
        scores.append(score)
        details.append({
            "entity": ents[i],
            "score": score,
            "shortcut": reasons[i],
            "n_flagged": n_flagged,
            "items": {k: {"p_yes": j.p_yes, "verdict": j.verdict, "flagged": j.flagged} for k, j in js.items()},
        })
        stats["completions"] += 1
        stats["judged" if reasons[i] is None else "shortcut"] += 1
        stats["flagged"] += n_flagged
        stats["truncated"] += sum(j.truncated for j in js.values())
    LAST_DETAILS[section_name] = details
    return scores


def _shortcut_or_score(reason: str | None, section, indicators: dict[str, float]) -> float:
    return 0.0 if reason else section_score(section, indicators)


def section_text_score(section, text: str, indicators: dict[str, float]) -> dict:
    """What the section's reward gives `text` (a think or an answer part) when the judge says `indicators`.

    A shortcut (a think under 20 characters or still holding the placeholder, an empty answer) scores 0
    without asking the judge, as in training; else `lib.rubric.section_score`. Returns {"shortcut", "score"}.

    >>> from lib.rubric import load_rubric
    >>> think = load_rubric()["think"]
    >>> section_text_score(think, "短", {it.key: 1.0 for it in think.items})
    {'shortcut': 'too_short', 'score': 0.0}
    >>> section_text_score(think, "我" * 20, {it.key: 1.0 for it in think.items})
    {'shortcut': None, 'score': 1.0}
    """
    reason = SHORTCUT[section.name](text)
    return {"shortcut": reason, "score": _shortcut_or_score(reason, section, indicators)}


def _answer_shortcut(answer: str) -> str | None:
    return "empty" if not answer.strip() else None


def think_quality_reward(completions: Sequence[Any], entity: Any = None, **kwargs) -> list[float]:
    """Score of the think part (text before `</think>`) on the rubric's `think` checklist.

    A think that still holds the prompt's placeholder or has fewer than 20 characters scores 0 without
    a judge call (`lib.rubric.think_shortcut`). `judge=`/`rubric=` in kwargs override `configure`.
    """
    return _judge_reward("think", completions, entity, kwargs.get("judge"), kwargs.get("rubric"))


def answer_quality_reward(completions: Sequence[Any], entity: Any = None, **kwargs) -> list[float]:
    """Score of the answer part (text after the last `<answer>`) on the rubric's `answer` checklist.

    An empty (or all-whitespace) answer scores 0 without a judge call.
    """
    return _judge_reward("answer", completions, entity, kwargs.get("judge"), kwargs.get("rubric"))


EXTRACT: dict[str, Callable[[str], str]] = {"think": extract_think, "answer": extract_answer}
SHORTCUT: dict[str, Callable[[str], str | None]] = {"think": think_shortcut, "answer": _answer_shortcut}


def _ngrams(text: str, n: int = NGRAM) -> set[str]:
    return {text[i : i + n] for i in range(len(text) - n + 1)}


def diversity_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """Within-group novelty of each answer: the share of its distinct character 4-grams that occur in
    no other completion of the same group.

    Groups: completions with the same prompt when TRL passes `prompts`, else the whole call. As in the
    original, the entity's name is removed first (naming the product is not repetition). An answer
    with no 4-gram scores 0; a completion alone in its group scores 1.
    (The original mixed batch- and rollout-level 4-gram ratios and skipped the first 4 characters;
    this is a cleaner reading of the same idea, bounded in [0, 1].)

    >>> diversity_reward(["<answer>可乐真好喝呀</answer>", "<answer>可乐真好喝吗</answer>"])  # 1 of 3 4-grams new
    [0.3333333333333333, 0.3333333333333333]
    """
    n = len(completions)
    entity = kwargs.get("entity")
    ents = [""] * n if entity is None else _entities(entity, n, "diversity_reward")
    grams = []
    for c, e in zip(completions, ents):
        answer = extract_answer(completion_text(c))
        grams.append(_ngrams(answer.replace(e, "") if e else answer))
    prompts = kwargs.get("prompts")
    keys = [repr(p) for p in prompts] if prompts is not None and len(prompts) == n else [""] * n
    rewards = []
    for i in range(n):
        if not grams[i]:
            rewards.append(0.0)
            continue
        others: set[str] = set()
        for j in range(n):
            if j != i and keys[j] == keys[i]:
                others |= grams[j]
        rewards.append(len(grams[i] - others) / len(grams[i]))
    return rewards


def tag_count_reward(completions: Sequence[Any], **kwargs) -> list[float]:
    """0.25 for each of `<think>`, `</think>`, `<answer>`, `</answer>` that occurs exactly once.

    A gentler signal than `format_reward` for tiny models that rarely get the whole format right.

    >>> tag_count_reward(["<think>x</think><answer>y", "<think></think><think>"])
    [0.75, 0.25]
    """
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(0.25 * sum(text.count(tag) == 1 for tag in ("<think>", "</think>", "<answer>", "</answer>")))
    return out


REWARD_FUNCS: dict[str, Callable[..., list[float]]] = {
    "format": format_reward,
    "think": think_quality_reward,
    "answer": answer_quality_reward,
    "diversity": diversity_reward,
    "tag_count": tag_count_reward,
}


def reward_funcs(names: Sequence[str]) -> list[Callable[..., list[float]]]:
    """The reward functions for the given names (e.g. the keys of `train.reward_weights`), in order."""
    unknown = [n for n in names if n not in REWARD_FUNCS]
    if unknown:
        raise RewardError(f"unknown reward {unknown[0]!r}; known: {', '.join(REWARD_FUNCS)}")
    return [REWARD_FUNCS[n] for n in names]
