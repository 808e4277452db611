"""lib.judge.calibration.per_item: per-item calibrators on synthetic P(yes) whose answer is known, the score over kept
items, degenerate cases, saving and loading it for a run, and its use in the judge rewards and evaluation scores."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from lib.judge.calibration import per_item as pi
from lib.judge.calibration.dataset import CalibrationError
from lib.profiles import ProfileError, load_profile
from lib.rewards import JudgeRewards
from lib.rubric import load_rubric, section_score
from lib.run import RunContext
from tests.fakes import KeywordJudge


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


def synthetic_long(rubric, n_texts: int = 60, seed: int = 0, ranks: tuple[str, ...] = ("relevancy", "humor")) -> pd.DataFrame:
    """Labels and P(yes) for every item of every text: the items in `ranks` say yes ~95% of the time yet rank the
    labels perfectly (yes 0.97 +- 0.005, no 0.93 +- 0.005); every other item's P(yes) is noise around 0.95."""
    rng = np.random.default_rng(seed)
    rows = []
    for name, section in rubric.sections.items():
        for t in range(n_texts):
            for it in section.items:
                y = bool(rng.random() < 0.3)
                if it.key in ranks:
                    p = (0.97 if y else 0.93) + rng.uniform(-0.005, 0.005)
                else:
                    p = rng.uniform(0.9, 0.99)
                rows.append({"id": f"{name}-{t}", "section": name, "key": it.key, "label": y, "p_yes": p})
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def fitted(rubric):
    return pi.fit_per_item(synthetic_long(rubric), rubric, method="platt", min_auroc=0.6, folds=5, judge_model="fake")


# ------------------------------------------------------------------------------------------ fitting


def test_platt_restores_calibration_of_an_item_that_ranks_but_always_says_yes(fitted):
    calib, oof = fitted
    item = calib.items[("answer", "relevancy")]
    assert item.auroc_raw == 1.0 and item.auroc_cv > 0.95
    assert item.ece_before > 0.6  # P(yes) ~0.95 against a base rate of ~0.3
    assert item.ece_after < 0.2 and item.brier_after < item.brier_before / 3
    assert item.kept and item.weight == 1.0 and item.params["kind"] == "platt" and item.params["coef"] > 0
    # applied to new P(yes): a no-like 0.93 maps far below a yes-like 0.97
    assert calib.calibrate("answer", "relevancy", 0.93) < 0.3 < 0.7 < calib.calibrate("answer", "relevancy", 0.97)
    assert set(oof.columns) == {"id", "section", "key", "label", "p_yes", "fold", "p_cv"}


def test_an_item_at_chance_is_dropped_and_leaves_the_score(fitted, rubric):
    calib, _ = fitted
    chance = calib.items[("answer", "detail")]
    assert chance.auroc_cv < 0.6 and not chance.kept and chance.weight == 0.0
    table = calib.table()
    assert table.set_index(["section", "key"]).loc[("answer", "relevancy"), "kept"]
    # the dropped item's P(yes) does not move the score; a kept one does
    base = {it.key: 0.95 for it in rubric["answer"].items}
    assert calib.score(rubric["answer"], {**base, "detail": 0.0}) == calib.score(rubric["answer"], {**base, "detail": 1.0})
    assert calib.score(rubric["answer"], {**base, "humor": 0.93}) < calib.score(rubric["answer"], {**base, "humor": 0.97})


def test_an_item_the_judge_ranks_inversely_is_never_flipped_into_a_reward(rubric):
    """A judge that says yes more often to the texts the labels reject ranks them inversely (AUROC ~0); a free
    Platt slope would flip it into a strong item. It must stay weak: the score never pays for the judge's no."""
    long = synthetic_long(rubric, ranks=("relevancy",))
    inverse = (long["key"] == "humor")
    long.loc[inverse, "p_yes"] = np.where(long.loc[inverse, "label"], 0.93, 0.97)
    calib, _ = pi.fit_per_item(long, rubric, method="platt", min_auroc=0.6, folds=5, judge_model="fake")
    item = calib.items[("answer", "humor")]
    assert item.auroc_raw == 0.0
    assert item.params["kind"] == "constant" and not item.kept
    assert not (item.auroc_cv >= 0.6)  # NaN or low: no out-of-fold calibrator turned it around
    assert pi.fit_params([True, False] * 20, [0.9, 0.99] * 20, "platt")["kind"] == "constant"


def test_cross_validation_never_scores_a_text_with_a_calibrator_fitted_on_it():
    rng = np.random.default_rng(1)
    ids = [f"t{i}" for i in range(23)]
    fold_of = pi.text_folds(ids, 5, seed=3)
    assert set(fold_of.values()) == set(range(5)) and len(fold_of) == 23
    p = rng.uniform(0, 1, 23)  # unique P(yes) per text: they identify the text
    y = rng.random(23) < 0.5
    seen_by: list[set] = []

    def fit(yy, pp, method):
        trained = set(np.round(pp, 12))
        seen_by.append(trained)

        def apply(q):
            assert not trained & set(np.round(q, 12)), "a text was scored by a calibrator fitted on it"
            return np.full(len(q), 0.5)
        return apply

    out = pi.cross_validated(y, p, np.array([fold_of[i] for i in ids]), "platt", fit=fit)
    assert len(seen_by) == 5 and not np.isnan(out).any()
    # and the real fit: every out-of-fold row's fold differs from the folds its calibrator was fitted on
    long = pd.DataFrame({"id": ids * 2, "section": "answer", "key": ["humor"] * 23 + ["detail"] * 23,
                         "label": list(y) * 2, "p_yes": list(p) * 2})
    folds = {k: dict(zip(g["id"], g["fold"])) for k, g in pi.fit_per_item(long, _answer_only(), folds=5)[1].groupby("key")}
    assert folds["humor"] == folds["detail"]  # one fold assignment per section, shared by its items


def _answer_only():
    from lib.rubric import parse_rubric

    return parse_rubric({
        "answer": {"template": "{entity}{completion}{question}",
                   "items": [{"key": "humor", "type": "plausible", "question": "q"},
                             {"key": "detail", "type": "plausible", "question": "q"}]},
        "think": {"template": "{completion}{question}", "items": [{"key": "t", "type": "must-have", "question": "q"}]},
    })


def test_isotonic_and_a_save_load_round_trip_score_the_same(rubric, tmp_path):
    calib, _ = pi.fit_per_item(synthetic_long(rubric), rubric, method="isotonic", folds=4)
    assert calib.items[("answer", "humor")].params["kind"] == "isotonic"
    back = pi.PerItemCalibration.load(calib.save(tmp_path / "c.json"))
    assert back.table().equals(calib.table())
    texts = [{it.key: float(p) for it, p in zip(rubric[s].items, np.linspace(0.9, 0.99, len(rubric[s].items)))}
             for s in ("answer", "think")]
    for s, ps in zip(("answer", "think"), texts):
        assert back.score(rubric[s], ps) == pytest.approx(calib.score(rubric[s], ps))
    raw = json.loads((tmp_path / "c.json").read_text(encoding="utf-8"))
    assert {"kept", "params", "auroc_cv"} <= set(raw["items"][0]) and raw["method"] == "isotonic"


def test_degenerate_items_one_class_and_too_few_texts(rubric):
    long = synthetic_long(rubric, n_texts=20)
    long.loc[(long.section == "answer") & (long.key == "fluency"), "label"] = True  # one class
    calib, _ = pi.fit_per_item(long, rubric, folds=5)
    one = calib.items[("answer", "fluency")]
    assert one.rule == "one class" and np.isnan(one.auroc_cv) and not one.kept
    assert one.params == {"kind": "constant", "value": pytest.approx(21 / 22)}  # (yes + 1) / (n + 2)
    # a single text: nothing to cross-validate on; the item counts as weak
    tiny = long[long["id"].isin(["answer-0", "think-0"])]
    calib, oof = pi.fit_per_item(tiny, rubric, folds=5)
    assert all(np.isnan(it.auroc_cv) and not it.kept for it in calib.items.values()) and oof["p_cv"].isna().all()
    # fewer texts than folds: one text per fold (leave-one-text-out)
    assert sorted(pi.text_folds(["a", "b", "c"], 5).values()) == [0, 1, 2]
    # keep: a weak item stays at full weight
    kept = pi.fit_per_item(long, rubric, folds=5, weak_items="keep")[0]
    assert all(it.kept for it in kept.items.values())
    pi.reliability_before_after(oof, None)  # nothing out of fold: an empty figure, no error


def test_score_is_the_rubric_formula_over_kept_items(rubric):
    section = rubric["answer"]
    ident = {"kind": "identity"}

    def item(key, weight):
        it = section.item(key)
        return pi.ItemCalibration("answer", key, it.type, 10, 0.5, 0.7, 0.7, 0.1, 0.1, 0.2, 0.2, ident, weight=weight)

    weights = {"fluency": 1.0, "is_ad": 0.0, "relevancy": 0.5, "humor": 1.0, "detail": 0.0, "creativity": 0.5}
    calib = pi.PerItemCalibration("platt", 0.6, "downweight", 5,
                                  items={("answer", k): item(k, w) for k, w in weights.items()})
    p = {"fluency": 0.9, "is_ad": 0.1, "relevancy": 0.64, "humor": 0.8, "detail": 0.0, "creativity": 0.2}
    gate = 0.9 * 0.64 ** 0.5  # is_ad dropped; relevancy's factor raised to its weight
    plausible = (1.0 * 0.8 + 0.5 * 0.2) / 1.5  # detail dropped; creativity at half weight
    assert calib.score(section, p) == pytest.approx(gate * min(plausible + 0.05, 1.0))
    # every item at full weight with identity calibrators: exactly the seed formula on raw P(yes)
    full = pi.PerItemCalibration("platt", 0.6, "keep", 5, items={("answer", k): item(k, 1.0) for k in weights})
    assert full.score(section, p) == pytest.approx(section_score(section, p))
    # every plausible item dropped: the gates alone (the rubric's rule for a section without plausible items)
    gates = pi.PerItemCalibration("platt", 0.6, "drop", 5, items={
        ("answer", k): item(k, 1.0 if section.item(k).type == "must-have" else 0.0) for k in weights})
    assert gates.score(section, p) == pytest.approx(0.9 * 0.1 * 0.64)
    assert pi.item_weight(0.55, 0.6, "downweight") == pytest.approx(0.5)
    assert calib.calibrate("answer", "humor", None) == 0.5  # a flagged judgement is calibrated as P(yes) 0.5


# ------------------------------------------------------------------------------------------ where it is used


def _ctx(tmp_path, **per_item):
    profile = load_profile("smoke", {"calibration": {"per_item": per_item}} if per_item else None)
    return RunContext(tmp_path, profile)


def test_for_run_none_by_default_and_one_line_errors(tmp_path, rubric, fitted):
    assert pi.for_run(_ctx(tmp_path)) is None  # method none: no file needed, the seed formula on raw P(yes)
    ctx = _ctx(tmp_path, method="platt")
    with pytest.raises(CalibrationError) as err:
        pi.for_run(ctx)
    msg = str(err.value)
    assert "\n" not in msg and str(pi.calibration_path(ctx)) in msg and "02_judge_calibration" in msg
    calib, _ = fitted
    calib.judge_model = ctx.profile.judge.model
    calib.save(pi.calibration_path(ctx))
    loaded = pi.for_run(ctx)
    assert loaded.table()["kept"].equals(calib.table()["kept"])
    # the profile's rule re-decides which items are kept from the stored cross-validated AUROC
    assert all(it.kept for it in pi.for_run(_ctx(tmp_path, method="platt", weak_items="keep")).items.values())
    with pytest.raises(CalibrationError, match="fitted for method 'platt'.*'isotonic'"):
        pi.for_run(_ctx(tmp_path, method="isotonic"))
    hard = RunContext(tmp_path, load_profile("smoke", {"calibration": {"per_item": {"method": "platt"}},
                                                       "judge": {"mode": "hard"}}))
    with pytest.raises(CalibrationError, match="judge.mode"):
        pi.for_run(hard)


def test_profile_knobs(tmp_path):
    for name in ("cpu", "gpu"):  # training is unchanged unless a profile turns it on
        assert load_profile(name).calibration.per_item.method == "none"
    with pytest.raises(ProfileError, match="calibration.per_item.methd"):
        load_profile("smoke", {"calibration": {"per_item": {"methd": "platt"}}})
    with pytest.raises(ProfileError, match="calibration.per_item.method"):
        load_profile("smoke", {"calibration": {"per_item": {"method": "beta"}}})


def test_judge_rewards_apply_the_calibration_and_none_keeps_the_seed_formula(rubric, fitted):
    calib, _ = fitted
    judge = KeywordJudge(rules={"relevancy": 0.97, "humor": 0.93}, default=0.95)
    texts = ["<think>" + "我" * 30 + "</think><answer>可乐广告，清爽一夏</answer>"]
    raw = JudgeRewards(judge, rubric)
    expected = section_score(rubric["answer"], {it.key: judge.rules.get(it.key, 0.95) for it in rubric["answer"].items})
    assert raw.answer_quality_reward(texts, entity=["可乐"]) == [pytest.approx(expected)]
    assert "p_calibrated" not in raw.details["answer"][0]["items"]["humor"]
    jr = JudgeRewards(judge, rubric, calibration=calib)
    [score] = jr.answer_quality_reward(texts, entity=["可乐"])
    assert score == pytest.approx(calib.score(rubric["answer"], {it.key: judge.rules.get(it.key, 0.95)
                                                                  for it in rubric["answer"].items}))
    item = jr.details["answer"][0]["items"]["humor"]
    assert item["p_yes"] == 0.93 and item["p_calibrated"] == pytest.approx(calib.calibrate("answer", "humor", 0.93))
    assert jr.think_quality_reward(["<think>短</think><answer>x</answer>"], entity=["可乐"]) == [0.0]  # shortcut stays 0
    with pytest.raises(Exception, match="soft"):
        JudgeRewards(KeywordJudge(mode="seed"), rubric, calibration=calib)


def test_evaluation_scores_carry_the_calibration(rubric, fitted):
    from lib.eval.scoring import score_completions

    calib, _ = fitted
    judge = KeywordJudge(rules={"relevancy": 0.97, "humor": 0.93}, default=0.95)
    texts = ["<think>" + "我" * 30 + "</think><answer>可乐广告，清爽一夏</answer>"]
    plain, _ = score_completions({"m": texts}, ["可乐"], judge, rubric)
    per_item, details = score_completions({"m": texts}, ["可乐"], judge, rubric, calibration=calib)
    assert per_item["answer"].iloc[0] != plain["answer"].iloc[0]
    assert all("p_calibrated" in d for d in details[0]["answer_items"])
    # the case studies (notebook 05) judge what notebook 04 did not with the same calibration
    from lib.eval.scoring import score_with_reuse

    class Closable(KeywordJudge):
        def close(self):
            pass

    reused, n_new = score_with_reuse({"m": texts}, ["可乐"], [], lambda: Closable(rules=judge.rules, default=0.95), rubric,
                                     calibration=calib)
    assert n_new == 1 and reused["m"][0]["answer_score"] == pytest.approx(per_item["answer"].iloc[0])


def test_training_reads_the_runs_calibration_before_loading_the_policy(tmp_path, monkeypatch, rubric, fitted):
    from lib.train import grpo

    def no_policy(profile):
        raise AssertionError("the policy was loaded before the calibration was checked")

    monkeypatch.setattr(grpo, "load_policy", no_policy)
    ctx = _ctx(tmp_path, method="platt")
    with pytest.raises(CalibrationError, match="02_judge_calibration"):
        grpo.build_trainer(ctx.profile, ctx, judge=KeywordJudge())
    calib, _ = fitted
    calib.judge_model = ctx.profile.judge.model
    calib.save(pi.calibration_path(ctx))
    seen = {}
    monkeypatch.setattr(grpo, "load_policy", lambda profile: (_ for _ in ()).throw(AssertionError("stop")))
    real = grpo.judge_rewards_for

    def spy(profile, judge):
        seen["jr"] = real(profile, judge)
        return seen["jr"]

    monkeypatch.setattr(grpo, "judge_rewards_for", spy)
    with pytest.raises(AssertionError, match="stop"):
        grpo.build_trainer(ctx.profile, ctx, judge=KeywordJudge())
    assert seen["jr"].calibration is not None and seen["jr"].calibration.method == "platt"
