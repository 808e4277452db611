"""lib.judge (types, backends, engine) without a real model: P(yes) math, answer tokens, batching, modes, bad inputs.

A fake backend with a tiny character-level tokenizer stands in for vLLM; the transformers backend runs on a
tiny random model built from a config (seconds, no weights).
"""
from __future__ import annotations

import math
import time

import pytest

from lib.judge import Judgement
from lib.judge.backends import NO_ALSO, JudgeError, OpenAIBackend, YesNo, build_backend, p_yes_from_logprobs
from lib.judge.engine import (
    PAD_TEXT, SEED_BATCH, SEED_MAX_TOKENS, TRUNCATION_MARK, JudgeEngine, answer_token_ids, prefix_pad, seed_verdict,
    single_token_id,
)
from lib.profiles import JudgeConfig
from lib.rubric import RubricError, parse_rubric

TEMPLATE = "关于{entity}：{completion}\n问：{question}"
RUBRIC = {
    "answer": {"template": TEMPLATE, "items": [
        {"key": "good", "type": "must-have", "question": "好吗？"},
        {"key": "rel", "type": "must-have", "question": "与{entity}相关？"},
        {"key": "fun", "type": "plausible", "question": "有趣？"},
        {"key": "detail", "type": "plausible", "question": "细节？"},
    ]},
    "think": {"template": TEMPLATE, "items": [{"key": "is_think", "type": "must-have", "question": "是思考？"}]},
}


class FakeTokenizer:
    """Character-level: every character is one token (ids assigned on first sight), a few two-character pieces
    ("▁是") are single tokens, and characters in `byte_chars` split into UTF-8 byte tokens like SmolLM2's 否."""

    chat_template = "fake"  # any non-empty template: the engine then calls apply_chat_template

    def __init__(self, pieces=("是", "▁是", "否", "▁否"), byte_chars: str = ""):
        self.vocab: dict[str, int] = {}
        self.byte_chars = byte_chars
        for p in pieces:
            self._id(p)

    def _id(self, piece: str) -> int:
        return self.vocab.setdefault(piece, len(self.vocab))

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        text = text.replace(" ", "▁")
        ids, i = [], 0
        while i < len(text):
            two = text[i:i + 2]
            if len(two) == 2 and two in self.vocab:
                ids.append(self.vocab[two])
                i += 2
            elif text[i] in self.byte_chars:
                ids += [self._id(f"<0x{b:02X}>") for b in text[i].encode("utf-8")]
                i += 1
            else:
                ids.append(self._id(text[i]))
                i += 1
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        inv = {v: k for k, v in self.vocab.items()}
        return "".join(inv[i] for i in ids).replace("▁", " ")

    def get_vocab(self) -> dict[str, int]:
        return dict(self.vocab)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        assert not tokenize and add_generation_prompt
        tag = {"user": "u", "system": "s"}[messages[0]["role"]]
        return f"<{tag}>{messages[0]['content']}</{tag}><m>"


class FakeBackend:
    """A `Backend` whose answers follow rules on the prompt; it records every call and checks prompts fit."""

    def __init__(self, p_yes=lambda prompt: 0.8, answer=lambda prompt: "是", max_model_len: int = 4096, tokenizer=None):
        self.tokenizer = tokenizer or FakeTokenizer()
        self.max_model_len = max_model_len
        self.p_yes, self.answer = p_yes, answer
        self.calls: list[tuple[str, list[str]]] = []
        self.prefix_block_size = None  # no prefix cache (BlockCacheBackend has one)

    def _n(self, prompt, extra: int = 0) -> int:
        n = len(prompt) if isinstance(prompt, list) else len(self.tokenizer.encode(prompt))
        assert n + extra <= self.max_model_len, f"prompt of {n} tokens (+{extra}) exceeds {self.max_model_len}"
        return n

    def yes_no(self, prompts):
        self.calls.append(("yes_no", list(prompts)))
        out = []
        for p in prompts:
            n, v = self._n(p, 1), self.p_yes(p)
            out.append(YesNo(v, 0.0 if v is None else 1.0, n, n))
        return out

    def generate(self, prompts, max_tokens):
        assert max_tokens == SEED_MAX_TOKENS
        self.calls.append(("generate", list(prompts)))
        return [(self.answer(p), self._n(p, max_tokens), self._n(p, max_tokens)) for p in prompts]

    def close(self):
        pass


@pytest.fixture(scope="module")
def rubric():
    return parse_rubric(RUBRIC, source="test")


@pytest.fixture
def section(rubric):
    return rubric["answer"]


def engine(backend, mode="soft", **cfg) -> JudgeEngine:
    return JudgeEngine(backend, JudgeConfig(**cfg), mode=mode)


def question_of(prompt: str) -> str:
    return prompt.split("问：", 1)[1].removesuffix("</u><m>").removesuffix("</s><m>")


# ----------------------------------------------------------------------------------------------- P(yes)


def test_p_yes_sums_variants_and_normalizes():
    lp = {1: math.log(0.2), 4: math.log(0.1), 2: math.log(0.1), 3: math.log(0.5)}
    p, mass = p_yes_from_logprobs(lp, yes_ids=[1, 4], no_ids=[2])
    assert p == pytest.approx(0.75) and mass == pytest.approx(0.4)
    assert p_yes_from_logprobs({1: math.log(0.3)}, [1], [2]) == (pytest.approx(1.0), pytest.approx(0.3))
    assert p_yes_from_logprobs({2: math.log(0.3)}, [1], [2])[0] == 0.0


def test_neither_answer_seen_is_none_and_flagged(section):
    p, mass = p_yes_from_logprobs({3: -0.1, 5: -3.0}, [1], [2])
    assert p is None and mass == 0.0
    judge = engine(FakeBackend(p_yes=lambda prompt: None if "有趣" in prompt else 0.9))
    res = judge.judge_section(section, ["可乐"], ["可乐真好喝"])[0]
    fun = res["fun"]
    assert fun.flagged and fun.p_yes is None and not fun.verdict
    assert fun.indicator("soft") == 0.5 and fun.indicator("hard") == 0.0  # counted as a coin flip, and logged
    assert not res["good"].flagged and res["good"].indicator("soft") == pytest.approx(0.9)
    assert judge.stats.flagged == 1
    assert [e["flagged"] for e in judge.log if e["key"] == "fun"] == [True]


def test_seed_verdict_parsing():
    assert seed_verdict("是") and not seed_verdict("否") and not seed_verdict("否。")
    assert seed_verdict("不是")  # the original's quirk: no 否 in the text means yes
    assert seed_verdict("")  # an empty answer is a yes too
    assert seed_verdict("The answer")


# ----------------------------------------------------------------------------------------------- answer tokens


def test_answer_token_ids_single_token_variants():
    tok = FakeTokenizer()
    ids, multi = answer_token_ids(tok, "是")
    assert not multi and sorted(ids) == sorted([tok.vocab["是"], tok.vocab["▁是"]])
    assert all(tok.decode([i]).strip() == "是" for i in ids)
    judge = engine(FakeBackend(tokenizer=tok))
    assert not judge.multi_token_answers and set(judge.yes_ids).isdisjoint(judge.no_ids)


def test_answer_token_ids_multi_token_fallback():
    tok = FakeTokenizer(pieces=("是",), byte_chars="否")
    ids, multi = answer_token_ids(tok, "否")
    assert multi and ids == [tok.encode("否")[0]] and len(tok.encode("否")) == 3
    assert engine(FakeBackend(tokenizer=tok)).multi_token_answers


class ByteLevelTokenizer:
    """Byte-level BPE like Qwen's: pieces are byte strings ('æĺ¯' is 是, 'Ġ' a space, 'Ċ' a line break); greedy
    longest-match encoding over the pieces' texts, so "\n是" (one piece) is not what "是" or " 是" encode to."""

    chat_template = None
    PIECES = {"是": "æĺ¯", " 是": "Ġæĺ¯", "\n是": "Ċæĺ¯", "是的": "æĺ¯çļĦ", "否": "åĲ¦", " 否": "ĠåĲ¦", "不是": "ä¸įæĺ¯",
              "不": "ä¸į", " ": "Ġ", "\n": "Ċ", "好": "å¥½"}

    def __init__(self):
        self.vocab = {piece: i for i, piece in enumerate(self.PIECES.values())}
        self.text = {i: t for i, t in enumerate(self.PIECES)}

    def encode(self, text, add_special_tokens=False):
        ids, i = [], 0
        while i < len(text):
            t = max((t for t in self.PIECES if text.startswith(t, i)), key=len)
            ids.append(self.vocab[self.PIECES[t]])
            i += len(t)
        return ids

    def decode(self, ids, skip_special_tokens=False):
        return "".join(self.text[i] for i in ids)

    def get_vocab(self):
        return dict(self.vocab)


def test_answer_token_ids_find_byte_level_pieces():
    tok = ByteLevelTokenizer()
    ids, multi = answer_token_ids(tok, "是")
    # "\n是" is found in the vocabulary only by its byte-level spelling; 是的 and 不是 contain it but are not it
    assert not multi and ids == sorted(tok.vocab[p] for p in ("æĺ¯", "Ġæĺ¯", "Ċæĺ¯"))
    no_ids, _ = answer_token_ids(tok, "否", also=NO_ALSO)
    assert no_ids == sorted(tok.vocab[p] for p in ("åĲ¦", "ĠåĲ¦", "ä¸įæĺ¯"))  # 不是 ("is not") counts as no
    assert answer_token_ids(tok, "否")[0] == sorted(tok.vocab[p] for p in ("åĲ¦", "ĠåĲ¦"))


def test_a_multi_token_no_keeps_its_fallback_beside_a_single_token_negation():
    tok = FakeTokenizer(pieces=("是", "不是"), byte_chars="否")
    ids, multi = answer_token_ids(tok, "否", also=NO_ALSO)
    assert multi and ids == sorted([tok.encode("否")[0], tok.vocab["不是"]])
    judge = engine(FakeBackend(tokenizer=tok), also_no=list(NO_ALSO))
    assert tok.vocab["不是"] in judge.no_ids and set(judge.yes_ids).isdisjoint(judge.no_ids)
    assert tok.vocab["不是"] not in engine(FakeBackend(tokenizer=tok)).no_ids  # the original's rule unless asked


def test_judgements_carry_the_yes_no_mass(section):
    masses = iter([0.9, 0.4, 0.7, 0.2] * 3)

    class MassBackend(FakeBackend):
        def yes_no(self, prompts):
            return [YesNo(0.8, next(masses), 1, 1) for _ in prompts]

    judge = JudgeEngine(MassBackend(), JudgeConfig(), warm_prefix=False)
    res = judge.judge_section(section, ["可乐"], ["文案"])[0]
    assert [j.mass for j in res.values()] == [0.9, 0.4, 0.7, 0.2]
    assert [e["mass"] for e in judge.log] == [0.9, 0.4, 0.7, 0.2]
    seed = engine(FakeBackend(), mode="seed").judge_section(section, ["可乐"], ["文案"])[0]
    assert all(j.mass is None for j in seed.values())  # seed mode generates text: no probabilities


def test_answer_token_ids_unencodable_word():
    class Empty(FakeTokenizer):
        def encode(self, text, add_special_tokens=False):
            return []

    with pytest.raises(JudgeError, match="cannot encode"):
        answer_token_ids(Empty(pieces=()), "否")


# ----------------------------------------------------------------------------------------------- batching


def test_soft_mode_two_backend_calls_first_questions_first(section):
    backend = FakeBackend()
    texts = ["甲文案", "乙文案", "丙文案"]
    judge = engine(backend)
    res = judge.judge_section(section, ["可乐"] * 3, texts)
    assert len(backend.calls) == 2 and all(kind == "yes_no" for kind, _ in backend.calls)
    first, rest = backend.calls[0][1], backend.calls[1][1]
    assert len(first) == 3 and len(rest) == 3 * 3
    for text, prompt in zip(texts, first):  # one prompt per text, each text's first question: warms its prefix
        assert text in prompt and question_of(prompt) == "好吗？"
    assert all(question_of(p) != "好吗？" for p in rest)
    assert [set(r) for r in res] == [set(section.keys)] * 3
    assert judge.stats.requests == judge.stats.unique_prompts == 12


def test_results_follow_their_text_and_question(section):
    def rule(prompt):  # P(yes) identifies the text and the question it was asked about
        return (0.1 if "甲" in prompt else 0.6) + 0.01 * section.keys.index(
            next(it.key for it in section.items if question_of(prompt) == section.question("可乐", it)))

    res = engine(FakeBackend(p_yes=rule)).judge_section(section, ["可乐", "可乐"], ["甲", "乙"])
    for i, base in enumerate((0.1, 0.6)):
        for j, key in enumerate(section.keys):
            assert res[i][key].p_yes == pytest.approx(base + 0.01 * j)
            assert res[i][key].question == section.question("可乐", section.items[j])


def test_duplicates_are_judged_once(section):
    backend = FakeBackend()
    judge = engine(backend)
    res = judge.judge_section(section, ["可乐", "雪碧", "可乐"], ["同一段", "同一段", "同一段"])
    sent = [p for _, batch in backend.calls for p in batch]
    assert len(sent) == len(set(sent)) == 2 * len(section.items)
    assert judge.stats.requests == 12 and judge.stats.unique_prompts == 8 < judge.stats.requests
    assert {k: j.p_yes for k, j in res[0].items()} == {k: j.p_yes for k, j in res[2].items()}


def test_without_warm_prefix_one_call(section):
    backend = FakeBackend()
    JudgeEngine(backend, JudgeConfig(), warm_prefix=False).judge_section(section, ["a", "b"], ["x", "y"])
    assert len(backend.calls) == 1 and len(backend.calls[0][1]) == 8


def test_chat_template_wraps_every_prompt(section):
    backend = FakeBackend()
    engine(backend).judge_section(section, ["可乐"], ["文案"])
    for _, batch in backend.calls:
        for p in batch:
            assert p.startswith("<u>关于可乐：文案\n问：") and p.endswith("</u><m>")


# ----------------------------------------------------------------------------------------------- block prefix cache


class BlockCacheBackend(FakeBackend):
    """A FakeBackend with a prefix cache that, like vLLM's, reuses whole KV blocks only: a prompt computes every
    token after its longest cached whole-block prefix (at least its last token); a call's blocks are cached after
    the call (requests sent together share nothing). Token-id prompts are decoded, filler spaces removed (the
    test prompts have no spaces of their own), for the P(yes) rule."""

    def __init__(self, block: int = 8, **kw):
        super().__init__(**kw)
        self.prefix_block_size = block
        self.cached: set[tuple[int, ...]] = set()

    def yes_no(self, prompts):
        self.calls.append(("yes_no", list(prompts)))
        out, new, b = [], set(), self.prefix_block_size
        for p in prompts:
            ids = p if isinstance(p, list) else self.tokenizer.encode(p)
            self._n(ids, 1)
            hit = 0
            while hit + b < len(ids) and tuple(ids[: hit + b]) in self.cached:
                hit += b
            new |= {tuple(ids[:k]) for k in range(b, len(ids) + 1, b)}
            v = self.p_yes(unpadded(self, p))
            out.append(YesNo(v, 1.0, len(ids), len(ids) - hit))
        self.cached |= new
        return out


def unpadded(backend, prompt) -> str:
    return backend.tokenizer.decode(prompt).replace(PAD_TEXT, "") if isinstance(prompt, list) else prompt


def test_prefix_pad_rule():
    assert prefix_pad(70, 6, 32) == 26  # 5 recomputations of a 6-token partial block (30) cost more than 26 pad tokens
    assert prefix_pad(65, 6, 32) == 0  # 31 pad tokens to save 5 x 1
    assert prefix_pad(64, 14, 32) == 0 and prefix_pad(70, 1, 32) == 0  # aligned already; a single question
    assert prefix_pad(17, 3, 16) == 0 and prefix_pad(30, 3, 16) == 2


def test_single_token_id():
    tok = FakeTokenizer()
    assert single_token_id(tok, PAD_TEXT) == tok.vocab["▁"]
    assert single_token_id(tok, "ab") is None and single_token_id(tok, "") is None


@pytest.mark.parametrize("mode", ["soft", "hard"])
def test_aligned_prefix_same_prompts_and_answers(rubric, mode):
    texts = ["可乐真好喝，快乐加倍", "一口清凉", "甲乙丙丁戊己庚辛壬癸"]

    def rule(prompt):  # P(yes) identifies text and question; a filler left in the prompt would change it
        return 0.3 + 0.01 * len(prompt) if PAD_TEXT not in prompt else 0.0

    plain = engine(FakeBackend(p_yes=rule), mode=mode)
    aligned_backend = BlockCacheBackend(block=8, p_yes=rule)
    aligned = engine(aligned_backend, mode=mode, prefix_pad=True)
    jobs = [(rubric["answer"], ["可乐"] * 3, texts), (rubric["think"], ["可乐"] * 3, texts)]
    want = plain.judge_sections(jobs)
    got = aligned.judge_sections(jobs)
    assert [[{k: (j.p_yes, j.verdict) for k, j in r.items()} for r in res] for res in got] == \
           [[{k: (j.p_yes, j.verdict) for k, j in r.items()} for r in res] for res in want]
    sent = [p for _, batch in aligned_backend.calls for p in batch]
    plain_sent = [p for _, batch in plain.backend.calls for p in batch]
    assert [unpadded(aligned_backend, p) for p in sent] == plain_sent  # the same prompts, fillers aside
    padded = [p for p in sent if isinstance(p, list) and aligned.pad_id in p]
    assert padded  # some answer prefixes end mid-block and have enough questions to be worth padding
    tok = aligned_backend.tokenizer
    for ids in padded:  # the fillers follow the text, and the prefix shared by the questions ends on a block boundary
        first, last = ids.index(aligned.pad_id), len(ids) - 1 - ids[::-1].index(aligned.pad_id)
        assert ids[first:last + 1] == [aligned.pad_id] * (last + 1 - first)
        assert tok.decode(ids[:first]).endswith(tuple(texts)) and tok.decode(ids[last + 1:]).startswith("\n问：")
        head = len(tok.encode(tok.decode(ids).split("问：")[0] + "问："))
        assert head % 8 == 0


def test_aligned_prefix_computes_each_prefix_once(rubric):
    from bench.cli import min_prompt_tokens

    section = rubric["answer"]
    texts = [f"第{i}段文案" + "好" * i for i in range(8)]
    computed, pads = {}, {}
    for align in (False, True):
        backend = BlockCacheBackend(block=8)
        judge = JudgeEngine(backend, JudgeConfig(), align_prefix=align)
        judge.judge_section(section, ["可乐"] * 8, texts)
        computed[align] = judge.stats.prompt_tokens
        firsts = backend.calls[0][1]  # each text's first question: its pad counted once
        pads[align] = sum(p.count(judge.pad_id) for p in firsts if isinstance(p, list))
    tok = backend.tokenizer
    minimum = min_prompt_tokens(tok.encode, [[judge.chat(section.render("可乐", t, it)) for it in section.items] for t in texts])
    assert pads[False] == 0 and pads[True] > 0
    # per text, beyond the minimum: its pad, or (when padding would cost more) the partial block once per extra question
    partial = [len(tok.encode("<u>" + section.prefix("可乐", t))) % 8 for t in texts]
    worst = sum(min((8 - r) % 8, r * (len(section.items) - 1)) for r in partial)
    assert pads[True] == sum((8 - r) % 8 for r in partial if (8 - r) % 8 < r * 3)
    assert computed[True] <= minimum + worst < computed[False]


def test_seed_mode_and_backends_without_block_cache_are_not_padded(rubric):
    backend = BlockCacheBackend(block=8)
    engine(backend, mode="seed").judge_section(rubric["answer"], ["可乐"], ["可乐真好喝，快乐加倍"])
    assert all(isinstance(p, str) for _, batch in backend.calls for p in batch)  # the original's prompts, as text
    plain = FakeBackend()  # no prefix_block_size
    engine(plain).judge_section(rubric["answer"], ["可乐"], ["可乐真好喝，快乐加倍"])
    assert all(isinstance(p, str) for _, batch in plain.calls for p in batch)


def test_prefix_pad_is_opt_in_and_unpadded_prompts_go_as_text(rubric):
    # off by default: a backend with a block prefix cache gets the plain prompts, as every other backend does
    backend = BlockCacheBackend(block=8)
    judge = engine(backend)
    assert judge.pad_id is None
    judge.judge_section(rubric["answer"], ["可乐"] * 2, ["可乐真好喝，快乐加倍", "一口清凉"])
    assert all(isinstance(p, str) for _, batch in backend.calls for p in batch)
    # on, a text whose prefix is not worth padding is sent as text too (not as separately tokenized pieces)
    backend = BlockCacheBackend(block=64, max_model_len=74)
    judge = engine(backend, prefix_pad=True)
    assert judge.pad_id is not None
    judge.judge_section(rubric["answer"], ["可乐"], ["想" * 30])  # padded to the 64-token block it would not fit
    assert all(isinstance(p, str) for _, batch in backend.calls for p in batch)


def test_padding_never_overflows_the_context(rubric):
    # a 30-character text: prompts of 51-54 tokens; padded to the 64-token block they would need 74-77 (+1 answer)
    for max_len, padded in ((74, False), (80, True)):
        backend = BlockCacheBackend(block=64, max_model_len=max_len)  # every prompt must fit (FakeBackend._n asserts it)
        judge = engine(backend, prefix_pad=True)
        res = judge.judge_section(rubric["answer"], ["可乐"], ["想" * 30])
        assert set(res[0]) == set(rubric["answer"].keys) and not any(j.truncated for j in res[0].values())
        assert any(isinstance(p, list) and judge.pad_id in p for _, batch in backend.calls for p in batch) == padded


def test_judge_sections_one_batch_same_results(rubric):
    jobs = [(rubric["answer"], ["可乐", "雪碧"], ["甲文案", "乙文案"]), (rubric["think"], ["可乐"], ["我想一想"])]
    rule = lambda prompt: 0.2 + 0.01 * (sum(map(ord, prompt)) % 50)
    one = FakeBackend(p_yes=rule)
    together = engine(one).judge_sections(jobs)
    apart = [engine(FakeBackend(p_yes=rule)).judge_section(*job) for job in jobs]
    assert together == apart
    assert len(one.calls) == 2  # the warm-up pass (each text's first question) and the rest, for both sections
    assert len(one.calls[0][1]) == 3 and len(one.calls[1][1]) == 2 * 3
    with pytest.raises(JudgeError, match="1 entities for 2 texts"):
        engine(one).judge_sections([(rubric["answer"], ["可乐"], ["甲", "乙"])])


# ----------------------------------------------------------------------------------------------- modes


def test_hard_mode_threshold(section):
    p = {"好吗？": 0.69, "与可乐相关？": 0.7, "有趣？": 0.71, "细节？": 0.2}
    judge = engine(FakeBackend(p_yes=lambda prompt: p[question_of(prompt)]), mode="hard", threshold=0.7)
    res = judge.judge_section(section, ["可乐"], ["文案"])[0]
    assert {k: j.verdict for k, j in res.items()} == {"good": False, "rel": True, "fun": True, "detail": False}
    assert res["rel"].indicator("hard") == 1.0 and res["good"].indicator("hard") == 0.0
    assert res["good"].p_yes == pytest.approx(0.69)  # the soft number is kept


def test_seed_mode_must_have_first_then_plausible_of_passing_texts(section):
    texts = [f"文案{i}" + ("差" if i % 3 == 0 else "") for i in range(10)]  # 0, 3, 6, 9 fail "good"
    answer = lambda prompt: "否" if "差" in prompt and question_of(prompt) == "好吗？" else "是"
    backend = FakeBackend(answer=answer)
    judge = engine(backend, mode="seed")
    res = judge.judge_section(section, ["可乐"] * 10, texts)
    assert all(kind == "generate" and 1 <= len(batch) <= SEED_BATCH for kind, batch in backend.calls)
    sent = [p for _, batch in backend.calls for p in batch]
    must = {"好吗？", "与可乐相关？"}
    n_must = 2 * 10
    assert all(question_of(p) in must for p in sent[:n_must])  # every must-have question before any plausible one
    assert all(question_of(p) not in must for p in sent[n_must:])
    assert len(sent) == n_must + 2 * 6  # plausible only for the 6 texts that passed
    for i, r in enumerate(res):
        if i % 3 == 0:
            assert set(r) == {"good", "rel"} and not r["good"].verdict and r["good"].raw == "否"
        else:
            assert set(r) == set(section.keys) and all(j.verdict and j.p_yes == 1.0 for j in r.values())
    assert judge.stats.requests == len(sent)


def test_seed_mode_sends_the_template_as_a_lone_system_message(section):
    backend = FakeBackend()
    engine(backend, mode="seed").judge_section(section, ["可乐"], ["文案"])
    sent = [p for _, batch in backend.calls for p in batch]
    assert sent and all(p.startswith("<s>关于可乐：文案\n问：") and p.endswith("</s><m>") for p in sent)
    soft = FakeBackend()
    engine(soft, mode="soft").judge_section(section, ["可乐"], ["文案"])
    assert all(p.startswith("<u>") for _, batch in soft.calls for p in batch)


def test_seed_mode_falls_back_to_a_user_turn_where_a_lone_system_message_is_dropped(section):
    class DropsSystem(FakeTokenizer):
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
            text = "".join(f"<u>{m['content']}</u>" for m in messages if m["role"] != "system")
            return text + "<m>"

    backend = FakeBackend(tokenizer=DropsSystem())
    engine(backend, mode="seed").judge_section(section, ["可乐"], ["文案"])
    assert all(p.startswith("<u>关于可乐：文案") for _, batch in backend.calls for p in batch)


# ----------------------------------------------------------------------------------------------- bad inputs


def test_empty_text_is_judged(section):
    backend = FakeBackend()
    res = engine(backend).judge_section(section, ["可乐"], [""])
    assert set(res[0]) == set(section.keys) and not any(j.truncated for j in res[0].values())
    assert backend.calls[0][1][0].startswith("<u>关于可乐：\n问：")


@pytest.mark.parametrize("mode", ["soft", "seed"])
def test_long_text_is_cut_from_the_middle(section, mode):
    backend = FakeBackend(max_model_len=120)  # FakeBackend asserts that every prompt (+ generated tokens) fits
    text = "甲" * 300 + "乙" * 300
    judge = engine(backend, mode=mode)
    res = judge.judge_section(section, ["可乐", "可乐"], [text, "短文"])
    assert all(j.truncated for j in res[0].values()) and not any(j.truncated for j in res[1].values())
    for _, batch in backend.calls:
        for p in batch:
            if "甲" in p:
                body = p.split("：", 1)[1].split("\n问：")[0]
                assert body.startswith("甲") and body.endswith("乙") and TRUNCATION_MARK in body
                assert len(body) < len(text)
    assert judge.stats.truncated == len(res[0])


def test_context_too_small_for_the_template(section):
    with pytest.raises(JudgeError, match="max_model_len=20"):
        engine(FakeBackend(max_model_len=20)).judge_section(section, ["可乐"], ["文案"])


def test_template_error_at_load():
    bad = {**RUBRIC, "answer": {**RUBRIC["answer"], "template": "关于{entity}：请回答{question}"}}
    with pytest.raises(RubricError, match=r"section 'answer': template has no \{completion\}"):
        parse_rubric(bad, source="bad.yaml")


def test_judge_answering_neither_is_counted(section):
    judge = engine(FakeBackend(p_yes=lambda prompt: None))
    res = judge.judge_section(section, ["可乐", "雪碧"], ["一", "二"])
    assert all(j.flagged and j.p_yes is None for r in res for j in r.values())
    assert judge.stats.flagged == 8


def test_entities_texts_length_mismatch(section):
    with pytest.raises(JudgeError, match="2 entities for 1 texts"):
        engine(FakeBackend()).judge_section(section, ["可乐", "雪碧"], ["一"])


def test_backend_without_tokenizer():
    backend = FakeBackend()
    backend.tokenizer = None
    with pytest.raises(JudgeError, match="no tokenizer"):
        engine(backend)


def test_unreachable_endpoint_fails_fast_naming_it():
    cfg = JudgeConfig(backend="openai", base_url="http://127.0.0.1:9/v1")  # nothing listens on port 9 (discard)
    t0 = time.perf_counter()
    with pytest.raises(JudgeError, match=r"http://127\.0\.0\.1:9/v1 unreachable after 2 tries"):
        OpenAIBackend("some-model", cfg, retries=1, timeout=2.0)
    assert time.perf_counter() - t0 < 10


def test_openai_backend_needs_base_url():
    with pytest.raises(JudgeError, match="base_url"):
        build_backend(JudgeConfig(backend="openai"))


def test_judgement_indicator_modes():
    j = Judgement(key="k", question="q", p_yes=0.3, verdict=False)
    assert j.indicator("soft") == 0.3 and j.indicator("hard") == 0.0 and j.indicator("seed") == 0.0


# ----------------------------------------------------------------------------------------------- transformers backend


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """A random 2-layer Llama with a character-level tokenizer saved like a real model (no weights downloaded)."""
    torch = pytest.importorskip("torch")
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    chars = sorted(set("".join(str(v) for sec in RUBRIC.values() for v in (sec["template"], *[i["question"] for i in sec["items"]]))
                       + "是否可乐雪碧甲乙文案短一二三好喝<>/umabcdefghijklmnopqrstuvwxyz"))
    vocab = {"<unk>": 0, "<pad>": 1, "<eos>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
    d = tmp_path_factory.mktemp("tiny-llama")
    LlamaForCausalLM(cfg).save_pretrained(d)
    tok.save_pretrained(d)
    return d


@pytest.mark.parametrize("scoring", ["restricted", "topk"])
def test_transformers_backend_batched_equals_alone(tiny_model_dir, section, scoring):
    from lib.judge.backends import TransformersBackend

    cfg = JudgeConfig(backend="transformers", answer_scoring=scoring, top_logprobs=40, batch_size=4, max_model_len=256)
    backend = TransformersBackend(str(tiny_model_dir), cfg)
    judge = JudgeEngine(backend, cfg)
    texts = ["可乐好喝", "雪碧" * 20, "一二三", "甲"]
    batched = judge.judge_section(section, ["可乐"] * 4, texts)
    for i, text in enumerate(texts):  # alone: no padding; batched: left padding must not change P(yes)
        alone = JudgeEngine(backend, cfg, warm_prefix=False).judge_section(section, ["可乐"], [text])[0]
        for key in section.keys:
            a, b = alone[key].p_yes, batched[i][key].p_yes
            assert (a is None) == (b is None)
            if a is not None:
                assert 0.0 <= a <= 1.0 and a == pytest.approx(b, abs=1e-4), (text, key)
    if scoring == "restricted":
        assert judge.stats.flagged == 0
    out = backend.generate([judge.chat(section.render("可乐", "文案", section.items[0]))], SEED_MAX_TOKENS)
    assert isinstance(out[0][0], str) and out[0][1] == out[0][2] > 0


def test_long_entity_and_long_text_still_fit():
    items = [{"key": "long", "type": "must-have", "question": "这个问题的文字比另一个问题长得多吗？"},
             {"key": "ent", "type": "must-have", "question": "像{entity}吗？"}]  # shorter until the entity is filled in
    section = parse_rubric({**RUBRIC, "answer": {"template": TEMPLATE, "items": items}})["answer"]
    backend = FakeBackend(max_model_len=140)  # asserts that every prompt fits
    res = engine(backend).judge_section(section, ["超长的产品名称" * 6], ["文" * 500])
    assert all(j.truncated for j in res[0].values())


def test_transformers_backend_keeps_only_last_logits(tiny_model_dir, section):
    """Full logits would be batch x length x vocabulary floats: 80 GB for 256 Gemma prompts of 300 tokens."""
    from lib.judge.backends import TransformersBackend

    cfg = JudgeConfig(backend="transformers", answer_scoring="restricted", batch_size=8)
    backend = TransformersBackend(str(tiny_model_dir), cfg)
    model, shapes = backend.model, []

    def spy(**kwargs):
        out = model(**kwargs)
        shapes.append(tuple(out.logits.shape))
        return out

    backend.model = spy
    JudgeEngine(backend, cfg).judge_section(section, ["可乐"] * 2, ["可乐好喝", "雪碧" * 10])
    assert shapes and all(s[1] == 1 for s in shapes), shapes


def test_openai_helpers():
    from types import SimpleNamespace

    from lib.judge.backends import tokenizer_source, usage_per_prompt

    assert tokenizer_source("qwen2.5-7b-instruct-awq") == "Qwen/Qwen2.5-7B-Instruct-AWQ"  # registry name -> hub id
    assert tokenizer_source("/some/local/dir") == "/some/local/dir"
    usage = SimpleNamespace(prompt_tokens=600, prompt_tokens_details=SimpleNamespace(cached_tokens=240))
    assert usage_per_prompt(usage, 6) == (100, 60)
    assert usage_per_prompt(SimpleNamespace(prompt_tokens=600, prompt_tokens_details=None), 6) == (100, 100)
    assert usage_per_prompt(None, 0) == (0, 0)
