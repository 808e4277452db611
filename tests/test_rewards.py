"""lib.rewards: the original's format reward, the judge rewards of a JudgeRewards (with a fake judge), optional rewards."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lib.rewards import (
    REWARD_NAMES,
    JudgeRewards,
    RewardError,
    completion_text,
    diversity_reward,
    extract_answer,
    extract_think,
    format_reward,
    reward_funcs,
    tag_count_reward,
)
from lib.rubric import load_rubric
from tests.fakes import HIT, MISS, KeywordJudge

# (completion, expected format reward), each worked out by hand.
# Clauses: re.split("[。？，！]", part) keeps empty pieces; r = (#think clauses found among answer clauses) / #think clauses;
# reward = 0.5 + 0.5 * (1 - r) when the format holds, else 0.
FORMAT_CASES = [
    # think ["我先分析需求"], answer ["可乐快乐加倍"]: nothing shared, r=0 -> 1.0
    ("<think>我先分析需求</think><answer>可乐快乐加倍</answer>", 1.0),
    # think ["我先分析需求", ""], answer ["可乐", "快乐加倍", ""]: the empty piece is shared, r=1/2 -> 0.75
    ("<think>我先分析需求。</think><answer>可乐，快乐加倍！</answer>", 0.75),
    # missing </answer>: no match -> 0
    ("<think>我先分析需求</think><answer>可乐快乐加倍", 0.0),
    # missing the think part entirely -> 0
    ("<answer>可乐快乐加倍</answer>", 0.0),
    # an extra tag between the parts is not whitespace -> 0
    ("<think>想一想</think><b><answer>喝可乐</answer>", 0.0),
    # a tag inside the think: its '>' breaks [^>]+ -> 0
    ("<think>想<b>一想</b></think><answer>喝可乐</answer>", 0.0),
    # nested think tags: '>' inside the think part -> 0
    ("<think>想<think>再想</think></think><answer>喝可乐</answer>", 0.0),
    # wrong order -> 0
    ("<answer>喝可乐</answer><think>想一想</think>", 0.0),
    # one whitespace between the parts: allowed, r=0 -> 1.0
    ("<think>想一想</think>\n<answer>喝可乐</answer>", 1.0),
    # two whitespace characters: allowed -> 1.0
    ("<think>想一想</think> \n<answer>喝可乐</answer>", 1.0),
    # \r\n is two whitespace characters -> 1.0
    ("<think>想一想</think>\r\n<answer>喝可乐</answer>", 1.0),
    # three whitespace characters: \s{,2} fails -> 0
    ("<think>想一想</think>\n\n\n<answer>喝可乐</answer>", 0.0),
    # an ideographic space is \s in Python's unicode regex -> 1.0
    ("<think>想一想</think>\u3000<answer>喝可乐</answer>", 1.0),
    # one trailing newline: re.match's $ matches before it -> 1.0
    ("<think>想一想</think><answer>喝可乐</answer>\n", 1.0),
    # two trailing newlines -> 0
    ("<think>想一想</think><answer>喝可乐</answer>\n\n", 0.0),
    # text after </answer> -> 0
    ("<think>想一想</think><answer>喝可乐</answer>完", 0.0),
    # leading space before <think> -> 0
    (" <think>想一想</think><answer>喝可乐</answer>", 0.0),
    # empty think: [^>]+ needs one character -> 0
    ("<think></think><answer>喝可乐</answer>", 0.0),
    # empty answer -> 0
    ("<think>想一想</think><answer></answer>", 0.0),
    # whitespace-only think passes the original's check: think [" "], answer ["喝可乐"], r=0 -> 1.0
    ("<think> </think><answer>喝可乐</answer>", 1.0),
    # '>' inside the answer's content -> 0
    ("<think>想一想</think><answer>快乐>悲伤</answer>", 0.0),
    # '<' without '>' inside the think: the tag scan reads "<b</think>" as tag "b</think" -> invalid -> 0
    ("<think>a <b 想</think><answer>喝可乐</answer>", 0.0),
    # two answer blocks: the first </answer> puts '>' inside the answer part -> 0
    ("<think>想一想</think><answer>喝</answer><answer>可乐</answer>", 0.0),
    # upper-case tags do not match -> 0
    ("<THINK>想一想</THINK><ANSWER>喝可乐</ANSWER>", 0.0),
    # think ["买可乐", "喝可乐"], answer ["喝可乐"]: 1 of 2 repeated, r=0.5 -> 0.75
    ("<think>买可乐，喝可乐</think><answer>喝可乐</answer>", 0.75),
    # think ["为什么", "因为好喝"], answer ["因为好喝"]: r=1/2 -> 0.75 (full-width ？ splits)
    ("<think>为什么？因为好喝</think><answer>因为好喝</answer>", 0.75),
    # answer copies the think: ["喝可乐", "真快乐"] both repeated, r=1 -> 0.5
    ("<think>喝可乐，真快乐</think><answer>喝可乐，真快乐</answer>", 0.5),
    # multiplicity: think ["好", "好", "好", "新"], answer ["好"]: r=3/4 -> 0.5 + 0.5*0.25 = 0.625
    ("<think>好，好，好，新</think><answer>好</answer>", 0.625),
    # think ["一", "二", "三", ""], answer ["四", ""]: only the empty piece shared, r=1/4 -> 0.875
    ("<think>一。二。三。</think><answer>四。</answer>", 0.875),
    # ASCII comma does not split: think ["a,b"], answer ["a"], r=0 -> 1.0
    ("<think>a,b</think><answer>a</answer>", 1.0),
    # the prompt's own example is well-formed: think ["这里写下你的思考过程"], answer ["这里写下你的广告文案"], r=0 -> 1.0
    ("<think>这里写下你的思考过程</think><answer>这里写下你的广告文案</answer>", 1.0),
]


@pytest.mark.parametrize("text, expected", FORMAT_CASES)
def test_format_reward_hand_cases(text, expected):
    assert format_reward([text]) == [pytest.approx(expected)]


def test_format_reward_conversational_and_batch():
    texts = [t for t, _ in FORMAT_CASES]
    conv = [[{"role": "assistant", "content": t}] for t in texts]
    expected = [pytest.approx(e) for _, e in FORMAT_CASES]
    assert format_reward(texts) == expected
    assert format_reward(conv, entity=["x"] * len(conv), prompts=["p"] * len(conv)) == expected


def test_completion_text_forms():
    assert completion_text("abc") == "abc"
    assert completion_text([{"role": "assistant", "content": "abc"}]) == "abc"
    assert completion_text([{"role": "assistant", "content": [{"type": "text", "text": "ab"}, {"type": "text", "text": "c"}]}]) == "abc"
    assert completion_text([]) == "" and completion_text(None) == ""
    with pytest.raises(RewardError, match="must be a string or a list"):
        completion_text(42)


@pytest.mark.parametrize(
    "text, think, answer",
    [
        ("<think>想</think><answer>喝</answer>", "想", "喝"),
        ("<think>想</think>\n<answer>喝", "想", "喝"),  # unclosed answer still extracted
        # no </think>: the think is the whole text; the answer is what follows the LAST <answer>
        ("<answer>一</answer><answer>二</answer>", "<answer>一</answer><answer>二</answer>", "二"),
        ("没有标签", "没有标签", "没有标签"),  # no tags: both are the whole text (the original's behaviour)
        ("<think>a</think>b</think>", "a", "<think>a</think>b</think>"),  # no <answer>: everything
        ("<think>a<think>b</think>", "ab", "<think>a<think>b</think>"),  # every <think> removed
    ],
)
def test_extract(text, think, answer):
    assert extract_think(text) == think
    assert extract_answer(text) == answer


# --- judge rewards -------------------------------------------------------------------------------

THINK_OK = "首先，我需要分析可乐的目标用户和品牌定位，然后构思文案。"  # 28 chars, mentions 可乐
GOOD = f"<think>{THINK_OK}</think><answer>可乐哈哈，一口清凉！</answer>"
OFF_TOPIC = f"<think>{THINK_OK}</think><answer>今天天气不错。</answer>"


@pytest.fixture
def answer_judge():
    # gates: fluency, is_ad sure; relevancy HIT/MISS by the entity; humor by "哈哈"; detail, creativity 0.5
    return KeywordJudge(rules={"fluency": 1.0, "is_ad": 1.0, "humor": "哈哈", "detail": 0.5, "creativity": 0.5})


def test_no_judge_raises_one_line():
    with pytest.raises(RewardError, match=r"no judge; build one with lib\.judge\.engine\.build_judge") as exc:
        JudgeRewards(None)
        assert "\n" not in str(exc.value)


def test_answer_soft_scores(answer_judge):
    jr = JudgeRewards(answer_judge)
    got = jr.answer_quality_reward([GOOD, OFF_TOPIC], entity=["可乐", "可乐"])
    # GOOD: gate 1*1*0.9 = 0.9; plausible (0.9 + 0.5 + 0.5)/3 = 0.63333 + 0.05 = 0.68333; 0.9 * 0.68333 = 0.615
    # OFF_TOPIC: gate 0.1; plausible (0.1 + 0.5 + 0.5)/3 = 0.36667 + 0.05 = 0.41667; 0.041667
    assert got == [pytest.approx(0.615), pytest.approx(0.1 * (1.1 / 3 + 0.05))]
    assert answer_judge.calls == [("answer", ["可乐", "可乐"], ["可乐哈哈，一口清凉！", "今天天气不错。"])]


def test_answer_hard_mode(answer_judge):
    answer_judge.mode = "hard"
    jr = JudgeRewards(answer_judge)
    # GOOD: every P(yes) >= 0.5 -> all 1 -> 1 * min(1.05, 1) = 1; OFF_TOPIC: relevancy 0.1 < 0.5 -> 0
    assert jr.answer_quality_reward([GOOD, OFF_TOPIC], entity=["可乐", "可乐"]) == [1.0, 0.0]


def test_seed_mode_absent_plausible_items_count_zero(answer_judge):
    answer_judge.mode = "seed"
    jr = JudgeRewards(answer_judge)
    assert jr.answer_quality_reward([OFF_TOPIC, GOOD], entity="可乐") == [0.0, 1.0]
    off, good = jr.details["answer"]
    assert set(off["items"]) == {"fluency", "is_ad", "relevancy"}  # plausible never asked
    assert set(good["items"]) == {"fluency", "is_ad", "relevancy", "humor", "detail", "creativity"}


def test_entity_list_alignment(answer_judge):
    jr = JudgeRewards(answer_judge)
    a = "<think>x</think><answer>可乐哈哈</answer>"
    b = "<think>x</think><answer>雪碧哈哈</answer>"
    aligned = jr.answer_quality_reward([a, b], entity=["可乐", "雪碧"])
    swapped = jr.answer_quality_reward([a, b], entity=["雪碧", "可乐"])
    # aligned: relevancy 0.9 each -> 0.615 each; swapped: relevancy 0.1 -> 0.1 * 0.68333 = 0.068333
    assert aligned == [pytest.approx(0.615)] * 2
    assert swapped == [pytest.approx(0.1 * (1.9 / 3 + 0.05))] * 2
    with pytest.raises(RewardError, match="1 entities for 2 completions"):
        jr.answer_quality_reward([a, b], entity=["可乐"])
    with pytest.raises(RewardError, match="'entity' column"):
        jr.answer_quality_reward([a, b])


def test_conversational_input_equals_plain(answer_judge):
    jr = JudgeRewards(answer_judge)
    conv = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": OFF_TOPIC}]]
    assert jr.answer_quality_reward(conv, entity=["可乐"] * 2) == jr.answer_quality_reward([GOOD, OFF_TOPIC], entity=["可乐"] * 2)


def test_think_shortcuts_skip_the_judge():
    judge = KeywordJudge(default=1.0)
    jr = JudgeRewards(judge)
    texts = [
        "<think>这里写下你的思考过程</think><answer>可乐</answer>",  # placeholder
        "<think>想一想</think><answer>可乐</answer>",  # 3 chars < 20
        GOOD,
    ]
    got = jr.think_quality_reward(texts, entity=["可乐"] * 3)
    # GOOD's think: every item 1 (questions with {entity}: 可乐 occurs -> HIT 0.9)
    # gates 1; plausible (10 * 1 + 2 * 0.9) / 12 = 0.98333 + 0.05 -> capped 1
    assert got == [0.0, 0.0, 1.0]
    assert judge.calls == [("think", ["可乐"], [THINK_OK])]
    reasons = [d["shortcut"] for d in jr.details["think"]]
    assert reasons == ["placeholder", "too_short", None]
    assert jr.stats["think"]["shortcut"] == 2 and jr.stats["think"]["judged"] == 1


def test_think_all_shortcut_never_calls_judge():
    judge = KeywordJudge()
    jr = JudgeRewards(judge)
    assert jr.think_quality_reward(["<think>短</think><answer>a</answer>", "这里写下你的思考过程"], entity="可乐") == [0.0, 0.0]
    assert judge.calls == []


def test_empty_answer_skips_the_judge(answer_judge):
    jr = JudgeRewards(answer_judge)
    got = jr.answer_quality_reward(["<think>x</think><answer>  \n</answer>", "<think>x</think><answer></answer>", GOOD], entity="可乐")
    assert got == [0.0, 0.0, pytest.approx(0.615)]
    assert [d["shortcut"] for d in jr.details["answer"]] == ["empty", "empty", None]
    assert len(answer_judge.calls) == 1 and answer_judge.calls[0][2] == ["可乐哈哈，一口清凉！"]


def test_last_details_and_flagged_counts():
    judge = KeywordJudge(rules={"fluency": 1.0, "is_ad": 1.0, "humor": None, "detail": 0.2, "creativity": 0.8})
    jr = JudgeRewards(judge)
    got = jr.answer_quality_reward([GOOD], entity=["可乐"])
    # humor flagged -> 0.5 in soft mode; gate 0.9; plausible (0.5 + 0.2 + 0.8)/3 = 0.5 + 0.05 = 0.55; 0.495
    assert got == [pytest.approx(0.495)]
    (d,) = jr.details["answer"]
    assert d["score"] == got[0] and d["entity"] == "可乐" and d["shortcut"] is None
    assert d["n_flagged"] == 1
    assert d["items"]["humor"] == {"p_yes": None, "verdict": False, "flagged": True}
    assert d["items"]["relevancy"] == {"p_yes": HIT, "verdict": True, "flagged": False}
    assert jr.stats["answer"]["flagged"] == 1
    jr.answer_quality_reward([GOOD, GOOD], entity="可乐")
    assert len(jr.details["answer"]) == 2  # only the last call is kept
    assert jr.stats["answer"]["flagged"] == 3 and jr.stats["answer"]["completions"] == 3


def test_each_object_holds_its_own_judge_and_rubric(answer_judge):
    other = JudgeRewards(KeywordJudge(default=0.0))
    heldout = load_rubric("heldout")
    jr = JudgeRewards(answer_judge, heldout)
    got = jr.answer_quality_reward([GOOD], entity=["可乐"])
    assert other.answer_quality_reward([GOOD], entity=["可乐"]) == [0.0]  # the other object's judge says no
    assert other.details["answer"][0]["score"] == 0.0 and jr.details["answer"][0]["score"] == got[0]
    assert got == [pytest.approx(0.615)]  # same keys, so the same rules apply to the reworded questions
    assert answer_judge.calls[0][0] == "answer"


def test_judge_returning_wrong_length_is_an_error():
    class Broken(KeywordJudge):
        def judge_section(self, section, entities, texts):
            return []

    jr = JudgeRewards(Broken())
    with pytest.raises(RewardError, match="returned 0 results for 1 texts"):
        jr.answer_quality_reward([GOOD], entity=["可乐"])


def test_rubric_defaults_to_default_rubric(answer_judge):
    jr = JudgeRewards(answer_judge)
    assert jr.rubric.content_hash == load_rubric().content_hash


# --- one batch for a step's think and answer checklists ------------------------------------------

STEP = [  # a mix: judged in both sections, think shortcuts, an empty answer, off topic, a repeated completion
    GOOD,
    OFF_TOPIC,
    "<think>想一想</think><answer>可乐好喝哈哈</answer>",  # think too short: only the answer is judged
    f"<think>{THINK_OK}</think><answer> </answer>",  # empty answer: only the think is judged
    "<think>这里写下你的思考过程</think><answer></answer>",  # nothing judged
    GOOD,
]
STEP_ENTITIES = ["可乐", "雪碧", "可乐", "可乐", "可乐", "可乐"]


def _step_judge():
    return KeywordJudge(rules={"fluency": 1.0, "is_ad": 0.7, "humor": "哈哈", "detail": 0.4, "is_think": "分析",
                               "depth": None, "reflection": lambda e, t: 0.3 if e in t else 0.6})


def _run_step(jr, names=("format", "think", "answer")):
    """The rewards of one training step as TRL computes them: each named reward on the same completions."""
    out = {}
    for name, func in zip(names, reward_funcs(names, jr)):
        out[name] = func(STEP, entity=STEP_ENTITIES, prompts=["p"] * len(STEP))
    return out, {n: list(jr.details[n]) for n in ("think", "answer")}, {n: dict(jr.stats[n]) for n in ("think", "answer")}


@pytest.mark.parametrize("order", [("format", "think", "answer"), ("answer", "format", "think")])
def test_one_batch_gives_the_same_rewards(order):
    before_judge = _step_judge()
    jr = JudgeRewards(before_judge)  # no sections: each reward judges its own section, one judge call each
    before = _run_step(jr, order)
    assert before_judge.batches == [["think"], ["answer"]] if order[1] == "think" else [["answer"], ["think"]]

    judge = _step_judge()
    jr = JudgeRewards(judge, sections=order)
    after = _run_step(jr, order)
    assert after == before  # rewards per completion, details and stats all equal
    first = [n for n in order if n != "format"]
    assert judge.batches == [first]  # one batch: both checklists of the step
    judged = {name: texts for name, _, texts in judge.calls}
    assert judged == {name: texts for name, _, texts in before_judge.calls}
    assert len(judged["think"]) == len(judged["answer"]) == 4  # the shortcuts still skip the judge
    assert after[0]["think"][4] == after[0]["answer"][4] == 0.0


def test_one_batch_with_the_engine_same_rewards_half_the_engine_calls():
    from lib.judge import JudgeEngine
    from lib.profiles import JudgeConfig
    from tests.test_judge import FakeBackend

    def p_yes(prompt):  # a fixed judge: P(yes) from the prompt's content
        return 0.15 + (sum(map(ord, prompt)) % 71) / 100

    backends = {}
    results = []
    for sections in ((), ("think", "answer")):
        backends[sections] = backend = FakeBackend(p_yes=p_yes)
        jr = JudgeRewards(JudgeEngine(backend, JudgeConfig()), sections=sections)
        results.append(_run_step(jr))
    assert results[0] == results[1]
    assert all(0 < v < 1 for v in results[0][0]["answer"][:2])
    assert len(backends[()].calls) == 4 and len(backends[("think", "answer")].calls) == 2  # warm-up + rest, once
    sent = [sorted(p for _, batch in b.calls for p in batch) for b in backends.values()]
    assert sent[0] == sent[1]  # the same prompts, only batched together


def test_only_the_configured_sections_are_judged_ahead():
    judge = _step_judge()
    jr = JudgeRewards(judge, sections=["format", "think"])  # train.reward_weights without `answer`
    jr.think_quality_reward(STEP, entity=STEP_ENTITIES)
    assert judge.batches == [["think"]] and [c[0] for c in judge.calls] == ["think"]
    assert jr._ahead == {}
    jr.answer_quality_reward(STEP, entity=STEP_ENTITIES)  # still works on its own when called
    assert judge.batches == [["think"], ["answer"]]


def test_judged_ahead_only_for_the_same_completions():
    judge = _step_judge()
    jr = JudgeRewards(judge, sections=["think", "answer"])
    jr.think_quality_reward(STEP, entity=STEP_ENTITIES)
    other = [GOOD, OFF_TOPIC]
    got = jr.answer_quality_reward(other, entity=["雪碧", "雪碧"])  # not the completions judged ahead
    assert judge.batches == [["think", "answer"], ["answer", "think"]]
    reference = _step_judge()
    jr = JudgeRewards(reference)
    assert got == jr.answer_quality_reward(other, entity=["雪碧", "雪碧"])
    # other entities for the same texts are another call too
    jr = JudgeRewards(judge, sections=["think", "answer"])
    judge.batches.clear()
    jr.think_quality_reward(STEP, entity=STEP_ENTITIES)
    jr.answer_quality_reward(STEP, entity=["雪碧"] * len(STEP))
    assert judge.batches == [["think", "answer"], ["answer", "think"]]


def test_two_objects_do_not_share_what_was_judged_ahead():
    first, second = _step_judge(), KeywordJudge(default=0.0)
    a = JudgeRewards(first, sections=["think", "answer"])
    b = JudgeRewards(second, sections=["think", "answer"])
    b.think_quality_reward(STEP, entity=STEP_ENTITIES)  # b judges answer ahead, for b only
    a.answer_quality_reward(STEP, entity=STEP_ENTITIES)  # a's own judge: not what b judged ahead
    assert second.batches == [["think", "answer"]] and first.batches == [["answer", "think"]]
    assert a.stats["think"]["completions"] == 0 and b.stats["answer"]["completions"] == 0


def test_names_and_registry():
    jr = JudgeRewards(KeywordJudge())
    assert [f.__name__ for f in (format_reward, jr.think_quality_reward, jr.answer_quality_reward)] == [
        "format_reward",
        "think_quality_reward",
        "answer_quality_reward",
    ]
    assert set(REWARD_NAMES) == {"format", "think", "answer", "diversity", "tag_count", "substance", "overlong",
                                 "relative", "relative_base"}
    from lib.reward_names import FUNC_NAMES, RELATIVE_REWARDS

    plain = [n for n in REWARD_NAMES if n not in RELATIVE_REWARDS]  # relative judging needs an engine: test_reward_designs
    assert {n: f.__name__ for n, f in zip(plain, reward_funcs(plain, jr))} == {n: FUNC_NAMES[n] for n in plain}
    assert reward_funcs(["format", "answer"], jr) == [format_reward, jr.answer_quality_reward]
    assert reward_funcs(["format", "tag_count"]) == [format_reward, tag_count_reward]  # rule rewards need no judge
    with pytest.raises(RewardError, match="unknown reward 'style'"):
        reward_funcs(["style"])
    with pytest.raises(RewardError, match="'think' needs a judge"):
        reward_funcs(["format", "think"])


def test_build_reward_functions_from_a_profile():
    from lib.profiles import load_profile
    from lib.rewards import build_reward_functions

    p = load_profile("smoke", overrides={"train": {"reward_weights": {"tag_count": 0.3, "think": 2.0, "format": 0.5}}})
    judge = KeywordJudge()
    funcs, weights = build_reward_functions(p, judge)  # the profile's own JudgeRewards on `judge`
    assert [f.__name__ for f in funcs] == ["tag_count_reward", "think_quality_reward", "format_reward"]
    assert weights == [0.3, 2.0, 0.5]
    jr = funcs[1].__self__
    assert isinstance(jr, JudgeRewards) and jr.judge is judge and funcs[2] is format_reward
    seen = []
    build_reward_functions(p, judge, wrap=lambda name, f: seen.append((name, f.__name__)) or f)
    assert seen == [("tag_count", "tag_count_reward"), ("think", "think_quality_reward"), ("format", "format_reward")]
    rules_only = load_profile("smoke", overrides={"train": {"reward_weights": {"format": 1.0}}})
    assert build_reward_functions(rules_only) == ([format_reward], [1.0])  # rule rewards need no judge
    with pytest.raises(RewardError, match="rewards think need a judge"):
        build_reward_functions(p)


# --- optional rewards ----------------------------------------------------------------------------

def test_diversity_reward_hand_cases():
    a = "<answer>可乐真好喝呀</answer>"  # 4-grams {可乐真好, 乐真好喝, 真好喝呀}
    b = "<answer>可乐真好喝吗</answer>"  # 4-grams {可乐真好, 乐真好喝, 真好喝吗}
    c = "<answer>雪碧透心凉</answer>"  # 4-grams {雪碧透心, 碧透心凉}: shares nothing
    assert diversity_reward([a, b]) == [pytest.approx(1 / 3)] * 2
    assert diversity_reward([a, b, c]) == [pytest.approx(1 / 3), pytest.approx(1 / 3), 1.0]
    assert diversity_reward([a, a]) == [0.0, 0.0]  # identical answers: nothing new
    assert diversity_reward([a]) == [1.0]  # alone in its group
    assert diversity_reward(["<answer>短</answer>", a]) == [0.0, 1.0]  # no 4-gram -> 0
    # grouped by prompt: a and b in different groups no longer overlap
    assert diversity_reward([a, b], prompts=["p1", "p2"]) == [1.0, 1.0]
    # the entity is removed first: a minus "可乐" is "真好喝呀" -> {真好喝呀}; b minus "可乐" -> {真好喝吗}
    assert diversity_reward([a, b], entity=["可乐", "可乐"]) == [1.0, 1.0]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>a</think><answer>b</answer>", 1.0),
        ("<think>a</think><answer>b", 0.75),  # no </answer>
        ("<think>a</think><think>b</think><answer>c</answer>", 0.5),  # think tags twice
        ("plain text", 0.0),
        ("</answer><answer></think><think>", 1.0),  # counts only, not order
    ],
)
def test_tag_count_reward(text, expected):
    assert tag_count_reward([text]) == [expected]


# --- property: nothing crashes, everything in [0, 1] -------------------------------------------

TAG_SOUP = st.lists(
    st.one_of(
        st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "<", ">", "</", "。", "，", "？", "！", "\n", " ",
                         "这里写下你的", "可乐", "{question}", "{entity}", "<b>"]),
        st.text(max_size=8),
    ),
    max_size=20,
).map("".join)
TEXTS = st.one_of(st.text(max_size=200), TAG_SOUP)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(TEXTS, min_size=1, max_size=4), entity=st.text(max_size=5), conversational=st.booleans())
def test_rewards_never_crash_and_stay_in_unit_interval(texts, entity, conversational):
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    jr = JudgeRewards(KeywordJudge(rules={"humor": None, "detail": "可乐"}))
    ents = [entity] * len(texts)
    outs = {
        "format": format_reward(completions, entity=ents),
        "tag_count": tag_count_reward(completions),
        "diversity": diversity_reward(completions, entity=ents),
        "think": jr.think_quality_reward(completions, entity=ents),
        "answer": jr.answer_quality_reward(completions, entity=ents),
    }
    for name, vals in outs.items():
        assert len(vals) == len(texts), name
        assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in vals), (name, vals)
