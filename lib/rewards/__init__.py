"""The rewards, by profile name: rule rewards, judge rewards (`JudgeRewards`) and the designs' guards.

Rewards with TRL's signature `(completions, **kwargs) -> list[float]`: rule rewards (`lib.rewards.rules`) and the
judge rewards of a `JudgeRewards` object (`lib.rewards.judged`; its relative judging: `lib.rewards.relative`); the
guards against rewards won by writing less (`lib.rewards.guards`). `lib.rewards.build` builds them: by name
(`reward_funcs`) or from a profile with its weights and design options (`build_reward_functions`).

    jr = JudgeRewards(judge, rubric, sections=("think", "answer"))
    funcs = reward_funcs(["format", "think", "answer"], jr)   # format_reward, jr.think_quality_reward, ...
"""
from __future__ import annotations

from lib.reward_names import JUDGE_REWARDS, RELATIVE_REWARDS, REWARD_NAMES, RULE_REWARDS
from lib.rewards.guards import gated, overlong_reward, substance_reward, with_options
from lib.rewards.judged import EXTRACT, JUDGED_SECTIONS, SHORTCUT, JudgeRewards, section_text_score
from lib.rewards.rules import (
    CLAUSE_DELIMITERS, CLAUSE_SPLIT, FORMAT_PATTERN, NGRAM, TAG_PATTERN, RewardError, completion_text,
    diversity_reward, entities, extract_answer, extract_think, format_reward, format_score, repetition_ratio,
    tag_count_reward,
)
from lib.rewards.build import (
    RULE_FUNCS, build_reward_functions, design_options, is_judged, judge_rewards_for, reward_funcs,
)

__all__ = [
    "CLAUSE_DELIMITERS", "CLAUSE_SPLIT", "EXTRACT", "FORMAT_PATTERN", "JUDGED_SECTIONS", "JUDGE_REWARDS",
    "JudgeRewards", "NGRAM", "RELATIVE_REWARDS", "REWARD_NAMES", "RULE_FUNCS", "RULE_REWARDS", "RewardError",
    "SHORTCUT", "TAG_PATTERN", "build_reward_functions", "completion_text", "design_options", "diversity_reward",
    "entities", "extract_answer", "extract_think", "format_reward", "format_score", "gated", "is_judged",
    "judge_rewards_for", "overlong_reward", "repetition_ratio", "reward_funcs", "section_text_score",
    "substance_reward", "tag_count_reward", "with_options",
]
