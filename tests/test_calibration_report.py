"""lib.judge.calibration's notebook-02 helpers: the stratified subset, probe runs with a fake judge, the summary and its words."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from lib import stats
from lib.judge import calibration as cal
from tests.fakes import HIT, MISS, KeywordJudge




# ----------------------------------------------------------------------------------------------- subset


def test_select_is_capped_stratified_and_deterministic(calib):
    sub = cal.select_calibration_texts(calib, 12, seed=3)
    assert sub.groupby("section").size().to_dict() == {"answer": 12, "think": 12}
    assert sub.equals(cal.select_calibration_texts(calib, 12, seed=3))
    assert not sub.equals(cal.select_calibration_texts(calib, 12, seed=4))
    answers = calib[calib.section == "answer"]
    picked = sub[sub.section == "answer"].kind.value_counts()
    expected = answers.kind.value_counts() / len(answers) * 12
    assert abs(picked["good"] - expected["good"]) <= 1  # the big kind gets its share
    assert list(sub.index) == sorted(sub.index)  # file order kept


def test_select_none_or_large_cap_keeps_all(calib):
    assert cal.select_calibration_texts(calib, None) is calib
    assert len(cal.select_calibration_texts(calib, 10_000)) == len(calib)
    with pytest.raises(cal.CalibrationError, match="max_texts"):
        cal.select_calibration_texts(calib, 0)


# ----------------------------------------------------------------------------------------------- probes


def test_length_probe_with_a_length_loving_judge(rubric, calib):
    filler = cal.load_probes()["filler_sentences"]
    judge = KeywordJudge(rules={"detail": lambda e, t: min(len(t) / 300, 1.0)}, default=0.8)
    good = calib[(calib.section == "answer") & (calib.kind == "good")].head(3)
    out = cal.run_length_probe(judge, rubric["answer"], good, filler, pad_levels=(0, 2, 8))
    assert list(out.columns) == ["id", "pad_level", "n_chars", "p_yes", "score", "flagged"]
    assert len(out) == 9 and (out.flagged == 0).all()
    wide = out.pivot(index="id", columns="pad_level", values="p_yes")
    assert (wide[8] > wide[0]).all()  # only `detail` grows with length, so the mean P(yes) rises
    assert len(judge.calls) == 1 and len(judge.calls[0][2]) == 9  # all padded texts in one call


def test_relevance_probe_drop(rubric, calib):
    answers = calib[calib.section == "answer"].head(5)
    pairs = cal.relevance_probe_pairs(answers, seed=0, pool=calib[calib.section == "answer"])
    judge = KeywordJudge()  # relevancy: HIT when the entity occurs in the text
    out = cal.run_relevance_probe(judge, rubric["answer"], pairs)
    assert list(out.columns) == ["id", "true_entity", "swapped_entity", "p_true", "p_swapped", "drop"]
    for r in out.itertuples():
        text = answers.set_index("id").loc[r.id, "text"]
        assert r.p_true == (HIT if r.true_entity in text else MISS)
        assert r.p_swapped == (HIT if r.swapped_entity in text else MISS)
    assert out["drop"].to_numpy() == pytest.approx(out["p_true"] - out["p_swapped"])
    section, _, _ = judge.calls[0]
    assert section == "answer"


def test_one_item_section(rubric):
    sec = cal.one_item_section(rubric["answer"], "relevancy")
    assert sec.keys == ["relevancy"] and sec.template == rubric["answer"].template


# ----------------------------------------------------------------------------------------------- summary


def test_kappa_ci_brackets_the_point():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.5
    pred = np.where(rng.random(200) < 0.8, y, ~y)  # 80% agreement: kappa about 0.6
    k, lo, hi = stats.kappa_ci(y, pred, n_resamples=300)
    assert lo < k < hi and 0.4 < k < 0.8
    assert math.isnan(stats.kappa_ci([True, True], [True, True])[0])


def _fake_inputs(n=60, agree=0.9, pad_effect=0.05, drop=0.3):
    rng = np.random.default_rng(1)
    y = rng.random(n) < 0.6
    p = np.where(rng.random(n) < agree, np.where(y, 0.8, 0.2), np.where(y, 0.2, 0.8))
    long = pd.DataFrame({"label": y, "p_yes": p, "flagged": False})
    agreement = cal.mode_agreement(pd.DataFrame({"label": y, "soft": p, "hard": p >= 0.5, "seed": np.ones(n, bool)}))
    ids = [f"a{i}" for i in range(8)]
    length = pd.DataFrame([{"id": i, "pad_level": k, "p_yes": 0.5 + pad_effect * k / 8 + 0.01 * j}
                           for j, i in enumerate(ids) for k in (0, 4, 8)])
    relevance = pd.DataFrame({"drop": drop + 0.02 * np.arange(8)})
    return long, agreement, length, relevance


def test_summary_numbers():
    long, agreement, length, relevance = _fake_inputs()
    s = cal.calibration_summary(long, agreement, length, relevance, n_resamples=200, judgements_per_s=12.5)
    acc = ((long.p_yes >= 0.5) == long.label).mean()
    assert s["accuracy"] == pytest.approx(acc) and s["hard_accuracy"] == pytest.approx(acc)
    assert s["seed_accuracy"] == pytest.approx(long.label.mean())  # seed said yes to everything
    assert s["n_labels"] == 60 and s["flagged_share"] == 0.0
    assert s["length_probe_diff"] == pytest.approx(0.05) and s["length_probe_slope"] == pytest.approx(0.05 / 8)
    assert s["relevance_drop"] == pytest.approx(0.37)
    assert s["accuracy_ci"][0] <= acc <= s["accuracy_ci"][1]


def test_describe_follows_the_numbers():
    long, agreement, length, relevance = _fake_inputs(agree=0.95, pad_effect=0.2, drop=0.3)
    text = cal.describe_calibration(cal.calibration_summary(long, agreement, length, relevance, n_resamples=200))
    assert "agreement with the labels" in text.splitlines()[0] and "chance" not in text.splitlines()[0]
    assert "the judge rewards length" in text and "it notices copy about another product" in text

    long, agreement, length, relevance = _fake_inputs(agree=0.5, pad_effect=0.0, drop=-0.07)
    text = cal.describe_calibration(cal.calibration_summary(long, agreement, length, relevance, n_resamples=200))
    assert "chance" in text.splitlines()[0]
    assert "no clear length bias" in text
    assert "does not reliably notice" in text


@pytest.mark.parametrize("kappa, ci, words", [
    (0.03, [0.01, 0.06], "barely better than chance"),
    (0.03, [-0.02, 0.08], "not distinguishable from chance"),
    (-0.2, [-0.3, -0.1], "less often than chance"),
    (0.5, [0.4, 0.6], "moderate"),
    (0.9, [0.85, 0.95], "almost perfect"),
    (float("nan"), None, "undefined"),
])
def test_kappa_words(kappa, ci, words):
    assert words in cal.kappa_words(kappa, ci)


def test_describe_tolerates_missing_numbers():
    text = cal.describe_calibration({"n_labels": 10, "kappa": 0.5, "accuracy": 0.8})
    assert text.startswith("Overall kappa 0.50") and "moderate" in text


def test_summarize_relevance_and_save_summary(tmp_path):
    rel = pd.DataFrame({"p_true": [0.9, 0.8, 0.7], "p_swapped": [0.1, 0.2, np.nan]})
    s = cal.summarize_relevance(rel, n_resamples=100)
    assert list(s["entity"]) == ["own entity", "swapped entity"]
    assert s["mean"].tolist() == pytest.approx([0.8, 0.15]) and s["n"].tolist() == [3, 2]
    written = cal.save_summary({"kappa": float("nan"), "n_labels": 3, "kappa_ci": [0.1, 0.2]}, "words", tmp_path)
    import json

    assert json.loads(written["json"].read_text()) == {"kappa": None, "n_labels": 3, "kappa_ci": [0.1, 0.2]}
    assert written["md"].read_text() == "words\n"


def test_describe_a_judge_that_always_says_yes():
    long, agreement, length, relevance = _fake_inputs()
    long = long.assign(p_yes=0.6 + 0.3 * long["label"])  # always yes at 0.5, yet P(yes) ranks perfectly
    s = cal.calibration_summary(long, agreement, length, relevance, n_resamples=100)
    assert s["kappa"] == 0.0 and s["pred_yes_rate"] == 1.0 and s["auroc"] == 1.0
    assert s["best_threshold"] > 0.6 and s["best_threshold_kappa"] == pytest.approx(1.0)
    text = cal.describe_calibration(s)
    assert "says yes to every question" in text.splitlines()[0]
    assert "AUROC 1.00" in text and "better than chance" in text
