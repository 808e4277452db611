"""The judge: asks a rubric section's yes/no questions about texts and returns P(yes) per question.

The reward functions (lib.rewards) only see `SectionJudge.judge_section`; backends (vLLM in-process,
transformers, an OpenAI-compatible server) live in lib.judge_backends.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Sequence

if TYPE_CHECKING:  # pragma: no cover
    from lib.rubric import RubricSection


@dataclass
class Judgement:
    """One (text, question) verdict."""

    key: str  # rubric item key
    question: str  # the question as asked (entity filled in)
    p_yes: float | None  # P(是) / (P(是) + P(否)); None when neither was seen (see `flagged`)
    verdict: bool  # hard answer: p_yes >= threshold (seed mode: the generated text has no 否)
    flagged: bool = False  # neither yes nor no among the top logprobs (p_yes is None)
    truncated: bool = False  # the text was cut from the middle to fit the judge's context
    raw: str = ""  # seed mode: the generated answer
    prompt_tokens: int = 0

    def indicator(self, mode: str) -> float:
        """The value the section score uses: P(yes) in soft mode, 0/1 otherwise.

        A flagged judgement (no yes/no seen) counts 0.5 in soft mode and is counted in the logs.
        """
        if mode == "soft":
            return 0.5 if self.p_yes is None else float(self.p_yes)
        return 1.0 if self.verdict else 0.0


@dataclass
class JudgeStats:
    requests: int = 0  # judgements asked for
    unique_prompts: int = 0  # after removing identical prompts
    flagged: int = 0
    truncated: int = 0
    prompt_tokens: int = 0
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


class SectionJudge(Protocol):
    """A judge of rubric sections. It may also offer `judge_sections([(section, entities, texts), ...])`, the same
    for several sections in one batch (lib.judge_backends.JudgeEngine does); lib.rewards uses it when present."""

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
