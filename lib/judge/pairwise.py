"""Relative (pairwise) judging: which of two ads is better, P(A) read from the judge's logprobs, both orders asked.

The judge engine (lib.judge.engine) reads P(是) / (P(是) + P(否)) for yes/no questions; relative judging reuses its
backend call path with the two option letters A and B in place of 是 and 否: P(A) = P(A) / (P(A) + P(B)) of the next
token after the rubric's `relative` template (lib.rubric.RelativeSpec) filled with the two texts. Each pair is asked
in both orders and averaged, which cancels a judge's position bias:

    win(x over y) = (P(A | A=x, B=y) + 1 - P(A | A=y, B=x)) / 2        # in [0, 1]; win(y over x) = 1 - win(x over y)

    rel = RelativeJudge(engine, rubric.relative)
    rel.compare(["可乐", "可乐"], ["文案甲", "文案乙"], ["参照", "参照"])   # -> [PairResult(win, p_ab, p_ba, ...), ...]

An empty text loses to any non-empty one without a judge call (two empty texts tie at 0.5); a pair the judge gives
no A/B mass (a flagged answer) counts 0.5 for that order. Identical prompts are judged once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from lib.judge.backends import JudgeError
from lib.judge.engine import TRUNCATION_MARK, answer_token_ids
from lib.judge.types import soft_indicator

OPTION_A, OPTION_B = "A", "B"


@dataclass
class PairResult:
    """One pair (x, y), asked in both orders."""

    win: float  # P(x is the better ad), position bias cancelled
    p_ab: float | None  # P(A) with x as A, y as B (None: the judge gave A/B no mass, counted 0.5)
    p_ba: float | None  # P(A) with y as A, x as B
    judged: bool = True  # False: decided without the judge (an empty text)

    @property
    def position_bias(self) -> float | None:
        """How much the judge favours option A regardless of content: mean P(A) over both orders minus 0.5."""
        if self.p_ab is None or self.p_ba is None:
            return None
        return (self.p_ab + self.p_ba) / 2 - 0.5


def debiased_win(p_ab: float | None, p_ba: float | None) -> float:
    """P(x better than y) from P(A) in both orders; a missing order counts 0.5.

    >>> round(debiased_win(0.9, 0.3), 6), debiased_win(0.7, 0.7), debiased_win(None, 0.2)
    (0.8, 0.5, 0.65)
    """
    return (soft_indicator(p_ab) + 1.0 - soft_indicator(p_ba)) / 2


class RelativeJudge:
    """Pairwise comparisons on a `JudgeEngine`'s backend (vllm or transformers: backends with `set_answer_ids`)."""

    def __init__(self, engine, spec):
        self.engine = engine
        self.spec = spec
        backend = engine.backend
        if not hasattr(backend, "set_answer_ids"):
            raise JudgeError(f"relative judging reads P(A)/P(B) with `set_answer_ids`, which the {type(backend).__name__} "
                             f"backend lacks; use judge.backend vllm or transformers")
        tok = backend.tokenizer
        self.a_ids, _ = answer_token_ids(tok, OPTION_A)
        self.b_ids, _ = answer_token_ids(tok, OPTION_B)
        if set(self.a_ids) & set(self.b_ids):
            raise JudgeError("the judge tokenizer has a token that reads as both A and B")
        self.calls = 0  # judge prompts sent (after de-duplication)
        self.seconds = 0.0

    def prompt(self, entity: str, a: str, b: str) -> str:
        return self.engine.chat(self.spec.render(entity, a, b))

    def _fit(self, entity: str, text: str) -> str:
        """Cut a text from the middle so that two of them fit the judge's context with the template."""
        tok = self.engine.backend.tokenizer
        overhead = len(tok.encode(self.prompt(entity, "", ""), add_special_tokens=False))
        budget = (self.engine.backend.max_model_len - overhead - 4) // 2
        if budget < 8:
            raise JudgeError(f"judge max_model_len={self.engine.backend.max_model_len} leaves no room for two texts "
                             f"(the relative template needs {overhead} tokens)")
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) <= budget:
            return text
        keep = budget - 2
        return tok.decode(ids[: keep // 2]) + TRUNCATION_MARK + tok.decode(ids[len(ids) - (keep - keep // 2):])

    def p_a(self, prompts: list[str]) -> list[float | None]:
        """P(A) / (P(A) + P(B)) of each prompt's next token (None: neither seen), each distinct prompt asked once."""
        unique = list(dict.fromkeys(prompts))
        if not unique:
            return []
        backend = self.engine.backend
        t0 = time.perf_counter()
        backend.set_answer_ids(self.a_ids, self.b_ids)
        try:
            answers = dict(zip(unique, backend.yes_no(unique)))
        finally:
            backend.set_answer_ids(self.engine.yes_ids, self.engine.no_ids)
        self.seconds += time.perf_counter() - t0
        self.calls += len(unique)
        stats = getattr(self.engine, "stats", None)
        if stats is not None:
            stats.requests += len(prompts)
            stats.unique_prompts += len(unique)
            stats.prompt_tokens += sum(y.computed_tokens for y in answers.values())
            stats.seconds += time.perf_counter() - t0
        return [answers[p].p_yes for p in prompts]

    def compare(self, entities: Sequence[str], xs: Sequence[str], ys: Sequence[str]) -> list[PairResult]:
        """For each k: is xs[k] a better ad for entities[k] than ys[k]? Both orders in one backend batch."""
        if not len(entities) == len(xs) == len(ys):
            raise JudgeError(f"relative judging: {len(entities)} entities for {len(xs)} and {len(ys)} texts")
        out: list[PairResult | None] = [None] * len(xs)
        todo, prompts = [], []
        for k, (e, x, y) in enumerate(zip(entities, xs, ys)):
            if not x.strip() or not y.strip():
                win = 0.5 if not x.strip() and not y.strip() else (0.0 if not x.strip() else 1.0)
                out[k] = PairResult(win, None, None, judged=False)
                continue
            fx, fy = self._fit(e, x), self._fit(e, y)
            todo.append(k)
            prompts += [self.prompt(e, fx, fy), self.prompt(e, fy, fx)]
        ps = self.p_a(prompts)
        for n, k in enumerate(todo):
            p_ab, p_ba = ps[2 * n], ps[2 * n + 1]
            out[k] = PairResult(debiased_win(p_ab, p_ba), p_ab, p_ba)
        return out  # type: ignore[return-value]


def ring_pairs(size: int, opponents: int = 1) -> list[tuple[int, int]]:
    """Round-robin pairs within a group of `size`: each member against the next `opponents` members (cyclically),
    every unordered pair once. Cost: about size * opponents pairs (linear in the group).

    >>> ring_pairs(4), ring_pairs(4, 2), ring_pairs(2, 3), ring_pairs(1)
    ([(0, 1), (1, 2), (2, 3), (0, 3)], [(0, 1), (0, 2), (1, 2), (1, 3), (2, 3), (0, 3)], [(0, 1)], [])
    """
    seen: dict[frozenset, tuple[int, int]] = {}
    for i in range(size):
        for d in range(1, min(opponents, size - 1) + 1):
            j = (i + d) % size
            seen.setdefault(frozenset((i, j)), (min(i, j), max(i, j)))
    return list(seen.values())
