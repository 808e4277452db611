"""lib.judge.backends.OpenAIBackend against a stand-in OpenAI-compatible server (stdlib HTTP, in a thread): the
server gets the same token ids the in-process backends score, and `answer_scoring: restricted` asks vLLM's
`logprob_token_ids` extension for exactly the 是/否 ids (or fails in one line where the server lacks it).
The real `vllm serve` is not started here; the cross-backend numbers are in tests/test_judge_backends_real.py."""
from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from lib.judge.backends import JudgeError, OpenAIBackend
from lib.judge.engine import JudgeEngine
from lib.profiles import JudgeConfig
from lib.rubric import load_rubric

MODEL = "gemma3-270m"  # its tokenizer is local (the materialized smoke model); its template writes <bos>


class Server:
    """Answers /v1/models and /v1/completions; P(是)=0.3, P(否)=0.1 among the returned logprobs."""

    def __init__(self, extension: bool = True):
        self.requests: list[dict] = []
        self.extension = extension
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body: dict):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0, "owned_by": "x"}]})

            def do_POST(self):
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(req)
                ids = req.get("logprob_token_ids")
                if ids and not outer.extension:
                    return self._send(400, {"error": {"message": "Unrecognized request argument: logprob_token_ids",
                                                      "type": "invalid_request_error", "code": 400}})
                if ids:  # vLLM: logprobs of exactly those ids, keyed "token_id:N" with return_tokens_as_token_ids
                    top = {f"token_id:{ids[0]}": math.log(0.3), f"token_id:{ids[-1]}": math.log(0.1)}
                else:
                    top = {"是": math.log(0.3), "否": math.log(0.1), "好": math.log(0.5)}
                choices = [{"index": i, "text": "是", "finish_reason": "length",
                            "logprobs": {"tokens": ["是"], "token_logprobs": [math.log(0.3)], "top_logprobs": [top],
                                         "text_offset": [0]}} for i in range(len(req["prompt"]))]
                self._send(200, {"id": "c", "object": "text_completion", "created": 0, "model": MODEL, "choices": choices,
                                 "usage": {"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


def _judge(url: str, **cfg) -> JudgeEngine:
    c = JudgeConfig(model=MODEL, backend="openai", base_url=url, **cfg)
    return JudgeEngine(OpenAIBackend(MODEL, c, retries=0, timeout=10), c)


def test_openai_backend_sends_the_token_ids_the_other_backends_score(server):
    judge = _judge(server.url)
    section = load_rubric()["answer"]
    res = judge.judge_section(section, ["椰子水"], ["椰子水，喝一口就是海边。"])
    assert all(abs(j.p_yes - 0.75) < 1e-9 for j in res[0].values())
    tok = judge.backend.tokenizer
    want = [tok.encode(judge.chat(section.render("椰子水", "椰子水，喝一口就是海边。", it)), add_special_tokens=False)
            for it in section.items]
    sent = [p for r in server.requests for p in r["prompt"]]
    assert sorted(sent) == sorted(want)  # token ids, not text: the server adds no second <bos>
    assert all(ids.count(tok.bos_token_id) == 1 for ids in sent)
    assert all("logprob_token_ids" not in r for r in server.requests)


def test_openai_backend_restricted_asks_for_the_yes_no_ids(server):
    judge = _judge(server.url, answer_scoring="restricted")
    res = judge.judge_section(load_rubric()["answer"], ["椰子水"], ["椰子水，喝一口就是海边。"])
    assert all(abs(j.p_yes - 0.75) < 1e-9 and abs(j.mass - 0.4) < 1e-9 and not j.flagged for j in res[0].values())
    req = server.requests[-1]
    assert req["logprob_token_ids"] == judge.yes_ids + judge.no_ids and req["return_tokens_as_token_ids"] is True


def test_openai_backend_restricted_on_a_server_without_the_extension_fails_in_one_line():
    s = Server(extension=False)
    try:
        judge = _judge(s.url, answer_scoring="restricted")
        with pytest.raises(JudgeError, match="answered HTTP 400") as exc:
            judge.judge_section(load_rubric()["answer"], ["椰子水"], ["椰子水，喝一口就是海边。"])
        assert "\n" not in str(exc.value)
    finally:
        s.close()
