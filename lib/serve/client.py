"""Client of the reward server, with TRL's reward-function signature.

    from lib.serve.client import RemoteRewards

    remote = RemoteRewards("http://judge-host:8000")            # token: token= or $CREATIVE_GRPO_REWARD_TOKEN
    trainer = GRPOTrainer(..., reward_funcs=remote.funcs(["format", "think", "answer"]))

Each function of `funcs(names)` is called by TRL as `f(prompts=..., completions=..., entity=[...], ...)` and
returns a list of floats. The first of them called on a batch asks the server for every reward in `names` in one
request; the others take their part of that answer (TRL calls them one after the other on the same batch).
Connection errors, timeouts and 5xx answers are retried with a growing pause; a 4xx is raised at once with the
server's one-line reason.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Sequence

from lib.serve import DEFAULT_URL, TOKEN_ENV, URL_ENV

DEFAULT_TIMEOUT_S = 300.0  # a judged batch of a few hundred completions on a busy shared judge
DEFAULT_RETRIES = 3


class RemoteRewardError(RuntimeError):
    """The reward server refused the request or stayed unreachable; one line."""


def default_url() -> str:
    return os.environ.get(URL_ENV, DEFAULT_URL)


class RemoteRewards:
    """Rewards from a reward server (`python -m lib.cli serve`)."""

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT_S,
                 retries: int = DEFAULT_RETRIES, backoff: float = 1.0):
        self.url = (url or default_url()).rstrip("/")
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.timeout = timeout
        self.retries = retries
        self.backoff = backoff
        self._client = None
        self._last_key: tuple | None = None
        self._last: dict[str, list[float]] = {}
        self.last_details: dict[str, list[dict]] = {}

    # -- HTTP
    def _http(self):
        if self._client is None:
            import httpx

            self._client = httpx.Client(timeout=self.timeout, headers=self.headers)
        return self._client

    def post(self, path: str, body: dict) -> dict:
        """POST JSON with retries; the decoded answer, or RemoteRewardError."""
        import httpx

        last = ""
        for attempt in range(self.retries + 1):
            try:
                answer, last = self._answer(path, self._http().post(self.url + path, json=body))
            except httpx.TransportError as exc:  # connect, read, timeout
                answer, last = None, f"{type(exc).__name__}: {exc}"
            if answer is not None:
                return answer
            if attempt < self.retries:
                time.sleep(self.backoff * 2 ** attempt)
        raise self._gave_up(path, last)

    async def apost(self, path: str, body: dict) -> dict:
        """`post` for asyncio callers (verl's async reward loop)."""
        import httpx

        last = ""
        async with httpx.AsyncClient(timeout=self.timeout, headers=self.headers) as client:
            for attempt in range(self.retries + 1):
                try:
                    answer, last = self._answer(path, await client.post(self.url + path, json=body))
                except httpx.TransportError as exc:
                    answer, last = None, f"{type(exc).__name__}: {exc}"
                if answer is not None:
                    return answer
                if attempt < self.retries:
                    await asyncio.sleep(self.backoff * 2 ** attempt)
        raise self._gave_up(path, last)

    def _answer(self, path: str, resp) -> tuple[dict | None, str]:
        """(the decoded answer, "") for a success; (None, the reason) for a 5xx, which is retried; a 4xx raises at once."""
        if resp.status_code < 400:
            return resp.json(), ""
        last = f"HTTP {resp.status_code}: {_reason(resp)}"
        if resp.status_code < 500:
            raise RemoteRewardError(f"{self.url}{path}: {last}")
        return None, last

    def _gave_up(self, path: str, last: str) -> RemoteRewardError:
        return RemoteRewardError(f"{self.url}{path}: failed after {self.retries + 1} tries: {last}")

    def health(self) -> dict:
        import httpx

        try:
            return self._http().get(self.url + "/health").raise_for_status().json()
        except httpx.HTTPError as exc:
            raise RemoteRewardError(f"{self.url}/health: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- rewards
    def score(self, completions: Sequence[Any], entity: Any, rewards: Sequence[str] | None = None,
              prompts: Sequence[Any] | None = None, details: bool = False) -> dict:
        """`POST /rewards`: {"rewards": {name: [float]}, "total": [float], "details"?: {...}}."""
        body: dict[str, Any] = {"completions": list(completions), "entity": entity if isinstance(entity, str) else list(entity)}
        if rewards is not None:
            body["rewards"] = list(rewards)
        if prompts is not None:
            body["prompts"] = list(prompts)
        if details:
            body["details"] = True
        return self.post("/rewards", body)

    def funcs(self, names: Sequence[str] = ("format", "think", "answer"), details: bool = False) -> list[Callable[..., list[float]]]:
        """TRL reward functions for `names`, named like the in-process ones (`format_reward`, ...) so training
        logs read the same. One request per batch serves all of them."""
        from lib.reward_names import FUNC_NAMES, REWARD_NAMES, unknown_reward
        from lib.rewards import RewardError

        unknown = unknown_reward(names)
        if unknown:
            raise RewardError(f"unknown reward {unknown!r}; known: {', '.join(REWARD_NAMES)}")
        names = list(dict.fromkeys(names))

        def make(name: str) -> Callable[..., list[float]]:
            def reward(completions, entity=None, prompts=None, **kwargs) -> list[float]:
                if entity is None:
                    raise RewardError(f"{name}: no 'entity' given; the dataset needs an 'entity' column")
                ents = entity if isinstance(entity, str) else list(entity)
                key = (_freeze(completions), _freeze(ents), _freeze(prompts))
                if key != self._last_key or name not in self._last:
                    res = self.score(completions, ents, names, prompts=prompts, details=details)
                    self._last_key, self._last = key, res["rewards"]
                    self.last_details = res.get("details", {})
                return list(self._last[name])

            reward.__name__ = FUNC_NAMES[name]
            reward.__qualname__ = reward.__name__
            return reward

        return [make(n) for n in names]


def _freeze(x: Any) -> Any:
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    return x


def _reason(resp) -> str:
    try:
        data = resp.json()
        if isinstance(data, dict) and "error" in data:
            return str(data["error"])
    except ValueError:
        pass
    return " ".join(resp.text.split())[:300]
