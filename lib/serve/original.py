"""The original training script's reward functions, pointed at this server.

CreativeTinyZero (mrzjy/CreativeTinyZero, `src/open_r1/rewards.py`, read 2026-11-27) defines
`answer_quality_reward_func(completions, **kwargs)` and `think_quality_reward_func(completions, **kwargs)`: each
extracts the answer (text after the last `<answer>`) or the think part (before the first `</think>`) of every
conversational completion (`completion[0]["content"]`) and POSTs `{"entities": kwargs["entity"], "completions":
[parts]}` to `http://0.0.0.0:5000/get_answer_quality_reward` / `/get_think_quality_reward` of its `rm_server.py`,
reading `{"rewards": [...]}`. This server answers the same two paths with the same body, so that script works
unchanged once its URL points here; or import these functions instead (same signature), with the URL from
`$CREATIVE_GRPO_REWARD_URL` (default http://127.0.0.1:8000) or `set_url()`.
"""
from __future__ import annotations

from lib.rewards import completion_text, extract_answer, extract_think
from lib.serve.client import RemoteRewards

_REMOTE: RemoteRewards | None = None


def set_url(url: str, token: str | None = None) -> None:
    """Point the functions at another server (default: $CREATIVE_GRPO_REWARD_URL)."""
    global _REMOTE
    _REMOTE = RemoteRewards(url, token)


def _remote() -> RemoteRewards:
    global _REMOTE
    if _REMOTE is None:
        _REMOTE = RemoteRewards()
    return _REMOTE


def answer_quality_reward_func(completions, **kwargs):
    data = {
        "entities": list(kwargs["entity"]),
        "completions": [extract_answer(completion_text(c)) for c in completions],
    }
    return _remote().post("/get_answer_quality_reward", data)["rewards"]


def think_quality_reward_func(completions, **kwargs):
    data = {
        "entities": list(kwargs["entity"]),
        "completions": [extract_think(completion_text(c)) for c in completions],
    }
    return _remote().post("/get_think_quality_reward", data)["rewards"]
