"""lib.eval.report: case-study pages and the one-file run report."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
from matplotlib.figure import Figure

from lib.eval.tables import save_table
from lib.judge import Judgement
from lib.profiles import Profile, dump_profile
from lib.eval.report import (
    REPORT_SECTIONS,
    ReportError,
    build_run_report,
    case_entry,
    case_study_html,
    case_study_markdown,
    markdown_to_html,
)

EVIL = "<script>alert('x')</script>"


def _cases() -> list[dict]:
    return [{
        "entity": "椰子水",
        "prompt": "请为椰子水写一条广告",
        "models": {
            "before RL": {
                "completion": f"<think>想一想{EVIL}</think><answer>这里写下你的广告</answer>",
                "format": 0.5,
                "think_score": 0.2,
                "answer_score": None,
                "think_items": [{"key": "t1", "question": "是否分析了椰子水的卖点？", "p_yes": 0.125, "verdict": False}],
                "answer_items": [],
            },
            "after RL": {
                "completion": "<think>卖点：清爽。</think><answer>清爽一夏，就喝椰子水！</answer>",
                "think": "卖点：清爽。",
                "answer": "清爽一夏，就喝椰子水！",
                "format": 1.0,
                "think_score": 0.9,
                "answer_score": 0.8,
                "think_items": [{"key": "t1", "question": "是否分析了椰子水的卖点？", "p_yes": 0.875, "verdict": True}],
                "answer_items": [{"key": "a1", "question": "广告是否提到椰子水？", "p_yes": None, "verdict": None,
                                  "flagged": True}],
            },
        },
    }]


def test_case_study_html_escapes_and_is_self_contained():
    page = case_study_html(_cases(), title="Cases <b>")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<title>Cases &lt;b&gt;</title>" in page
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page) and "<link" not in page


def test_case_study_html_side_by_side_content():
    page = case_study_html(_cases())
    assert "repeat(2," in page  # two columns: before and after
    assert page.index("before RL") < page.index("after RL")
    assert "是否分析了椰子水的卖点？" in page and "0.12" in page and "0.88" in page
    assert "清爽一夏，就喝椰子水！" in page
    # the think part is extracted from the completion when not given
    assert "想一想&lt;script&gt;" in page
    assert 'class="cs-no">no<' in page and 'class="cs-yes">yes<' in page and 'class="cs-flag">—<' in page


def test_case_validation_names_case_and_field():
    bad = _cases()
    bad[0]["models"]["after RL"]["format"] = "high"
    with pytest.raises(ReportError, match=r"case 0 \(entity '椰子水'\): models.after RL.format"):
        case_study_html(bad)
    bad = _cases()
    bad[0]["models"]["after RL"]["score"] = 1.0  # a misspelled field is an error, not silently dropped
    with pytest.raises(ReportError, match="score"):
        case_study_markdown(bad)


def test_case_study_markdown():
    cases = _cases()
    cases[0]["models"]["after RL"]["answer"] = "用```三个反引号```"
    md = case_study_markdown(cases)
    assert md.startswith("## 椰子水")
    assert "### before RL" in md and "### after RL" in md
    assert "format 0.500 · think 0.200 · answer —" in md
    assert "````text\n用```三个反引号```\n````" in md  # a fence the text cannot close
    assert "| t1 | 是否分析了椰子水的卖点？ | 0.88 | yes |" in md
    raw = cases[0]["models"]["before RL"]["completion"]
    assert f"**completion (raw)**\n\n```text\n{raw}\n```" in md  # the whole text, tags and all


def test_case_entry_from_judgements():
    j = {"a1": Judgement(key="a1", question="提到了吗？", p_yes=0.7, verdict=True, flagged=False)}
    entry = case_entry("<think>x</think><answer>y</answer>", 1.0, answer_judgements=j, answer_score=0.7)
    page = case_study_html([{"entity": "e", "models": {"after RL": entry}}])
    assert "提到了吗？" in page and "0.70" in page


def test_markdown_to_html_tables_and_escaping():
    md = "# Scores\n\nsome `code` and <b>\n\n| model | think |\n|---|---|\n| base | 0.5 [0.4, 0.6] |\n| a\\|b | — |\n\n- one\n- two\n\n```\n<x>\n```\n"
    out = markdown_to_html(md)
    assert "<h3>Scores</h3>" in out
    assert "<p>some <code>code</code> and &lt;b&gt;</p>" in out
    assert "<tr><th>model</th><th>think</th></tr><tr><td>base</td><td>0.5 [0.4, 0.6]</td></tr>" in out
    assert "<td>a|b</td>" in out
    assert "<ul><li>one</li><li>two</li></ul>" in out
    assert "<pre>&lt;x&gt;</pre>" in out


def _png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1], [0, 1])
    fig.savefig(path, dpi=20)


def _fake_run(run_dir):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "profile.yaml").write_text(dump_profile(Profile(name="smoke-test")), encoding="utf-8")
    (run_dir / "manifest.json").write_text(json.dumps({"git_sha": "0123abcd4567", "started_at": "2026-11-26T12:00:00Z"}))
    results = {"data.n_train": 1116, "rubric.hash": "feedbeef", "calibration.auc": 0.71,
               "train.final_reward": 0.42, "eval.models": ["base", "after RL"]}
    (run_dir / "results.json").write_text(json.dumps(results), encoding="utf-8")
    pngs = [run_dir / "data" / "domains.png", run_dir / "calibration" / "reliability.png",
            run_dir / "train" / "reward.png", run_dir / "eval" / "scores.png"]
    for p in pngs:
        _png(p)
    (run_dir / "rubric").mkdir()
    (run_dir / "rubric" / "rubric.md").write_text("| key | question |\n|---|---|\n| a1 | 提到了<产品>吗？ |\n", encoding="utf-8")
    (run_dir / "calibration" / "agreement.md").write_text("| judge | accuracy |\n|---|---|\n| gemma | 0.61 |\n")
    save_table(pd.DataFrame({"think": [0.5], "think_lo": [0.4], "think_hi": [0.6]},
                            index=pd.Index(["base"], name="model")), run_dir / "eval" / "scores")
    (run_dir / "cases").mkdir()
    (run_dir / "cases" / "case_studies.html").write_text(case_study_html(_cases()), encoding="utf-8")
    (run_dir / "cases" / "case_studies.md").write_text(case_study_markdown(_cases()), encoding="utf-8")
    return pngs


def test_build_run_report_full(tmp_path):
    run_dir = tmp_path / "20261126-120000-smoke-test"
    pngs = _fake_run(run_dir)
    out = build_run_report(run_dir)
    assert out == run_dir / "report.html"
    page = out.read_text(encoding="utf-8")
    for _, title in REPORT_SECTIONS:
        assert f"<h2>{title}</h2>" in page
    assert "<h2>Resolved profile</h2>" in page and "name: smoke-test" in page
    assert "stage not run" not in page
    assert "0123abcd4567" in page and "feedbeef" in page and "smoke-test" in page and "2026-11-26T12:00:00Z" in page
    # every PNG inlined, none linked
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert not re.search(r"""src=["'](?!data:)""", page)
    # markdown tables became HTML tables, escaped
    assert "<td>提到了&lt;产品&gt;吗？</td>" in page
    assert "<td>0.500 [0.400, 0.600]</td>" in page
    # results keys shown in their stage's section; case studies embedded, model text escaped
    assert "data.n_train" in page and "train.final_reward" in page
    assert "清爽一夏，就喝椰子水！" in page and "<script" not in page
    assert page.count("<html") == 1 and page.count("</body>") == 1


def test_build_run_report_empty_and_partial(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    page = build_run_report(empty).read_text(encoding="utf-8")
    assert page.count("stage not run") == len(REPORT_SECTIONS) + 1  # every stage and the profile
    assert "unknown" in page  # no SHA, no rubric hash

    partial = tmp_path / "partial"
    _png(partial / "data" / "domains.png")
    page = build_run_report(partial).read_text(encoding="utf-8")
    data_section = page.split('<section id="data">')[1].split("</section>")[0]
    assert "data:image/png;base64," in data_section and "stage not run" not in data_section
    assert page.count("stage not run") == len(REPORT_SECTIONS)


def test_build_run_report_case_markdown_fallback(tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "cases").mkdir(parents=True)
    (run_dir / "cases" / "case_studies.md").write_text(case_study_markdown(_cases()), encoding="utf-8")
    page = build_run_report(run_dir).read_text(encoding="utf-8")
    cases = page.split('<section id="cases">')[1].split("</section>")[0]
    assert "### after RL" in cases and "&lt;script&gt;" in cases


def test_build_run_report_errors(tmp_path):
    with pytest.raises(ReportError, match="not found"):
        build_run_report(tmp_path / "missing")
    (tmp_path / "results.json").write_text("{broken")
    with pytest.raises(ReportError, match="results.json"):
        build_run_report(tmp_path)
