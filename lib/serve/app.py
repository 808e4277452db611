"""The reward server: FastAPI + uvicorn around one judge engine and `lib.rewards`, with dynamic batching.

    python -m lib.cli serve --profile cpu [--host 127.0.0.1 --port 8000 --token T]

Every number comes from `lib.rewards` on the profile's judge (`lib.judge.build_judge`), so it equals
the in-process reward for the same input. Judged rewards (`think`, `answer`) of concurrent requests are merged
into one judge call: the batcher waits at most `max_wait_ms` after the first waiting request, or until
`max_batch` completions are waiting. The judge runs in one worker thread (one engine, one call at a time); while
it works, new requests queue up and form the next batch. If a merged call fails, each request's part is judged
again on its own so that only the failing request gets the 5xx.

Endpoints (JSON; a 4xx/5xx answer is `{"error": "<one line>"}`):
- `POST /rewards`: `{"completions": [...], "entity": [...] | "...", "rewards": ["format", "think", "answer"],
  "prompts": [...]?, "details": false}` -> `{"rewards": {name: [float]}, "total": [float], "details": {...}?}`.
- `POST /get_reward`: OpenRLHF's remote reward model protocol (see `lib.serve.openrlhf`).
- `POST /get_think_quality_reward`, `POST /get_answer_quality_reward`: the original CreativeTinyZero
  `rm_server.py` protocol, `{"entities": [...], "completions": [...]}` -> `{"rewards": [...]}`.
- `GET /health`: model, rubric hash, mode, uptime, limits. `GET /metrics`: Prometheus text format.
"""
from __future__ import annotations

import asyncio
import hmac
import os
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict

from lib import rewards as rewards_mod
from lib.serve import TOKEN_ENV

JUDGED = ("think", "answer")  # rewards that call the judge; merged across requests
PUBLIC_PATHS = ("/health",)
ENDPOINTS = ("/rewards", "/get_reward", "/get_think_quality_reward", "/get_answer_quality_reward", "/health", "/metrics")
WARM_UP_ENTITY = "椰子水"
WARM_UP_COMPLETION = "<think>我先想一想：喝椰子水的人想要清爽和天然，广告要短而有画面。</think><answer>椰子水，喝一口就是海边。</answer>"  # answered without the token (load balancers, readiness probes)


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


# ------------------------------------------------------------------------------------------------ scoring


class RewardScorer:
    """`lib.rewards` on one judge and rubric; judged rewards of several requests in one call.

    Every call runs on `executor` (one thread): the engine and the `JudgeRewards` details are not thread-safe.
    The scorer holds its own two `JudgeRewards`: one judging think and answer in one batch (when every job of a
    batch wants both), one judging each section alone.
    """

    def __init__(self, judge: Any, rubric: Any, weights: dict[str, float] | None = None, info: dict | None = None):
        self.judge = judge
        self.rubric = rubric
        self.weights = dict(weights or {"format": 1.0, "think": 1.0, "answer": 1.0})
        self.info = dict(info or {})  # profile name, model, backend for /health
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="judge")
        self.together = rewards_mod.JudgeRewards(judge, rubric, sections=JUDGED)
        self.apart = rewards_mod.JudgeRewards(judge, rubric)
        self._current = self.apart

    def judged(self, name: str, completions: Sequence[Any], entities: Sequence[str]) -> tuple[list[float], list[dict]]:
        """One judged reward exactly as in-process: a `JudgeRewards` method and its details."""
        jr = self._current
        scores = jr.func(name)(list(completions), entity=list(entities))
        return scores, list(jr.details[name])

    def relative(self, name: str, completions: Sequence[Any], entities: Sequence[str],
                 prompts: Sequence[Any] | None) -> tuple[list[float], list[dict]]:
        """A relative judging reward (lib.rewards.relative) of one request: its groups are its prompts, so requests
        are not merged. Run it on `executor`, like every judge call."""
        scores = self.apart.func(name)(list(completions), entity=list(entities), prompts=prompts)
        return scores, list(self.apart.details[name])

    def warm_up(self) -> float:
        """Judge one completion with every judged reward (the engine's first call is much slower than the next
        ones); returns the seconds it took. Called before serving so the first trainer does not pay for it."""
        t0 = time.perf_counter()
        self.score_batch([([WARM_UP_COMPLETION], [WARM_UP_ENTITY], list(JUDGED))])
        return time.perf_counter() - t0

    def score_batch(self, jobs: Sequence[tuple[Sequence[Any], Sequence[str], Sequence[str]]]) -> list[dict | Exception]:
        """For each job (completions, entities, judged names): {"rewards": {name: [...]}, "details": {name: [...]}},
        or the exception its own judge call raised. Jobs wanting a reward are judged together; if that merged
        call fails, each job is judged alone so one bad job costs no other its answer."""
        out: list[dict | Exception] = [{"rewards": {}, "details": {}} for _ in jobs]
        # think and answer in one judge batch when the same jobs want both (JudgeRewards judges the second ahead)
        wanted = {name: [i for i, (_, _, names) in enumerate(jobs) if name in names] for name in JUDGED}
        same = len(set(map(tuple, wanted.values()))) == 1 and all(wanted.values())
        self._current = self.together if same else self.apart
        self._current.reset_stats()  # nothing judged ahead survives from an earlier batch
        for name in JUDGED:
            idx = [i for i, (_, _, names) in enumerate(jobs) if name in names and not isinstance(out[i], Exception)]
            if not idx:
                continue
            try:
                scores, details = self.judged(name, [c for i in idx for c in jobs[i][0]], [e for i in idx for e in jobs[i][1]])
            except Exception as exc:  # noqa: BLE001 - isolate below
                if len(idx) == 1:
                    out[idx[0]] = exc
                    continue
                for i in idx:
                    try:
                        s, d = self.judged(name, jobs[i][0], jobs[i][1])
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

    def __init__(self, scorer: RewardScorer, max_batch: int, max_wait_ms: float, metrics: "Metrics | None" = None):
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


# ------------------------------------------------------------------------------------------------ metrics


class Metrics:
    """Prometheus metrics of one app (its own registry, so several apps can live in one process)."""

    def __init__(self, batcher: "Batcher", judge: Any):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

        disable_created_metrics()  # no *_created series: timestamps nobody reads
        self.registry = CollectorRegistry()
        self.requests = Counter("reward_server_requests", "HTTP requests by endpoint and status", ["endpoint", "status"], registry=self.registry)
        self.completions = Counter("reward_server_completions", "completions scored, by reward", ["reward"], registry=self.registry)
        self.latency = Histogram("reward_server_request_latency_seconds", "request latency by endpoint", ["endpoint"],
                                 buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320), registry=self.registry)
        self.latency_quantile = Gauge("reward_server_request_latency_quantile_seconds",
                                      "latency quantiles of the last 2048 scoring requests", ["quantile"], registry=self.registry)
        self.batch_completions = Histogram("reward_server_batch_completions", "completions per merged judge call",
                                           buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024), registry=self.registry)
        self.batch_requests = Histogram("reward_server_batch_requests", "requests merged per judge call",
                                        buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        Gauge("reward_server_queue_depth", "requests waiting for the judge", registry=self.registry).set_function(lambda: batcher.depth)
        Gauge("reward_server_requests_judging", "requests in the judge call under way", registry=self.registry).set_function(lambda: batcher.judging)
        stats = getattr(judge, "stats", None)
        judgements = Gauge("reward_server_judgements", "judge questions asked since start (the engine's count)", registry=self.registry)
        judgements.set_function(lambda: float(getattr(stats, "requests", 0)) if stats is not None else 0.0)
        judge_seconds = Gauge("reward_server_judge_seconds", "seconds spent in the judge since start", registry=self.registry)
        judge_seconds.set_function(lambda: float(getattr(stats, "seconds", 0.0)) if stats is not None else 0.0)
        self._recent: deque[float] = deque(maxlen=2048)
        self._lock = threading.Lock()

    def request(self, endpoint: str, status: int, seconds: float | None = None, scored: dict[str, int] | None = None) -> None:
        """Count a request; latency only for answered ones (a refusal's time says nothing about the judge)."""
        endpoint = endpoint if endpoint in ENDPOINTS else "other"  # unknown paths must not grow the label set
        self.requests.labels(endpoint, str(status)).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)
            with self._lock:
                self._recent.append(seconds)
        for name, n in (scored or {}).items():
            self.completions.labels(name).inc(n)

    def batch(self, completions: int, requests: int) -> None:
        self.batch_completions.observe(completions)
        self.batch_requests.observe(requests)

    def render(self) -> bytes:
        from prometheus_client import generate_latest

        with self._lock:
            recent = sorted(self._recent)
        for q in (0.5, 0.9, 0.99):
            self.latency_quantile.labels(str(q)).set(percentile(recent, q) if recent else float("nan"))
        return generate_latest(self.registry)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list.

    >>> percentile([1, 2, 3, 4], 0.5), percentile([1, 2, 3, 4], 0.99), percentile([7], 0.99)
    (2, 4, 7)
    """
    import math

    return sorted_values[max(math.ceil(q * len(sorted_values)) - 1, 0)]


# ------------------------------------------------------------------------------------------------ request bodies


class RewardsBody(BaseModel):
    """`POST /rewards`: completions are strings or TRL's conversational message lists."""

    model_config = ConfigDict(extra="forbid")
    completions: list[str | list[dict[str, Any]]]
    entity: str | list[str]  # one per completion, or one for all
    rewards: list[str] | None = None  # None: the profile's train.reward_weights
    prompts: list[Any] | None = None  # groups for the diversity reward
    details: bool = False  # per-item P(yes) of the judged rewards


class OpenRLHFBody(BaseModel):
    """`POST /get_reward`: what OpenRLHF's remote RM client sends (see lib.serve.openrlhf)."""

    model_config = ConfigDict(extra="allow")  # newer OpenRLHF versions may send more
    query: list[str]
    prompts: list[str] | None = None
    labels: list[str | None] | None = None


class OriginalBody(BaseModel):
    """`POST /get_{think,answer}_quality_reward`: the original rm_server.py's body (parts already extracted)."""

    model_config = ConfigDict(extra="allow")
    entities: list[str]
    completions: list[str]


# ------------------------------------------------------------------------------------------------ the app


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:500]


class RequestGate:
    """Outermost ASGI layer, before any body is read: 401 unless `Authorization: Bearer <token>` (when a token is
    set; constant-time compare), 413 when Content-Length exceeds the limit (a chunked body is counted as it
    arrives by Starlette's RequestBodyLimitMiddleware further in)."""

    def __init__(self, app, token: str | None, max_body_bytes: int, metrics: "Metrics | None" = None):
        self.app = app
        self.metrics = metrics
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            from starlette.responses import JSONResponse

            headers = dict(scope["headers"])
            if self.token is not None and scope["path"] not in PUBLIC_PATHS:
                auth = headers.get(b"authorization", b"")
                scheme, _, given = auth.partition(b" ")
                if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                    reason = "missing bearer token" if not auth else "wrong bearer token"
                    if self.metrics is not None:
                        self.metrics.request(scope["path"], 401)
                    await JSONResponse({"error": f"{reason}: send 'Authorization: Bearer <token>'"}, status_code=401,
                                       headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
                    return
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > self.max_body_bytes:
                if self.metrics is not None:
                    self.metrics.request(scope["path"], 413)
                await JSONResponse({"error": f"request body of {int(length)} bytes; the server's limit is {self.max_body_bytes}"},
                                   status_code=413)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(scorer: RewardScorer, limits: Limits = Limits(), token: str | None = None):
    """The FastAPI app serving `scorer` (the caller owns and closes the judge)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.body_limit import RequestBodyLimitMiddleware

    started = time.time()
    batcher = Batcher(scorer, limits.max_batch, limits.max_wait_ms)
    metrics = Metrics(batcher, scorer.judge)
    batcher.metrics = metrics

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="creative-grpo reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scorer, app.state.batcher, app.state.metrics, app.state.limits = scorer, batcher, metrics, limits
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=limits.max_body_bytes)
    app.add_middleware(RequestGate, token=token, max_body_bytes=limits.max_body_bytes, metrics=metrics)  # added last: outermost

    # -- errors: always {"error": one line}
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        e = errs[0] if errs else {}
        if e.get("type") == "json_invalid":
            reason = f"malformed JSON: {(e.get('ctx') or {}).get('error', e.get('msg'))}"
            status = 400
        else:
            loc = ".".join(str(x) for x in e.get("loc", ())[1:]) or "body"
            reason = f"{loc}: {e.get('msg', 'invalid')}" + (f" (got {_short(e['input'])})" if "input" in e and e["type"] != "missing" else "")
            status = 422
        metrics.request(request.url.path, status)
        return JSONResponse({"error": _one_line(reason)}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        reason = exc.detail
        if exc.status_code == 413:
            reason = f"request body larger than the server's limit of {limits.max_body_bytes} bytes"  # chunked upload
        metrics.request(request.url.path, exc.status_code)
        return JSONResponse({"error": _one_line(reason)}, status_code=exc.status_code)

    @app.exception_handler(_BadRequest)
    async def _bad(request: Request, exc: _BadRequest):
        metrics.request(request.url.path, exc.status)
        return JSONResponse({"error": _one_line(exc.reason)}, status_code=exc.status)

    # -- shared path: validate, format-like rewards inline, judged ones through the batcher
    def check(completions: list, entities: list[str], field_c: str, field_e: str) -> None:
        if not completions:
            raise _BadRequest(422, f"{field_c}: empty list; send at least one completion")
        if len(completions) > limits.max_completions:
            raise _BadRequest(413, f"{field_c}: {len(completions)} completions; the limit is {limits.max_completions} per request")
        if len(entities) != len(completions):
            raise _BadRequest(422, f"{field_e}: {len(entities)} entities for {len(completions)} completions; they must be aligned")
        for i, c in enumerate(completions):
            n = len(rewards_mod.completion_text(c))
            if n > limits.max_completion_chars:
                raise _BadRequest(413, f"{field_c}[{i}]: {n} characters; the limit is {limits.max_completion_chars}")
        for i, e in enumerate(entities):
            if not e.strip():
                raise _BadRequest(422, f"{field_e}[{i}]: empty entity")
            if len(e) > limits.max_entity_chars:
                raise _BadRequest(422, f"{field_e}[{i}]: {len(e)} characters; the limit is {limits.max_entity_chars}")

    def reward_names(names: list[str] | None) -> list[str]:
        names = list(scorer.weights) if names is None else names
        if not names:
            raise _BadRequest(422, "rewards: empty list; known: " + ", ".join(rewards_mod.REWARD_NAMES))
        try:
            rewards_mod.reward_funcs(names, scorer.apart)
        except rewards_mod.RewardError as exc:
            raise _BadRequest(422, f"rewards: {exc}") from None
        return list(dict.fromkeys(names))

    async def score(completions: list, entities: list[str], names: list[str], prompts: list | None) -> dict:
        out: dict[str, list[float]] = {}
        details: dict[str, list] = {}
        for name in names:
            if name in rewards_mod.RELATIVE_REWARDS:  # pairwise within the request's groups: on the judge's thread
                try:
                    out[name], details[name] = await asyncio.get_running_loop().run_in_executor(
                        scorer.executor, scorer.relative, name, completions, entities, prompts)
                except rewards_mod.RewardError as exc:
                    raise _BadRequest(422, f"{name}: {exc}") from None
                except Exception as exc:  # noqa: BLE001 - the judge failed for this request only
                    raise _BadRequest(500, f"judge failed: {type(exc).__name__}: {exc}") from None
            elif name not in JUDGED:
                try:  # e.g. overlong, which needs token ids that a request does not carry
                    out[name] = rewards_mod.RULE_FUNCS[name](completions, entity=entities, prompts=prompts)
                except rewards_mod.RewardError as exc:
                    raise _BadRequest(422, f"{name}: {exc}") from None
        judged = [n for n in names if n in JUDGED]
        if judged:
            try:
                res = await batcher.submit(completions, entities, judged)
            except ServeError as exc:
                raise _BadRequest(503, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - the judge failed for this request only
                raise _BadRequest(500, f"judge failed: {type(exc).__name__}: {exc}") from None
            out.update(res["rewards"])
            details.update(res["details"])
        ordered = {n: out[n] for n in names}
        total = [sum(scorer.weights.get(n, 1.0) * ordered[n][i] for n in names) for i in range(len(completions))]
        return {"rewards": ordered, "total": total, "details": details}

    def done(endpoint: str, t0: float, n: int, names: Sequence[str]) -> None:
        metrics.request(endpoint, 200, time.perf_counter() - t0, {name: n for name in names})

    @app.post("/rewards")
    async def post_rewards(body: RewardsBody):
        t0 = time.perf_counter()
        entities = [body.entity] * len(body.completions) if isinstance(body.entity, str) else list(body.entity)
        if body.prompts is not None and len(body.prompts) != len(body.completions):
            raise _BadRequest(422, f"prompts: {len(body.prompts)} prompts for {len(body.completions)} completions; they must be aligned")
        check(body.completions, entities, "completions", "entity")
        names = reward_names(body.rewards)
        res = await score(body.completions, entities, names, body.prompts)
        answer = {"rewards": res["rewards"], "total": res["total"]}
        if body.details:
            answer["details"] = res["details"]
        done("/rewards", t0, len(body.completions), names)
        return answer

    @app.post("/get_reward")
    async def post_get_reward(body: OpenRLHFBody):
        from lib.serve.openrlhf import QueryError, completion_from_query

        t0 = time.perf_counter()
        n = len(body.query)
        for name, values in (("prompts", body.prompts), ("labels", body.labels)):
            if values is not None and len(values) != n:
                raise _BadRequest(422, f"{name}: {len(values)} for {n} queries; they must be aligned")
        if body.labels is None or any(lab is None for lab in body.labels):
            raise _BadRequest(422, "labels: missing; the entity is the label (run OpenRLHF with --data.label_key entity)")
        completions = []
        for i, q in enumerate(body.query):
            try:
                completions.append(completion_from_query(q, body.prompts[i] if body.prompts else None))
            except QueryError as exc:
                raise _BadRequest(422, f"query[{i}]: {exc}") from None
        entities = [str(lab) for lab in body.labels]
        check(completions, entities, "query", "labels")
        names = reward_names(None)
        res = await score(completions, entities, names, body.prompts)
        done("/get_reward", t0, n, names)
        return {"rewards": res["total"], "scores": res["total"], "extra_logs": res["rewards"]}

    async def original(section: str, body: OriginalBody, endpoint: str) -> dict:
        # The original client sends the extracted part (think text or answer text); extracting it again is a no-op.
        t0 = time.perf_counter()
        check(body.completions, body.entities, "completions", "entities")
        res = await score(list(body.completions), list(body.entities), [section], None)
        done(endpoint, t0, len(body.completions), [section])
        return {"rewards": res["rewards"][section]}

    @app.post("/get_think_quality_reward")
    async def post_think_original(body: OriginalBody):
        return await original("think", body, "/get_think_quality_reward")

    @app.post("/get_answer_quality_reward")
    async def post_answer_original(body: OriginalBody):
        return await original("answer", body, "/get_answer_quality_reward")

    @app.get("/health")
    async def health():
        stats = getattr(scorer.judge, "stats", None)
        return {
            "status": "ok",
            **scorer.info,
            "mode": getattr(scorer.judge, "mode", None),
            "rubric_hash": getattr(scorer.rubric, "content_hash", None),
            "rubric": getattr(scorer.rubric, "source", None),
            "reward_weights": scorer.weights,
            "uptime_s": round(time.time() - started, 1),
            "queue_depth": batcher.depth,
            "judging": batcher.judging,
            "batches": dict(batcher.totals),
            "judgements": getattr(stats, "requests", None),
            "limits": asdict(limits),
            "auth": bool(token),
        }

    @app.get("/metrics")
    async def get_metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# ------------------------------------------------------------------------------------------------ running it


@dataclass
class ServerThread:
    """uvicorn serving `app` in a background thread (tests, the benchmark): `with ServerThread(app) as url: ...`."""

    app: Any
    host: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    startup_timeout: float = 30.0
    _server: Any = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> str:
        import uvicorn

        if not self.port:
            from lib.bench import free_port

            self.port = free_port()
        self._server = uvicorn.Server(uvicorn.Config(self.app, host=self.host, port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, name="reward-server", daemon=True)
        self._thread.start()
        t0 = time.perf_counter()
        while not self._server.started:
            if not self._thread.is_alive() or time.perf_counter() - t0 > self.startup_timeout:
                raise ServeError(f"the reward server did not start on {self.url}")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(30)


def serve(profile_name: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
          overrides: dict | None = None, limits: Limits = Limits(), log_level: str = "info") -> None:
    """Build the profile's judge once and serve until stopped (Ctrl-C / SIGTERM)."""
    import uvicorn

    from lib.judge.engine import build_judge
    from lib.profiles import load_profile
    from lib.rubric import load_rubric

    profile = load_profile(profile_name, overrides=overrides)
    token = token if token is not None else os.environ.get(TOKEN_ENV) or None
    rubric = load_rubric(profile.rubric.path)
    judge = build_judge(profile.judge, seed=profile.seed)
    info = {"profile": profile.name, "model": profile.judge.model, "backend": profile.judge.backend}
    scorer = RewardScorer(judge, rubric, profile.train.reward_weights, info)
    try:
        print(f"reward server: profile {profile.name}, judge {profile.judge.model} ({profile.judge.backend}, {judge.mode}), "
              f"http://{host}:{port}" + (" (bearer token required)" if token else ""), flush=True)
        print(f"reward server: judge warm-up took {scorer.warm_up():.1f} s; serving", flush=True)
        uvicorn.run(create_app(scorer, limits, token), host=host, port=port, log_level=log_level)
    finally:
        scorer.close()
        judge.close()
