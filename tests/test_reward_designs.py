"""Reward designs (docs/reward-designs.md): relative judging, the substance guard, DAPO's overlong penalty, format
gating, per-reward normalization, adversarial probes; a fake backend or judge stands in for the model."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from lib.judge.adversarial import PROBE_NAMES, flagged_probes, probe_summary, run_probes
from lib.judge.pairwise import RelativeJudge, debiased_win, ring_pairs
from lib.profiles import JudgeConfig, ProfileError, load_profile
from lib.rewards import format_reward
from lib.rewards.guards import gated, overlong_reward, substance_reward, with_options
from lib.rewards.relative import RelativeReward
from lib.rubric import RubricError, load_rubric, parse_rubric
from lib.judge.engine import JudgeEngine
from tests.fakes import KeywordJudge
from tests.test_judge import RUBRIC, FakeBackend

PAIR = re.compile(r"文案A：(?P<a>.*)\n文案B：(?P<b>.*)\n")


class ABBackend(FakeBackend):
    """P(A) = `prefer(a, b)` plus a constant bias towards option A; records the answer ids of each call."""

    def __init__(self, prefer, bias: float = 0.0, **kw):
        super().__init__(**kw)
        self.prefer, self.bias = prefer, bias
        self.answer_ids: list[tuple[list[int], list[int]]] = []
        self.p_yes = self._p_a

    def set_answer_ids(self, yes_ids, no_ids):
        self.answer_ids.append((list(yes_ids), list(no_ids)))

    def _p_a(self, prompt):
        m = PAIR.search(prompt)
        if m is None:  # a yes/no prompt
            return 0.8
        return min(max(self.prefer(m["a"], m["b"]) + self.bias, 0.0), 1.0)


def longer(a: str, b: str) -> float:
    return 0.9 if len(a) > len(b) else (0.1 if len(a) < len(b) else 0.5)


@pytest.fixture
def rubric():
    return load_rubric()


def relative_judge(backend, rubric) -> RelativeJudge:
    return RelativeJudge(JudgeEngine(backend, JudgeConfig()), rubric.relative)


def ad(answer: str, think: str = "我" * 30) -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ------------------------------------------------------------------------------------------ relative judging


def test_relative_judge_asks_both_orders_with_a_b_tokens_and_restores_yes_no(rubric):
    backend = ABBackend(longer, bias=0.3)
    rel = relative_judge(backend, rubric)
    engine = rel.engine
    [r] = rel.compare(["可乐"], ["好喝的可乐真解渴"], ["可乐"])
    prompts = backend.calls[-1][1]
    assert len(prompts) == 2 and "文案A：好喝的可乐真解渴" in prompts[0] and "文案A：可乐\n" in prompts[1]
    assert backend.answer_ids[-2] == (rel.a_ids, rel.b_ids)  # A/B read in place of 是/否 ...
    assert backend.answer_ids[-1] == (engine.yes_ids, engine.no_ids)  # ... and 是/否 restored for the checklist
    # a judge that adds 0.3 to option A whatever it says: both orders cancel it
    assert r.p_ab == pytest.approx(1.0) and r.p_ba == pytest.approx(0.4)
    assert r.win == pytest.approx(0.8) and r.position_bias == pytest.approx(0.2)
    assert debiased_win(0.7, 0.7) == 0.5  # pure position preference is a tie


def test_relative_judge_restores_yes_no_when_the_backend_fails(rubric):
    class Broken(ABBackend):
        def yes_no(self, prompts):
            raise RuntimeError("engine died")

    backend = Broken(longer)
    rel = relative_judge(backend, rubric)
    with pytest.raises(RuntimeError):
        rel.compare(["可乐"], ["甲"], ["乙"])
    assert backend.answer_ids[-1] == (rel.engine.yes_ids, rel.engine.no_ids)


def test_empty_texts_lose_unjudged_and_identical_prompts_go_once(rubric):
    backend = ABBackend(longer)
    rel = relative_judge(backend, rubric)
    out = rel.compare(["可乐"] * 4, ["", "", "甲", "甲"], ["乙", " ", "乙乙", "乙乙"])
    assert [r.win for r in out[:2]] == [0.0, 0.5] and not out[0].judged
    assert rel.calls == 2  # the two identical pairs: one prompt per order
    with pytest.raises(Exception, match="2 entities for 1"):
        rel.compare(["可乐", "雪碧"], ["甲"], ["乙"])


def test_relative_needs_a_backend_with_answer_ids(rubric):
    backend = FakeBackend()  # no set_answer_ids (like the openai backend)
    with pytest.raises(Exception, match="set_answer_ids"):
        RelativeJudge(JudgeEngine(backend, JudgeConfig()), rubric.relative)


def test_relative_texts_are_cut_to_fit_the_context(rubric):
    backend = ABBackend(longer, max_model_len=400)
    rel = relative_judge(backend, rubric)
    rel.compare(["可乐"], ["长" * 1000], ["短" * 1000])  # FakeBackend asserts every prompt fits
    assert "……" in backend.calls[-1][1][0]


def test_ring_pairs_are_linear_in_the_group():
    for size in (2, 3, 8):
        for k in (1, 2, 3):
            pairs = ring_pairs(size, k)
            assert len(pairs) == len(set(pairs)) and len(pairs) <= size * k
            assert all(0 <= i < j < size for i, j in pairs)
    assert len(ring_pairs(8, 1)) == 8 and len(ring_pairs(8, 7)) == 28  # every pair once at most


def test_group_relative_reward_ranks_within_each_group(rubric):
    backend = ABBackend(longer, bias=0.2)
    reward = RelativeReward(relative_judge(backend, rubric), reference="group", opponents=1)
    comps = [ad("可乐" * n) for n in (1, 2, 3, 4)] + [ad("雪碧" * n) for n in (4, 3)]
    prompts = ["p1"] * 4 + ["p2"] * 2
    scores = reward(comps, entity=["可乐"] * 4 + ["雪碧"] * 2, prompts=prompts)
    assert scores[:4] == sorted(scores[:4]) and scores[0] < 0.5 < scores[3]  # longer wins in this fake
    assert scores[4] > scores[5] and scores[4] + scores[5] == pytest.approx(1.0)
    assert all(0.0 <= s <= 1.0 for s in scores)
    # 4 ring pairs in the first group and 1 in the second, both orders: 10 prompts (linear in the group)
    assert reward.comparer.calls == 10 and reward.stats["pairs"] == 5
    assert reward.__name__ == "relative_reward" and reward.details[0]["pairs"] == 2
    assert reward([ad("可乐")], entity="可乐", prompts=["p"]) == [0.5]  # alone in its group: no opponent


def test_base_relative_reward_generates_each_reference_once(rubric):
    made = []

    def base(prompts):
        made.extend(prompts)
        return [ad("可乐可乐") for _ in prompts]

    reward = RelativeReward(relative_judge(ABBackend(longer), rubric), reference="base", reference_fn=base)
    comps = [ad("可乐"), ad("可乐可乐可乐"), ad("可乐可乐")]
    s1 = reward(comps, entity="可乐", prompts=["p1", "p1", "p2"])
    s2 = reward(comps[:1], entity="可乐", prompts=["p2"])
    assert made == ["p1", "p2"]  # cached per prompt across calls
    assert s1 == [pytest.approx(0.1), pytest.approx(0.9), pytest.approx(0.5)] and s2 == [pytest.approx(0.1)]
    assert reward.__name__ == "relative_base_reward"
    with pytest.raises(Exception, match="needs a reference_fn"):
        RelativeReward(None, reference="base")
    with pytest.raises(Exception, match="unknown reference 'other'"):
        RelativeReward(None, reference="other")


def test_rubric_relative_section_is_validated(rubric):
    assert "{a}" in rubric.relative.template and rubric.relative.question
    bad = {**RUBRIC, "relative": {"template": "{a} {question}", "question": "哪个好？"}}
    with pytest.raises(RubricError, match=r"t\.yaml: relative: template has no \{b\} placeholder"):
        parse_rubric(bad, source="t.yaml")
    with pytest.raises(RubricError, match="relative: unknown key 'extra'"):
        parse_rubric({**RUBRIC, "relative": {"template": "{a}{b}{question}", "question": "q", "extra": 1}}, source="t")
    plain = parse_rubric(RUBRIC, source="t")
    with_rel = parse_rubric({**RUBRIC, "relative": {"template": "{a}{b}{question}", "question": "q"}}, source="t")
    assert plain.relative is None and plain.content_hash != with_rel.content_hash


# ------------------------------------------------------------------------------------------ guards


def test_substance_guard_stops_the_shortest_well_formed_text_from_winning():
    collapsed = "<think>想一想</think><answer>喝可乐</answer>"  # the cpu job's late completions: format, nothing else
    full = ad("冰爽可乐，一口解渴，这个夏天就要这个味道，和朋友一起畅饮吧！",
              think="我先分析用户需求：夏天口渴的年轻人想要清爽提神的饮料。品牌定位是活力与快乐，目标受众是学生和"
                    "上班族，核心信息是冰爽解渴，所以文案要短促有力、有画面感。")
    assert format_reward([collapsed])[0] >= format_reward([full])[0] * 0.9  # the format reward alone barely tells them apart
    s_collapsed, s_full = substance_reward([collapsed, full])
    assert s_full == 1.0 and s_collapsed < 0.2
    assert substance_reward(["思考很长" * 30])[0] == 0.0  # no tags, no parts
    placeholder = ad("喝" * 30, think="这里写下你的思考过程" + "想" * 60)
    assert substance_reward([placeholder]) == [0.5]
    step = with_options(substance_reward, "substance_reward", think_min_chars=20, answer_min_chars=1, ramp=False)
    assert step([ad("喝", think="我" * 19), ad("喝", think="我" * 20)]) == [0.5, 1.0] and step.__name__ == "substance_reward"


def test_overlong_penalty_ramps_over_the_buffer():
    ids = [[0] * n for n in (50, 96, 112, 128)]
    assert overlong_reward(["x"] * 4, completion_ids=ids, max_len=128, buffer=32) == [0.0, 0.0, -0.5, -1.0]
    with pytest.raises(Exception, match="no completion_ids"):
        overlong_reward(["x"])
    with pytest.raises(Exception, match="buffer 200 must lie in 1..max_len"):
        overlong_reward(["x"], completion_ids=[[1]], max_len=128, buffer=200)


def test_format_gate_scores_and_asks_only_valid_completions():
    seen = []

    def judge_reward(completions, entity=None, prompts=None, **kw):
        seen.append((list(completions), list(entity), list(prompts), kw["trainer_state"]))
        return [0.7] * len(completions)

    g = gated(judge_reward, "answer_quality_reward")
    comps = ["no format", ad("可乐"), "<think>x</think>"]
    out = g(comps, entity=["a", "b", "c"], prompts=["p1", "p2", "p3"], trainer_state="S")
    assert out == [None, 0.7, None] and g.__name__ == "answer_quality_reward"
    assert seen == [([ad("可乐")], ["b"], ["p2"], "S")]  # rows cut together, other kwargs passed as they are
    assert g(["bad"], entity=["a"]) == [None] and len(seen) == 1  # none valid: the judge is not asked




def test_format_gate_none_passes_through_the_training_logs():
    import json

    from lib.train.logs import RewardRecorder, progress_line, sample_rows

    recorder = RewardRecorder()
    g = recorder.wrap("answer_quality_reward", gated(lambda completions, **kw: [0.5] * len(completions), "answer_quality_reward"))
    assert g(["no format", ad("可乐")], entity=["a", "b"], prompts=["p", "q"]) == [None, 0.5]
    rows = sample_rows(recorder.drain()[-1], step=1, n=2)
    assert [r["rewards"]["answer_quality_reward"] for r in rows] == [None, 0.5]
    assert json.loads(json.dumps(rows, ensure_ascii=False))[0]["rewards"] == {"answer_quality_reward": None}
    # a step where no completion had the format: TRL's nanmean is NaN, which the logger leaves out
    assert "answer" not in progress_line({"step": 1, "reward": 0.1, "rewards/answer_quality_reward/mean": None})

# TRL 1.15.0, trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions: the rewards matrix (None
# already NaN, line 1588) to advantages under multi_objective_aggregation="normalize_then_sum", lines 2682-2684 (the
# unscorable mask), 2716-2725 and 2735. Inline code there, not a function, so its lines are copied; the test below
# checks that they are still in TRL's source.
TRL_NORMALIZE_THEN_SUM_LINES = (
    "unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)",
    "grouped = rewards_per_func.view(-1, num_generations, len(self.reward_funcs))",
    "mean_k = torch.nanmean(grouped, dim=1, keepdim=True)",
    "std_k = nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)",
    "reward_k = (grouped - mean_k) / (std_k + 1e-4)",
    "reward_k = reward_k.view(-1, len(self.reward_funcs))",
    "rewards = (reward_k * self.reward_weights.to(device).unsqueeze(0)).nansum(dim=1)",
    "rewards[unscorable_mask] = torch.nan",
    "std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)",
    "advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)",
    "advantages = torch.nan_to_num(advantages, nan=0.0)",
    "output_reward_func = [reward if reward is not None else torch.nan for reward in output_reward_func]",
)


def _trl_normalize_then_sum(columns, weights, num_generations):
    """(advantages, per-reward weighted terms) as TRL computes them (TRL_NORMALIZE_THEN_SUM_LINES), from one list
    of rewards per reward function (None allowed, as a reward function returns them)."""
    import torch
    from trl.trainer.utils import nanstd

    rewards_per_func = torch.tensor([[torch.nan if r is None else r for r in row] for row in zip(*columns)],
                                    dtype=torch.float32)
    weights = torch.tensor(weights, dtype=torch.float32)
    unscorable_mask = torch.isnan(rewards_per_func).all(dim=1)
    grouped = rewards_per_func.view(-1, num_generations, len(columns))
    mean_k = torch.nanmean(grouped, dim=1, keepdim=True)
    std_k = nanstd(grouped, dim=1, keepdim=True) if num_generations > 1 else torch.zeros_like(mean_k)
    reward_k = (grouped - mean_k) / (std_k + 1e-4)
    reward_k = reward_k.view(-1, len(columns))
    rewards = (reward_k * weights.unsqueeze(0)).nansum(dim=1)
    rewards[unscorable_mask] = torch.nan
    std_rewards = nanstd(rewards).expand_as(rewards) if rewards.numel() > 1 else torch.zeros_like(rewards)
    advantages = (rewards - torch.nanmean(rewards)) / (std_rewards + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    # each reward's term in the sum, as nansum counts it (a NaN term adds 0)
    return advantages, torch.nan_to_num(reward_k * weights.unsqueeze(0), nan=0.0)


def test_trl_normalize_then_sum_lines_are_trls():
    import importlib.util
    from pathlib import Path

    # the source read as text: importing the trainer takes many seconds
    source = (Path(importlib.util.find_spec("trl").origin).parent / "trainer" / "grpo_trainer.py").read_text()
    missing = [line for line in TRL_NORMALIZE_THEN_SUM_LINES if line not in source]
    assert not missing, f"TRL's advantage code changed; update _trl_normalize_then_sum: {missing}"


def test_format_gate_leaves_invalid_completions_out_of_the_judge_term_under_normalize_then_sum():
    # one group of 8: 4 well-formed completions the judge ranks 0.2 < 0.4 < 0.6 < 0.8, 4 without the format
    judge_scores = {ad(a): v for a, v in zip(("可乐", "雪碧", "芬达", "橙汁"), (0.2, 0.4, 0.6, 0.8))}

    def judge_reward(completions, **kw):
        return [judge_scores[c] for c in completions]

    comps = list(judge_scores) + ["可乐", "<think>x</think>", "喝雪碧", "<answer>芬达</answer>"]
    fmt = format_reward(comps)
    judge = gated(judge_reward, "answer_quality_reward")(comps)
    assert judge[4:] == [None] * 4 and all(f <= 0 for f in fmt[4:]) and fmt[:4] == [fmt[0]] * 4 and fmt[0] > fmt[4]

    z = (np.array([0.2, 0.4, 0.6, 0.8]) - 0.5) / (np.std([0.2, 0.4, 0.6, 0.8], ddof=1) + 1e-4)  # the judge's own
    adv, terms = _trl_normalize_then_sum([fmt, judge], [1.0, 0.5], num_generations=8)
    assert terms[4:, 1].tolist() == [0.0] * 4  # no judge term for the invalid ones
    assert terms[:4, 1].numpy() == pytest.approx(0.5 * z, rel=1e-5)  # among the valid: the judge's ranking, its spread
    assert adv[:4].tolist() == sorted(adv[:4].tolist()) and len(set(adv[4:].tolist())) == 1  # invalid: format only
    assert adv[4:].max() < adv[:4].min()

    # with 0 for the invalid ones the judge term is a second format reward: it pushes the invalid ones down (by as
    # much as the best valid one goes up), and among the valid ones its spread is cut by the valid-vs-invalid gap
    zeroed = [0.0 if j is None else j for j in judge]
    _, old = _trl_normalize_then_sum([fmt, zeroed], [1.0, 0.5], num_generations=8)
    sd_all = np.std(zeroed, ddof=1) + 1e-4
    assert old[4:, 1].numpy() == pytest.approx([0.5 * -0.25 / sd_all] * 4, rel=1e-5) and float(old[4, 1]) < -0.35
    assert old[:4, 1].numpy() == pytest.approx(0.5 * (np.array([0.2, 0.4, 0.6, 0.8]) - 0.25) / sd_all, rel=1e-5)
    assert float(old[3, 1] - old[0, 1]) < 0.85 * float(terms[3, 1] - terms[0, 1])


# ------------------------------------------------------------------------------------------ profile knobs


def test_reward_design_knobs_validate():
    p = load_profile("smoke", overrides={"train": {"reward_aggregation": "normalize_then_sum", "format_gate": True,
                                                    "substance": {"think_min_chars": 40}, "relative": {"opponents": 2}}})
    assert p.train.reward_aggregation == "normalize_then_sum" and p.train.substance.think_min_chars == 40
    with pytest.raises(ProfileError, match=r"smoke\.yaml: train\.reward_aggregation: Input should be 'sum_then_normalize' or 'normalize_then_sum'"):
        load_profile("smoke", overrides={"train": {"reward_aggregation": "mean"}})
    with pytest.raises(ProfileError, match=r"train\.relative\.opponents: Input should be greater than or equal to 1"):
        load_profile("smoke", overrides={"train": {"relative": {"opponents": 0}}})
    with pytest.raises(ProfileError, match=r"calibration_adversarial_max_pass: Input should be less than or equal to 1"):
        load_profile("smoke", overrides={"calibration_adversarial_max_pass": 2})


def test_grpo_config_takes_the_aggregation(tmp_path):
    from lib.train import grpo

    over = {"train": {"reward_aggregation": "normalize_then_sum"}}
    cfg = grpo.build_grpo_config(load_profile("smoke", overrides=over), tmp_path)
    assert cfg.multi_objective_aggregation == "normalize_then_sum"
    assert grpo.build_grpo_config(load_profile("smoke"), tmp_path).multi_objective_aggregation == "sum_then_normalize"


# ------------------------------------------------------------------------------------------ adversarial probes


def test_probes_flag_a_must_have_item_a_probe_passes(rubric):
    # a judge fooled by a lone colon on fluency, and by self-praise on every item
    judge = KeywordJudge(rules={"fluency": lambda e, t: 0.9 if t in (":", ) or "满分" in t else 0.1,
                                "is_ad": "满分", "is_think": "满分"}, default=0.1)
    rows = run_probes(judge, rubric, ["可乐", "雪碧"])
    assert set(rows["probe"]) == set(PROBE_NAMES) and set(rows["section"]) == {"answer", "think"}
    assert len(rows) == len(PROBE_NAMES) * 2 * (len(rubric["answer"].items) + len(rubric["think"].items))
    summary = probe_summary(rows, max_pass_rate=0.5)
    flags = flagged_probes(summary)
    assert "colon passes answer.fluency (must-have) for 100% of 2 entities" in flags
    assert "self_praise passes answer.is_ad (must-have) for 100% of 2 entities" in flags
    assert not any(f.startswith(("empty", "placeholder", "think_label")) for f in flags)
    assert not summary[summary["type"] == "plausible"]["flag"].any()  # only must-have items gate
    assert probe_summary(rows, max_pass_rate=1.0)["flag"].sum() == 0
    with pytest.raises(ValueError, match="max_pass_rate must lie in"):
        probe_summary(rows, 1.5)


def test_probes_show_what_the_reward_shortcut_catches(rubric):
    from lib.rewards import SHORTCUT

    judge = KeywordJudge(default=0.9)
    rows = run_probes(judge, rubric, ["可乐"], shortcut=lambda s, t: SHORTCUT[s](t))
    think = rows[rows["section"] == "think"].groupby("probe")["shortcut"].first()
    assert think["colon"] == "too_short" and think["placeholder"] == "placeholder"
    answer = rows[rows["section"] == "answer"].groupby("probe")[["shortcut", "reward", "score"]].first()
    assert answer.loc["empty", "shortcut"] == "empty" and answer.loc["empty", "reward"] == 0.0
    assert pd.isna(answer.loc["colon", "shortcut"]) and answer.loc["colon", "reward"] == answer.loc["colon", "score"] > 0


def test_profile_refuses_a_base_reference_from_another_model_and_a_buffer_past_the_limit():
    with pytest.raises(ProfileError, match=r"smoke\.yaml: train\.reward_weights\.relative_base writes base answers with the judge model 'gemma3-270m', not the policy 'other'"):
        load_profile("smoke", overrides={"policy_model": "other", "train": {"reward_weights": {"format": 1, "relative_base": 1}}})
    with pytest.raises(ProfileError, match=r"smoke\.yaml: train\.overlong_buffer 64 exceeds train\.max_completion_length 24$"):
        load_profile("smoke", overrides={"train": {"reward_weights": {"format": 1, "overlong": 1}}})


# ------------------------------------------------------------------------------------------ wiring


def test_judge_rewards_give_relative_rewards_by_name(rubric):
    from lib.rewards import JudgeRewards, reward_funcs

    engine = JudgeEngine(ABBackend(longer), JudgeConfig())
    jr = JudgeRewards(engine, rubric, sections=("answer", "relative"), relative={"opponents": 1})
    fmt, rel, ans = reward_funcs(["format", "relative", "answer"], jr)
    from lib.reward_names import FUNC_NAMES

    assert rel.__name__ == FUNC_NAMES["relative"] and jr.func("relative") is rel  # one object per name
    assert jr.func("relative_base").__name__ == FUNC_NAMES["relative_base"]
    comps = [ad("可乐"), ad("可乐可乐可乐")]
    assert rel(comps, entity="可乐", prompts=["p", "p"]) == [pytest.approx(0.1), pytest.approx(0.9)]
    assert [d["pairs"] for d in jr.details["relative"]] == [1, 1] and jr.stats["relative"]["pairs"] == 1
    assert len(ans(comps, entity="可乐")) == 2  # the checklist still reads 是/否 on the same engine
    with pytest.raises(Exception, match="has no 'relative:' template"):
        JudgeRewards(engine, parse_rubric(RUBRIC, source="r.yaml")).func("relative")
    with pytest.raises(Exception, match="reads P\\(A\\)/P\\(B\\) from a judge engine's backend"):
        JudgeRewards(KeywordJudge(), rubric).func("relative_base")


def test_training_rewards_take_the_profile_options_and_the_gate(rubric):
    from lib.rewards.build import build_reward_functions, judge_rewards_for

    over = {"train": {"format_gate": True, "substance": {"think_min_chars": 10, "answer_min_chars": 2}, "overlong_buffer": 8,
                      "reward_weights": {"format": 1.0, "substance": 0.5, "overlong": 0.2, "answer": 0.1, "relative": 0.1}}}
    p = load_profile("smoke", overrides=over)
    jr = judge_rewards_for(p, JudgeEngine(ABBackend(longer), JudgeConfig()))
    assert jr.relative_options == {"opponents": 1, "base_max_tokens": p.train.max_completion_length}
    funcs, weights = build_reward_functions(p, judge_rewards=jr)
    assert [f.__name__ for f in funcs] == ["format_reward", "substance_reward", "overlong_reward",
                                           "answer_quality_reward", "relative_reward"]
    assert weights == [1.0, 0.5, 0.2, 0.1, 0.1]
    _, sub, over_f, ans, rel = funcs
    assert sub([ad("喝可", think="我" * 10)]) == [1.0]  # the profile's minimums, not the defaults
    assert over_f(["x"], completion_ids=[[0] * p.train.max_completion_length]) == [-1.0]  # max_len from the profile
    comps = ["untagged text", ad("可乐"), ad("可乐可乐")]
    assert ans(comps, entity="可乐")[0] is None and rel(comps, entity="可乐", prompts=["p"] * 3)[0] is None  # gated
    assert rel(comps, entity="可乐", prompts=["p"] * 3)[1:] == [pytest.approx(0.1), pytest.approx(0.9)]


def test_reward_server_serves_the_new_rewards(rubric):
    import httpx

    from lib.serve.app import create_app
    from lib.serve.scorer import Limits, RewardScorer
    from lib.serve.server import ServerThread

    engine = JudgeEngine(ABBackend(longer), JudgeConfig())
    scorer = RewardScorer(engine, rubric, {"format": 1.0, "substance": 0.5, "relative": 1.0})
    try:
        with ServerThread(create_app(scorer, Limits(max_wait_ms=10))) as url:
            comps = [ad("可乐"), ad("可乐可乐可乐"), ad("雪碧" * 3)]
            body = {"completions": comps, "entity": ["可乐", "可乐", "雪碧"], "prompts": ["p1", "p1", "p2"],
                    "rewards": ["format", "substance", "relative"], "details": True}
            got = httpx.post(url + "/rewards", json=body, timeout=60).json()
            assert got["rewards"]["relative"] == [pytest.approx(0.1), pytest.approx(0.9), 0.5]
            assert got["rewards"]["substance"] == substance_reward(comps)
            assert len(got["details"]["relative"]) == 3
            bad = httpx.post(url + "/rewards", json={**body, "rewards": ["relative_x"]}, timeout=60)
            assert bad.status_code == 422 and "unknown reward 'relative_x'" in bad.text
            tokens = httpx.post(url + "/rewards", json={**body, "rewards": ["overlong"]}, timeout=60)
            assert tokens.status_code == 422 and "overlong_reward: no completion_ids given" in tokens.text
    finally:
        scorer.close()
