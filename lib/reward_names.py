"""The names of the rewards a profile can weight (`train.reward_weights`).

A leaf, so validating a profile imports no reward code."""
from __future__ import annotations

# Rule-based rewards: plain functions of the completions (lib.rewards.rules).
RULE_REWARDS = ("format", "diversity", "tag_count", "substance", "overlong")  # the last two: lib.rewards.guards
# Judge rewards: bound methods of a lib.rewards.JudgeRewards (they need a judge and a rubric).
JUDGE_REWARDS = ("think", "answer", "relative", "relative_base")  # relative*: lib.rewards.relative
RELATIVE_REWARDS = ("relative", "relative_base")  # pairwise judging (JudgeRewards.func builds them)
# In the order errors list them: the original's three first.
REWARD_NAMES = ("format", "think", "answer", "diversity", "tag_count", "substance", "overlong", "relative", "relative_base")
assert set(REWARD_NAMES) == set(RULE_REWARDS + JUDGE_REWARDS)
# The `__name__` of each reward's function (TRL logs `rewards/<__name__>/mean`; the server's client names its
# functions the same, so logs read alike in-process and remote).
FUNC_NAMES = {"format": "format_reward", "think": "think_quality_reward", "answer": "answer_quality_reward",
              "diversity": "diversity_reward", "tag_count": "tag_count_reward", "substance": "substance_reward",
              "overlong": "overlong_reward", "relative": "relative_reward", "relative_base": "relative_base_reward"}


def unknown_reward(names) -> str | None:
    """The first name that is no reward, or None."""
    return next((n for n in names if n not in REWARD_NAMES), None)
