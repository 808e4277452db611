"""The reward server's scoring: `RewardScorer`, `Batcher`, the request `Limits`.

`RewardScorer` (the rewards on one judge, several requests in one judge call) and `Batcher` (merges concurrent requests into those calls), with the request `Limits` and `ServeError`.

No HTTP here: `lib.serve.app` builds the app on a scorer, `lib.serve.server` runs it.
"""
from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from lib.rewards import REWARD_NAMES, JudgeRewards, reward_funcs

JUDGED = ("think", "answer")  # rewards that call the judge; merged across requests
WARM_UP_ENTITY = "椰子水"
WARM_UP_COMPLETION = "<think>我先想一想：喝椰子水的人想要清爽和天然，广告要短而有画面。</think><answer>椰子水，喝一口就是海边。</answer>"


class ServeError(RuntimeError):
    """A server that cannot start as configured; one line."""


@dataclass(frozen=True)
class Limits:
    """What one request may hold and how requests are batched (documented in the README)."""

    max_body_bytes: int = 8 * 1024 * 1024  # 413 above
    max_completions: int = 1024  # per request
    max_completion_chars: int = 16_000  # per completion (the judge cuts texts longer than its context anyway)
    max_entity_chars: int = 200
    max_batch: int = 128  # completions per merged judge call (a bigger single request goes alone)
    max_wait_ms: float = 20.0  # how long the first waiting request waits for others


def malloc_trim():
    """glibc's `malloc_trim` (give freed heap memory back to the system), or None where the C library has none."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return None


# oneDNN's process-wide primitive cache (default capacity 1024) keeps a compiled matmul per new batch shape, so a
# long-running server's RSS grows; vLLM's CPU linear layers keep their own LRU of primitives per layer anyway, and a
# small cap costs no speed (docs/reward-server-reliability.md).
ONEDNN_CACHE_ENV, ONEDNN_CACHE_CAPACITY = "ONEDNN_PRIMITIVE_CACHE_CAPACITY", "8"


def bound_native_caches() -> str:
    """Cap oneDNN's primitive cache for a long-running judge process unless the environment already sets it; call
    before the judge engine is built (oneDNN reads the variable once). Returns the capacity in effect."""
    return os.environ.setdefault(ONEDNN_CACHE_ENV, ONEDNN_CACHE_CAPACITY)


def server_judge(profile: Any, factory: str | None = None) -> Any:
    """The judge of a long-running server process: `factory` ("module:function", a test double) called, or the
    profile's judge engine; built after `bound_native_caches()`."""
    import importlib

    bound_native_caches()
    if factory:
        module, _, attr = factory.partition(":")
        return getattr(importlib.import_module(module), attr)()
    from lib.judge.engine import build_judge

    return build_judge(profile.judge, seed=profile.seed)


class RewardScorer:
    """The rewards on one judge and rubric; judged rewards of several requests in one judge call.

    The scorer holds its own two `lib.rewards.JudgeRewards`: `together` judges think and answer in one batch (used
    when every job of a batch wants both), `apart` judges each section alone. Every call runs on `executor` (one
    thread): the engine and the `JudgeRewards` details are not thread-safe.

    After a judge call, at most every `trim_every_s` seconds (None: never), the judge's thread hands freed heap memory
    back to the system (glibc `malloc_trim`): the engine's tensors of every new batch shape are freed but glibc keeps
    the pages, so without trims the server's RSS creeps up (docs/reward-server-reliability.md).
    """

    def __init__(self, judge: Any, rubric: Any, weights: dict[str, float] | None = None, info: dict | None = None,
                 trim_every_s: float | None = 10.0):
        self.rubric = rubric
        self.judge = judge
        self.weights = dict(weights or {"format": 1.0, "think": 1.0, "answer": 1.0})
        self.info = dict(info or {})  # profile name, model, backend for /health
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")
        self.trim_every_s = trim_every_s
        self._trim = malloc_trim() if trim_every_s is not None else None
        self._last_trim = time.monotonic()
        self.trims = 0  # how often freed memory was handed back

    def _trim_if_due(self) -> None:
        """`malloc_trim(0)` when `trim_every_s` have passed since the last one (on the judge's thread, after a call)."""
        if self._trim is not None and time.monotonic() - self._last_trim >= self.trim_every_s:
            self._trim(0)
            self._last_trim = time.monotonic()
            self.trims += 1

    @property
    def judge(self) -> Any:
        return self._judge

    @judge.setter
    def judge(self, judge: Any) -> None:
        """Another judge (a test swaps in a failing one) gets its own `JudgeRewards`: nothing judged ahead carries over."""
        self._judge = judge
        self.together = JudgeRewards(judge, self.rubric, sections=JUDGED)
        self.apart = JudgeRewards(judge, self.rubric)

    @property
    def known(self) -> tuple[str, ...]:
        """The reward names a request may ask for."""
        return tuple(REWARD_NAMES)

    def rule(self, name: str, completions: list[str], entities: list[str], prompts: list | None) -> list[float]:
        """A reward that needs no judge (format, diversity, tag_count), computed inline; every reward's function comes
        from `lib.rewards.build.reward_funcs`, as in training."""
        return reward_funcs([name])[0](completions, entity=entities, prompts=prompts)

    def relative(self, name: str, completions: Sequence[Any], entities: Sequence[str],
                 prompts: Sequence[Any] | None) -> tuple[list[float], list[dict]]:
        """A relative judging reward (lib.rewards.relative) of one request: its groups are its prompts, so requests
        are not merged. Run it on `executor`, like every judge call."""
        try:
            scores = reward_funcs([name], self.apart)[0](list(completions), entity=list(entities), prompts=prompts)
            return scores, list(self.apart.details[name])
        finally:
            self._trim_if_due()

    @staticmethod
    def judged(jr: JudgeRewards, name: str, completions: Sequence[Any], entities: Sequence[str]) -> tuple[list[float], list[dict]]:
        """One judged reward exactly as in-process: `jr`'s method for `name` and its details."""
        scores = reward_funcs([name], jr)[0](list(completions), entity=list(entities))
        return scores, list(jr.details[name])

    def warm_up(self) -> float:
        """Judge one completion with every judged reward (the engine's first call is much slower than the next
        ones); returns the seconds it took. Called before serving so the first trainer does not pay for it."""
        t0 = time.perf_counter()
        self._last_trim = float("-inf")  # and hand back what loading and the first call freed
        self.score_batch([([WARM_UP_COMPLETION], [WARM_UP_ENTITY], list(JUDGED))])
        return time.perf_counter() - t0

    def score_batch(self, jobs: Sequence[tuple[Sequence[Any], Sequence[str], Sequence[str]]]) -> list[dict | Exception]:
        """For each job (completions, entities, judged names): {"rewards": {name: [...]}, "details": {name: [...]}},
        or the exception its own judge call raised. Jobs wanting a reward are judged together; if that merged
        call fails, each job is judged alone so one bad job costs no other its answer."""
        try:
            return self._score_batch(jobs)
        finally:
            self._trim_if_due()

    def _score_batch(self, jobs: Sequence[tuple[Sequence[Any], Sequence[str], Sequence[str]]]) -> list[dict | Exception]:
        out: list[dict | Exception] = [{"rewards": {}, "details": {}} for _ in jobs]
        # think and answer in one judge batch when the same jobs want both (JudgeRewards judges the second ahead)
        wanted = {name: [i for i, (_, _, names) in enumerate(jobs) if name in names] for name in JUDGED}
        same = len(set(map(tuple, wanted.values()))) == 1 and all(wanted.values())
        jr = self.together if same else self.apart
        for name in JUDGED:
            idx = [i for i, (_, _, names) in enumerate(jobs) if name in names and not isinstance(out[i], Exception)]
            if not idx:
                continue
            try:
                scores, details = self.judged(jr, name, [c for i in idx for c in jobs[i][0]], [e for i in idx for e in jobs[i][1]])
            except Exception as exc:  # noqa: BLE001 - isolate below
                if len(idx) == 1:
                    out[idx[0]] = exc
                    continue
                for i in idx:
                    try:
                        s, d = self.judged(jr, name, jobs[i][0], jobs[i][1])
                        out[i]["rewards"][name], out[i]["details"][name] = s, d  # type: ignore[index]
                    except Exception as exc_i:  # noqa: BLE001 - this job's own failure
                        out[i] = exc_i
                continue
            start = 0
            for i in idx:
                n = len(jobs[i][0])
                out[i]["rewards"][name] = scores[start : start + n]  # type: ignore[index]
                out[i]["details"][name] = details[start : start + n]  # type: ignore[index]
                start += n
        return out

    def close(self) -> None:
        self.executor.shutdown(wait=True)


@dataclass
class _Job:
    completions: list
    entities: list[str]
    names: list[str]
    future: asyncio.Future
    enqueued: float


class Batcher:
    """Merges concurrent requests' judged rewards into one `RewardScorer.score_batch` call.

    A batch starts with the oldest waiting request and takes the next ones while they fit in `max_batch`
    completions; it is sent when full or `max_wait_ms` after the oldest arrived.
    """

    def __init__(self, scorer: RewardScorer, max_batch: int, max_wait_ms: float, metrics: Any = None):
        self.scorer = scorer
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.metrics = metrics
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self.judging = 0  # requests in the judge call under way
        self.totals = {"batches": 0, "requests": 0, "completions": 0}  # judge calls made, and what they merged
        self.recent: deque[tuple[int, int]] = deque(maxlen=1024)  # (requests, completions) of the last judge calls

    @property
    def depth(self) -> int:
        """Requests waiting for the judge (not counting the batch being judged)."""
        return len(self._jobs)

    def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        while self._jobs:
            job = self._jobs.popleft()
            if not job.future.done():
                job.future.set_exception(ServeError("the server is shutting down"))

    async def submit(self, completions: list, entities: list[str], names: list[str]) -> dict:
        """Judged rewards for one request: {"rewards": {name: [...]}, "details": {name: [...]}}; raises the
        request's own judge exception."""
        loop = asyncio.get_running_loop()
        job = _Job(completions, entities, names, loop.create_future(), loop.time())
        self._jobs.append(job)
        assert self._wake is not None, "Batcher.start() was not called"
        self._wake.set()
        return await job.future

    def _take(self) -> list[_Job]:
        jobs, n = [], 0
        while self._jobs and (not jobs or n + len(self._jobs[0].completions) <= self.max_batch):
            job = self._jobs.popleft()
            jobs.append(job)
            n += len(job.completions)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            while not self._jobs:
                self._wake.clear()
                await self._wake.wait()
            deadline = self._jobs[0].enqueued + self.max_wait_s
            while sum(len(j.completions) for j in self._jobs) < self.max_batch and loop.time() < deadline:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), max(deadline - loop.time(), 0.0))
                except TimeoutError:
                    break
            jobs = self._take()
            self.judging = len(jobs)
            try:
                results = await loop.run_in_executor(self.scorer.executor, self.scorer.score_batch,
                                                     [(j.completions, j.entities, j.names) for j in jobs])
            except Exception as exc:  # noqa: BLE001 - the worker must outlive any failure
                results = [exc] * len(jobs)
            self.judging = 0
            n = sum(len(j.completions) for j in jobs)
            self.totals["batches"] += 1
            self.totals["requests"] += len(jobs)
            self.totals["completions"] += n
            self.recent.append((len(jobs), n))
            if self.metrics is not None:
                self.metrics.batch(n, len(jobs))
            for job, res in zip(jobs, results):
                if job.future.done():  # the request was cancelled (client gone)
                    continue
                if isinstance(res, Exception):
                    job.future.set_exception(res)
                else:
                    job.future.set_result(res)
