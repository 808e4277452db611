"""lib.rubric: the default reproduces the original, validation, hashing, rendering, section score."""
from __future__ import annotations

import textwrap

import pytest

from lib import paths
from lib.rubric import (
    MIN_THINK_CHARS,
    TEMPLATE_PLACEHOLDER,
    RubricError,
    RubricItem,
    RubricSection,
    export_rubric,
    item_ablation,
    load_rubric,
    parse_rubric,
    plot_item_ablation,
    rubric_table,
    score_parts,
    section_score,
    think_shortcut,
)

# The original's checklists as published (CreativeTinyZero README, "Reward Design"), in order.
ORIGINAL_ANSWER = {
    "fluency": ("must-have", "该创意文案是否通顺？"),
    "is_ad": ("must-have", "该内容是否是一则广告标语？"),
    "relevancy": ("must-have", '该创意文案是否与"{entity}"相关？'),
    "humor": ("plausible", "该创意文案是否有趣幽默？"),
    "detail": ("plausible", "该创意文案作为广告词是否有足够细节内容？"),
    "creativity": ("plausible", "该创意文案是否极具新意、令人意想不到，而不是平平无奇老生常谈？"),
}
ORIGINAL_THINK = {
    "is_think": ("must-have", "这段文字是否明显是一段有实质内容的思考过程？"),
    "fluency": ("must-have", "这段文字是否通顺？"),
    "user_must": ("plausible", "这段文字是否包含了用户的需求分析？"),
    "product_must": ("plausible", '这段文字是否包含了"{entity}"广告品牌定位分析？'),
    "think_only_must": ("plausible", "这段文字是否不包含最终答案或最终文案？"),
    "target_user_must": ("plausible", '这段文字是否包含"{entity}"目标受众以及广告的核心信息的分析？'),
    "1st-person": ("plausible", "这段文字是否以第一人称我来自称？"),
    "product": ("plausible", "这段文字是否详细描述了广告品牌定位分析？"),
    "user": ("plausible", "这段文字是否详细描述了用户的需求分析？"),
    "target_user": ("plausible", "这段文字是否详细描述了分析目标受众以及广告的核心信息？"),
    "attract": ("plausible", "这段文字是否详细描述了如何通过创意表达将不同元素有机结合，形成具有吸引力的广告文案？"),
    "depth": ("plausible", "这段文字是否体现了广告文案设计的思考深度？而非泛泛而谈？"),
    "creativity": ("plausible", "这段文字是否提出了新奇的广告文案设计理念，能够从普通广告中脱颖而出？"),
    "reflection": ("plausible", "这段文字是否在思考过程中包含反思与修正？"),
}
ORIGINAL_ANSWER_TEMPLATE = """你是一位非常严格的广告创意审核大师。以下是一段关于{entity}的创意广告文案：
{completion}

请回答问题：{question}
只需回答“是”或“否”即可。"""
ORIGINAL_THINK_TEMPLATE = """你是一位非常严格的广告创意审核大师。以下是一段关于{entity}的相关内容：
{completion}

请回答问题：{question}
只需回答“是”或“否”即可。"""


@pytest.fixture(scope="module")
def default():
    return load_rubric()


@pytest.fixture(scope="module")
def heldout():
    return load_rubric("heldout")


def _write(tmp_path, text: str, name: str = "r.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return p


MINIMAL = """\
answer:
  template: "A {entity}: {completion} Q: {question}"
  items:
    - key: a
      type: must-have
      question: is it ok
    - key: b
      type: plausible
      question: is it good
think:
  template: "T {entity}: {completion} Q: {question}"
  items:
    - key: c
      type: must-have
      question: does it think
"""


# --- the default rubric is the original ---------------------------------------------------------

def test_default_reproduces_original_items_in_order(default):
    for name, original in (("answer", ORIGINAL_ANSWER), ("think", ORIGINAL_THINK)):
        got = {it.key: (it.type, it.question) for it in default[name].items}
        assert list(got) == list(original)
        assert got == original
        assert all(it.weight == 1.0 for it in default[name].items)


def test_default_reproduces_original_templates(default):
    assert default["answer"].template == ORIGINAL_ANSWER_TEMPLATE
    assert default["think"].template == ORIGINAL_THINK_TEMPLATE


def test_default_render_equals_original_format(default):
    # The original rendered with str.format(entity=..., completion=..., question=question.format(entity=...)).
    ent, text = "吮指原味鸡", "香脆多汁，一口难忘。"
    for name, tmpl in (("answer", ORIGINAL_ANSWER_TEMPLATE), ("think", ORIGINAL_THINK_TEMPLATE)):
        section = default[name]
        for it in section.items:
            expected = tmpl.format(entity=ent, completion=text, question=it.question.format(entity=ent))
            assert section.render(ent, text, it) == expected


def test_default_path_is_paths_constant(default):
    assert default.source == str(paths.DEFAULT_RUBRIC)
    assert [it.key for it in default["think"].must_have] == ["is_think", "fluency"]
    assert len(default["think"].plausible) == 12 and len(default["answer"].plausible) == 3


# --- the held-out rubric -------------------------------------------------------------------------

def test_heldout_same_keys_types_different_wording(default, heldout):
    for name in ("answer", "think"):
        d, h = default[name], heldout[name]
        assert [(it.key, it.type) for it in d.items] == [(it.key, it.type) for it in h.items]
        for a, b in zip(d.items, h.items):
            assert a.question != b.question, a.key
            assert ("{entity}" in a.question) == ("{entity}" in b.question), a.key
        assert d.template != h.template
        assert "“是”或“否”" in h.template
    assert heldout.content_hash != default.content_hash


# --- render / prefix -----------------------------------------------------------------------------

def test_render_braces_in_user_text_are_copied_verbatim(default):
    s = default["answer"]
    relevancy = s.item("relevancy")
    out = s.render("{question}牌", "喝{entity}{completion}{0}{", relevancy)
    assert "喝{entity}{completion}{0}{\n" in out
    assert '请回答问题：该创意文案是否与"{question}牌"相关？' in out


def test_prefix_is_shared_by_every_question(default):
    for name in ("answer", "think"):
        s = default[name]
        pre = s.prefix("可乐", "文案")
        assert pre.endswith("请回答问题：")
        assert "{" not in pre
        for it in s.items:
            full = s.render("可乐", "文案", it)
            assert full.startswith(pre)
            assert full[len(pre):].startswith(s.question("可乐", it))


def test_section_item_lookup_error(default):
    with pytest.raises(RubricError, match="no item 'nope'"):
        default["answer"].item("nope")


# --- validation ----------------------------------------------------------------------------------

BAD_CASES = {
    "unknown_type": (MINIMAL.replace("type: plausible", "type: optional"), "unknown item type 'optional'"),
    "no_completion": (MINIMAL.replace("A {entity}: {completion}", "A {entity}:"), "section 'answer': template has no {completion}"),
    "no_question": (MINIMAL.replace("T {entity}: {completion} Q: {question}", "T {completion}"), "section 'think': template has no {question}"),
    "duplicate": (MINIMAL.replace("key: b", "key: a"), "section 'answer': duplicate item key 'a'"),
    "empty_items": (MINIMAL.split("think:")[0] + "think:\n  template: \"{completion}{question}\"\n  items: []\n",
                    "section 'think': empty section"),
    "no_items_key": (MINIMAL.split("think:")[0] + "think:\n  template: \"{completion}{question}\"\n", "section 'think': empty section"),
    "missing_section": (MINIMAL.split("think:")[0], "missing section 'think'"),
    "malformed": (MINIMAL + "  - [unclosed\n", "malformed YAML"),
    "negative_weight": (MINIMAL.replace("question: is it good", "question: is it good\n      weight: -1"), "negative weight -1"),
    "string_weight": (MINIMAL.replace("question: is it good", "question: is it good\n      weight: heavy"), "weight must be a number"),
    "zero_weights": (MINIMAL.replace("question: is it good", "question: is it good\n      weight: 0"), "plausible item weights sum to 0"),
    "not_mapping": ("- just\n- a list\n", "a rubric must be a mapping"),
    "unknown_top": (MINIMAL + "extra: 1\n", "unknown top-level key 'extra'"),
    "unknown_field": (MINIMAL.replace("question: is it ok", "question: is it ok\n      hint: x"), "unknown field 'hint'"),
    "empty_question": (MINIMAL.replace("question: is it ok", "question: ''"), "'question' must be a non-empty string"),
    "section_not_mapping": (MINIMAL.split("think:")[0] + "think: [1, 2]\n", "section 'think': must be a mapping"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_validation_errors_are_one_line_naming_file_and_thing(tmp_path, case):
    text, expected = BAD_CASES[case]
    p = _write(tmp_path, text, name=f"{case}.yaml")
    with pytest.raises(RubricError) as exc:
        load_rubric(p)
    msg = str(exc.value)
    assert "\n" not in msg
    assert str(p) in msg
    assert expected in msg


def test_minimal_rubric_loads(tmp_path):
    r = load_rubric(_write(tmp_path, MINIMAL))
    assert r["answer"].keys == ["a", "b"] and r["think"].keys == ["c"]
    assert r["think"].plausible == []


def test_unknown_file_and_name():
    with pytest.raises(RubricError, match="rubric file not found"):
        load_rubric("/nonexistent/rubric.yaml")
    with pytest.raises(RubricError, match="unknown rubric 'nope'; available: .*default.*heldout"):
        load_rubric("nope")


# --- content hash --------------------------------------------------------------------------------

def test_hash_stable_across_layout_and_key_order(tmp_path):
    reordered = """\
    # a comment that changes nothing
    think:
      items:
        - question: does it think
          type: must-have
          key: c
      template: "T {entity}: {completion} Q: {question}"

    answer:
      items:
        - {question: is it ok,   key: a, type: must-have, weight: 1}
        - {type: plausible, key: b, question: is it good}
      template: 'A {entity}: {completion} Q: {question}'
    """
    h1 = load_rubric(_write(tmp_path, MINIMAL, "a.yaml")).content_hash
    h2 = load_rubric(_write(tmp_path, reordered, "b.yaml")).content_hash
    assert h1 == h2
    assert len(h1) == 64


def test_hash_changes_with_content(tmp_path):
    h1 = load_rubric(_write(tmp_path, MINIMAL, "a.yaml")).content_hash
    h2 = load_rubric(_write(tmp_path, MINIMAL.replace("is it good", "is it great"), "b.yaml")).content_hash
    h3 = load_rubric(_write(tmp_path, MINIMAL.replace("question: is it good", "question: is it good\n      weight: 2"), "c.yaml")).content_hash
    assert len({h1, h2, h3}) == 3


def test_default_hash_is_deterministic(default):
    assert load_rubric().content_hash == default.content_hash


# --- section score -------------------------------------------------------------------------------

ALL_PASS = {"fluency": 1, "is_ad": 1, "relevancy": 1, "humor": 1, "detail": 1, "creativity": 1}


@pytest.mark.parametrize(
    "indicators, expected",
    [
        (ALL_PASS, 1.0),  # 1 * min(1 + 0.05, 1) = 1
        ({**ALL_PASS, "is_ad": 0}, 0.0),  # one gate fails: 0 * ... = 0
        ({**ALL_PASS, "humor": 0, "detail": 0, "creativity": 0}, 0.05),  # 1 * min(0 + 0.05, 1)
        ({**ALL_PASS, "detail": 0, "creativity": 0}, 1 / 3 + 0.05),  # mean 1/3 -> 0.38333
        ({**ALL_PASS, "creativity": 0}, 2 / 3 + 0.05),  # mean 2/3 -> 0.71667
        # soft: gate 0.9*0.8*0.5 = 0.36; mean (0.2+0.4+0.6)/3 = 0.4; 0.36 * 0.45 = 0.162
        ({"fluency": 0.9, "is_ad": 0.8, "relevancy": 0.5, "humor": 0.2, "detail": 0.4, "creativity": 0.6}, 0.162),
        # floor capped: mean (1+1+0.91)/3 = 0.97 -> min(1.02, 1) = 1
        ({**ALL_PASS, "creativity": 0.91}, 1.0),
        # mean (1+1+0.85)/3 = 0.95 -> 1.0 exactly at the cap; gate 0.5 -> 0.5
        ({**ALL_PASS, "fluency": 0.5, "creativity": 0.85}, 0.5),
        ({"fluency": 1, "is_ad": 1, "relevancy": 1, "humor": 1}, 1 / 3 + 0.05),  # missing detail, creativity count 0
        ({}, 0.0),  # everything missing
        ({"humor": 1, "detail": 1, "creativity": 1}, 0.0),  # missing gates count 0
        ({**ALL_PASS, "unknown_key": 0.3}, 1.0),  # keys outside the section are ignored
    ],
)
def test_section_score_hand_computed(default, indicators, expected):
    assert section_score(default["answer"], indicators) == pytest.approx(expected)


def test_section_score_think_seed_style(default):
    # gates pass, 6 of 12 plausible yes: 0.5 + 0.05 = 0.55
    keys = [it.key for it in default["think"].plausible]
    ind = {"is_think": 1, "fluency": 1, **{k: float(i % 2) for i, k in enumerate(keys)}}
    assert section_score(default["think"], ind) == pytest.approx(0.55)


def test_section_score_weights():
    s = RubricSection(
        "answer",
        "{completion}{question}",
        (
            RubricItem("g", "must-have", "g?", weight=5.0),  # gate weights are ignored
            RubricItem("a", "plausible", "a?", weight=3.0),
            RubricItem("b", "plausible", "b?"),
            RubricItem("z", "plausible", "z?", weight=0.0),
        ),
    )
    # weighted mean (3*1 + 1*0 + 0*1) / 4 = 0.75 -> 0.8; gate 0.5 -> 0.4
    assert section_score(s, {"g": 0.5, "a": 1, "b": 0, "z": 1}) == pytest.approx(0.4)
    # (3*0 + 1*1) / 4 = 0.25 -> 0.3
    assert section_score(s, {"g": 1, "a": 0, "b": 1, "z": 0}) == pytest.approx(0.3)


def test_section_score_without_plausible_items_is_the_gate():
    s = RubricSection("think", "{completion}{question}", (RubricItem("x", "must-have", "x?"), RubricItem("y", "must-have", "y?")))
    assert section_score(s, {"x": 0.5, "y": 0.5}) == pytest.approx(0.25)
    assert section_score(s, {"x": 1, "y": 1}) == 1.0


@pytest.mark.parametrize("bad", [1.2, -0.1, float("nan"), "yes", None])
def test_section_score_rejects_out_of_range(default, bad):
    with pytest.raises(RubricError, match="indicator 'humor' must lie in \\[0, 1\\]"):
        section_score(default["answer"], {**ALL_PASS, "humor": bad})


# --- think shortcut, table -----------------------------------------------------------------------

@pytest.mark.parametrize(
    "text, reason",
    [
        ("这里写下你的思考过程", "placeholder"),
        ("我认为这款可乐的目标用户是年轻人，" * 3 + TEMPLATE_PLACEHOLDER, "placeholder"),  # long but still the template
        ("短", "too_short"),
        ("", "too_short"),
        ("一" * (MIN_THINK_CHARS - 1), "too_short"),
        ("一" * MIN_THINK_CHARS, None),
        ("首先，我需要分析目标用户的需求和品牌定位。", None),
    ],
)
def test_think_shortcut(text, reason):
    assert think_shortcut(text) == reason


def test_rubric_table(default):
    t = rubric_table(default)
    assert list(t.columns) == ["section", "key", "type", "weight", "question"]
    assert len(t) == 6 + 14
    assert (t["section"] == "answer").sum() == 6
    assert t.loc[(t.section == "think") & (t.key == "user_must"), "type"].item() == "plausible"


# --- score parts, ablation, export ---------------------------------------------------------------

def test_score_parts_worked_example(default):
    # gate 1 * 0.5 * 1 = 0.5; mean (1 + 0 + 0.5)/3 = 0.5; factor 0.55; score 0.275
    parts = score_parts(default["answer"], {"fluency": 1, "is_ad": 0.5, "relevancy": 1, "humor": 1, "detail": 0, "creativity": 0.5})
    assert parts == pytest.approx({"gate": 0.5, "plausible_mean": 0.5, "plausible_factor": 0.55, "score": 0.275})


def test_item_ablation(default):
    t = item_ablation(default["answer"], ALL_PASS)
    assert list(t["fails"]) == ["(none)"] + default["answer"].keys
    by = dict(zip(t["fails"], t["score"]))
    # a failing gate zeroes the score; a failing plausible item: mean 2/3 + 0.05 = 0.71667
    assert by["(none)"] == 1.0 and by["relevancy"] == 0.0
    assert by["humor"] == pytest.approx(2 / 3 + 0.05)
    assert t.loc[t.fails == "humor", "delta"].item() == pytest.approx(2 / 3 + 0.05 - 1)


def test_plot_item_ablation(default, tmp_path):
    fig = plot_item_ablation(item_ablation(default["think"], {k: 1.0 for k in default["think"].keys}), "t", tmp_path / "f.png")
    assert (tmp_path / "f.png").stat().st_size > 1000
    assert len(fig.axes[0].patches) == 1 + 14


def test_export_rubric(default, tmp_path):
    written = export_rubric(default, tmp_path / "rubric")
    assert set(written) == {"answer_csv", "think_csv", "markdown", "yaml"}
    assert load_rubric(written["yaml"]).content_hash == default.content_hash
    import pandas as pd

    assert len(pd.read_csv(written["think_csv"])) == 14
    md = written["markdown"].read_text(encoding="utf-8")
    assert default.content_hash in md and "| relevancy |" in md.replace("  ", " ")


def test_export_rubric_from_dict(tmp_path):
    import yaml

    r = parse_rubric(yaml.safe_load(MINIMAL))
    written = export_rubric(r, tmp_path)
    assert load_rubric(written["yaml"]).content_hash == r.content_hash
