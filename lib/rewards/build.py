"""The one place that builds a profile's reward functions: TRL-signature functions and their weights.

    funcs, weights = build_reward_functions(profile, judge)   # GRPOTrainer(reward_funcs=funcs), reward_weights=weights
    jr = judge_rewards_for(profile, judge)                     # the trainer keeps its JudgeRewards for its recorder
    funcs, weights = build_reward_functions(profile, judge_rewards=jr, wrap=recorder.wrap)
    funcs = reward_funcs(["format", "answer"], jr)             # by name, without a profile (the reward server)

The profile refuses unknown reward names when it is loaded or assigned (lib.profiles, lib.reward_names), so the names
are not checked again here. `reward_funcs` maps names to functions: rule rewards (lib.rewards.rules, the guards of
lib.rewards.guards) and the bound methods of a `JudgeRewards`; `design_options` adds the profile's reward-design
options (the guards' parameters, the format gate; docs/reward-designs.md).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from lib.reward_names import JUDGE_REWARDS, REWARD_NAMES
from lib.rewards.guards import gated, overlong_reward, substance_reward, with_options
from lib.rewards.judged import JudgeRewards
from lib.rewards.rules import RULE_FUNCS as _PLAIN_RULE_FUNCS
from lib.rewards.rules import RewardError

if TYPE_CHECKING:  # pragma: no cover
    from lib.profiles import Profile

RewardFunc = Callable[..., list[float]]

# every rule reward by name: the original's helpers (lib.rewards.rules) and the guards (lib.rewards.guards)
RULE_FUNCS: dict[str, RewardFunc] = {**_PLAIN_RULE_FUNCS, "substance": substance_reward, "overlong": overlong_reward}


def is_judged(name: str) -> bool:
    """Whether the reward named `name` needs a judge (a `JudgeRewards`)."""
    return name in JUDGE_REWARDS


def reward_funcs(names: Sequence[str], judge_rewards: JudgeRewards | None = None) -> list[RewardFunc]:
    """The reward functions for the given names, in order, without design options.

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


def design_options(profile: "Profile", name: str, func: RewardFunc) -> RewardFunc:
    """`func` (the reward `name`) with the profile's reward-design options: the guards' parameters, format gating."""
    cfg = profile.train
    if name == "substance":
        func = with_options(func, func.__name__, **cfg.substance.model_dump())
    elif name == "overlong":
        func = with_options(func, func.__name__, max_len=cfg.max_completion_length, buffer=cfg.overlong_buffer)
    if cfg.format_gate and is_judged(name):
        func = gated(func)
    return func


def judge_rewards_for(profile: "Profile", judge: Any) -> JudgeRewards | None:
    """The profile's `JudgeRewards`: `judge` with the run's rubric, the weighted judge rewards judged in one batch,
    the relative options of `train.relative`. None when no judge reward is weighted; an error when one is and
    `judge` is None."""
    judged = [n for n in profile.train.reward_weights if is_judged(n)]
    if not judged:
        return None
    if judge is None:
        raise RewardError(f"rewards {', '.join(judged)} need a judge: pass judge=build_judge(profile.judge)")
    from lib.rubric import load_rubric

    relative = {"opponents": profile.train.relative.opponents,
                "base_max_tokens": profile.train.relative.base_max_tokens or profile.train.max_completion_length}
    return JudgeRewards(judge, load_rubric(profile.rubric.path), sections=judged, relative=relative)


def build_reward_functions(profile: "Profile", judge: Any = None, *, judge_rewards: JudgeRewards | None = None,
                           wrap: Callable[[str, RewardFunc], RewardFunc] | None = None,
                           ) -> tuple[list[RewardFunc], list[float]]:
    """The reward functions named by `train.reward_weights`, in its order, with the profile's design options, and
    their weights.

    The judge rewards are the bound methods of `judge_rewards` when given (the caller's own object), else of
    `judge_rewards_for(profile, judge)`. `wrap(name, func)`, when given, wraps each function last (e.g. the
    trainer's `RewardRecorder.wrap`)."""
    jr = judge_rewards if judge_rewards is not None else judge_rewards_for(profile, judge)
    names = list(profile.train.reward_weights)
    funcs = [design_options(profile, n, f) for n, f in zip(names, reward_funcs(names, jr))]
    if wrap is not None:
        funcs = [wrap(n, f) for n, f in zip(names, funcs)]
    return funcs, [float(profile.train.reward_weights[n]) for n in names]
