"""The judge: asks a rubric section's yes/no questions about texts and returns P(yes) per question.

The reward functions (lib.rewards) only see `SectionJudge.judge_section`; lib.judge.engine implements it on the
backends of lib.judge.backends (vLLM in-process, transformers, an OpenAI-compatible server).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from lib.rubric import RubricSection


def soft_indicator(p_yes: float | None) -> float:
    """A judgement's soft-mode value: P(yes), or 0.5 when it is flagged (no yes/no seen: p_yes None or NaN).

    >>> soft_indicator(0.8), soft_indicator(None), soft_indicator(float("nan"))
    (0.8, 0.5, 0.5)
    """
    return 0.5 if p_yes is None or math.isnan(p_yes) else float(p_yes)


@dataclass
class Judgement:
    """One (text, question) verdict."""

    key: str  # rubric item key
    question: str  # the question as asked (entity filled in)
    p_yes: float | None  # P(是) / (P(是) + P(否)), 否 with 不是 (`NO_ALSO`); None when neither was seen (see `flagged`)
    verdict: bool  # hard answer: p_yes >= threshold (seed mode: the generated text has no 否)
    flagged: bool = False  # neither yes nor no among the top logprobs (p_yes is None)
    truncated: bool = False  # the text was cut from the middle to fit the judge's context
    raw: str = ""  # seed mode: the generated answer
    prompt_tokens: int = 0
    mass: float | None = None  # P(yes) + P(no) before normalizing: how much the judge answered yes/no at all (None: seed mode)

    def indicator(self, mode: str) -> float:
        """The value the section score uses: P(yes) in soft mode, 0/1 otherwise.

        A flagged judgement (no yes/no seen) counts 0.5 in soft mode and is counted in the logs.
        """
        if mode == "soft":
            return soft_indicator(self.p_yes)
        return 1.0 if self.verdict else 0.0


@dataclass
class JudgeStats:
    requests: int = 0  # judgements asked for
    unique_prompts: int = 0  # after removing identical prompts
    flagged: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0


class SectionJudge(Protocol):
    """A judge of rubric sections. It may also offer `judge_sections([(section, entities, texts), ...])`, the same
    for several sections in one batch (lib.judge.engine.JudgeEngine does); lib.rewards uses it when present."""

    mode: str  # "soft" | "hard" | "seed"
    threshold: float

    def judge_section(
        self, section: "RubricSection", entities: Sequence[str], texts: Sequence[str]
    ) -> list[dict[str, Judgement]]:
        """For each text, the judgements keyed by rubric item key.

        In seed mode the plausible items of a text whose must-have items did not all pass are not
        asked and are absent from its dict (their indicators count 0).
        """
        ...
