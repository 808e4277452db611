"""lib.eval.winrate: the pairwise win rate of a trained model against its base (a fake A/B judge stands in for the
model), and the content diagnostics of lib.eval.tables (entity mention, copy ratio, part lengths)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lib.eval import winrate
from lib.eval.generation import eval_rows
from lib.eval.tables import copy_ratio, diagnostics, diagnostics_table, entity_mentioned, prompt_text
from lib.judge.engine import JudgeEngine
from lib.judge.pairwise import PairResult
from lib.profiles import JudgeConfig, load_profile
from lib.rubric import load_rubric
from tests.test_judge import FakeBackend
from tests.test_reward_designs import PAIR, ABBackend, longer


def ad(answer: str, think: str = "想" * 30) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


@pytest.fixture
def rubric():
    return load_rubric()


def _setup(k: int = 2, greedy: bool = True):
    """10 prompts: the trained answer is longer for 7, as long (other text) for 1, shorter for 2 (every sample)."""
    ents = [f"产品{i}" for i in range(10)]
    rows = eval_rows(pd.DataFrame({"entity": ents, "prompt": ents}), samples=k, greedy=greedy)
    base, grpo = [], []
    for e in rows["entity"]:
        i = int(e[2:])
        base.append(ad("好" * 4))
        grpo.append(ad("好" * 8 if i < 7 else ("妙" * 4 if i == 7 else "好" * 2)))
    return rows, {"base": base, "grpo": grpo}


def test_longer_preferring_judge_gives_the_known_win_rate(rubric):
    rows, comps = _setup(k=2)
    backend = ABBackend(longer, bias=0.05)  # P(A) 0.9 for the longer text, plus 0.05 for being option A
    table, pairs, why = winrate.pairwise_winrate(comps, rows, {"grpo": "base"}, JudgeEngine(backend, JudgeConfig()),
                                                 rubric, n_resamples=500)
    assert why == "" and len(pairs) == 30  # 10 prompts x (2 samples + greedy)
    assert table["independent"].str.startswith("no:").all()  # the training judge's model: not independent
    s = table[table["decoding"] == "sample"].iloc[0]
    assert (s["n"], s["k"], s["base"]) == (10, 2, "base")
    assert s["win_rate"] == pytest.approx((7 + 0.5) / 10)  # ties count 0.5
    assert (s["wins"], s["ties"], s["losses"], s["flagged"]) == (14, 2, 4, 0)
    assert s["p_win"] == pytest.approx((7 * 0.9 + 0.5 + 2 * 0.1) / 10)  # the bias cancels: (0.95 + 1 - 0.15) / 2
    assert s["position_bias"] == pytest.approx(0.05)
    assert s["win_rate_lo"] < s["win_rate"] < s["win_rate_hi"] and 0 <= s["win_rate_lo"] and s["win_rate_hi"] <= 1
    g = table[table["decoding"] == "greedy"].iloc[0]
    assert (g["n"], g["k"]) == (10, 1) and g["win_rate"] == pytest.approx(0.75)
    # both orders asked, in one batch per trained model; identical (prompt, order) pairs once
    prompts = [p for kind, ps in backend.calls if kind == "yes_no" for p in ps]
    orders = {(m["a"], m["b"]) for m in map(PAIR.search, prompts)}
    assert ("好" * 8, "好" * 4) in orders and ("好" * 4, "好" * 8) in orders
    assert len(prompts) == 2 * 10  # a prompt's 3 rows hold the same pair here: judged once per order
    res = winrate.winrate_results(table)
    assert res["eval.winrate.grpo"] == pytest.approx(0.75) and res["eval.winrate.grpo_lo"] < 0.75
    assert set(res) == {"eval.winrate.grpo", "eval.winrate.grpo_lo", "eval.winrate.grpo_hi",
                        "eval.winrate.grpo_position_bias", "eval.winrate.grpo_greedy", "eval.winrate.grpo_greedy_lo",
                        "eval.winrate.grpo_greedy_hi"}


def test_pairs_match_prompt_sample_and_decoding():
    rows = eval_rows(pd.DataFrame({"entity": ["a", "b"], "prompt": ["a", "b"]}), samples=2, greedy=True)
    comps = {"base": [f"<answer>base{i}</answer>" for i in range(6)], "t": [f"<answer>t{i}</answer>" for i in range(6)]}

    class Record:
        def compare(self, entities, xs, ys):
            self.seen = list(zip(entities, xs, ys))
            return [PairResult(1.0, 1.0, 0.0) for _ in xs]

    rec = Record()
    pairs = winrate.compare_pairs(comps, rows, {"t": "base"}, rec)
    assert rec.seen == [(e, f"t{i}", f"base{i}") for i, e in enumerate(rows["entity"])]  # answers of the same row
    assert list(zip(pairs["decoding"], pairs["sample"])) == list(zip(rows["decoding"], rows["sample"]))


def test_flagged_pairs_are_ties_and_counted(rubric):
    rows, comps = _setup(k=1, greedy=False)
    backend = ABBackend(longer)
    backend.p_yes = lambda prompt: None  # the judge gives A/B no mass anywhere
    table, pairs, _ = winrate.pairwise_winrate(comps, rows, {"grpo": "base"}, JudgeEngine(backend, JudgeConfig()),
                                               rubric, n_resamples=100)
    r = table.iloc[0]
    assert r["win_rate"] == 0.5 and (r["ties"], r["flagged"]) == (10, 10) and math.isnan(r["position_bias"])
    assert (r["win_rate_lo"], r["win_rate_hi"]) == (0.5, 0.5)

    class NoneJudge:  # a comparer that returns no result for a pair
        def compare(self, entities, xs, ys):
            return [None] * len(xs)

    p = winrate.compare_pairs(comps, rows, {"grpo": "base"}, NoneJudge())
    assert p["outcome"].eq(0.5).all() and p["flagged"].all()


def test_interval_covers_the_true_win_rate():
    """Per-prompt win probabilities ~ Beta(7, 3) (true win rate 0.7), 2 samples each: the 95% interval over prompts
    covers 0.7 in about 95% of 200 simulated evaluations."""
    rng = np.random.default_rng(0)
    hits = 0
    reps, n, k = 200, 30, 2
    for rep in range(reps):
        q = rng.beta(7, 3, size=n)
        wins = (rng.random((k, n)) < q).astype(float)
        pairs = pd.DataFrame({"model": "t", "base": "b", "entity": np.tile(np.arange(n), k), "decoding": "sample",
                              "win": wins.ravel() * 0.8 + 0.1, "outcome": wins.ravel(), "position_bias": 0.0,
                              "flagged": False})
        r = winrate.winrate_table(pairs, n_resamples=300, seed=rep).iloc[0]
        hits += r["win_rate_lo"] <= 0.7 <= r["win_rate_hi"]
    assert 0.88 <= hits / reps <= 0.99


def test_skipped_with_a_reason(rubric):
    rows, comps = _setup(k=1, greedy=False)
    eng = JudgeEngine(ABBackend(longer), JudgeConfig())
    assert winrate.pairwise_winrate(comps, rows, {"grpo": "base"}, eng, rubric, enabled=False)[2] == "eval.winrate is false"
    assert "no trained model" in winrate.pairwise_winrate(comps, rows, {}, eng, rubric)[2]

    class NoRelative:
        relative, source = None, "x.yaml"

    assert "no `relative` template" in winrate.pairwise_winrate(comps, rows, {"grpo": "base"}, eng, NoRelative())[2]
    plain = JudgeEngine(FakeBackend(), JudgeConfig())  # no set_answer_ids (the openai backend)
    table, pairs, why = winrate.pairwise_winrate(comps, rows, {"grpo": "base"}, plain, rubric)
    assert table is None and pairs is None and "set_answer_ids" in why
    with pytest.raises(winrate.WinRateError, match="no completions of model 'other'"):
        winrate.compare_pairs(comps, rows, {"other": "base"}, None)


def test_winrate_knob_defaults_on():
    assert all(load_profile(n).eval.winrate for n in ("smoke", "cpu", "gpu"))
    assert load_profile("smoke", {"eval": {"winrate": False}}).eval.winrate is False


# --- content diagnostics (lib.eval.tables) --------------------------------------------------------------


def test_entity_mention_and_copy_ratio_by_hand():
    assert entity_mentioned("可乐", "冰爽可 乐，就喝它") and not entity_mentioned("可乐", "雪碧")
    assert not entity_mentioned("", "任何")
    # 4-grams of 清爽一夏真好: 清爽一夏, 爽一夏真, 一夏真好; only the first is in the reference
    assert copy_ratio("清爽一夏真好", "清爽一夏", n=4) == pytest.approx(1 / 3)
    # the entity's name is cut out on both sides: 可口可乐 in the prompt is no copy
    assert copy_ratio("可口可乐", "请为可口可乐设计", entity="可口可乐") != copy_ratio("可口可乐", "请为可口可乐设计")
    assert math.isnan(copy_ratio("可口可乐", "请为可口可乐设计", entity="可口可乐"))
    assert math.isnan(copy_ratio("短", "短句子"))
    assert "这里写下你的广告文案" in prompt_text(None) and prompt_text("雪碧").endswith("请为雪碧设计一段创意广告文案")


def test_diagnostics_content_keys_by_hand():
    comps = [
        "<think>想一想</think><answer>可乐真好喝啊</answer>",  # names 可乐; 4-grams 真好喝啊 (可乐 cut out): 1, not copied
        "<think>这里写下你的思考过程</think><answer>这里写下你的广告文案</answer>",  # the format example copied
    ]
    d = diagnostics(comps, entities=["可乐", "雪碧"])
    assert d["entity_mention_rate"] == 0.5
    assert d["copy_ratio"] == pytest.approx((0.0 + 1.0) / 2)
    assert d["think_length_chars"] == pytest.approx((3 + 10) / 2)
    assert d["answer_length_chars"] == pytest.approx((6 + 10) / 2)
    old = diagnostics(comps)  # callers without entities: mention rate unknown, copy ratio against the system prompt
    assert math.isnan(old["entity_mention_rate"]) and old["copy_ratio"] == pytest.approx(d["copy_ratio"])
    with pytest.raises(Exception, match="1 entities for 2"):
        diagnostics(comps, entities=["可乐"])
    t = diagnostics_table({"base": comps, "grpo": comps}, entities=["可乐", "雪碧"])
    assert t.loc["grpo", "entity_mention_rate"] == 0.5 and t["independent"].str.startswith("yes").all()
