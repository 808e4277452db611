"""Rule-based rewards (format, diversity, tag count) and the text helpers every reward shares.

Each has TRL's signature `(completions, **kwargs) -> list[float]` and gives values in [0, 1].

- `format_reward`: the original's rule-based format check (`<think>…</think><answer>…</answer>`).
- `diversity_reward`, `tag_count_reward`: optional helpers (within-group novelty; partial credit for tags).

Completions may be plain strings or TRL's conversational form `[{"role": "assistant", "content": ...}]`.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable, Sequence

FORMAT_PATTERN = re.compile(r"^<think>(?P<think>[^>]+)</think>\s{,2}<answer>(?P<answer>[^>]+)</answer>$")
TAG_PATTERN = re.compile(r"</*(?P<tag>[^>]+)>")
CLAUSE_DELIMITERS = "。？，！"  # the original's clause delimiters (full-width only)
CLAUSE_SPLIT = f"[{CLAUSE_DELIMITERS}]"
NGRAM = 4  # diversity_reward's character n-gram size (the original's)


class RewardError(RuntimeError):
    """A reward that cannot be computed as called; one line saying what to fix."""


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


def entities(entity: Any, n: int, fn: str) -> list[str]:
    """The entity of each of `n` completions (TRL passes the dataset's `entity` column; a string is repeated)."""
    if entity is None:
        raise RewardError(f"{fn}: no 'entity' given; the dataset needs an 'entity' column (or pass entity=[...])")
    if isinstance(entity, str):
        return [entity] * n
    ents = list(entity)
    if len(ents) != n:
        raise RewardError(f"{fn}: {len(ents)} entities for {n} completions; they must be aligned")
    return [str(e) for e in ents]


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
    ents = [""] * n if entity is None else entities(entity, n, "diversity_reward")
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


RULE_FUNCS: dict[str, Callable[..., list[float]]] = {
    "format": format_reward,
    "diversity": diversity_reward,
    "tag_count": tag_count_reward,
}

