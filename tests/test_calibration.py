"""lib.judge.calibration and lib.stats: the calibration set, metrics against hand values, probes, bootstrap, loader errors."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from lib import paths, stats
from lib.judge import calibration as cal
from lib.stats import StatsError, bootstrap_ci
from tests.fakes import HIT, MISS, KeywordJudge

ANSWER_BAD_KINDS = {"off_topic", "not_ad", "disfluent", "placeholder", "filler", "english", "repeated", "bland"}
THINK_BAD_KINDS = {"leaked_answer", "placeholder", "filler", "off_topic", "disfluent", "english"}
DETAILED_IMPLIES_MUST = {"product": "product_must", "user": "user_must", "target_user": "target_user_must"}




# ----------------------------------------------------------------------------------------------
# The set itself
# ----------------------------------------------------------------------------------------------

def test_set_size_and_coverage(calib, rubric):
    n_answer = int((calib.section == "answer").sum())
    n_think = int((calib.section == "think").sum())
    assert n_answer >= 44 and n_think >= 24
    assert sum(len(l) for l in calib.labels) >= 600
    assert calib.entity.nunique() >= 16
    keys = cal.rubric_keys(rubric)
    for row in calib.itertuples():
        assert list(row.labels) == keys[row.section], row.id  # every question, in rubric order


def test_every_bad_kind_present(calib):
    kinds = calib.groupby("section")["kind"].apply(set)
    assert ANSWER_BAD_KINDS | {"good"} <= kinds["answer"]
    assert THINK_BAD_KINDS | {"good"} <= kinds["think"]


def test_every_question_has_both_answers(calib):
    summary = cal.label_summary(calib)
    assert (summary["yes"] > 0).all() and (summary["no"] > 0).all()
    assert summary["yes_rate"].between(0.1, 0.9).all(), summary[~summary["yes_rate"].between(0.1, 0.9)]


def test_labels_are_consistent(calib):
    for row in calib.itertuples():
        lab = row.labels
        if row.section == "think":
            for detailed, must in DETAILED_IMPLIES_MUST.items():
                assert not lab[detailed] or lab[must], f"{row.id}: {detailed} yes but {must} no"
            if row.kind in ("leaked_answer", "answer_only"):
                assert not lab["think_only_must"], row.id
        else:
            if row.kind in ("not_ad", "placeholder") and "{" not in row.text:
                assert not lab["is_ad"], row.id
            if row.kind == "off_topic":
                assert not lab["relevancy"], row.id
        if "这里写下你的" in row.text:  # the system prompt's template copied
            assert not lab.get("is_ad", False) and not lab.get("is_think", False), row.id


def test_calibration_md_table_matches_the_data(calib):
    md = (paths.DATA_DIR / "CALIBRATION.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (answer|think) \| (\S+) \| (\d+) \| (\d+) \| (\d+) \| ([\d.]+) \|$", md, flags=re.M)
    table = {(s, k): (int(n), int(y)) for s, k, n, y, _, _ in rows}
    summary = cal.label_summary(calib)
    assert len(table) == len(summary)
    for r in summary.itertuples():
        assert table[(r.section, r.key)] == (r.n, r.yes), (r.section, r.key)


def test_long_labels_one_row_per_question(calib):
    long = cal.long_labels(calib)
    assert len(long) == sum(len(l) for l in calib.labels)
    assert list(long.columns[:6]) == ["id", "section", "entity", "text", "key", "label"]
    assert long.groupby(["id", "key"]).size().max() == 1
    assert long["label"].dtype == bool


def test_probes_file_has_bland_chinese_fillers(calib):
    fillers = cal.load_probes()["filler_sentences"]
    assert len(fillers) >= 8
    for s in fillers:
        assert re.search(r"[\u4e00-\u9fff]", s), s
        assert not any(e in s for e in calib.entity.unique()), s  # content-free: names no product


@pytest.mark.parametrize("text, message", [
    ("filler_sentences: [unclosed\n", r"probes\.yaml: line 2 malformed YAML"),
    ("filler_sentences: []\n", r"probes\.yaml: field 'filler_sentences': expected a non-empty list"),
])
def test_bad_probe_file_is_one_line_naming_file_and_where(tmp_path, text, message):
    p = tmp_path / "probes.yaml"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(cal.CalibrationError, match=message) as err:
        cal.load_probes(p)
    assert "\n" not in str(err.value)


# ----------------------------------------------------------------------------------------------
# Metrics against hand-computed values
# ----------------------------------------------------------------------------------------------

Y = [True, True, False, False, True]
P = [0.9, 0.4, 0.2, 0.6, 0.8]  # verdicts at 0.5: T F F T T -> 3 of 5 right


def test_metrics_hand_values():
    row = cal.metrics_table(Y, P).loc["overall"]
    assert row["n"] == 5 and row["n_missing"] == 0
    assert row["accuracy"] == pytest.approx(0.6)
    # po = 0.6; both raters say yes 3/5: pe = .6*.6 + .4*.4 = .52; kappa = (.6 - .52) / (1 - .52)
    assert row["kappa"] == pytest.approx(0.08 / 0.48)
    assert row["brier"] == pytest.approx((0.01 + 0.36 + 0.04 + 0.36 + 0.04) / 5)
    assert row["yes_rate"] == pytest.approx(0.6) and row["pred_yes_rate"] == pytest.approx(0.6)
    # pairs (yes, no) ranked correctly: 0.9, 0.8 beat both; 0.4 beats 0.2 only -> 5 of 6
    assert row["auroc"] == pytest.approx(5 / 6)
    expected_ll = -np.mean([math.log(0.9), math.log(0.4), math.log(0.8), math.log(0.4), math.log(0.8)])
    assert row["log_loss"] == pytest.approx(expected_ll)


def test_ece_two_bins_by_hand():
    # bin [0, .5): p .2 .4 (mean .3), labels 0 1 (frac .5) -> |.5-.3| = .2, weight 1/2
    # bin [.5, 1]: p .6 .8 (mean .7), labels 1 1 (frac 1)  -> |1-.7| = .3, weight 1/2
    assert stats.expected_calibration_error([0, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], n_bins=2) == pytest.approx(0.25)
    bins = stats.calibration_bins([0, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], n_bins=2)
    assert bins["n"].tolist() == [2, 2]
    assert bins["mean_p"].tolist() == pytest.approx([0.3, 0.7])


def test_ece_bin_edges_and_perfect_calibration():
    bins = stats.calibration_bins([1, 1, 0], [0.3, 1.0, 0.0])
    assert bins.loc[3, "n"] == 1 and bins.loc[9, "n"] == 1 and bins.loc[0, "n"] == 1  # 0.3 in [.3,.4); 1.0 in the last
    assert stats.expected_calibration_error([1, 1, 0, 0], [1.0, 1.0, 0.0, 0.0]) == pytest.approx(0.0)


def test_one_class_is_nan_safe():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no sklearn UndefinedMetricWarning either
        row = cal.metrics_table([True, True, True], [0.9, 0.8, 0.7]).loc["overall"]
    assert row["accuracy"] == 1.0
    assert math.isnan(row["kappa"]) and math.isnan(row["auroc"])
    assert row["brier"] == pytest.approx((0.01 + 0.04 + 0.09) / 3)
    # one rater constant, the other not: kappa is defined (0), not NaN
    assert stats.cohen_kappa(np.array([True, False]), np.array([True, True])) == pytest.approx(0.0)


def test_log_loss_is_clipped():
    row = cal.metrics_table([True, False], [0.0, 0.0]).loc["overall"]
    assert math.isfinite(row["log_loss"])
    assert row["log_loss"] == pytest.approx((-math.log(cal.LOG_LOSS_EPS) - math.log(1 - cal.LOG_LOSS_EPS)) / 2)


def test_metrics_by_group_and_missing():
    by = ["a", "a", "b", "b", "b"]
    p = [0.9, np.nan, 0.2, 0.6, 0.8]
    t = cal.metrics_table(Y, p, by=by)
    assert t.index.tolist() == ["a", "b", "overall"]
    assert t.loc["a", "n"] == 1 and t.loc["a", "n_missing"] == 1
    assert t.loc["overall", "n"] == 4 and t.loc["overall", "n_missing"] == 1
    assert t.loc["b", "accuracy"] == pytest.approx(2 / 3)
    assert cal.metrics_table(Y, P, threshold=0.95).loc["overall", "pred_yes_rate"] == 0.0


@pytest.mark.parametrize(
    "y, p, by, error, match",
    [
        ([True, False], [0.5, 1.5], None, StatsError, r"\[0, 1\]"),
        ([True, False], [0.5], None, StatsError, "2"),
        ([True, 2], [0.5, 0.5], None, StatsError, "true/false"),
        ([True, None], [0.5, 0.5], None, StatsError, "missing"),
        ([True, False], [0.5, 0.5], ["overall", "x"], cal.CalibrationError, "reserved"),
    ],
)
def test_metrics_bad_input(y, p, by, error, match):
    with pytest.raises(error, match=match):
        cal.metrics_table(y, p, by=by)


def test_threshold_sweep_monotone_yes_rate():
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.4
    p = np.clip(0.5 * y + rng.random(200) * 0.6, 0, 1)
    sweep = stats.threshold_sweep(y, p)
    assert len(sweep) == 19 and sweep["threshold"].iloc[0] == pytest.approx(0.05)
    assert (np.diff(sweep["yes_rate"]) <= 0).all()
    assert sweep["accuracy"].between(0, 1).all()
    # at a threshold below every P(yes) the verdict is always yes: accuracy is the label yes-rate
    low = stats.threshold_sweep(y, np.maximum(p, 0.2), thresholds=[0.1])
    assert low.loc[0, "accuracy"] == pytest.approx(y.mean())


def test_mode_agreement_hand_values():
    frame = pd.DataFrame({
        "label": [True, True, False, False],
        "soft": [0.9, 0.3, 0.2, np.nan],
        "hard": [True, False, False, True],
        "seed": [True, True, True, False],
    })
    t = cal.mode_agreement(frame).set_index(["a", "b"])
    assert list(t.index) == [("label", "soft"), ("label", "hard"), ("label", "seed"),
                             ("soft", "hard"), ("soft", "seed"), ("hard", "seed")]
    assert t.loc[("label", "soft"), "n"] == 3  # the flagged soft value is left out
    assert t.loc[("label", "soft"), "agreement"] == pytest.approx(2 / 3)
    assert t.loc[("label", "hard"), "agreement"] == pytest.approx(0.5)
    assert t.loc[("label", "seed"), "agreement"] == pytest.approx(0.75)
    assert t.loc[("soft", "hard"), "agreement"] == pytest.approx(1.0)
    # hard T F F T vs seed T T T F: agree once; pe = .5*.75 + .5*.25 = .5 -> kappa (.25 - .5) / .5
    assert t.loc[("hard", "seed"), "agreement"] == pytest.approx(0.25)
    assert t.loc[("hard", "seed"), "kappa"] == pytest.approx(-0.5)
    with pytest.raises(cal.CalibrationError, match="label"):
        cal.mode_agreement(frame.drop(columns="label"))


def test_judge_calibration_set_with_fake_judge(calib, rubric):
    sub = calib.groupby("section").head(3)
    judge = KeywordJudge(rules={"humor": 0.7, "is_think": None})
    judged = cal.judge_calibration_set(judge, rubric, sub)
    assert len(judged) == 3 * 6 + 3 * 14
    humor = judged[judged.key == "humor"]
    assert (humor.p_yes == 0.7).all() and humor.verdict.all()
    is_think = judged[judged.key == "is_think"]
    assert is_think.p_yes.isna().all() and is_think.flagged.all()
    rel = judged[judged.key == "relevancy"].merge(sub[["id", "entity", "text"]], on="id")
    expected = [HIT if e in t else MISS for e, t in zip(rel.entity, rel.text)]
    assert rel.p_yes.tolist() == pytest.approx(expected)
    # seed mode: plausible items of a text whose gates failed are not asked
    seed = cal.judge_calibration_set(KeywordJudge(rules={"fluency": 0.1}, mode="seed"), rubric, sub)
    assert not seed[seed.key == "humor"].asked.any()
    long = cal.long_labels(sub).merge(judged, on=["id", "section", "key"])
    assert len(long) == len(judged)
    frame = cal.mode_frame(cal.long_labels(sub), soft=judged, seed=seed)
    assert list(frame.columns) == ["id", "section", "key", "label", "soft", "seed"]
    assert frame["soft"].isna().sum() == 3  # the flagged is_think judgements
    assert not frame.loc[frame.key == "humor", "seed"].any()  # not asked counts as no
    assert len(cal.mode_agreement(frame)) == 3
    with pytest.raises(cal.CalibrationError, match="unknown mode"):
        cal.mode_frame(cal.long_labels(sub), greedy=judged)


def test_figures_are_written(tmp_path):
    y, p = [True, False, True, True, False], [0.9, 0.1, 0.7, 0.45, 0.55]
    fig = cal.reliability_diagram(y, p, tmp_path / "sub" / "rel.png")
    assert (tmp_path / "sub" / "rel.png").stat().st_size > 0 and len(fig.axes) == 2
    cal.plot_threshold_sweep(stats.threshold_sweep(y, p), tmp_path / "sweep.png", label_yes_rate=0.6)
    assert (tmp_path / "sweep.png").exists()
    summary = cal.summarize_probe(pd.DataFrame({"g": [0, 0, 1, 1], "v": [0.1, 0.3, 0.5, 0.9]}), "v", "g")
    cal.plot_probe(summary, "g", tmp_path / "probe.png")
    assert (tmp_path / "probe.png").exists()


# ----------------------------------------------------------------------------------------------
# Probes
# ----------------------------------------------------------------------------------------------

FILLERS = ["总之这是一个很好的产品。", "相信它不会让你失望。", "欢迎选购。"]


def test_length_probe_shapes_and_nesting():
    texts = {"a": "好喝的茶。", "b": "好用的笔。"}
    df = cal.length_probe_texts(texts, FILLERS, pad_levels=(0, 1, 2, 4))
    assert df.shape == (8, 4) and list(df.columns) == ["id", "pad_level", "text", "n_chars"]
    for tid, sub in df.groupby("id"):
        sub = sub.sort_values("pad_level")
        assert sub.iloc[0]["text"] == texts[tid]
        assert sub["n_chars"].is_monotonic_increasing
        for shorter, longer in zip(sub["text"], sub["text"].iloc[1:]):
            assert longer.startswith(shorter)  # a higher level only adds sentences
    level4 = df[(df.id == "a") & (df.pad_level == 4)].iloc[0]["text"]
    assert sum(level4.count(s) for s in FILLERS) == 4  # beyond the pool size the order repeats


def test_length_probe_deterministic():
    texts = [f"文案{i}。" for i in range(5)]
    a = cal.length_probe_texts(texts, FILLERS * 3, seed=1)
    b = cal.length_probe_texts(texts, FILLERS * 3, seed=1)
    pd.testing.assert_frame_equal(a, b)
    assert a["id"].unique().tolist() == ["0", "1", "2", "3", "4"]
    with pytest.raises(cal.CalibrationError, match="filler"):
        cal.length_probe_texts(texts, [])
    with pytest.raises(cal.CalibrationError, match="pad_levels"):
        cal.length_probe_texts(texts, FILLERS, pad_levels=(-1,))


def test_relevance_probe_pairs(calib):
    answers = calib[calib.section == "answer"]
    pairs = cal.relevance_probe_pairs(answers, seed=0)
    assert len(pairs) == len(answers)
    assert {"id", "text", "true_entity", "swapped_entity"} <= set(pairs.columns)
    assert (pairs.true_entity != pairs.swapped_entity).all()
    assert (pairs.true_domain != pairs.swapped_domain).all()
    pd.testing.assert_frame_equal(pairs, cal.relevance_probe_pairs(answers, seed=0))
    assert not pairs.swapped_entity.equals(cal.relevance_probe_pairs(answers, seed=1).swapped_entity)
    # without a domain column: any other entity; with a pool from elsewhere
    pool = pd.DataFrame({"entity": ["X", "Y"]})
    other = cal.relevance_probe_pairs(answers[["id", "text", "entity"]], pool=pool)
    assert set(other.swapped_entity) <= {"X", "Y"}
    with pytest.raises(cal.CalibrationError, match="no unrelated entity"):
        cal.relevance_probe_pairs(pd.DataFrame({"id": ["1"], "text": ["t"], "entity": ["E"]}))


def test_summarize_probe_ci_contains_mean():
    rng = np.random.default_rng(3)
    df = pd.DataFrame({"level": np.repeat([0, 1, 2], 30), "score": rng.random(90)})
    s = cal.summarize_probe(df, "score", "level")
    assert s["level"].tolist() == [0, 1, 2] and (s["n"] == 30).all()
    assert ((s["low"] <= s["mean"]) & (s["mean"] <= s["high"])).all()
    assert (s["low"] < s["high"]).all()
    pd.testing.assert_frame_equal(s, cal.summarize_probe(df, "score", "level"))
    with pytest.raises(cal.CalibrationError, match="nope"):
        cal.summarize_probe(df, "nope", "level")


# ----------------------------------------------------------------------------------------------
# lib.stats.bootstrap_ci
# ----------------------------------------------------------------------------------------------

def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.random.default_rng(0).normal(2.0, 1.0, 50)
    point, low, high = bootstrap_ci(x, n_resamples=500, seed=7)
    assert point == pytest.approx(x.mean())
    assert low < point < high
    assert (point, low, high) == bootstrap_ci(x, n_resamples=500, seed=7)
    assert (low, high) != bootstrap_ci(x, n_resamples=500, seed=8)[1:]
    wide = bootstrap_ci(x, n_resamples=500, seed=7, confidence=0.99)
    assert wide[1] < low and wide[2] > high
    bca = bootstrap_ci(x, n_resamples=500, seed=7, method="BCa")
    assert bca[1] < point < bca[2]


def test_bootstrap_ci_degenerate_inputs():
    assert bootstrap_ci([0.4]) == (0.4, 0.4, 0.4)
    assert bootstrap_ci([1.0, 1.0, 1.0]) == (1.0, 1.0, 1.0)
    assert bootstrap_ci([0.5, np.nan]) == (0.5, 0.5, 0.5)  # NaN dropped
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([1.0, 3.0], stat=np.median)[0] == 2.0
    with pytest.raises(StatsError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=1.5)
    with pytest.raises(StatsError, match="method"):
        bootstrap_ci([1.0, 2.0], method="normal")


# ----------------------------------------------------------------------------------------------
# Loader errors
# ----------------------------------------------------------------------------------------------

GOOD_ANSWER = {"id": "x1", "section": "answer", "entity": "茶", "text": "好茶。",
               "labels": {"fluency": True, "is_ad": True, "relevancy": True, "humor": False, "detail": False, "creativity": False}}


def _write(tmp_path: Path, lines: list) -> Path:
    p = tmp_path / "calib.jsonl"
    p.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False) for l in lines) + "\n", encoding="utf-8")
    return p


def _with(**changes) -> dict:
    row = json.loads(json.dumps(GOOD_ANSWER))
    row["id"] = "x2"
    for k, v in changes.items():
        if v is None:
            row.pop(k)
        else:
            row[k] = v
    return row


def _labels(**changes) -> dict:
    labels = dict(GOOD_ANSWER["labels"])
    for k, v in changes.items():
        if v is None:
            labels.pop(k)
        else:
            labels[k] = v
    return labels


@pytest.mark.parametrize(
    "second, use_rubric, match",
    [
        ('{"id": "x2", "section": ', False, r"calib\.jsonl:2: bad JSON"),
        ('["a list"]', False, r"calib\.jsonl:2: expected a JSON object"),
        (_with(section="reply"), False, r"calib\.jsonl:2: field 'section': unknown section 'reply'"),
        (_with(labels=_labels(humor=None)), True, r"calib\.jsonl:2: field 'labels': missing key\(s\) \['humor'\] .*a new or "
                                                  r"renamed rubric item needs a true/false label on every 'answer' line"),
        (_with(labels=_labels(funny=True)), True, r"calib\.jsonl:2: field 'labels': unknown key\(s\) \['funny'\]"),
        (_with(labels=_labels(humor=None)), False, r"calib\.jsonl:2: field 'labels': missing key\(s\) \['humor'\] \(expected those of line 1"),
        (_with(labels=_labels(humor=1)), False, r"calib\.jsonl:2: field 'labels\.humor': expected true or false, got 1"),
        (_with(labels=_labels(humor="yes")), False, r"field 'labels\.humor'"),
        (_with(text=None), False, r"calib\.jsonl:2: missing field 'text'"),
        (_with(text="  "), False, r"calib\.jsonl:2: field 'text': expected a non-empty string"),
        (_with(score=3), False, r"calib\.jsonl:2: unknown field 'score'"),
        (_with(id="x1"), False, r"calib\.jsonl:2: field 'id': duplicate id 'x1' \(first on line 1\)"),
        (_with(kind=3), False, r"field 'kind': expected a string"),
    ],
)
def test_loader_errors(tmp_path, rubric, second, use_rubric, match):
    p = _write(tmp_path, [GOOD_ANSWER, second])
    keys = cal.rubric_keys(rubric) if use_rubric else None
    with pytest.raises(cal.CalibrationError, match=match) as exc:
        cal.load_calibration_set(p, rubric_keys=keys)
    assert "\n" not in str(exc.value)


def test_loader_accepts_good_file_and_blank_lines(tmp_path, rubric):
    p = _write(tmp_path, [GOOD_ANSWER, "", _with(kind="good", note="n", domain="食品饮料")])
    df = cal.load_calibration_set(p, rubric_keys=cal.rubric_keys(rubric))
    assert df["id"].tolist() == ["x1", "x2"]
    assert df.loc[1, "domain"] == "食品饮料" and df.loc[0, "kind"] == ""


def test_loader_missing_or_empty_file(tmp_path):
    with pytest.raises(cal.CalibrationError, match="not found"):
        cal.load_calibration_set(tmp_path / "none.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(cal.CalibrationError, match="no rows"):
        cal.load_calibration_set(tmp_path / "empty.jsonl")
    with pytest.raises(cal.CalibrationError, match="not in the rubric's sections"):
        cal.load_calibration_set(_write(tmp_path, [GOOD_ANSWER]), rubric_keys={"think": ["is_think"]})
