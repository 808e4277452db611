"""lib.compare on two hand-written run directories (the files each stage writes, in their documented form);
tests/test_sweep_smoke.py compares two real smoke runs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from lib import paths
from lib.cli import main
from lib.compare import CompareError, build_compare_report, compare_table, profile_differences, select_runs


def _run(root: Path, name: str, lr: float, fmt: list[float], think_hack: bool) -> Path:
    rd = root / name
    (rd / "train").mkdir(parents=True)
    (rd / "eval").mkdir()
    (rd / "profile.yaml").write_text(f"name: smoke\ntrain:\n  learning_rate: {lr}\n  first_last_k: 2\n"
                                     "eval:\n  models:\n  - {label: base, model: m}\n  - {label: grpo, model: m, adapter: run}\n")
    (rd / "manifest.json").write_text(json.dumps({"status": "ok", "overrides": [f"train.learning_rate={lr}"]}))
    with open(rd / "train" / "log.jsonl", "w") as f:
        for i, v in enumerate(fmt, 1):
            f.write(json.dumps({"step": i, "rewards/format_reward/mean": v, "rewards/answer_quality_reward/mean": 0.5,
                                "completions/mean_length": 100 - 10 * i, "completions/clipped_ratio": 0.5 / i,
                                "reward": v + 0.5, "step_seconds": 2.0}) + "\n")
    pd.DataFrame({"model": ["base", "grpo"], "n": [4, 4], "format": [0.1, fmt[-1]], "format_lo": [0.0, 0.5],
                  "format_hi": [0.2, 1.0], "think": [0.3, 0.4], "think_lo": [0.2, 0.3], "think_hi": [0.4, 0.5],
                  "answer": [0.5, 0.6], "answer_lo": [0.4, 0.5], "answer_hi": [0.6, 0.7]}).to_csv(rd / "eval" / "scores_train.csv", index=False)
    pd.DataFrame({"model": ["base", "grpo"], "n": [4, 4], "think": [0.31, 0.2], "think_lo": [0.2, 0.1], "think_hi": [0.4, 0.3],
                  "answer": [0.5, 0.55], "answer_lo": [0.4, 0.45], "answer_hi": [0.6, 0.65]}).to_csv(rd / "eval" / "scores_heldout.csv", index=False)
    pd.DataFrame({"model": ["base", "grpo"], "n": [4, 4], "distinct_1": [0.1, 0.2], "distinct_2": [0.3, 0.4],
                  "missing_tag_share": [0.5, 0.0]}).to_csv(rd / "eval" / "diagnostics.csv", index=False)
    pd.DataFrame({"model": ["grpo", "grpo"], "base": ["base", "base"], "metric": ["think", "answer"],
                  "likely_reward_hacking": [think_hack, False]}).to_csv(rd / "eval" / "judge_comparison.csv", index=False)
    with open(rd / "eval" / "item_scores.jsonl", "w") as f:
        for model, text in [("base", "<think>想一想</think><answer>好喝</answer>"), ("grpo", "<think>甲</think><answer>乙乙乙</answer>"),
                            ("grpo", "<think>丙丙丙</think><answer>丁</answer>")]:
            f.write(json.dumps({"model": model, "judge": "train", "completion": text}, ensure_ascii=False) + "\n")
    return rd


@pytest.fixture
def two_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    return [("a", _run(tmp_path / "runs", "run-a", 5e-5, [0.2, 0.4, 0.6, 0.8], True)),
            ("b", _run(tmp_path / "runs", "run-b", 1e-4, [0.1, 0.1, 0.3], False))]


def test_the_table_holds_each_runs_numbers(two_runs):
    t = compare_table(two_runs)
    assert list(t.index) == ["a/base", "a/grpo", "b/base", "b/grpo"]
    a = t.loc["a/grpo"]
    assert a["train_format_last"] == pytest.approx(0.7) and a["train_answer_last"] == 0.5  # mean of the last k=2 steps
    assert a["train_length_first"] == 85 and a["train_length_last"] == 65 and a["train_cut_first"] == pytest.approx(0.375)
    assert (a["format"], a["format_lo"], a["heldout_think"], a["heldout_think_hi"]) == (0.8, 0.5, 0.2, 0.3)
    assert a["think_chars"] == 2 and a["answer_chars"] == 2 and a["length_chars"] == pytest.approx(len("<think>甲</think><answer>乙乙乙</answer>"))
    assert a["distinct_2"] == 0.4 and a["hacking"] == "think" and t.loc["b/grpo", "hacking"] == "none"
    assert t.loc["b/grpo", "train_format_last"] == pytest.approx(0.2) and t.loc["b/grpo", "train_steps"] == 3
    assert math.isnan(t.loc["a/base", "train_format_last"]) and t.loc["a/base", "hacking"] == "(base)"  # training: trained rows only


def test_differences_report_and_cli(two_runs, tmp_path, capsys):
    diffs = profile_differences(two_runs)
    assert list(diffs.index) == ["train.learning_rate"] and list(diffs.columns) == ["a", "b"]
    page = build_compare_report(two_runs, tmp_path / "cmp")
    text = page.read_text()
    assert "data:image/png;base64," in text and "train.learning_rate" in text and "0.800 [0.500, 1.000]" in text
    assert "<script" not in text and 'src="http' not in text  # self-contained
    assert (tmp_path / "cmp" / "curves_overlay.png").exists() and (tmp_path / "cmp" / "compare_table.csv").exists()
    assert main(["compare", "run-a", "run-b", "--out", str(tmp_path / "cmp2")]) == 0
    out = capsys.readouterr().out
    assert "| run-a/grpo | 0.800 [0.500, 1.000]" in out and out.strip().endswith("compare.html")
    assert main(["compare", "run-a", "nosuch"]) == 2 and "unknown run 'nosuch'" in capsys.readouterr().err
    assert main(["compare"]) == 2


def test_notebook_parameters_choose_the_runs(two_runs):
    assert [label for label, _ in select_runs("", ["run-b"])] == ["run-b"]
    assert [label for label, _ in select_runs("", [], str(two_runs[0][1]))] == ["run-a"]
    with pytest.raises(CompareError, match="no sweep in .*set SWEEP or RUNS"):
        select_runs("", [], "")


def test_tensorboard_events_go_to_the_runs_train_folder(tmp_path, monkeypatch):
    from lib.profiles import load_profile
    from lib.train.grpo import tensorboard_dir

    monkeypatch.delenv("TENSORBOARD_LOGGING_DIR", raising=False)
    assert tensorboard_dir(load_profile("smoke", {"train": {"report_to": []}}), tmp_path / "train" / "checkpoints") is None
    assert "TENSORBOARD_LOGGING_DIR" not in __import__("os").environ
    prof = load_profile("smoke")  # every profile reports to tensorboard
    assert tensorboard_dir(prof, tmp_path / "train" / "checkpoints") == tmp_path / "train" / "tensorboard"
    assert __import__("os").environ["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "train" / "tensorboard")
