"""The reward server's security defaults and its input handling under fuzzing (keyword judge, fast), and the short
soak (`python -m bench soak` for a few seconds on the keyword judge in a server process)."""
from __future__ import annotations

import inspect
import json
import os
import subprocess

import pytest
from fastapi.testclient import TestClient

from lib import paths
from lib.serve import app as app_mod
from lib.serve.app import create_app
from lib.serve.scorer import Limits, RewardScorer
from tests.fakes import KeywordJudge

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
GOOD = {"completions": ["<think>我先想一想：喝椰子水的人想要清爽和天然。</think><answer>椰子水，喝一口就是海边。</answer>"], "entity": "椰子水"}


@pytest.fixture()
def client(rubric):
    judge = KeywordJudge()
    scorer = RewardScorer(judge, rubric)
    with TestClient(create_app(scorer, Limits(max_wait_ms=1), token=TOKEN)) as c:
        c.judge = judge
        yield c
    scorer.close()


def test_server_and_lab_listen_on_loopback_by_default():
    from lib.cli import build_parser
    from lib.serve.server import ServerThread, serve

    assert build_parser().parse_args(["serve"]).host == "127.0.0.1"
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    assert ServerThread(app=None).host == "127.0.0.1"
    for target, flag in (("lab", "--ServerApp.ip=127.0.0.1"), ("serve", "--host 127.0.0.1")):
        out = subprocess.run(["make", "-n", "-o", "setup", target], cwd=paths.PROJ_ROOT, capture_output=True, text=True, check=True).stdout
        assert flag in out, (target, out)


def test_bearer_token_is_compared_in_constant_time(client, monkeypatch):
    seen = []
    real = app_mod.hmac.compare_digest

    def spy(a, b):
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(app_mod.hmac, "compare_digest", spy)
    assert client.post("/rewards", json=GOOD, headers={**AUTH, "Authorization": "Bearer nope"}).status_code == 401
    assert client.post("/rewards", json=GOOD, headers=AUTH).status_code == 200
    assert seen == [(b"nope", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


STRICT = [
    ("duplicate key", b'{"completions": ["a"], "entity": "x", "entity": 3}', 400, r"^malformed JSON: duplicate key 'entity'$"),
    ("NaN", b'{"completions": ["a"], "entity": "x", "prompts": [NaN]}', 400, r"^malformed JSON: NaN is not JSON$"),
    ("deep nesting", b'{"completions": ["a"], "entity": "x", "prompts": ' + b"[" * 5000 + b"]" * 5000 + b"}", 400,
     r"^malformed JSON: nested too deeply$"),
    ("not UTF-8", b'{"completions": ["\xff"], "entity": "x"}', 400, r"^malformed JSON: not UTF-8 \(byte 18: b'\\xff'\)$"),
    ("lone surrogate", b'{"completions": ["\\ud800"], "entity": "x"}', 400, r"^malformed JSON: lone surrogate '\\ud800'"),
    ("BOM", b'\xef\xbb\xbf{"completions": ["a"], "entity": "x"}', 400, r"^malformed JSON: Unexpected UTF-8 BOM"),
    ("truncated", b'{"completions": ["a"], "entity": "x', 400, r"^malformed JSON: Unterminated string"),
    ("message content not text", b'{"completions": [[{"content": [{"text": 3}]}]], "entity": "x"}', 422,
     r"^completions\[0\]: not a completion"),
]


@pytest.mark.parametrize("body, status, reason", [s[1:] for s in STRICT], ids=[s[0] for s in STRICT])
def test_bodies_are_strict_json_refused_in_one_line(client, body, status, reason):
    import re

    ans = client.post("/rewards", content=body, headers=AUTH)
    assert ans.status_code == status, ans.text
    assert re.search(reason, ans.json()["error"]) and "\n" not in ans.json()["error"], ans.text
    assert client.judge.calls == []


@pytest.mark.parametrize("ctype", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
def test_a_post_that_is_not_json_is_refused_so_web_pages_cannot_send_one(client, ctype):
    # a browser sends these content types cross-origin without a CORS preflight; application/json needs one
    headers = {"Authorization": AUTH["Authorization"], **({"Content-Type": ctype} if ctype else {})}
    ans = client.post("/rewards", content=json.dumps(GOOD).encode(), headers=headers)
    assert ans.status_code == 415 and ans.json()["error"].startswith(f"Content-Type {ctype or 'missing'}; send"), ans.text
    assert client.post("/rewards", content=json.dumps(GOOD).encode(), headers={**headers, "Content-Type": "application/json; charset=utf-8"}).status_code == 200


def test_no_answer_echoes_input_as_markup(client):
    script = "<script>alert(1)</script>&"
    answers = [
        client.post("/rewards", json={**GOOD, "rewards": [script]}, headers=AUTH),  # 422 naming the reward
        client.post("/rewards", json={**GOOD, "entity": [script, "x"]}, headers=AUTH),
        client.post("/rewards", json={**GOOD, script: 1}, headers=AUTH),  # unknown field named in the error
        client.post("/" + script, json=GOOD, headers=AUTH),  # 404
        client.post("/rewards", json={"completions": [script], "entity": script, "details": True}, headers=AUTH),  # 200
    ]
    assert [a.status_code for a in answers] == [422, 422, 422, 404, 200]
    for ans in answers + [client.get("/metrics", headers=AUTH), client.get("/health")]:
        assert ans.headers["x-content-type-options"] == "nosniff"
        assert "text/html" not in ans.headers["content-type"]
        assert "<script" not in ans.text and "&" not in ans.text.replace("&amp;", ""), ans.text
    assert "\\u003cscript\\u003e" in answers[0].text
    from lib.reward_names import REWARD_NAMES

    assert json.loads(answers[0].text)["error"].endswith(f"unknown reward {script!r}; known: {', '.join(REWARD_NAMES)}")


def test_fuzzed_bodies_from_the_schema_get_a_one_line_4xx_before_any_judge_call(client):
    from bench.fuzz import bad_bodies

    limits = Limits()
    bodies = bad_bodies(300, limits, seed=1)
    assert len({(b.endpoint, b.body) for b in bodies}) >= 300
    assert {b.kind for b in bodies} >= {"wrong_type", "missing", "empty", "huge", "unicode", "duplicate_key", "truncated", "deep"}
    wrong = []
    for b in bodies:
        ans = client.post(b.endpoint, content=b.body, headers=AUTH)
        err = ans.json().get("error") if ans.headers["content-type"].startswith("application/json") else None
        if not (400 <= ans.status_code < 500 and isinstance(err, str) and "\n" not in err and "<" not in ans.text):
            wrong.append((b.kind, b.body[:120], ans.status_code, ans.text[:200]))
    assert not wrong, wrong[:5]
    assert client.judge.calls == []  # every one refused before the judge


def test_short_soak_on_a_keyword_judge_loses_nothing():
    """The soak's bounded version: 3 s, 12 clients, the keyword judge (tests.fakes) in a server process."""
    from bench.soak import format_lines, soak

    rep = soak(seconds=3, clients=12, judge="tests.fakes:quiet_keyword_judge", n_bad=120, kill_every=0.5, inject_every=1.0,
               fuzz_pause=0.01, startup_timeout=120)
    assert rep["passed"], "\n".join(format_lines(rep)) + json.dumps(rep["examples"], ensure_ascii=False)
    assert rep["lost"] == 0 and rep["other_5xx"] == 0 and rep["answered"] == rep["requests_sent"] > 100
    assert rep["bad_distinct_answered_4xx"] == rep["bad_distinct_bodies"] >= 120 and rep["injected"] >= 1
    assert set(rep["killed_clients"]) == {"reset_after_body", "reset_mid_body", "sigkill"}
    assert rep["latency_s"]["valid_p99"] is not None and rep["rss_mib"]["start"] > 0


def test_soak_refuses_bad_arguments(tmp_path):
    from bench import cli as bench

    assert bench.main(["soak", "--seconds", "0"]) == 2
    taken = tmp_path / "soak.json"
    taken.write_text("{}")
    assert bench.main(["soak", "--json", str(taken)]) == 2


def test_the_judge_thread_hands_freed_memory_back_at_most_every_trim_interval(rubric, monkeypatch):
    """RewardScorer calls malloc_trim(0) after a judge call once `trim_every_s` have passed (and after the warm-up),
    on the judge's thread; `trim_every_s=None` never does. (The soak measures what it saves: RSS growth.)"""
    import platform
    import threading

    from lib.serve import scorer as scorer_mod

    if platform.libc_ver()[0] == "glibc":
        assert scorer_mod.malloc_trim() is not None  # the real one, found in this machine's C library
    calls = []
    monkeypatch.setattr(scorer_mod, "malloc_trim", lambda: (lambda pad: calls.append((pad, threading.current_thread().name))))
    job = [(GOOD["completions"], [GOOD["entity"]], ["answer"])]
    s = RewardScorer(KeywordJudge(), rubric, trim_every_s=3600.0)
    s.executor.submit(s.warm_up).result()
    assert s.trims == 1 and calls[0][0] == 0 and calls[0][1].startswith("judge")
    s.executor.submit(s.score_batch, job).result()
    assert s.trims == 1  # not due yet
    s._last_trim -= 3600.0
    s.executor.submit(s.score_batch, job).result()
    assert s.trims == 2
    s._last_trim -= 3600.0
    with pytest.raises(Exception, match="reads P"):  # a failing call (relative judging needs an engine) trims too
        s.executor.submit(s.relative, "relative", GOOD["completions"] * 2, [GOOD["entity"]] * 2, [[1], [1]]).result()
    assert s.trims == 3 and len(calls) == 3
    s.close()
    never = RewardScorer(KeywordJudge(), rubric, trim_every_s=None)
    never.warm_up()
    never.score_batch(job)
    assert never.trims == 0 and len(calls) == 3
    never.close()


def test_the_server_caps_onednn_s_primitive_cache_before_building_its_judge(monkeypatch):
    """`serve()` and the soak's server set ONEDNN_PRIMITIVE_CACHE_CAPACITY (8) before the judge engine exists (oneDNN
    reads it once), unless the environment sets it already."""
    from lib.judge import engine
    from lib.serve import scorer as scorer_mod, server
    from bench import soak_server

    seen = []

    def build_judge(cfg, seed=0):
        seen.append(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"))
        raise RuntimeError("stop here")

    monkeypatch.setattr(engine, "build_judge", build_judge)
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    with pytest.raises(RuntimeError, match="stop here"):
        server.serve("smoke")
    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY")
    with pytest.raises(RuntimeError, match="stop here"):
        soak_server.main(["--port", "1", "--profile", "smoke"])
    monkeypatch.setenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "64")
    with pytest.raises(RuntimeError, match="stop here"):
        server.serve("smoke")
    assert seen == [scorer_mod.ONEDNN_CACHE_CAPACITY, scorer_mod.ONEDNN_CACHE_CAPACITY, "64"]


def test_memprobe_reports_rss_before_and_after_a_final_trim(tmp_path, monkeypatch, capsys):
    """`python -m bench.memprobe` for a second on the keyword judge: judged completions, the scorer's trims, the
    RSS at start, end and after a final trim in its JSON; an existing --json is refused."""
    from bench import memprobe

    monkeypatch.delenv("ONEDNN_PRIMITIVE_CACHE_CAPACITY", raising=False)
    out = tmp_path / "m.json"
    args = ["--judge", "tests.fakes:quiet_keyword_judge", "--seconds", "1", "--trim-every", "0.1", "--json", str(out)]
    assert memprobe.main(args) == 0
    rep = json.loads(out.read_text())
    assert rep["completions"] > 0 and rep["trims"] >= 2 and rep["ONEDNN_PRIMITIVE_CACHE_CAPACITY"] == "8"
    assert set(rep["rss_mib"]) == {"start", "end", "after_final_trim"} and rep["rss_mib"]["start"] > 0
    assert "after a final trim" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        memprobe.main(args)
    assert "exists" in capsys.readouterr().err
