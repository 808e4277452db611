"""lib.judge.preferences: the preference loader's errors, the shipped set derived from the calibration set, and the
pairwise judge's agreement with its interval (a fake A/B backend stands in for the model)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.judge import preferences as pr
from lib.judge.calibration import load_calibration_set, rubric_keys
from lib.rubric import load_rubric, parse_rubric
from tests.test_reward_designs import ABBackend, relative_judge


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


def _write(tmp_path, lines):
    p = tmp_path / "prefs.jsonl"
    p.write_text("".join((x if isinstance(x, str) else json.dumps(x, ensure_ascii=False)) + "\n" for x in lines),
                 encoding="utf-8")
    return p


GOOD = {"prompt": "写可乐广告", "chosen": "清爽一夏，可乐相伴", "rejected": "可乐"}


@pytest.mark.parametrize("line, where", [
    ("{not json", "bad JSON"),
    ("[1, 2]", "expected a JSON object"),
    ({"prompt": "p", "chosen": "a"}, "field 'rejected': missing"),
    ({**GOOD, "chosen": 3}, "field 'chosen': expected a non-empty string"),
    ({**GOOD, "prompt": "  "}, "field 'prompt': expected a non-empty string"),
    ({**GOOD, "entity": ""}, "field 'entity': expected a non-empty string"),
    ({**GOOD, "rejected": GOOD["chosen"]}, "field 'rejected': the same text as 'chosen'"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, where):
    p = _write(tmp_path, [GOOD, "", line])
    with pytest.raises(pr.PreferenceError) as err:
        pr.load_preferences(p)
    msg = str(err.value)
    assert msg.startswith(f"{p}:3: ") and where in msg and "\n" not in msg


def test_loader_entity_optional_extra_fields_ignored(tmp_path):
    p = _write(tmp_path, [GOOD, {**GOOD, "entity": "可乐", "source": "x", "score_chosen": 9}])
    df = pr.load_preferences(p)
    assert list(df.columns) == list(pr.COLUMNS) and list(df["line"]) == [1, 2]
    assert list(df["entity"]) == ["写可乐广告", "可乐"]  # without an entity the prompt stands in
    with pytest.raises(pr.PreferenceError, match="not found"):
        pr.load_preferences(tmp_path / "missing.jsonl")
    with pytest.raises(pr.PreferenceError, match="no pairs"):
        pr.load_preferences(_write(tmp_path, [""]))


def test_shipped_set_is_derived_from_the_calibration_set(rubric):
    calib = load_calibration_set(rubric_keys=rubric_keys(rubric))
    derived = pr.build_preference_pairs(calib, rubric)
    shipped = pr.load_preferences()
    assert 20 <= len(shipped) <= 40 and shipped["entity"].nunique() >= 15
    assert list(shipped["chosen"]) == list(derived["chosen"]) and list(shipped["rejected"]) == list(derived["rejected"])
    scores = pr.labelled_scores(calib, rubric)
    by_id = dict(zip(calib.loc[scores.index, "id"], scores))
    assert all(by_id[c] - by_id[r] >= pr.DEFAULT_MARGIN for c, r in zip(derived["chosen_id"], derived["rejected_id"]))
    assert (derived.groupby("entity").size() <= pr.DEFAULT_PER_ENTITY).all()


def test_agreement_with_a_judge_that_prefers_longer_texts(rubric):
    prefs = pd.DataFrame({"prompt": ["p1", "p1", "p2"], "entity": ["可乐"] * 3,
                          "chosen": ["好喝的可乐真解渴", "冰爽可乐夏日必备", "短"], "rejected": ["可乐", "可", "长长长长长"]})
    out = pr.preference_agreement(relative_judge(ABBackend(lambda a, b: 0.9 if len(a) > len(b) else 0.1, bias=0.05),
                                                 rubric), prefs)
    assert list(out["correct"]) == [1.0, 1.0, 0.0]
    assert out["consistent"].tolist() == [1.0, 1.0, 1.0] and out["position_bias"].to_numpy() == pytest.approx([0.05] * 3)
    s = pr.summarize_agreement(out, n_resamples=200)
    assert s["accuracy"] == pytest.approx(2 / 3) and s["n_prompts"] == 2 and s["position_consistency"] == 1.0
    # a judge that always answers A: every verdict a tie (position bias cancelled), never consistent
    always_a = pr.preference_agreement(relative_judge(ABBackend(lambda a, b: 1.0), rubric), prefs)
    assert list(always_a["correct"]) == [0.5] * 3 and always_a["consistent"].eq(0.0).all()
    assert pr.pairwise_judge(object(), parse_rubric({k: v for k, v in _raw(rubric).items() if k != "relative"}))[0] is None


def _raw(rubric):
    import yaml

    return yaml.safe_load(open(rubric.source, encoding="utf-8"))


def test_interval_over_prompts():
    rng = np.random.default_rng(0)
    pairs = pd.DataFrame({"prompt": np.repeat([f"p{i}" for i in range(20)], 2),
                          "win": rng.uniform(0, 1, 40), "p_ab": 0.6, "p_ba": 0.3})
    s = pr.summarize_agreement(pr.with_verdicts(pairs), n_resamples=500, seed=1)
    lo, hi = s["accuracy_ci"]
    assert lo < s["accuracy"] < hi and 0 <= lo and hi <= 1 and hi - lo < 0.5
    assert s == pr.summarize_agreement(pr.with_verdicts(pairs), n_resamples=500, seed=1)  # seeded: the same interval
    # the point is the share of pairs right, however the pairs are grouped into prompts
    one_each = pr.summarize_agreement(pr.with_verdicts(pairs.assign(prompt=[f"q{i}" for i in range(40)])), n_resamples=500)
    assert one_each["accuracy"] == s["accuracy"]
    # degenerate: every prompt right, or a single prompt: the point
    assert pr.summarize_agreement(pr.with_verdicts(pairs.assign(win=0.9)))["accuracy_ci"] == [1.0, 1.0]
    single = pr.summarize_agreement(pr.with_verdicts(pairs.assign(prompt="p")))
    assert single["accuracy_ci"] == [single["accuracy"]] * 2
    assert "chance" in pr.describe_agreement(s)
