"""The reward server's own logic on a keyword judge (fast): merging, fault isolation, the TRL client, query parsing.

The same server with the embedded model (equality with in-process rewards, every bad input, the token, a killed
client, OpenRLHF/verl/original calls) is tested in tests/test_serve.py.
"""
from __future__ import annotations

import threading

import httpx
import pytest

from lib import rewards as rewards_mod
from lib.judge import JudgeError
from lib.serve.app import create_app
from lib.serve.scorer import Limits, RewardScorer
from lib.serve.server import ServerThread
from lib.serve.client import RemoteRewardError, RemoteRewards
from lib.serve.openrlhf import QueryError, completion_from_query
from tests.fakes import KeywordJudge

THINK = "我先想一想：喝{e}的人想要什么？要写得短、有画面，还要有一点幽默。"
ANSWER = "{e}，喝一口就是海边。"


def completion(entity: str) -> str:
    return f"<think>{THINK.format(e=entity)}</think><answer>{ANSWER.format(e=entity)}</answer>"


class FailingFor:
    """Delegates to a judge but raises for one entity (a judge call that fails for one request only)."""

    def __init__(self, judge, bad_entity: str):
        self.judge, self.bad = judge, bad_entity
        self.mode, self.threshold = judge.mode, judge.threshold

    def judge_section(self, section, entities, texts):
        if self.bad in entities:
            raise JudgeError(f"cannot judge entity {self.bad!r}")
        return self.judge.judge_section(section, entities, texts)


def in_process(judge, rubric, names, comps, ents) -> dict[str, list[float]]:
    jr = rewards_mod.JudgeRewards(judge, rubric)
    return {n: f(comps, entity=ents) for n, f in zip(names, rewards_mod.reward_funcs(names, jr))}


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
        t.join(60)
    return out


@pytest.fixture()
def serve_keyword(rubric):
    """(url, judge, app) of a server on a keyword judge; `max_wait_ms` long enough that concurrent requests merge."""
    servers = []

    def start(judge=None, **limits):
        judge = judge or KeywordJudge()
        scorer = RewardScorer(judge, rubric, {"format": 1.0, "think": 1.0, "answer": 0.5})
        app = create_app(scorer, Limits(**{"max_wait_ms": 1000, **limits}))
        server = ServerThread(app)
        url = server.__enter__()
        servers.append((server, scorer))
        return url, judge, app

    yield start
    for server, scorer in servers:
        server.__exit__(None, None, None)
        scorer.close()


def post(url, body):
    return httpx.post(url + "/rewards", json=body, timeout=60)


def test_concurrent_requests_are_merged_into_one_judge_call_with_the_same_numbers(serve_keyword, rubric):
    url, judge, app = serve_keyword()
    bodies = [{"completions": [completion(e), completion(e) + "多余"], "entity": e} for e in ("椰子水", "咖啡", "猫粮", "跑鞋")]
    answers = concurrently(post, [(url, b) for b in bodies])
    assert [a.status_code for a in answers] == [200] * 4
    think_calls = [len(texts) for name, _, texts in judge.calls if name == "think"]
    assert think_calls == [8], think_calls  # 4 requests x 2 completions, one judge call
    assert app.state.batcher.totals == {"batches": 1, "requests": 4, "completions": 8}
    for body, ans in zip(bodies, answers):
        ents = [body["entity"]] * 2
        want = in_process(KeywordJudge(), rubric, ["format", "think", "answer"], body["completions"], ents)
        got = ans.json()
        assert got["rewards"] == want
        assert got["total"] == [want["format"][i] + want["think"][i] + 0.5 * want["answer"][i] for i in range(2)]


def test_max_batch_bounds_a_merged_call(serve_keyword):
    url, judge, app = serve_keyword(max_batch=4)
    bodies = [{"completions": [completion(e)] * 2, "entity": e, "rewards": ["answer"]} for e in ("椰子水", "咖啡", "猫粮", "跑鞋")]
    assert [a.status_code for a in concurrently(post, [(url, b) for b in bodies])] == [200] * 4
    sizes = [len(texts) for _, _, texts in judge.calls]
    assert max(sizes) <= 4 and sum(sizes) == 8, sizes


def test_a_failing_judge_call_fails_only_its_own_request(serve_keyword, rubric):
    judge = FailingFor(KeywordJudge(), "坏实体")
    url, _, app = serve_keyword(judge=judge)
    good = {"completions": [completion("椰子水")], "entity": ["椰子水"]}
    bad = {"completions": [completion("坏实体")], "entity": ["坏实体"]}
    a_good, a_bad = concurrently(post, [(url, good), (url, bad)])
    assert a_good.status_code == 200
    assert a_good.json()["rewards"] == in_process(KeywordJudge(), rubric, ["format", "think", "answer"], good["completions"], good["entity"])
    assert a_bad.status_code == 500
    assert a_bad.json()["error"] == "judge failed: JudgeError: cannot judge entity '坏实体'"
    assert app.state.batcher.totals["batches"] == 1  # they were merged, and the merged call was split on failure
    assert post(url, good).status_code == 200  # still serving


def test_trl_functions_share_one_request_per_batch_and_match_in_process(serve_keyword, rubric):
    url, judge, app = serve_keyword()
    remote = RemoteRewards(url)
    funcs = remote.funcs(["format", "think", "answer"])
    assert [f.__name__ for f in funcs] == ["format_reward", "think_quality_reward", "answer_quality_reward"]
    comps = [[{"role": "assistant", "content": completion(e)}] for e in ("椰子水", "咖啡")]  # TRL's conversational form
    kwargs = {"prompts": [[{"role": "user", "content": "写"}]] * 2, "entity": ["椰子水", "咖啡"], "completion_ids": [[1], [2]]}
    got = [f(completions=comps, **kwargs) for f in funcs]
    assert got == list(in_process(KeywordJudge(), rubric, ["format", "think", "answer"], comps, kwargs["entity"]).values())
    assert app.state.batcher.totals["requests"] == 1  # think and answer came from the first function's request
    funcs[0](completions=comps[:1], **{**kwargs, "entity": ["椰子水"], "prompts": kwargs["prompts"][:1]})
    assert app.state.batcher.totals["requests"] == 2  # a new batch asks again
    with pytest.raises(RemoteRewardError, match=r"HTTP 422: entity: 1 entities for 2 completions"):
        remote.score(["a", "b"], ["x"])
    remote.close()


def test_client_retries_then_names_the_server():
    from bench.common import free_port

    remote = RemoteRewards(f"http://127.0.0.1:{free_port()}", retries=1, backoff=0.01, timeout=2)
    with pytest.raises(RemoteRewardError, match=r"failed after 2 tries: ConnectError"):
        remote.score(["x"], "e")


def test_completion_from_query_needs_the_prompt_or_a_marker():
    assert completion_from_query("<|im_start|>assistant\n<answer>好</answer><|im_end|>\n<|endoftext|>") == "<answer>好</answer>"
    with pytest.raises(QueryError, match="no known assistant marker"):
        completion_from_query("just text", prompt="another prompt")


def test_cli_parses_serve():
    from lib.cli import build_parser

    args = build_parser().parse_args(["serve", "--profile", "smoke", "--port", "9001", "--max-wait-ms", "5"])
    assert (args.command, args.profile, args.host, args.port, args.max_wait_ms) == ("serve", "smoke", "127.0.0.1", 9001, 5.0)
