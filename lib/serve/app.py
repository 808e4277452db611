"""The reward server's HTTP app (FastAPI): request parsing and limits, the bearer token, routes, JSON errors.

    python -m lib.cli serve --profile cpu [--host 127.0.0.1 --port 8000 --token T]   (lib.serve.server)

Every number comes from `lib.serve.scorer.RewardScorer` on the profile's judge, so it equals the in-process
reward for the same input; judged rewards (`think`, `answer`) of concurrent requests are merged into one judge
call by its `Batcher`. If a merged call fails, each request's part is judged again on its own so that only the
failing request gets the 5xx.

Endpoints (JSON; a 4xx/5xx answer is `{"error": "<one line>"}`):
- `POST /rewards`: `{"completions": [...], "entity": [...] | "...", "rewards": ["format", "think", "answer"],
  "prompts": [...]?, "details": false}` -> `{"rewards": {name: [float]}, "total": [float], "details": {...}?}`.
- `POST /get_reward`: OpenRLHF's remote reward model protocol (see `lib.serve.openrlhf`).
- `POST /get_think_quality_reward`, `POST /get_answer_quality_reward`: the original CreativeTinyZero
  `rm_server.py` protocol, `{"entities": [...], "completions": [...]}` -> `{"rewards": [...]}`.
- `GET /health`: model, rubric hash, mode, uptime, limits. `GET /metrics`: Prometheus text format.

What a request must be (each refusal is one line naming the field): a POST body `Content-Type: application/json`
(415 otherwise: a web page cannot post to the server without a CORS preflight, which it never grants), UTF-8,
strict JSON (no duplicate keys, NaN or lone surrogates: 400), within `Limits` (413/422). The token, when set, is
compared in constant time. Every answer is JSON with `<`, `>`, `&` escaped and `X-Content-Type-Options: nosniff`,
so no input comes back as markup.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any, Sequence

from fastapi import Request  # at module level: the routes' annotations are resolved here
from pydantic import BaseModel, ConfigDict, ValidationError

from lib.rewards import RELATIVE_REWARDS, RewardError, completion_text
from lib.serve.prometheus import Metrics
from lib.serve.scorer import JUDGED, Batcher, Limits, RewardScorer, ServeError

PUBLIC_PATHS = ("/health",)  # answered without the token (load balancers, readiness probes)
ENDPOINTS = ("/rewards", "/get_reward", "/get_think_quality_reward", "/get_answer_quality_reward", "/health", "/metrics")
JSON_TYPES = ("application/json",)  # and any application/*+json


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


# ------------------------------------------------------------------------------------------------ parsing


class _BadRequest(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:500]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _BadRequest(400, f"malformed JSON: duplicate key {_short(key)}")
        out[key] = value
    return out


def _no_constant(name: str) -> Any:
    raise _BadRequest(400, f"malformed JSON: {name} is not JSON")


def parse_json(raw: bytes) -> Any:
    r"""The body as strict JSON: UTF-8, no duplicate keys, no NaN/Infinity, no lone surrogates; else a 400.

    >>> parse_json(b'{"a": [1, "\\u00e9"]}')
    {'a': [1, 'é']}
    >>> parse_json(b'{"a": 1, "a": 2}')
    Traceback (most recent call last):
    lib.serve.app._BadRequest: malformed JSON: duplicate key 'a'
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _BadRequest(400, f"malformed JSON: not UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})") from None
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise _BadRequest(400, f"malformed JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise _BadRequest(400, "malformed JSON: nested too deeply") from None
    if "\\u" in text:  # only an escape can leave a lone surrogate (raw ones fail the UTF-8 decode)
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise _BadRequest(400, f"malformed JSON: lone surrogate {exc.object[exc.start]!r}; strings must be valid Unicode") from None
    return obj


def validate(model: type[BaseModel], obj: Any) -> Any:
    """`model` from parsed JSON; a 422 naming the first wrong field (`completions.0.str: Input should be ...`)."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        e = exc.errors(include_url=False)[0]
        loc = ".".join(str(x) for x in e.get("loc", ())) or "body"
        got = f" (got {_short(e['input'])})" if "input" in e and e["type"] != "missing" else ""
        raise _BadRequest(422, f"{loc}: {e.get('msg', 'invalid')}{got}") from None


_ESCAPE = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


def _safe_json_response():
    from starlette.responses import JSONResponse

    class SafeJSONResponse(JSONResponse):
        """JSON with `<`, `>`, `&` escaped (`\\u003c` ...): the same value for any JSON reader, never markup."""

        def render(self, content: Any) -> bytes:
            return json.dumps(content, ensure_ascii=False, allow_nan=False, separators=(",", ":")).translate(_ESCAPE).encode("utf-8")

    return SafeJSONResponse


class RequestGate:
    """Outermost ASGI layer, before any body is read: 401 unless `Authorization: Bearer <token>` (when a token is
    set; constant-time compare), 415 for a POST whose Content-Type is not JSON, 413 when Content-Length exceeds
    the limit (a chunked body is counted as it arrives by Starlette's RequestBodyLimitMiddleware further in).
    Adds `X-Content-Type-Options: nosniff` to every answer."""

    def __init__(self, app, token: str | None, max_body_bytes: int, metrics: "Metrics | None" = None):
        self.app = app
        self.metrics = metrics
        self.token = token.encode() if token else None
        self.max_body_bytes = max_body_bytes
        self.response = _safe_json_response()

    async def _refuse(self, scope, receive, send, status: int, reason: str, headers: dict | None = None) -> None:
        if self.metrics is not None:
            self.metrics.request(scope["path"], status)
        await self.response({"error": _one_line(reason)}, status_code=status, headers=headers)(scope, receive, send)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_nosniff(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-content-type-options", b"nosniff")]}
            await send(message)

        headers = dict(scope["headers"])
        if self.token is not None and scope["path"] not in PUBLIC_PATHS:
            auth = headers.get(b"authorization", b"")
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
                reason = "missing bearer token" if not auth else "wrong bearer token"
                await self._refuse(scope, receive, send_nosniff, 401, f"{reason}: send 'Authorization: Bearer <token>'",
                                   {"WWW-Authenticate": "Bearer"})
                return
        if scope["method"] == "POST":
            ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower().decode("latin-1")
            if not (ctype in JSON_TYPES or (ctype.startswith("application/") and ctype.endswith("+json"))):
                await self._refuse(scope, receive, send_nosniff, 415,
                                   f"Content-Type {ctype or 'missing'}; send 'Content-Type: application/json'")
                return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(scope, receive, send_nosniff, 413,
                               f"request body of {int(length)} bytes; the server's limit is {self.max_body_bytes}")
            return
        await self.app(scope, receive, send_nosniff)


# ------------------------------------------------------------------------------------------------ the app


def create_app(scorer: RewardScorer, limits: Limits = Limits(), token: str | None = None):
    """The FastAPI app serving `scorer` (the caller owns and closes the judge)."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
    from starlette.middleware.body_limit import RequestBodyLimitMiddleware

    SafeJSONResponse = _safe_json_response()
    started = time.time()
    batcher = Batcher(scorer, limits.max_batch, limits.max_wait_ms)
    metrics = Metrics(batcher, scorer.judge, ENDPOINTS)
    batcher.metrics = metrics

    @asynccontextmanager
    async def lifespan(app):
        batcher.start()
        try:
            yield
        finally:
            await batcher.stop()

    app = FastAPI(title="creative-grpo reward server", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=SafeJSONResponse)
    app.state.scorer, app.state.batcher, app.state.metrics, app.state.limits = scorer, batcher, metrics, limits
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=limits.max_body_bytes)
    app.add_middleware(RequestGate, token=token, max_body_bytes=limits.max_body_bytes, metrics=metrics)  # added last: outermost

    # -- errors: always {"error": one line}
    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        reason = exc.detail
        if exc.status_code == 413:
            reason = f"request body larger than the server's limit of {limits.max_body_bytes} bytes"  # chunked upload
        metrics.request(request.url.path, exc.status_code)
        return SafeJSONResponse({"error": _one_line(reason)}, status_code=exc.status_code)

    @app.exception_handler(_BadRequest)
    async def _bad(request: Request, exc: _BadRequest):
        metrics.request(request.url.path, exc.status)
        return SafeJSONResponse({"error": _one_line(exc.reason)}, status_code=exc.status)

    async def body_of(request: Request, model: type[BaseModel]) -> Any:
        from starlette.requests import ClientDisconnect

        try:
            raw = await request.body()
        except ClientDisconnect:  # the client went away mid-body: nobody to answer, nothing to log
            raise _BadRequest(400, "the client disconnected before sending the whole body") from None
        return validate(model, parse_json(raw))

    # -- shared path: validate, rule rewards inline, judged ones through the batcher
    def texts_of(completions: list, field_c: str) -> list[str]:
        """The completions' texts (what every reward reads), each within the limit."""
        texts = []
        for i, c in enumerate(completions):
            try:
                text = completion_text(c)
                if not isinstance(text, str):
                    raise TypeError(type(text).__name__)
            except (RewardError, TypeError, AttributeError) as exc:
                raise _BadRequest(422, f"{field_c}[{i}]: not a completion ({exc})") from None
            if len(text) > limits.max_completion_chars:
                raise _BadRequest(413, f"{field_c}[{i}]: {len(text)} characters; the limit is {limits.max_completion_chars}")
            texts.append(text)
        return texts

    def check(completions: list, entities: list[str], field_c: str, field_e: str) -> list[str]:
        if not completions:
            raise _BadRequest(422, f"{field_c}: empty list; send at least one completion")
        if len(completions) > limits.max_completions:
            raise _BadRequest(413, f"{field_c}: {len(completions)} completions; the limit is {limits.max_completions} per request")
        if len(entities) != len(completions):
            raise _BadRequest(422, f"{field_e}: {len(entities)} entities for {len(completions)} completions; they must be aligned")
        texts = texts_of(completions, field_c)
        for i, e in enumerate(entities):
            if not e.strip():
                raise _BadRequest(422, f"{field_e}[{i}]: empty entity")
            if len(e) > limits.max_entity_chars:
                raise _BadRequest(422, f"{field_e}[{i}]: {len(e)} characters; the limit is {limits.max_entity_chars}")
        return texts

    def reward_names(names: list[str] | None) -> list[str]:
        names = list(scorer.weights) if names is None else names
        if not names:
            raise _BadRequest(422, "rewards: empty list; known: " + ", ".join(scorer.known))
        unknown = [n for n in names if n not in scorer.known]
        if unknown:
            raise _BadRequest(422, f"rewards: unknown reward {unknown[0]!r}; known: {', '.join(scorer.known)}")
        return list(dict.fromkeys(names))

    async def score(texts: list[str], entities: list[str], names: list[str], prompts: list | None) -> dict:
        try:  # e.g. prompts the diversity reward cannot group; overlong, which needs token ids a request lacks
            out = {name: scorer.rule(name, texts, entities, prompts) for name in names
                   if name not in JUDGED and name not in RELATIVE_REWARDS}
        except (RewardError, TypeError, ValueError) as exc:
            raise _BadRequest(422, f"rewards: {type(exc).__name__}: {exc}") from None
        details: dict[str, list] = {}
        for name in names:
            if name in RELATIVE_REWARDS:  # pairwise within the request's groups: on the judge's thread
                try:
                    out[name], details[name] = await asyncio.get_running_loop().run_in_executor(
                        scorer.executor, scorer.relative, name, texts, entities, prompts)
                except RewardError as exc:
                    raise _BadRequest(422, f"{name}: {exc}") from None
                except Exception as exc:  # noqa: BLE001 - the judge failed for this request only
                    raise _BadRequest(500, f"judge failed: {type(exc).__name__}: {exc}") from None
        judged = [n for n in names if n in JUDGED]
        if judged:
            try:
                res = await batcher.submit(texts, entities, judged)
            except ServeError as exc:
                raise _BadRequest(503, str(exc)) from None
            except Exception as exc:  # noqa: BLE001 - the judge failed for this request only
                raise _BadRequest(500, f"judge failed: {type(exc).__name__}: {exc}") from None
            out.update(res["rewards"])
            details.update(res["details"])
        ordered = {n: out[n] for n in names}
        total = [sum(scorer.weights.get(n, 1.0) * ordered[n][i] for n in names) for i in range(len(texts))]
        return {"rewards": ordered, "total": total, "details": details}

    def done(endpoint: str, t0: float, n: int, names: Sequence[str]) -> None:
        metrics.request(endpoint, 200, time.perf_counter() - t0, {name: n for name in names})

    @app.post("/rewards")
    async def post_rewards(request: Request):
        t0 = time.perf_counter()
        body = await body_of(request, RewardsBody)
        entities = [body.entity] * len(body.completions) if isinstance(body.entity, str) else list(body.entity)
        if body.prompts is not None and len(body.prompts) != len(body.completions):
            raise _BadRequest(422, f"prompts: {len(body.prompts)} prompts for {len(body.completions)} completions; they must be aligned")
        texts = check(body.completions, entities, "completions", "entity")
        names = reward_names(body.rewards)
        res = await score(texts, entities, names, body.prompts)
        answer = {"rewards": res["rewards"], "total": res["total"]}
        if body.details:
            answer["details"] = res["details"]
        done("/rewards", t0, len(texts), names)
        return answer

    @app.post("/get_reward")
    async def post_get_reward(request: Request):
        from lib.serve.openrlhf import QueryError, completion_from_query

        t0 = time.perf_counter()
        body = await body_of(request, OpenRLHFBody)
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
        texts = check(completions, entities, "query", "labels")
        names = reward_names(None)
        res = await score(texts, entities, names, body.prompts)
        done("/get_reward", t0, n, names)
        return {"rewards": res["total"], "scores": res["total"], "extra_logs": res["rewards"]}

    async def original(section: str, request: Request, endpoint: str) -> dict:
        # The original client sends the extracted part (think text or answer text); extracting it again is a no-op.
        t0 = time.perf_counter()
        body = await body_of(request, OriginalBody)
        texts = check(list(body.completions), list(body.entities), "completions", "entities")
        res = await score(texts, list(body.entities), [section], None)
        done(endpoint, t0, len(texts), [section])
        return {"rewards": res["rewards"][section]}

    @app.post("/get_think_quality_reward")
    async def post_think_original(request: Request):
        return await original("think", request, "/get_think_quality_reward")

    @app.post("/get_answer_quality_reward")
    async def post_answer_original(request: Request):
        return await original("answer", request, "/get_answer_quality_reward")

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
