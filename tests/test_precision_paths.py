"""Precision of the GPU paths, checked where a CPU can check them (issue 28): the log-probs Unsloth's rollout engine
returns (TRL's importance-sampling correction needs processed ones) and the evaluation's LoRA rows on a GPU (served
unmerged by vLLM in bf16, not merged into float32 weights). Engines are stand-ins: nothing here starts vLLM.
(The full fine-tune's float32 master weights: tests/test_full_finetune.py.)"""
from __future__ import annotations

import json
import sys
import types
from types import SimpleNamespace

import pytest

from bench import gpu_check
from lib.profiles import load_profile
from lib.train import TrainError, grpo
from tests.fakes import KeywordJudge


def _engine(mode: str | None, via_vllm_config: bool = False):
    """A stand-in vLLM `LLM`: its engine's model config names `mode` (vLLM keeps it at llm_engine.model_config and at
    llm_engine.vllm_config.model_config)."""
    config = SimpleNamespace(logprobs_mode=mode)
    core = SimpleNamespace(vllm_config=SimpleNamespace(model_config=config)) if via_vllm_config else SimpleNamespace(model_config=config)
    return SimpleNamespace(llm_engine=core)


# ------------------------------------------------------------------------------------------ logprobs_mode (6c)


def test_rollout_logprobs_mode_is_the_one_trl_builds_its_engine_with():
    import inspect

    from trl.generation import vllm_generation
    from vllm.config.model import LogprobsMode
    from typing import get_args

    assert grpo.ROLLOUT_LOGPROBS_MODE in get_args(LogprobsMode)  # a mode the installed vLLM has
    assert f'logprobs_mode="{grpo.ROLLOUT_LOGPROBS_MODE}"' in inspect.getsource(vllm_generation)  # TRL's colocated engine


def test_unsloth_engine_logprobs_mode_check():
    p = load_profile("gpu")
    assert p.train.backend == "unsloth" and p.train.importance_sampling != "off"
    assert grpo.check_rollout_logprobs(p, _engine("processed_logprobs")) == "processed_logprobs"
    assert grpo.check_rollout_logprobs(p, _engine("processed_logprobs", via_vllm_config=True)) == "processed_logprobs"
    for engine, found in ((_engine("raw_logprobs"), "raw_logprobs"), (_engine("processed_logits"), "processed_logits"),
                          (None, "unknown"), (object(), "unknown")):
        with pytest.raises(TrainError, match=f"returns logprobs_mode {found}, .*needs 'processed_logprobs'") as exc:
            grpo.check_rollout_logprobs(p, engine)
        assert "\n" not in str(exc.value)
    off = load_profile("gpu", {"train": {"importance_sampling": "off"}})
    assert grpo.check_rollout_logprobs(off, _engine("raw_logprobs")) is None  # no correction: the mode is not read
    assert grpo.check_rollout_logprobs(load_profile("smoke"), None) is None  # the trl backend builds no Unsloth engine


@pytest.fixture
def fake_unsloth(monkeypatch):
    """A stand-in `unsloth` module whose from_pretrained returns a model with the engine `state["engine"]`."""
    state = {"engine": _engine("raw_logprobs"), "peft": 0}

    class FastLanguageModel:
        @staticmethod
        def from_pretrained(**kwargs):
            return SimpleNamespace(vllm_engine=state["engine"]), SimpleNamespace(pad_token="<pad>", eos_token="<eos>")

        @staticmethod
        def get_peft_model(model, **kwargs):
            state["peft"] += 1
            return model

    module = types.ModuleType("unsloth")
    module.FastLanguageModel, module.PatchFastRL = FastLanguageModel, lambda *a: None
    monkeypatch.setitem(sys.modules, "unsloth", module)
    monkeypatch.setattr("lib.models.resolve_model", lambda name: name)
    for var in ("UNSLOTH_VLLM_STANDBY", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(var, "0")
    return state


def test_load_policy_refuses_an_unsloth_engine_with_raw_logprobs(fake_unsloth):
    with pytest.raises(TrainError, match="returns logprobs_mode raw_logprobs"):
        grpo.load_policy(load_profile("gpu"))
    assert fake_unsloth["peft"] == 0  # refused before the LoRA (and the trainer) are built
    fake_unsloth["engine"] = _engine("processed_logprobs")
    model, _, peft_config = grpo.load_policy(load_profile("gpu"))
    assert model.vllm_engine is fake_unsloth["engine"] and peft_config is None and fake_unsloth["peft"] == 1


def test_build_trainer_checks_the_logprobs_mode_of_a_policy_passed_in(monkeypatch, tmp_path):
    import trl

    from lib.run import RunContext

    class UnslothGRPOTrainer:  # the name of Unsloth's patched trainer; rollouts from the model's own engine
        def __init__(self, model, **kwargs):
            self.vllm_generation = SimpleNamespace(llm=model.vllm_engine)

    monkeypatch.setattr(trl, "GRPOTrainer", UnslothGRPOTrainer)
    monkeypatch.setattr(grpo, "build_grpo_config", lambda profile, out: SimpleNamespace())
    monkeypatch.setattr(grpo, "load_train_dataset", lambda profile, ctx, tok: [])
    ctx = RunContext(dir=tmp_path, profile=load_profile("gpu"))
    model = SimpleNamespace(vllm_engine=_engine("raw_logprobs"))
    with pytest.raises(TrainError, match="returns logprobs_mode raw_logprobs"):
        grpo.build_trainer(ctx.profile, ctx, judge=KeywordJudge(), policy=(model, SimpleNamespace(), None))
    model.vllm_engine = _engine("processed_logprobs")
    assert isinstance(grpo.build_trainer(ctx.profile, ctx, judge=KeywordJudge(), policy=(model, SimpleNamespace(), None)),
                      UnslothGRPOTrainer)


def test_gpu_check_logprobs_stage(fake_unsloth, capsys):
    assert gpu_check.main(["logprobs", "--profile", "gpu"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("gpu_check logprobs FAILED: train.backend 'unsloth': its vLLM engine returns logprobs_mode "
                          "raw_logprobs") and "\n" not in err
    fake_unsloth["engine"] = _engine("processed_logprobs")
    assert gpu_check.main(["logprobs", "--profile", "gpu"]) == 0
    out = json.loads(capsys.readouterr().out.split("gpu_check logprobs: ", 1)[1])
    assert out["logprobs_mode"] == "processed_logprobs" and out["checked"] is True


def test_gpu_check_script_runs_the_logprobs_stage_before_the_judge():
    from lib import paths

    script = (paths.PROJ_ROOT / "scripts" / "gpu_check.sh").read_text(encoding="utf-8")
    stages = [line.split()[1] for line in script.splitlines() if line.startswith("stage ")]
    assert stages[:3] == ["preflight", "logprobs", "judge"]
    assert 'bench.gpu_check logprobs --profile "$PROFILE"' in script
