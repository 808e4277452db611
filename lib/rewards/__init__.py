"""The rewards, by profile name: rule rewards, judge rewards (`JudgeRewards`) and the designs' guards.

Rewards with TRL's signature `(completions, **kwargs) -> list[float]`: rule rewards (`lib.rewards.rules`) and the
judge rewards of a `JudgeRewards` object (`lib.rewards.judged`; its relative judging: `lib.rewards.relative`); the
guards against rewards won by writing less (`lib.rewards.guards`); `reward_funcs` gives them by profile name.

    jr = JudgeRewards(judge, rubric, sections=("think", "answer"))
    funcs = reward_funcs(["format", "think", "answer"], jr)   # format_reward, jr.think_quality_reward, ...
"""
from __future__ import annotations

from typing import Callable, Sequence

from lib.reward_names import JUDGE_REWARDS, RELATIVE_REWARDS, REWARD_NAMES, RULE_REWARDS
from lib.rewards.guards import gated, overlong_reward, substance_reward, with_options
from lib.rewards.judged import EXTRACT, JUDGED_SECTIONS, SHORTCUT, JudgeRewards, section_text_score
from lib.rewards.rules import (
    CLAUSE_DELIMITERS, CLAUSE_SPLIT, FORMAT_PATTERN, NGRAM, TAG_PATTERN, RewardError, completion_text,
    diversity_reward, entities, extract_answer, extract_think, format_reward, format_score, repetition_ratio,
    tag_count_reward,
)
from lib.rewards.rules import RULE_FUNCS as _PLAIN_RULE_FUNCS

# every rule reward by name: the original's helpers (lib.rewards.rules) and the guards (lib.rewards.guards)
RULE_FUNCS: dict[str, Callable[..., list[float]]] = {**_PLAIN_RULE_FUNCS, "substance": substance_reward,
                                                     "overlong": overlong_reward}

__all__ = [
    "CLAUSE_DELIMITERS", "CLAUSE_SPLIT", "EXTRACT", "FORMAT_PATTERN", "JUDGED_SECTIONS", "JUDGE_REWARDS",
    "JudgeRewards", "NGRAM", "RELATIVE_REWARDS", "REWARD_NAMES", "RULE_FUNCS", "RULE_REWARDS", "RewardError",
    "SHORTCUT", "TAG_PATTERN", "completion_text", "diversity_reward", "entities", "extract_answer", "extract_think",
    "format_reward", "format_score", "gated", "is_judged", "overlong_reward", "repetition_ratio", "reward_funcs",
    "section_text_score", "substance_reward", "tag_count_reward", "with_options",
]


def is_judged(name: str) -> bool:
    """Whether the reward named `name` needs a judge (a `JudgeRewards`)."""
    return name in JUDGE_REWARDS


def reward_funcs(names: Sequence[str], judge_rewards: JudgeRewards | None = None) -> list[Callable[..., list[float]]]:
    """The reward functions for the given names (e.g. the keys of `train.reward_weights`), in order.

    Judge rewards are `judge_rewards`' bound methods; naming one without a `JudgeRewards` is an error."""
    out = []
    for n in names:
        if n in RULE_FUNCS:
            out.append(RULE_FUNCS[n])
        elif n in JUDGE_REWARDS:
            if judge_rewards is None:
                raise RewardError(f"reward {n!r} needs a judge: pass JudgeRewards(judge, rubric) to reward_funcs")
            out.append(judge_rewards.func(n))
        else:
            raise RewardError(f"unknown reward {n!r}; known: {', '.join(REWARD_NAMES)}")
    return out
