"""verl custom reward function that asks the reward server.

verl's reward loop (`verl/experimental/reward_loop/reward_manager/naive.py`, verl 0.10.0.dev, read 2026-11-27)
calls `compute_score(data_source=, solution_str=, ground_truth=, extra_info=, **extra_reward_kwargs)` once per
response, awaiting it when it is a coroutine function; a dict result gives the reward under "score" and every
key to `reward_extra_info`. verl loads the file by path:

    reward.custom_reward_function.path=/path/to/creative-grpo/lib/serve/verl_reward.py
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.url=http://judge-host:8000   # or $CREATIVE_GRPO_REWARD_URL

(the project must be importable in verl's environment: `pip install -e /path/to/creative-grpo`). The entity is
`extra_info["entity"]` when the dataset has it, else `ground_truth` (`reward_model.ground_truth` = the entity).
Many calls run concurrently; the server merges them into one judge batch.
"""
from __future__ import annotations

from typing import Any, Sequence

from lib.serve.client import RemoteRewardError, RemoteRewards


async def compute_score(data_source: Any, solution_str: str, ground_truth: Any, extra_info: dict | None = None,
                        url: str | None = None, token: str | None = None, rewards: Sequence[str] | None = None,
                        **kwargs) -> dict[str, float]:
    """{"score": the weighted sum of the rewards (the server profile's train.reward_weights), one key per reward}.

    `rewards` (default: the server profile's reward names), `url` and `token` may come from verl's
    `reward_kwargs`; other keyword arguments verl passes (reward_router_address, ...) are ignored.
    """
    entity = (extra_info or {}).get("entity") or ground_truth
    if entity is None or not str(entity).strip():
        raise RemoteRewardError(f"no entity for data_source {data_source!r}: set reward_model.ground_truth or extra_info['entity']")
    body: dict[str, Any] = {"completions": [solution_str], "entity": [str(entity)]}
    if rewards is not None:
        body["rewards"] = list(rewards)
    res = await RemoteRewards(url, token).apost("/rewards", body)
    return {"score": float(res["total"][0]), **{name: float(v[0]) for name, v in res["rewards"].items()}}
