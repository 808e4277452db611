"""lib.train.rollouts on the real vLLM CPU engine and TRL: the rollouts' log-probs are the ones the trainer computes
for the same tokens (a tiny random Llama with a random LoRA adapter, float32), and a training step logs TRL's
|Δ log p| and importance ratio for them.

Measured (avx512_bf16 class CPU, float32, temperature 0.9): max |vLLM - HF PEFT| per-token log-prob 9.5e-7 over 48
tokens; the logged mean |Δ log p| of a training step 1.5e-7 (max 9.5e-7) on TRL's own log-prob path. The tolerance
leaves room for other CPUs' kernels. The engine is shared by the tests, as training shares the judge's: a second
LoRARollouts on it once got the first one's adapter (LoRA ids restarted at 1; vLLM keeps adapters by id).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.train_helpers import build_tiny_policy, make_training_run

TOLERANCE = 1e-4  # nats per token, float32 on both sides
TEMPERATURE = 0.9


@pytest.fixture(scope="module")
def tiny_vllm_policy(tmp_path_factory):
    """The tiny policy's tokenizer with a model vLLM's CPU attention takes (head size 64) and a random LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tiny-vllm")
    base = build_tiny_policy(root / "base")
    tok = AutoTokenizer.from_pretrained(base)
    cfg = LlamaConfig.from_pretrained(base)
    cfg.update(dict(hidden_size=128, intermediate_size=256, num_attention_heads=2, num_key_value_heads=2,
                    head_dim=64))
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    out = root / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    peft = get_peft_model(LlamaForCausalLM.from_pretrained(out, dtype=torch.float32),
                          LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                     init_lora_weights=False))  # random B: the adapter changes the outputs
    return out, tok, peft


@pytest.fixture(scope="module")
def engine(tiny_vllm_policy):
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from lib.judge.backends import VLLMBackend
    from lib.profiles import JudgeConfig

    backend = VLLMBackend(str(tiny_vllm_policy[0]), JudgeConfig(dtype="float32", max_model_len=512), max_lora_rank=8)
    yield backend
    backend.close()


def test_rollout_logprobs_match_an_hf_forward_of_the_adapter(tiny_vllm_policy, engine, tmp_path):
    import torch

    from lib.profiles import load_profile
    from lib.train.rollouts import LoRARollouts

    _, tok, peft = tiny_vllm_policy
    cfg = load_profile("smoke", overrides={"train": {"max_completion_length": 12, "temperature": TEMPERATURE}}).train
    rollouts = LoRARollouts(engine.llm, tok, cfg, seed=0, adapter_dir=tmp_path)
    trainer = SimpleNamespace(state=SimpleNamespace(global_step=0), model=peft,
                              accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    prompts = [[{"role": "user", "content": f"请为{e}设计一段创意广告文案"}] for e in ("椰子水", "猫砂")] * 2
    out = rollouts(prompts, trainer)
    diffs = []
    peft.eval()
    with torch.no_grad():
        for p, c, lp in zip(out["prompt_ids"], out["completion_ids"], out["logprobs"]):
            assert len(lp) == len(c) > 0 and all(x is not None for x in lp)
            ids = torch.tensor([p + c])
            logits = peft(input_ids=ids).logits[0, len(p) - 1 : -1].float() / TEMPERATURE
            hf = torch.log_softmax(logits, -1).gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1)
            diffs += (hf - torch.tensor(lp)).abs().tolist()
            # without the adapter the numbers differ: the rollouts did use it
            with peft.disable_adapter():
                base = torch.log_softmax(peft(input_ids=ids).logits[0, len(p) - 1 : -1].float() / TEMPERATURE, -1)
            assert (base.gather(-1, torch.tensor(c).unsqueeze(-1)).squeeze(-1) - torch.tensor(lp)).abs().max() > 10 * TOLERANCE
    print(f"max |vLLM - HF| log-prob {max(diffs):.2e} over {len(diffs)} tokens")
    assert max(diffs) <= TOLERANCE


@pytest.mark.parametrize("shared", [False, True])  # TRL's own log-prob path and lib.train.shared_prompt
def test_a_training_step_logs_the_logprob_difference(tiny_vllm_policy, engine, tmp_path, shared):
    from lib import train as train_mod
    from lib.judge.engine import JudgeEngine
    from lib.profiles import dump_profile, load_profile
    from lib.run import open_run

    model_dir = tiny_vllm_policy[0]
    run_dir = make_training_run(tmp_path / "run", model_dir, rollout_engine="vllm_lora", max_steps=1,
                                reward_weights={"format": 1.0}, lora_rank=8, lora_alpha=16, dtype="float32",
                                temperature=TEMPERATURE, shared_prompt=shared)
    profile = load_profile(run_dir / "profile.yaml")  # the judge (whose engine writes the rollouts) is the policy
    profile = profile.model_copy(update={"judge": profile.judge.model_copy(update={"model": str(model_dir)})})
    (run_dir / "profile.yaml").write_text(dump_profile(profile), encoding="utf-8")
    ctx = open_run(run_dir)
    assert ctx.profile.judge.model == str(model_dir)
    judge = JudgeEngine(engine, ctx.profile.judge)
    train_mod.train(ctx.profile, ctx, judge)
    rows = [json.loads(line) for line in (run_dir / "train" / "log.jsonl").read_text().splitlines()]
    delta = rows[-1]["sampling/sampling_logp_difference/mean"]
    print(f"logged mean |Δ log p| {delta:.2e}, max {rows[-1]['sampling/sampling_logp_difference/max']:.2e}")
    assert 0 <= delta <= TOLERANCE and "sampling/importance_sampling_ratio/mean" in rows[-1]
