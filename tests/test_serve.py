"""The reward server on 127.0.0.1 with the embedded judge (the `smoke` profile's Gemma 3 270M, vLLM in-process).

One engine and one server for the module (starting the engine costs about a minute on 2 cores); every
in-process reference runs on the same engine, in the server's judge thread. Slow: marked `smoke`.
"""
from __future__ import annotations

import asyncio
import copy
import re
import socket
import subprocess
import sys
import textwrap
import threading
import time
from types import SimpleNamespace

import httpx
import pytest

from lib import rewards as rewards_mod
from lib.data import make_prompt
from lib.judge import JudgeError
from lib.profiles import load_profile
from lib.rubric import load_rubric
from lib.serve.app import create_app
from lib.serve.scorer import Limits, RewardScorer
from lib.serve.server import ServerThread

pytestmark = pytest.mark.smoke

TOKEN = "test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LIMITS = Limits(max_wait_ms=300, max_completions=16, max_completion_chars=4000, max_body_bytes=256 * 1024)
ENTITIES = ["椰子水", "冷萃咖啡液", "猫粮"]
COMPLETIONS = [
    "<think>我先想一想：喝椰子水的人想要清爽和天然，广告要短而有画面。</think><answer>椰子水，喝一口就是海边。</answer>",
    "<think>目标用户是加班的上班族，要突出提神和方便，语气轻松一点。</think><answer>冷萃咖啡液，三秒一杯，困意退散！</answer>",
    "猫粮广告：主子吃得香，你也放心。",  # no tags: format 0, the whole text is the think part and the answer
]


@pytest.fixture(scope="module")
def srv(smoke_judge_backend):
    """The reward server on the smoke judge: the suite's shared engine (conftest.py), in a JudgeEngine of its own."""
    from lib.judge.engine import JudgeEngine

    profile = load_profile("smoke")
    engine = JudgeEngine(smoke_judge_backend, profile.judge)
    scorer = RewardScorer(engine, load_rubric(profile.rubric.path), profile.train.reward_weights,
                          {"profile": profile.name, "model": profile.judge.model, "backend": profile.judge.backend})
    try:
        scorer.warm_up()
        app = create_app(scorer, LIMITS, token=TOKEN)
        with ServerThread(app) as url:
            yield SimpleNamespace(url=url, scorer=scorer, engine=engine, app=app, profile=profile)
    finally:
        scorer.close()  # the engine is the shared one: closed after its last user


def in_process(srv, names, comps, ents, details=False):
    """`lib.rewards` in-process on the server's engine (a JudgeRewards of its own), run in its judge thread:
    {name: scores} (+ details)."""
    def run():
        out, det = {}, {}
        jr = rewards_mod.JudgeRewards(srv.engine, srv.scorer.rubric)
        for n, func in zip(names, rewards_mod.reward_funcs(names, jr)):
            out[n] = func(comps, entity=ents)
            if n in ("think", "answer"):
                det[n] = copy.deepcopy(jr.details[n])
        return (out, det) if details else out

    return srv.scorer.executor.submit(run).result()


def post(srv, path, body=None, content=None, headers=AUTH):
    hdrs = dict(headers or {})
    if content is not None:
        hdrs["content-type"] = "application/json"
    return httpx.post(srv.url + path, json=body, content=content, headers=hdrs, timeout=300)


def concurrently(fn, args_list):
    out = [None] * len(args_list)
    barrier = threading.Barrier(len(args_list))

    def run(i):
        barrier.wait()
        out[i] = fn(*args_list[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(args_list))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return out


def test_rewards_equal_in_process_rewards_on_the_same_judge(srv):
    ans = post(srv, "/rewards", {"completions": COMPLETIONS, "entity": ENTITIES, "details": True})
    assert ans.status_code == 200, ans.text
    got = ans.json()
    want, want_details = in_process(srv, ["format", "think", "answer"], COMPLETIONS, ENTITIES, details=True)
    assert got["rewards"].keys() == want.keys()
    for name in want:
        assert got["rewards"][name] == pytest.approx(want[name], abs=INVARIANCE_TOL), name
    for name in want_details:  # every item's P(yes), verdict and flag
        for g, w in zip(got["details"][name], want_details[name], strict=True):
            assert {k: v for k, v in g.items() if k != "items"} == pytest.approx({k: v for k, v in w.items() if k != "items"},
                                                                                 abs=INVARIANCE_TOL)
            for key, item in w["items"].items():
                assert g["items"][key]["p_yes"] == pytest.approx(item["p_yes"], abs=INVARIANCE_TOL)
                assert (g["items"][key]["verdict"], g["items"][key]["flagged"]) == (item["verdict"], item["flagged"])
    assert 0 < got["rewards"]["answer"][0] < 1 and got["rewards"]["format"][2] == 0.0
    w = srv.profile.train.reward_weights
    assert got["total"] == pytest.approx([sum(w[n] * want[n][i] for n in want) for i in range(3)], abs=INVARIANCE_TOL)


def test_concurrent_requests_merge_into_one_judge_call_and_keep_their_numbers(srv):
    batcher = srv.app.state.batcher
    before = dict(batcher.totals)
    bodies = [{"completions": [c], "entity": [e], "rewards": ["answer"]} for c, e in zip(COMPLETIONS, ENTITIES)]
    answers = concurrently(lambda b: post(srv, "/rewards", b), [(b,) for b in bodies])
    assert [a.status_code for a in answers] == [200] * 3
    assert {k: batcher.totals[k] - before[k] for k in before} == {"batches": 1, "requests": 3, "completions": 3}
    for body, ans in zip(bodies, answers):  # each equals its own in-process call, not only the merged one
        assert ans.json()["rewards"]["answer"] == pytest.approx(
            in_process(srv, ["answer"], body["completions"], body["entity"])["answer"], abs=INVARIANCE_TOL)


BAD_INPUTS = [
    ("malformed JSON", '{"completions": ["a"], "entity": ', 400, r"^malformed JSON: Expecting value"),
    ("not an object", "[1, 2]", 422, r"^body: Input should be a valid dictionary"),
    ("missing entity", {"completions": ["a"]}, 422, r"^entity: Field required$"),
    ("misaligned entity", {"completions": ["a", "b"], "entity": ["x"]}, 422, r"^entity: 1 entities for 2 completions; they must be aligned$"),
    ("empty entity", {"completions": ["a"], "entity": [" "]}, 422, r"^entity\[0\]: empty entity$"),
    ("long entity", {"completions": ["a"], "entity": ["长" * 201]}, 422, r"^entity\[0\]: 201 characters; the limit is 200$"),
    ("no completions", {"completions": [], "entity": []}, 422, r"^completions: empty list"),
    ("too many completions", {"completions": ["a"] * 17, "entity": "x"}, 413, r"^completions: 17 completions; the limit is 16 per request$"),
    ("huge completion", {"completions": ["a" * 4001], "entity": "x"}, 413, r"^completions\[0\]: 4001 characters; the limit is 4000$"),
    ("body too large", '{"completions": ["' + "a" * 300_000 + '"], "entity": "x"}', 413, r"^request body of \d+ bytes; the server's limit is 262144$"),
    ("unknown reward", {"completions": ["a"], "entity": "x", "rewards": ["format", "wit"]}, 422, r"^rewards: unknown reward 'wit'; known: format, think, answer"),
    ("completion of a wrong type", {"completions": [3], "entity": "x"}, 422, r"^completions\.0\.str: Input should be a valid string"),
    ("unknown field", {"completions": ["a"], "entity": "x", "entities": ["x"]}, 422, r"^entities: Extra inputs are not permitted"),
]


@pytest.mark.parametrize("body, status, reason", [b[1:] for b in BAD_INPUTS], ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_4xx_with_one_line_and_the_server_keeps_serving(srv, body, status, reason):
    ans = post(srv, "/rewards", content=body) if isinstance(body, str) else post(srv, "/rewards", body)
    assert ans.status_code == status, ans.text
    error = ans.json()["error"]
    assert "\n" not in error
    assert re.search(reason, error), error
    assert post(srv, "/rewards", {"completions": ["<think>短</think><answer></answer>"], "entity": "x"}).status_code == 200


def test_empty_completion_is_scored_not_refused(srv):
    ans = post(srv, "/rewards", {"completions": [""], "entity": "椰子水"})
    assert ans.status_code == 200 and ans.json()["rewards"] == {"format": [0.0], "think": [0.0], "answer": [0.0]}


def test_token_is_required_except_for_health(srv):
    body = {"completions": ["a"], "entity": "x", "rewards": ["format"]}
    no = post(srv, "/rewards", body, headers=None)
    assert no.status_code == 401 and no.json()["error"].startswith("missing bearer token")
    wrong = post(srv, "/rewards", body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"].startswith("wrong bearer token")
    assert httpx.get(srv.url + "/metrics", timeout=10).status_code == 401
    assert post(srv, "/rewards", body).status_code == 200
    assert httpx.get(srv.url + "/health", timeout=10).status_code == 200


class FailingFor:
    """The real engine, except that judging one entity raises (a judge call that fails for one request)."""

    def __init__(self, engine, bad_entity):
        self.engine, self.bad = engine, bad_entity
        self.mode, self.threshold, self.stats = engine.mode, engine.threshold, engine.stats

    def judge_section(self, section, entities, texts):
        if self.bad in entities:
            raise JudgeError(f"cannot judge entity {self.bad!r}")
        return self.engine.judge_section(section, entities, texts)


def test_a_failed_judge_call_gets_a_5xx_and_costs_no_other_request(srv):
    srv.scorer.judge = FailingFor(srv.engine, "坏实体")
    before = dict(srv.app.state.batcher.totals)
    try:
        good = {"completions": COMPLETIONS[:1], "entity": ENTITIES[:1], "rewards": ["answer"]}
        bad = {"completions": COMPLETIONS[1:2], "entity": ["坏实体"], "rewards": ["answer"]}
        a_good, a_bad = concurrently(lambda b: post(srv, "/rewards", b), [(good,), (bad,)])
    finally:
        srv.scorer.judge = srv.engine
    assert srv.app.state.batcher.totals["batches"] - before["batches"] == 1  # merged, then split on failure
    assert a_bad.status_code == 500 and a_bad.json()["error"] == "judge failed: JudgeError: cannot judge entity '坏实体'"
    assert a_good.status_code == 200
    assert a_good.json()["rewards"] == in_process(srv, ["answer"], good["completions"], good["entity"])


def test_server_survives_a_client_killed_mid_request(srv):
    # a client that sends half a body and disappears
    host, port = srv.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST /rewards HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
                  "Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"completions\": [".encode())
    # a client killed (SIGKILL) while its request is being judged
    code = textwrap.dedent(f"""
        import httpx
        httpx.post({srv.url + '/rewards'!r}, headers={AUTH!r}, timeout=300,
                   json={{"completions": {COMPLETIONS[:2]!r}, "entity": {ENTITIES[:2]!r}}})
    """)
    batcher = srv.app.state.batcher
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        t0 = time.time()
        while batcher.judging + batcher.depth == 0:
            assert proc.poll() is None, "the client finished before it could be killed"
            assert time.time() - t0 < 60, "the request never reached the judge"
            time.sleep(0.02)
    finally:
        proc.kill()
        proc.wait(10)
    ans = post(srv, "/rewards", {"completions": COMPLETIONS[:1], "entity": ENTITIES[:1]})
    assert ans.status_code == 200
    assert ans.json()["rewards"] == in_process(srv, ["format", "think", "answer"], COMPLETIONS[:1], ENTITIES[:1])
    assert httpx.get(srv.url + "/health", timeout=10).json()["status"] == "ok"


def test_openrlhf_remote_rm_calls(srv):
    tok = srv.engine.backend.tokenizer
    prompts = [tok.apply_chat_template(make_prompt(e), tokenize=False, add_generation_prompt=True) for e in ENTITIES[:2]]
    queries = [p + c + "<end_of_turn>" for p, c in zip(prompts, COMPLETIONS[:2])]
    # OpenRLHF >= 0.10 posts one sample per request, concurrently; the second omits prompts (marker path)
    bodies = [{"query": [queries[0]], "prompts": [prompts[0]], "labels": [ENTITIES[0]]},
              {"query": [queries[1]], "labels": [ENTITIES[1]]}]
    answers = concurrently(lambda b: post(srv, "/get_reward", b), [(b,) for b in bodies])
    names = list(srv.profile.train.reward_weights)
    for i, ans in enumerate(answers):
        assert ans.status_code == 200, ans.text
        got = ans.json()
        want = in_process(srv, names, COMPLETIONS[i : i + 1], ENTITIES[i : i + 1])
        assert got["extra_logs"] == want
        assert got["rewards"] == got["scores"] == [sum(srv.profile.train.reward_weights[n] * want[n][0] for n in names)]
    # up to v0.9 a whole batch per request, same body
    batch = post(srv, "/get_reward", {"query": queries, "prompts": prompts, "labels": ENTITIES[:2]})
    assert batch.json()["rewards"] == [answers[0].json()["rewards"][0], answers[1].json()["rewards"][0]]
    no_label = post(srv, "/get_reward", {"query": queries[:1], "prompts": prompts[:1]})
    assert no_label.status_code == 422 and "--data.label_key entity" in no_label.json()["error"]


def test_verl_compute_score(srv):
    from lib.serve.verl_reward import compute_score

    async def both():
        return await asyncio.gather(*[
            compute_score("creative_ad", c, e, {"entity": e}, url=srv.url, token=TOKEN) for c, e in zip(COMPLETIONS[:2], ENTITIES[:2])])

    results = asyncio.run(both())
    names = list(srv.profile.train.reward_weights)
    for i, res in enumerate(results):
        want = in_process(srv, names, COMPLETIONS[i : i + 1], ENTITIES[i : i + 1])
        assert res == {"score": sum(srv.profile.train.reward_weights[n] * want[n][0] for n in names), **{n: want[n][0] for n in names}}


def test_original_training_script_pattern(srv):
    from lib.serve import original

    original.set_url(srv.url, TOKEN)
    comps = [[{"role": "assistant", "content": c}] for c in COMPLETIONS[:2]]  # completion[0]["content"], as the original read it
    think = original.think_quality_reward_func(comps, entity=ENTITIES[:2])
    answer = original.answer_quality_reward_func(comps, entity=ENTITIES[:2])
    want = in_process(srv, ["think", "answer"], COMPLETIONS[:2], ENTITIES[:2])
    assert (think, answer) == (want["think"], want["answer"])


def test_health_and_metrics(srv):
    health = httpx.get(srv.url + "/health", timeout=10).json()
    assert health["model"] == "gemma3-270m" and health["mode"] == "soft" and health["auth"] is True
    assert health["rubric_hash"] == load_rubric().content_hash
    assert health["uptime_s"] > 0 and health["judgements"] > 0
    text = httpx.get(srv.url + "/metrics", headers=AUTH, timeout=10).text
    for line in ('reward_server_requests_total{endpoint="/rewards",status="200"}', "reward_server_queue_depth 0.0",
                 'reward_server_request_latency_quantile_seconds{quantile="0.99"}', "reward_server_judgements ",
                 "reward_server_batch_requests_bucket"):
        assert line in text, line


# ------------------------------------------------------------------ batch invariance (the reward does not depend on the batch)

# Measured on the smoke judge (Gemma 3 270M, float32, AVX-512 BF16 CPU): max |P(yes) difference| 5.4e-7 between a
# text judged with its prefix computed and with its prefix from the prefix cache, 0 across batch compositions and
# orders. In bf16 the cached-prefix difference was 1.1e-3, hence the smoke profile's `judge.dtype: float32`.
INVARIANCE_TOL = 1e-6


def _p_yes(results, texts_idx):
    return {(i, key): j.p_yes for i, res in zip(texts_idx, results) for key, j in res.items()}


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(abs(a[k] - b[k]) for k in a)


def test_p_yes_does_not_depend_on_the_batch_the_order_or_the_prefix_cache(srv):
    from lib.data import read_jsonl
    from lib import paths

    rows = [r for r in read_jsonl(paths.CALIBRATION_SET) if r["section"] == "answer"][:2]
    ents = [r["entity"] for r in rows] + ENTITIES
    texts = [r["text"] for r in rows] + [c.split("<answer>")[-1].removesuffix("</answer>") for c in COMPLETIONS]
    section, think = srv.scorer.rubric["answer"], srv.scorer.rubric["think"]
    engine, n = srv.engine, len(texts)

    def judge(idx, reset=True, with_think=False):
        def run():
            if reset:
                engine.backend.llm.reset_prefix_cache()
            jobs = [(section, [ents[i] for i in idx], [texts[i] for i in idx])]
            if with_think:  # a training step's batch: both checklists of other texts in the same engine call
                jobs.append((think, ents[::-1], texts[::-1]))
            return _p_yes(engine.judge_sections(jobs)[0], idx)
        return srv.scorer.executor.submit(run).result()

    alone = {}
    for i in range(n):
        alone.update(judge([i]))
    together = judge(list(range(n)))
    diffs = {
        "together": _max_diff(alone, together),
        "cached": _max_diff(alone, judge(list(range(n)), reset=False)),
        "reversed": _max_diff(alone, judge(list(range(n))[::-1])),
        "alone, prefixes cached": _max_diff(alone, {k: v for i in range(n) for k, v in judge([i], reset=False).items()}),
        "training step batch": _max_diff(alone, judge(list(range(n)), with_think=True)),
    }
    assert max(diffs.values()) <= INVARIANCE_TOL, diffs


def test_server_rewards_equal_in_process_for_concurrent_single_requests(srv):
    """OpenRLHF's pattern: one completion per request, concurrently; each equals one in-process call of all of them."""
    want, want_details = in_process(srv, ["answer"], COMPLETIONS, ENTITIES, details=True)
    bodies = [{"completions": [c], "entity": [e], "rewards": ["answer"], "details": True} for c, e in zip(COMPLETIONS, ENTITIES)]
    answers = concurrently(lambda b: post(srv, "/rewards", b), [(b,) for b in bodies])
    for k, ans in enumerate(answers):
        assert ans.status_code == 200, ans.text
        got = ans.json()
        assert got["rewards"]["answer"][0] == pytest.approx(want["answer"][k], abs=INVARIANCE_TOL)
        items = got["details"]["answer"][0]["items"]
        for key, d in want_details["answer"][k]["items"].items():
            assert items[key]["p_yes"] == pytest.approx(d["p_yes"], abs=INVARIANCE_TOL), key
