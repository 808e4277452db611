"""lib.judge.engine on the real tokenizers of the judges (loaded from the local cache, no model, no vLLM):
the answer tokens of 是/否 and what seed mode sends."""
from __future__ import annotations

import pytest

from lib.judge.engine import JudgeEngine
from lib.profiles import JudgeConfig
from lib.rubric import load_rubric

TOKENIZERS = ("qwen2.5-coder-0.5b-instruct", "gemma3-270m")


@pytest.fixture(scope="module", params=TOKENIZERS)
def tokenizer(request):
    from lib.models import load_tokenizer

    return request.param, load_tokenizer(request.param)


class PromptRecorder:
    """A backend that only records the prompts seed mode generates from (every answer: 是)."""

    def __init__(self, tokenizer):
        self.tokenizer, self.max_model_len, self.prompts = tokenizer, 4096, []

    def generate(self, prompts, max_tokens):
        self.prompts += prompts
        return [("是", 1, 1) for _ in prompts]

    def close(self):
        pass


def test_seed_mode_sends_what_the_original_sent(tokenizer):
    name, tok = tokenizer
    section = load_rubric()["answer"]
    backend = PromptRecorder(tok)
    JudgeEngine(backend, JudgeConfig(), mode="seed").judge_section(section, ["椰子水"], ["椰子水，喝一口就是海边。"])
    filled = section.render("椰子水", "椰子水，喝一口就是海边。", section.items[0])
    first = backend.prompts[0]
    if name.startswith("qwen"):
        # rm_server.py: apply_chat_template([{"role": "system", "content": filled}]): no default system prompt, no user turn
        assert first == f"<|im_start|>system\n{filled}<|im_end|>\n<|im_start|>assistant\n"
    else:  # Gemma 3's template drops a lone system message: the text goes in the user turn it would have joined
        assert filled in first and first.startswith("<bos><start_of_turn>user\n")


def _decoding_to(tok, words) -> list[int]:
    """Brute force: every vocabulary id whose token decodes to one of `words`, whitespace stripped."""
    ids = sorted(tok.get_vocab().values())
    return [i for i, text in zip(ids, tok.batch_decode([[i] for i in ids])) if text.strip() in words]


KNOWN = {  # (yes ids, no ids) as these tokenizers spell them: 是, ' 是' / 否, 不是 (and Gemma's '▁不是')
    "qwen2.5-coder-0.5b-instruct": ([20412, 54851], [32376, 99520]),
    "gemma3-270m": ([32002, 237026], [11533, 195934, 238627]),
}


def test_answer_token_ids_are_every_token_that_decodes_to_the_answer(tokenizer):
    from lib.judge.backends import NO_ALSO, NO_WORD, YES_WORD
    from lib.judge.engine import answer_token_ids

    name, tok = tokenizer
    yes, yes_multi = answer_token_ids(tok, YES_WORD)
    no, no_multi = answer_token_ids(tok, NO_WORD, also=NO_ALSO)
    assert not yes_multi and not no_multi
    assert yes == _decoding_to(tok, {YES_WORD})
    assert no == _decoding_to(tok, {NO_WORD, *NO_ALSO})
    assert (yes, no) == KNOWN[name]
