"""Guards against rewards a policy wins by writing less: a substance reward, DAPO's soft overlong penalty, format gating.

The failure they target: with the format reward (and a judge with little signal) the `cpu` job learns the format
by writing less: completions 104 -> ~30 tokens, the think part under the 20-character cut-off, so the think score
goes to 0 while the format reward still rises. The shortest well-formed text wins, because nothing pays for content.

- `substance_reward`: a minimum-length ramp on the think and the answer part (0 for a missing or placeholder part).
  With `ramp=False` and `think_min_chars=20` it is the think shortcut's 20-character rule as a reward.
- `overlong_reward`: DAPO's soft overlong punishment (Yu et al. 2025), the other end: 0 up to
  `max_len - buffer` tokens, then a linear ramp down to -1 at `max_len`, so a length reward does not push the policy
  into the completion-length cut (which fails the format anyway).
- `gated(fn)`: a reward that counts only for completions with a valid format (`format_score > 0`); the others get
  None (no score: TRL leaves them out) and are not passed to `fn` (a judge is not asked about them).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

from lib.rewards.rules import RewardError, completion_text, format_score
from lib.rubric import TEMPLATE_PLACEHOLDER

SUBSTANCE_THINK_MIN_CHARS = 60  # three times the think shortcut's 20: the cpu job's collapsed thinks had ~10
SUBSTANCE_ANSWER_MIN_CHARS = 20  # a slogan-sized answer; the base model's answers are longer


def tagged_part(text: str, tag: str) -> str:
    """The text inside the first `<tag>` … `</tag>` (to the end when the closing tag is missing), or "" without
    an opening tag. Unlike `extract_think`/`extract_answer`, an untagged text has no part.

    >>> tagged_part("<think>想</think><answer>喝", "answer"), tagged_part("喝可乐", "think")
    ('喝', '')
    """
    start = text.find(f"<{tag}>")
    if start < 0:
        return ""
    rest = text[start + len(tag) + 2:]
    end = rest.find(f"</{tag}>")
    return rest if end < 0 else rest[:end]


def _chars(part: str) -> int:
    return sum(not ch.isspace() for ch in part)


def length_ramp(n: int, minimum: int, ramp: bool = True) -> float:
    """min(n / minimum, 1) (ramp) or 1 when n >= minimum else 0 (step).

    >>> length_ramp(10, 20), length_ramp(30, 20), length_ramp(19, 20, ramp=False), length_ramp(20, 20, ramp=False)
    (0.5, 1.0, 0.0, 1.0)
    """
    if ramp:
        return min(n / minimum, 1.0)
    return 1.0 if n >= minimum else 0.0


def substance_score(text: str, think_min_chars: int = SUBSTANCE_THINK_MIN_CHARS,
                    answer_min_chars: int = SUBSTANCE_ANSWER_MIN_CHARS, ramp: bool = True) -> float:
    """Mean of the think part's and the answer part's length ramps (non-space characters); a think that still
    holds the prompt's placeholder text counts 0.

    >>> substance_score("<think>" + "想" * 30 + "</think><answer>" + "喝" * 20 + "</answer>")
    0.75
    >>> substance_score("<think>这里写下你的思考过程" + "想" * 60 + "</think><answer>" + "喝" * 20 + "</answer>")
    0.5
    """
    think, answer = tagged_part(text, "think"), tagged_part(text, "answer")
    t = 0.0 if TEMPLATE_PLACEHOLDER in think else length_ramp(_chars(think), think_min_chars, ramp)
    return (t + length_ramp(_chars(answer), answer_min_chars, ramp)) / 2


def substance_reward(completions: Sequence[Any], think_min_chars: int = SUBSTANCE_THINK_MIN_CHARS,
                     answer_min_chars: int = SUBSTANCE_ANSWER_MIN_CHARS, ramp: bool = True, **kwargs) -> list[float]:
    """The substance guard: `substance_score` of each completion, in [0, 1] (see the module docstring).

    >>> substance_reward(["<think>短</think><answer>喝</answer>", "<think>" + "想" * 60 + "</think><answer>" + "喝" * 20 + "</answer>"])
    [0.03333333333333333, 1.0]
    """
    return [substance_score(completion_text(c), think_min_chars, answer_min_chars, ramp) for c in completions]


def overlong_penalty(length: int, max_len: int, buffer: int) -> float:
    """DAPO's soft overlong punishment of a completion of `length` tokens, in [-1, 0].

    >>> [overlong_penalty(n, 128, 32) for n in (90, 96, 112, 128, 140)]
    [0.0, 0.0, -0.5, -1.0, -1.0]
    """
    if buffer <= 0 or buffer > max_len:
        raise RewardError(f"overlong_reward: buffer {buffer} must lie in 1..max_len ({max_len})")
    free = max_len - buffer
    if length <= free:
        return 0.0
    return max((free - length) / buffer, -1.0)


def overlong_reward(completions: Sequence[Any], completion_ids: Sequence[Sequence[int]] | None = None,
                    max_len: int = 512, buffer: int = 64, **kwargs) -> list[float]:
    """DAPO's soft overlong penalty per completion (`overlong_penalty` of its token count), in [-1, 0].

    Needs the completions' token ids (`completion_ids`, which TRL passes to every reward function)."""
    if completion_ids is None:
        raise RewardError("overlong_reward: no completion_ids given; TRL passes them (or pass completion_ids=[...])")
    if len(completion_ids) != len(completions):
        raise RewardError(f"overlong_reward: {len(completion_ids)} completion_ids for {len(completions)} completions")
    return [overlong_penalty(len(ids), max_len, buffer) for ids in completion_ids]


def with_options(fn: Callable[..., list[float]], name: str, **options) -> Callable[..., list[float]]:
    """`fn` with keyword options fixed (e.g. a profile's), keeping TRL's signature; `__name__` is `name`
    (TRL logs each reward under its function's name)."""
    bound = functools.partial(fn, **options)

    def reward(completions, **kwargs):
        return bound(completions, **kwargs)

    reward.__name__ = reward.__qualname__ = name
    reward.__doc__ = fn.__doc__
    return reward


def gated(fn: Callable[..., list[float]], name: str | None = None) -> Callable[..., list[float | None]]:
    """`fn` counted only for completions with a valid format (`lib.rewards.format_score > 0`); the others get None.

    None, not 0: TRL turns None into NaN, which its group statistics skip (`nanmean`, `nanstd`) and its sums
    count as 0 (`nansum`). Under `normalize_then_sum` (GDPO) each reward is normalized within its group, so a 0
    for the invalid completions would make the judge reward's spread mostly valid-vs-invalid: a second format
    reward, crowding out the judge's ranking of the valid ones. With None the judge reward is normalized among
    the valid completions only and adds nothing to the invalid ones' advantage; their penalty is the format
    reward's (the gate assumes one is among the rewards: a completion for which every reward is None gets
    advantage 0). Under `sum_then_normalize` None and 0 give the same sum. TRL's logged `rewards/<name>/mean`
    of a gated reward is its mean over the valid completions.

    `fn` sees only the valid completions, with every per-completion keyword argument (a list as long as the
    completions: entity, prompts, completion_ids, ...) cut to the same rows; nothing is asked when none is valid.
    """
    def reward(completions, **kwargs):
        n = len(completions)
        valid = [i for i, c in enumerate(completions) if format_score(completion_text(c)) > 0]
        out: list[float | None] = [None] * n
        if not valid:
            return out
        if len(valid) == n:
            return list(fn(completions, **kwargs))
        sub = {k: ([v[i] for i in valid] if isinstance(v, (list, tuple)) and len(v) == n else v)
               for k, v in kwargs.items()}
        scores = fn([completions[i] for i in valid], **sub)
        for i, s in zip(valid, scores):
            out[i] = s
        return out

    reward.__name__ = reward.__qualname__ = name or getattr(fn, "__name__", "reward")
    reward.__doc__ = f"{getattr(fn, '__doc__', '') or ''}\n\nGated: None (no score) for a completion without a valid format."
    return reward
