"""lib.eval.scoring with a keyword judge: per-item scores, details, reuse, judges and model pairs."""
from __future__ import annotations

import pytest

from lib.data import DataError
from lib.eval import scoring
from lib.eval.scoring import (
    ScoringError, base_pairs, before_after, build_cases, find_detail, headline, load_details, save_details,
    score_completions, score_with_reuse, side_by_side,
)
from lib.eval.tables import score_table
from lib.profiles import EvalModel, JudgeConfig, load_profile
from lib.eval.report import case_study_html
from lib.rubric import load_rubric
from tests.fakes import KeywordJudge

GOOD = ("<think>首先分析椰子水的目标受众：运动后想补水的年轻人，卖点是天然电解质和零添加蔗糖。</think>"
        "<answer>椰子水，解渴也解压！</answer>")
BAD = "椰子水好喝"  # no tags: format 0, the think part is the whole (short) text -> shortcut


@pytest.fixture
def rubric():
    return load_rubric()


def test_score_completions_rows_and_details(rubric):
    judge = KeywordJudge()
    per_item, details = score_completions({"base": [BAD, GOOD], "grpo": [GOOD, GOOD]}, ["椰子水", "椰子水"], judge, rubric)
    assert list(per_item.columns) == ["model", "entity", "format", "think", "answer", "judge"]
    assert per_item["model"].tolist() == ["base", "base", "grpo", "grpo"]
    assert (per_item["judge"] == "train").all()
    assert per_item.loc[0, "format"] == 0.0 and per_item.loc[1, "format"] > 0.5
    assert per_item.loc[0, "think"] == 0.0 and details[0]["think_shortcut"] == "too_short"
    assert per_item.loc[1, "think"] > 0 and per_item.loc[1, "answer"] > 0
    # one judge call per section for all models together
    assert [c[0] for c in judge.calls] == ["think", "answer"] and len(judge.calls[0][1]) == 3
    d = details[1]
    assert d["completion"] == GOOD and d["model"] == "base"
    assert [i["key"] for i in d["answer_items"]] == rubric["answer"].keys
    assert all("椰子水" in i["question"] or "{entity}" not in i["question"] for i in d["answer_items"])
    assert d["think_items"] and details[0]["think_items"] == []  # a shortcut asks nothing
    table = score_table(per_item, n_resamples=50)
    assert set(headline(table)) == {f"{m}.{k}" for m in ("base", "grpo") for k in ("format", "think", "answer")}
    assert headline(table, "heldout_")["grpo.heldout_answer"] == pytest.approx(per_item[per_item.model == "grpo"].answer.mean())


def test_score_completions_alignment_error(rubric):
    with pytest.raises(ScoringError, match="'base'"):
        score_completions({"base": [GOOD]}, ["a", "b"], KeywordJudge(), rubric)


def test_details_round_trip_and_reuse(tmp_path, rubric):
    _, details = score_completions({"base": [GOOD]}, ["椰子水"], KeywordJudge(), rubric)
    path = save_details(details, tmp_path / "eval" / "item_scores.jsonl")
    known = load_details(path)
    assert known == details and load_details(tmp_path / "none.jsonl") == []
    assert find_detail(known, "椰子水", GOOD) is not None and find_detail(known, "椰子水", GOOD, judge="heldout") is None

    built = []

    def make_judge():
        built.append(KeywordJudge())
        built[-1].close = lambda: built.append("closed")
        return built[-1]

    by_col, n_new = score_with_reuse({"before": [GOOD]}, ["椰子水"], known, make_judge, rubric)
    assert n_new == 0 and built == [] and by_col["before"][0]["answer_score"] == details[0]["answer_score"]
    by_col, n_new = score_with_reuse({"before": [GOOD], "after": [BAD]}, ["椰子水"], known, make_judge, rubric)
    assert n_new == 1 and built[-1] == "closed" and by_col["after"][0]["format"] == 0.0
    cases = build_cases(["椰子水"], ["请为椰子水设计一段创意广告文案"], by_col)
    page = case_study_html(cases)
    assert "before" in page and "after" in page and "P(yes)" in page

    (tmp_path / "broken.jsonl").write_text('{"a": 1}\n{oops\n')
    with pytest.raises(DataError, match="line 2"):
        load_details(tmp_path / "broken.jsonl")


def test_base_pairs_and_before_after():
    ms = [EvalModel(label="qwen-7b", model="q7"), EvalModel(label="qwen-1.5b", model="q15"),
          EvalModel(label="qwen-1.5b-grpo", model="q15", adapter="run"), EvalModel(label="other", model="x", adapter="/a")]
    assert base_pairs(ms) == {"qwen-1.5b-grpo": "qwen-1.5b", "other": "qwen-7b"}
    assert base_pairs([EvalModel(label="g", model="m", adapter="run")]) == {}
    cols = before_after(ms)
    assert [m.label for m in cols.values()] == ["qwen-7b", "qwen-1.5b-grpo"]
    assert list(before_after(ms[:1])) == ["before RL (qwen-7b)"]
    with pytest.raises(ScoringError):
        before_after([])


def test_side_by_side_columns(rubric):
    per_item, _ = score_completions({"base": [GOOD, BAD]}, ["椰子水", "椰子水"], KeywordJudge(), rubric)
    t = score_table(per_item, n_resamples=50)
    both = side_by_side({"train": t, "heldout": t})
    assert list(both.columns[:4]) == ["n", "train think", "train think_lo", "train think_hi"]  # n: how many prompts
    assert "heldout answer_hi" in both.columns and "train format" not in both.columns


class FakeEngine:
    def __init__(self):
        self.backend = object()
        self.closed = False

    def close(self):
        self.closed = True


def test_heldout_judge_shares_the_engine_when_settings_match(monkeypatch):
    import lib.judge.engine as jb

    made = []
    monkeypatch.setattr(jb, "JudgeEngine", lambda backend, cfg, mode=None: made.append(("shared", backend, mode)) or "ho")
    monkeypatch.setattr(jb, "build_judge", lambda cfg, mode=None, seed=0: made.append(("new", cfg.model, mode)) or "new")
    train = FakeEngine()
    prof = load_profile("smoke")
    assert scoring.heldout_judge(prof, train) == ("ho", True)
    assert made[-1] == ("shared", train.backend, "soft") and not train.closed
    prof.eval.heldout_judge = JudgeConfig(**{**prof.judge.model_dump(), "mode": "hard"})
    assert scoring.heldout_judge(prof, train) == ("ho", True)  # same engine settings, other reading
    assert made[-1][2] == "hard"
    prof.eval.heldout_judge = JudgeConfig(model="qwen2.5-7b-instruct")
    assert scoring.heldout_judge(prof, train) == ("new", False)
    assert made[-1] == ("new", "qwen2.5-7b-instruct", "soft") and train.closed  # never two engines at once


def test_case_prompts_scores_and_inline_view(rubric):
    import pandas as pd

    from lib.data import make_prompt

    test = pd.DataFrame({"entity": ["椰子水", "电动牙刷", "帐篷"], "prompt": [make_prompt(e) for e in ("椰子水", "电动牙刷", "帐篷")]})
    assert scoring.case_prompts(test, n=2)["entity"].tolist() == ["椰子水", "电动牙刷"]
    named = scoring.case_prompts(test, ["帐篷", "滑板"])
    assert named["entity"].tolist() == ["帐篷", "滑板"] and named["prompt"][1] == make_prompt("滑板")

    _, details = score_completions({"base": [GOOD]}, ["椰子水"], KeywordJudge(), rubric)
    scores = scoring.case_scores({"before": details})
    assert scores.columns.tolist() == ["entity", "model", "format", "think", "answer"] and len(scores) == 1
    page = case_study_html(build_cases(["椰子水"], None, {"before": details}))
    view = scoring.inline_case_view(page)
    assert "<body" not in view and "<html" not in view and ".cs-grid{" in view
    assert "body{" not in view and "h1{" not in view and "table{" not in view  # nothing that restyles the notebook
    assert "解渴也解压" in view


def test_format_learned_entities_keeps_test_order_and_the_training_judge():
    import pandas as pd

    from lib.eval.scoring import format_learned_entities

    per_item = pd.DataFrame({
        "model": ["base", "grpo"] * 4 + ["base", "grpo"],
        "entity": ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e"],
        "format": [0, 1.0, 0.5, 1.0, 0, 0, 0, 0.75, 0, 1.0],
        "judge": ["train"] * 8 + ["heldout"] * 2,
    })
    assert format_learned_entities(per_item, "base", "grpo", ["d", "c", "b", "a", "e"], 5) == ["d", "a"]
    assert format_learned_entities(per_item, "base", "grpo", ["a", "d"], 1) == ["a"]
    assert format_learned_entities(per_item, "base", "missing", ["a"], 3) == []


# --- judges' independence (issue 18.3) and samples (18.5) ----------------------------------------------------

def test_judge_independence_from_families():
    from lib.eval.scoring import judge_independence

    gpu = judge_independence(load_profile("gpu"))
    assert gpu["train"]["independent"] is False
    assert gpu["heldout"]["independent"] is True and gpu["heldout"]["family"] != gpu["train"]["family"]
    cpu = judge_independence(load_profile("cpu"))["heldout"]
    assert cpu["independent"] is False and "reworded" in cpu["why"] and "policy's base" in cpu["why"]
    same_family = judge_independence(load_profile("gpu", {"eval": {"heldout_judge": {"model": "qwen2.5-7b-instruct"}}}))
    assert same_family["heldout"]["independent"] is False and "same family (qwen2.5)" in same_family["heldout"]["why"]
    assert "self-preference" in same_family["heldout"]["why"]  # Qwen judges the Qwen policy
    unknown = judge_independence(load_profile("gpu", {"eval": {"heldout_judge": {"model": "/models/other"}}}))
    assert unknown["heldout"]["independent"] is False and "unknown" in unknown["heldout"]["why"]
    told = judge_independence(load_profile("gpu", {"eval": {"heldout_judge": {"model": "/models/glm", "family": "glm4"}}}))
    assert told["heldout"]["independent"] is True


def test_tables_say_which_judge_is_independent(rubric):
    from lib.eval.scoring import judge_independence, with_judge

    info = judge_independence(load_profile("gpu"))
    per_item, details = score_completions({"base": [BAD, GOOD], "grpo": [GOOD, GOOD]}, ["椰子水", "猫砂"], KeywordJudge(),
                                          rubric, extra={"decoding": ["sample", "greedy"], "sample": [0, 0]})
    assert per_item["decoding"].tolist() == ["sample", "greedy"] * 2 and details[1]["decoding"] == "greedy"
    table = score_table(per_item, n_resamples=20, cluster="entity")
    marked = with_judge(table, info["heldout"])
    assert (marked["judge"] == "yi-1.5-9b-chat").all() and marked["independent"].str.startswith("yes: ").all()
    both = side_by_side({"train": table, "heldout": table}, judges=info)
    assert both["train independent"].str.startswith("no: ").all() and both["heldout independent"].str.startswith("yes").all()
    assert list(both.columns[:2]) == ["n", "k"]
    with pytest.raises(ScoringError, match="extra column 'sample'"):
        score_completions({"base": [GOOD]}, ["椰子水"], KeywordJudge(), rubric, extra={"sample": [0, 1]})


def test_format_learned_looks_at_the_sample_the_case_studies_show():
    import pandas as pd

    from lib.eval.scoring import format_learned_entities

    rows = []
    for model, fmt in (("base", {0: 0.0, 1: 1.0, "g": 1.0}), ("grpo", {0: 1.0, 1: 0.0, "g": 0.0})):
        for key, f in fmt.items():
            rows.append({"model": model, "entity": "椰子水", "format": f, "judge": "train",
                         "decoding": "greedy" if key == "g" else "sample", "sample": 0 if key == "g" else key})
    per_item = pd.DataFrame(rows)  # averaged over all rows the format fell; sample 0 went from 0 to 1
    assert format_learned_entities(per_item, "base", "grpo", ["椰子水"], 3) == ["椰子水"]


def test_notebook_04_tables_and_results(rubric):
    import pandas as pd

    from lib.eval.scoring import eval_results, greedy_tables, hacking_flags, sampled_completions

    decoding = {"decoding": ["sample", "sample", "greedy"], "sample": [0, 1, 0]}
    comps = {"base": [BAD, GOOD, BAD], "grpo": [GOOD, GOOD, GOOD]}
    assert sampled_completions(comps, [True, True, False]) == {"base": [BAD, GOOD], "grpo": [GOOD, GOOD]}
    train, _ = score_completions(comps, ["椰子水"] * 3, KeywordJudge(), rubric, judge_name="train", extra=decoding)
    held, _ = score_completions(comps, ["椰子水"] * 3, KeywordJudge(), rubric, judge_name="heldout", extra=decoding)
    greedy = greedy_tables({"train": train, "heldout": held}, n_resamples=20, seed=0)
    assert list(greedy) == ["train", "heldout"] and "format" in greedy["train"] and "format" not in greedy["heldout"]
    assert greedy["train"].loc["base", "format"] == 0.0 and greedy["train"].loc["grpo", "format"] > 0  # only row 3
    assert greedy_tables({"train": train[train["decoding"] == "sample"]}, n_resamples=20, seed=0) == {}  # greedy off

    gains = pd.DataFrame({"model": ["grpo", "grpo"], "metric": ["think", "answer"], "effect_gap": [0.5, 0.1],
                          "effect_gap_lo": [0.2, -0.3], "effect_gap_hi": [0.8, 0.4],
                          "likely_reward_hacking": [True, False]}).set_index("model")
    assert hacking_flags(gains) == ["grpo:think"]
    fmt = pd.DataFrame({"model": ["grpo"], "gain": [0.6], "gain_lo": [0.4], "gain_hi": [0.8]})
    judges = {"train": {"judge": "a", "independent": False, "why": "x"}, "heldout": {"judge": "b", "independent": True, "why": "y"}}
    table = score_table(train[train["decoding"] == "sample"], n_resamples=20)
    res = eval_results(table, table[["n", "think", "think_lo", "think_hi"]], greedy, gains, fmt, judges, n_prompts=1,
                       samples_per_prompt=2, generation_seconds=12.34)
    assert res["eval.base.format"] == table.loc["base", "format"] > 0 and res["eval.grpo.heldout_think"] == res["eval.grpo.think"]
    assert "eval.base.heldout_format" not in res and res["eval.grpo.greedy_format"] == greedy["train"].loc["grpo", "format"]
    assert res["eval.base.greedy_heldout_answer"] == greedy["heldout"].loc["base", "answer"]
    assert res["eval.hacking_flags"] == ["grpo:think"] and res["eval.grpo.answer_effect_gap"] == [0.1, -0.3, 0.4]
    assert res["eval.grpo.format_gain"] == [0.6, 0.4, 0.8] and res["eval.generation_seconds"] == 12.3
    assert res["eval.judges"] == {"train": {"judge": "a", "independent": False}, "heldout": {"judge": "b", "independent": True}}
    assert (res["eval.n_prompts"], res["eval.samples_per_prompt"]) == (1, 2)
