"""lib.eval.tables: diagnostics, score tables, two-judge comparison, bar chart."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lib.eval.tables import (
    EvaluateError,
    clause_overlap,
    compare_judges,
    diagnostics,
    diagnostics_table,
    distinct_n,
    format_table_markdown,
    grouped_bar_chart,
    paired_gain_ci,
    save_table,
    score_table,
    self_bleu,
    sentence_bleu_chars,
)

# --- diagnostics -------------------------------------------------------------------------------

def test_distinct_n_by_hand():
    assert distinct_n(["好好好", "好的"], 1) == pytest.approx(2 / 5)
    assert distinct_n(["好好好", "好的"], 2) == pytest.approx(2 / 3)  # 好好, 好好, 好的
    assert distinct_n(["好 的"], 2) == 1.0  # whitespace removed: one bigram 好的
    assert math.isnan(distinct_n(["", "a"], 2))


def test_self_bleu_extremes():
    assert self_bleu(["今天天气很好", "今天天气很好", "今天天气很好"]) == pytest.approx(1.0)
    assert self_bleu(["今天天气很好", "明日有雨"]) == 0.0  # no shared character
    assert math.isnan(self_bleu(["只有一条", ""]))
    partial = self_bleu(["清爽一夏就喝椰子水", "清爽一夏就喝可乐吧"])
    assert 0.0 < partial < 1.0
    # more repetition across the set -> higher self-BLEU
    assert self_bleu(["清爽一夏就喝椰子水", "清爽一夏就喝椰子汁"]) > partial


def test_sentence_bleu_uses_best_reference():
    hyp = "清爽一夏就喝椰子水"
    one = sentence_bleu_chars(hyp, ["毫不相干的句子"])
    both = sentence_bleu_chars(hyp, ["毫不相干的句子", hyp])
    assert one < both == pytest.approx(1.0)


def test_clause_overlap():
    assert clause_overlap("先想想，清爽一夏。", "清爽一夏，就喝它！") == pytest.approx(0.5)
    assert clause_overlap("a，b", "c") == 0.0
    assert math.isnan(clause_overlap("", "c"))


def test_diagnostics_hand_cases():
    comps = [
        "<think>先想想，清爽一夏。</think><answer>清爽一夏，就喝它！</answer>",  # overlap 1/2
        "<think>这里写下你的思考</think><answer>这里写下你的广告</answer>",  # placeholder, overlap 0
        "就喝它",  # every tag missing; not counted in the overlap
        "<think>a</think><think>b</think><answer>c</answer>",  # no tag missing, but two <think>
    ]
    d = diagnostics(comps)
    assert d["n"] == 4
    assert d["mean_length_chars"] == pytest.approx(np.mean([len(c) for c in comps]))
    assert d["placeholder_share"] == pytest.approx(0.25)
    assert d["missing_tag_share"] == pytest.approx(0.25)
    assert d["one_of_each_tag_share"] == pytest.approx(0.5)
    # c4's think part (before the first </think>) is "a": one clause, not in answer "c"
    assert d["think_answer_overlap"] == pytest.approx((0.5 + 0.0 + 0.0) / 3)


def test_diagnostics_distinct_over_answers_only():
    d = diagnostics(["<think>想想想</think><answer>好好</answer>", "<think>想</think><answer>好的</answer>"])
    assert d["distinct_1"] == pytest.approx(2 / 4)  # 好好好的: 好, 的
    assert d["distinct_2"] == pytest.approx(2 / 2)  # 好好, 好的
    assert d["missing_tag_share"] == 0.0 and d["one_of_each_tag_share"] == 1.0


def test_diagnostics_empty_raises_and_table():
    with pytest.raises(EvaluateError):
        diagnostics([])
    t = diagnostics_table({"base": ["<answer>好</answer>"], "trained": ["<think>x</think><answer>好的</answer>"]})
    assert list(t.index) == ["base", "trained"] and t.loc["base", "missing_tag_share"] == 1.0


# --- score tables ------------------------------------------------------------------------------

def _items(seed: int = 0, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for model, shift in (("base", 0.0), ("trained", 0.2)):
        for i in range(n):
            rows.append({"model": model, "entity": f"e{i}", "format": float(rng.random() < 0.5 + shift),
                         "think": rng.uniform(0.2, 0.6) + shift, "answer": rng.uniform(0.1, 0.5) + shift})
    return pd.DataFrame(rows)


def test_score_table_intervals_contain_point():
    items = _items()
    t = score_table(items, n_resamples=500, seed=0)
    assert list(t.index) == ["base", "trained"]
    assert list(t.columns) == ["n", "format", "format_lo", "format_hi", "think", "think_lo", "think_hi",
                               "answer", "answer_lo", "answer_hi"]
    for m in ("format", "think", "answer"):
        assert (t[f"{m}_lo"] <= t[m]).all() and (t[m] <= t[f"{m}_hi"]).all()
        assert (t[f"{m}_lo"] < t[f"{m}_hi"]).all()
        assert t.loc["base", m] == pytest.approx(items[items.model == "base"][m].mean())
    assert t.loc["base", "n"] == 40


def test_score_table_degenerate_and_missing_column():
    items = pd.DataFrame({"model": ["a", "a", "b"], "format": [1.0, 1.0, 0.5]})
    t = score_table(items, metrics=("format",), n_resamples=100)
    assert t.loc["a", "format_lo"] == t.loc["a", "format_hi"] == 1.0
    assert math.isnan(t.loc["b", "format_lo"])  # one value: no interval
    with pytest.raises(EvaluateError, match="answer"):
        score_table(items, metrics=("format", "answer"))


def test_format_table_markdown_cells():
    t = pd.DataFrame({"n": [50, 50], "format": [0.8125, 0.5], "format_lo": [0.771, float("nan")],
                      "format_hi": [0.85, float("nan")]}, index=pd.Index(["base", "after|RL"], name="model"))
    md = format_table_markdown(t).splitlines()
    assert md[0] == "| model | n | format |"
    assert md[2] == "| base | 50 | 0.812 [0.771, 0.850] |"
    assert md[3] == r"| after\|RL | 50 | 0.500 |"


def test_save_table_writes_three_files(tmp_path):
    t = score_table(_items(), n_resamples=200)
    out = save_table(t, tmp_path / "eval" / "scores")
    assert {p.suffix for p in out.values()} == {".csv", ".md", ".html"}
    assert pd.read_csv(out["csv"], index_col=0).shape == t.shape
    md = out["md"].read_text(encoding="utf-8")
    assert f"{t.loc['base', 'think']:.3f} [{t.loc['base', 'think_lo']:.3f}, {t.loc['base', 'think_hi']:.3f}]" in md
    assert "<table" in out["html"].read_text(encoding="utf-8")


def test_save_table_without_index(tmp_path):
    out = save_table(pd.DataFrame({"a": [0.12345], "n": [3]}, index=["rowlabel"]), tmp_path / "t", index=False)
    assert out["csv"].read_text().splitlines() == ["a,n", "0.12345,3"]
    assert out["md"].read_text().splitlines()[0] == "| a | n |" and "| 0.123 | 3 |" in out["md"].read_text()
    assert "rowlabel" not in out["html"].read_text()


# --- paired gains and reward hacking -----------------------------------------------------------

def test_paired_gain_ci():
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, 60)
    g, lo, hi = paired_gain_ci(a, a + 0.1 + rng.normal(0, 0.02, 60), n_resamples=500)
    assert lo <= g <= hi and lo > 0
    g0, lo0, hi0 = paired_gain_ci(a, a + rng.normal(0, 0.2, 60), n_resamples=500)
    assert lo0 < 0 < hi0
    with pytest.raises(EvaluateError):
        paired_gain_ci([1, 2], [1, 2, 3])


def _judged(gain_train: float, gain_heldout: float, n: int = 50, seed: int = 0, noise_heldout: float = 0.05,
            scale_heldout: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    tr, ho = [], []
    base_t, base_h = rng.uniform(0.3, 0.5, n), rng.uniform(0.3, 0.5, n)
    for model, gt, gh in (("base", 0.0, 0.0), ("trained", gain_train, gain_heldout)):
        for i in range(n):
            tr.append({"model": model, "entity": f"e{i}", "think": base_t[i] + gt + rng.normal(0, 0.05),
                       "answer": base_t[i] + gt + rng.normal(0, 0.05)})
            ho.append({"model": model, "entity": f"e{i}",
                       "think": scale_heldout * (base_h[i] + gh + rng.normal(0, noise_heldout)),
                       "answer": scale_heldout * (base_h[i] + gh + rng.normal(0, noise_heldout))})
    return pd.DataFrame(tr), pd.DataFrame(ho)


def test_compare_judges_flags_hack_not_genuine():
    hack = compare_judges(*_judged(0.3, 0.0), base_label="base", n_resamples=500)
    assert list(hack.metric) == ["think", "answer"] and (hack.model == "trained").all()
    assert hack.likely_reward_hacking.all() and (hack.effect_gap_lo > 0).all()
    assert (hack.train_gain_lo > 0).all() and (hack.heldout_gain_lo <= 0).all()
    assert (hack.n_prompts == 50).all()

    genuine = compare_judges(*_judged(0.3, 0.3), base_label="base", n_resamples=500)
    assert not genuine.likely_reward_hacking.any() and ((genuine.effect_gap_lo < 0) & (genuine.effect_gap_hi > 0)).all()

    nothing = compare_judges(*_judged(0.0, 0.0), base_label={"trained": "base"}, n_resamples=500)
    assert not nothing.likely_reward_hacking.any()


@pytest.mark.parametrize("seed", [0, 2, 3])
def test_compare_judges_a_difference_in_significance_is_not_flagged(seed):
    # small gains under both judges: significant under the training judge only (in these draws), yet the two
    # gains do not differ significantly
    out = compare_judges(*_judged(0.02, 0.01, seed=seed), metrics=("think",), n_resamples=500)
    r = out.iloc[0]
    assert r.train_gain_lo > 0 and r.heldout_gain_lo < 0  # the old rule's flag
    assert r.effect_gap_lo < 0 < r.effect_gap_hi and not r.likely_reward_hacking


def test_compare_judges_standardizes_each_judges_scale():
    # the held-out judge scores on a fifth of the scale: its raw gain is a fifth, its standardized gain the same
    out = compare_judges(*_judged(0.3, 0.3, scale_heldout=0.2), metrics=("think",), n_resamples=500).iloc[0]
    assert out.heldout_gain < out.train_gain / 3
    assert out.train_effect == pytest.approx(out.heldout_effect, rel=0.1)
    assert out.effect_gap_lo < 0 < out.effect_gap_hi and not out.likely_reward_hacking


def test_effect_gap_ci_by_hand_and_bad_input():
    from lib.eval.tables import effect_gap_ci

    tb, tm = np.array([0.0, 1.0, 0.0, 1.0]), np.array([1.0, 2.0, 1.0, 2.0])  # gain 1, each model's variance 1/3
    hb, hm = np.array([0.0, 0.5, 0.0, 0.5]), np.array([0.0, 0.5, 0.0, 0.5])  # gain 0
    gap, lo, hi = effect_gap_ci(tb, tm, hb, hm, n_resamples=200)
    assert gap == pytest.approx(1 / np.sqrt((1 / 3 + 1 / 3) / 2))  # the pooled within-model SD
    assert lo <= gap <= hi
    same = np.full(4, 0.5)
    assert effect_gap_ci(same, same, same, same) == (0.0, 0.0, 0.0)
    with pytest.raises(EvaluateError, match="aligned"):
        effect_gap_ci([1, 2], [1, 2], [1, 2], [1, 2, 3])



def test_standardized_gains_are_not_compressed():
    # true effects of 5 (training judge) and 2 (held-out judge) in units of the within-model SD between prompts:
    # recovered as such (the SD of base and model scores together holds the shift, giving about 1.9 and 1.4)
    rng = np.random.default_rng(5)
    n = 400
    rows = {"train": [], "heldout": []}
    for judge, effect, scale in (("train", 5.0, 0.1), ("heldout", 2.0, 0.02)):
        for model, shift in (("base", 0.0), ("trained", effect)):
            for i, v in enumerate(scale * (rng.normal(0.0, 1.0, n) + shift)):
                rows[judge].append({"model": model, "entity": f"e{i}", "think": v})
    out = compare_judges(pd.DataFrame(rows["train"]), pd.DataFrame(rows["heldout"]), metrics=("think",),
                         n_resamples=200).iloc[0]
    # SE of a standardized gain d over 400 independent pairs: about sqrt((2 + d^2 / 2) / 400), 0.13 at d = 5
    assert out.train_effect == pytest.approx(5.0, abs=0.4) and out.heldout_effect == pytest.approx(2.0, abs=0.3)
    assert out.effect_gap == pytest.approx(3.0, abs=0.5) and out.effect_gap_lo > 2


def test_compare_judges_aligns_prompts_and_checks_labels():
    tr, ho = _judged(0.3, 0.0, n=30)
    ho = ho[ho.entity != "e0"]  # a prompt the held-out judge did not score drops out of both gains
    out = compare_judges(tr, ho, n_resamples=200)
    assert (out.n_prompts == 29).all()
    with pytest.raises(EvaluateError, match="base label"):
        compare_judges(tr, ho, base_label="nope")
    with pytest.raises(EvaluateError, match="missing column"):
        compare_judges(tr.drop(columns="entity"), ho)
    # the gain table renders with interval cells
    md = format_table_markdown(out.set_index("model"))
    assert "train_gain" in md and "[" in md


# --- figure ------------------------------------------------------------------------------------

def test_grouped_bar_chart_saves_png(tmp_path):
    t = score_table(_items(), n_resamples=200)
    path = tmp_path / "eval" / "scores.png"
    fig = grouped_bar_chart(t, ["format", "think", "answer"], path, title="scores")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = fig.axes[0]
    assert len(ax.patches) == 2 * 3 and ax.get_title() == "scores"
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["base", "trained"]


def test_paired_gains_and_reported_rows():
    from lib.eval.tables import ORIGINAL_REPORTED, paired_gains, score_table, with_reported_rows

    items = pd.DataFrame({"model": ["base"] * 4 + ["grpo"] * 4, "entity": list("abcd") * 2,
                          "format": [0, 0.5, 0, 0.6, 0.8, 0.9, 0.7, 0.9]})
    gains = paired_gains(items, {"grpo": "base"}, n_resamples=200)
    row = gains.iloc[0]
    assert row.model == "grpo" and row.n_prompts == 4 and row.gain == pytest.approx(0.55) and row.gain_lo > 0 and row.significant
    flat = paired_gains(items.assign(format=0.5), {"grpo": "base"}, n_resamples=200).iloc[0]
    assert flat.gain == 0 and not flat.significant
    table = with_reported_rows(score_table(items, metrics=("format",), n_resamples=50))
    assert list(table.index[-2:]) == list(ORIGINAL_REPORTED) and table.loc[list(ORIGINAL_REPORTED)[1], "format"] == 0.97
    assert np.isnan(table.loc[list(ORIGINAL_REPORTED)[0], "format_lo"])


def test_reported_rows_sit_in_their_own_block_with_the_caveat():
    from lib.eval.tables import ORIGINAL_REPORTED, REPORTED_CAVEAT, REPORTED_HEADER, with_reported_rows

    table = with_reported_rows(score_table(_items(), n_resamples=50))
    assert list(table.index) == ["base", "trained", REPORTED_HEADER, *ORIGINAL_REPORTED]
    assert table.loc[REPORTED_HEADER, "caveat"] == REPORTED_CAVEAT and (table.loc[["base", "trained"], "caveat"] == "").all()
    md = format_table_markdown(table).splitlines()
    header_line = next(i for i, line in enumerate(md) if REPORTED_HEADER in line)
    assert REPORTED_CAVEAT in md[header_line] and "test set" in REPORTED_CAVEAT and "judge" in REPORTED_CAVEAT
    assert md[2].split("|")[2].strip() == str(int(table.loc["base", "n"]))  # our n stays an integer, not 8.000


# --- samples nested in prompts (issue 18.5) ------------------------------------------------------

def test_score_table_nests_samples_in_prompts():
    """With cluster, k samples of a prompt are averaged and prompts resampled: the interval is that of the prompt
    means (not k times too many independent values), `n` counts prompts and `k` samples per prompt."""
    rng = np.random.default_rng(1)
    prompt_effect = rng.normal(0, 1, 20)
    rows = [{"model": "m", "entity": f"e{i}", "answer": prompt_effect[i] + rng.normal(0, 0.01)}
            for i in range(20) for _ in range(8)]
    items = pd.DataFrame(rows)
    nested = score_table(items, metrics=("answer",), n_resamples=2000, cluster="entity")
    flat = score_table(items, metrics=("answer",), n_resamples=2000)
    means = items.groupby("entity", sort=False)["answer"].mean().to_numpy()
    alone = score_table(pd.DataFrame({"model": "m", "answer": means}), metrics=("answer",), n_resamples=2000)
    assert nested.loc["m", "n"] == 20 and nested.loc["m", "k"] == 8 and flat.loc["m", "n"] == 160
    width = lambda t: t.loc["m", "answer_hi"] - t.loc["m", "answer_lo"]  # noqa: E731
    assert width(nested) == pytest.approx(width(alone))
    assert width(flat) < 0.5 * width(nested)  # treating samples as prompts: ~sqrt(8) too narrow
    assert nested.loc["m", "answer"] == pytest.approx(means.mean())
