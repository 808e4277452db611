"""lib.infer: splitting a completion, adapter (run id) resolution, the command line. No model is loaded."""
from __future__ import annotations

import json

import pytest

from lib import infer, paths
from lib.eval.generation import GenerationError
from lib.infer import generate_ad, split_completion


@pytest.mark.parametrize("text, think, answer", [
    ("<think>想想卖点</think><answer>清爽一夏！</answer>", "想想卖点", "清爽一夏！"),
    ("<think> 想想 </think>\n<answer> 清爽 </answer>\n", "想想", "清爽"),
    ("清爽一夏！", "", "清爽一夏！"),  # no tag: the whole text is the answer
    ("<think>只想了，没写完", "只想了，没写完", ""),  # think never closed, no answer
    ("<think>想</think>直接写了文案", "想", "直接写了文案"),  # answer without its tag
    ("<think>想<answer>文案</answer>", "想", "文案"),  # </think> missing
    ("开头</think><answer>文案", "开头", "文案"),  # <think> missing, </answer> missing
    ("<think>a</think><answer>旧</answer><answer>新</answer>", "a", "新"),  # the last answer counts
    ("", "", ""),
])
def test_split_completion(text, think, answer):
    assert split_completion(text) == (think, answer)


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    (tmp_path / "runs" / "no-adapter").mkdir(parents=True)
    good = tmp_path / "runs" / "trained" / "train" / "adapter"
    good.mkdir(parents=True)
    (good / "adapter_config.json").write_text("{}")
    return tmp_path / "runs"


@pytest.fixture
def fake_model(monkeypatch):
    """Stand-ins for loading and sampling; records what was asked."""
    seen = {}

    class Tok:
        def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
            return "||".join(m["content"] for m in messages)

    def load(model, adapter):
        seen["model"], seen["adapter"] = model, adapter
        return object(), Tok()

    def sample(lm, tok, prompts, sampling, seeds, progress=False):
        seen["prompts"], seen["sampling"], seen["seeds"] = prompts, sampling, seeds
        return ["<think>目标受众是上班族</think><answer>一口气泡，零糖负担！</answer>"]

    monkeypatch.setattr(infer, "load_for_generation", load)
    monkeypatch.setattr(infer, "hf_generate", sample)
    return seen


def test_adapter_run_id_errors_before_loading(runs, fake_model):
    for bad, words in (("no-adapter", ("no-adapter", "03")), ("missing-run", ("missing-run",))):
        with pytest.raises(GenerationError) as e:
            generate_ad("椰子水", adapter=bad)
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words)
    assert "model" not in fake_model  # nothing was loaded


def test_generate_ad_splits_and_resolves(runs, fake_model):
    r = generate_ad("无糖气泡水", adapter="trained", max_new_tokens=12, seed=3)
    assert r["think"] == "目标受众是上班族" and r["answer"] == "一口气泡，零糖负担！"
    assert r["format"] > 0.5 and r["completion"].startswith("<think>")
    assert fake_model["adapter"] == runs / "trained" / "train" / "adapter"
    assert fake_model["model"] == "gemma3-270m"
    assert fake_model["sampling"]["max_new_tokens"] == 12
    assert "请为无糖气泡水设计一段创意广告文案" in fake_model["prompts"][0]
    assert "<think>" in fake_model["prompts"][0]  # the training system prompt comes first
    generate_ad("无糖气泡水", model=None, seed=3)
    assert fake_model["model"] == "gemma3-270m"  # None (the CLI's default) means the default model


def test_empty_entity_is_refused(fake_model):
    with pytest.raises(GenerationError, match="entity"):
        generate_ad("  ")


def test_command_line(runs, fake_model, capsys):
    assert infer.main(["--entity", "无糖气泡水", "--adapter", "trained"]) == 0
    out = capsys.readouterr().out
    assert "目标受众是上班族" in out and "一口气泡，零糖负担！" in out
    assert infer.main(["--entity", "无糖气泡水", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["answer"] == "一口气泡，零糖负担！"
    assert infer.main(["--entity", "无糖气泡水", "--adapter", "no-adapter"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
