"""train.peft: false (issue 18.2): the original's full fine-tune as an option: profile rules, a trainer without LoRA
on a tiny random policy (one step, the whole model saved and evaluated as `adapter: run`), and the gpu profile's
arguments, with and without LoRA, against the installed TRL/PEFT."""
from __future__ import annotations

import inspect

import pytest

from lib.profiles import ProfileError, load_profile
from lib.train import grpo

FULL_GPU = {"train": {"peft": False, "learning_rate": 1e-6, "backend": "trl", "rollout_engine": "vllm_colocate"}}


def test_gpu_profile_lora_rate_is_not_the_full_fine_tune_rate():
    t = load_profile("gpu").train
    assert t.peft and t.learning_rate == 5e-6 and (t.lora_rank, t.lora_alpha) == (64, 64)
    assert load_profile("gpu", FULL_GPU).train.learning_rate == 1e-6


@pytest.mark.parametrize("train, field", [({"peft": False}, "backend 'unsloth'"),  # the gpu profile's backend
                                          ({"peft": False, "backend": "trl", "rollout_engine": "vllm_lora"}, "vllm_lora")])
def test_full_fine_tune_refuses_lora_only_engines(train, field):
    with pytest.raises(ProfileError, match=f"train.peft: false.*{field}"):
        load_profile("gpu", {"train": train})


@pytest.mark.parametrize("overrides", [None, FULL_GPU])
def test_gpu_profile_arguments_exist_in_the_installed_trl(overrides, tmp_path):
    from peft import LoraConfig
    from trl import GRPOConfig

    p = load_profile("gpu", overrides)
    fields = set(inspect.signature(GRPOConfig).parameters)
    kwargs = grpo.grpo_config_kwargs(p, tmp_path)
    assert set(kwargs) <= fields, sorted(set(kwargs) - fields)
    assert kwargs["learning_rate"] == p.train.learning_rate
    assert set(grpo.lora_kwargs(p)) <= set(inspect.signature(LoraConfig).parameters)


def test_peft_false_trains_every_weight_and_saves_the_model(tmp_path):
    """A trainer without LoRA on the tiny policy: no PEFT wrapper, every weight trainable; one step saves the whole
    model to train/model/, which evaluation's `adapter: run` then names."""
    from peft import PeftModel

    from lib.eval.generation import resolve_row
    from lib.profiles import EvalModel
    from lib.run import RunContext
    from tests.train_helpers import build_tiny_policy, make_training_run

    model_dir = build_tiny_policy(tmp_path / "tiny")
    run = make_training_run(tmp_path / "run", model_dir, max_steps=1, save_steps=1, reward_weights={"format": 1.0},
                            peft=False)
    profile = load_profile(run / "profile.yaml")
    assert profile.train.peft is False
    trainer = grpo.build_trainer(profile, RunContext(run, profile))
    assert not isinstance(trainer.model, PeftModel) and not hasattr(trainer.model, "peft_config")
    assert all(p.requires_grad for p in trainer.model.parameters())
    lora = grpo.build_trainer(load_profile(run / "profile.yaml", {"train": {"peft": True}}), RunContext(run, profile))
    assert isinstance(lora.model, PeftModel)  # the same profile with LoRA: wrapped, base frozen
    assert not all(p.requires_grad for p in lora.model.parameters())
    out = grpo.train(profile, RunContext(run, profile), trainer=trainer)
    assert out["steps"] == 1 and out["adapter_dir"] is None
    assert (run / "train" / "model" / "config.json").is_file() and not (run / "train" / "adapter").exists()
    assert resolve_row(EvalModel(label="grpo", model=str(model_dir), adapter="run"), run) == (out["model_dir"], None)


def _changed_share_after_one_step(tmp_path, peft_dtype_overrides: dict) -> tuple[object, float]:
    """The trainer's own optimizer (lr 1e-6) takes one step on a language-model loss of the tiny policy: the share of
    the weights with a non-zero gradient that the step changed."""
    from lib.run import RunContext
    from tests.train_helpers import build_tiny_policy, make_training_run

    model_dir = build_tiny_policy(tmp_path / "tiny")
    run = make_training_run(tmp_path / "run", model_dir, max_steps=1, reward_weights={"format": 1.0},
                            learning_rate=1e-6, **peft_dtype_overrides)
    profile = load_profile(run / "profile.yaml")
    trainer = grpo.build_trainer(profile, RunContext(run, profile))
    model, tok = trainer.model, trainer.processing_class
    optimizer = trainer.create_optimizer()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    batch = tok(["<think>先分析需求，再写文案。</think><answer>喝一口，清爽一夏！</answer>"], return_tensors="pt",
                add_special_tokens=False)
    with trainer.accelerator.autocast():
        loss = model(**batch, labels=batch["input_ids"]).loss
    loss.backward()
    optimizer.step()
    moved = with_grad = 0
    for n, p in model.named_parameters():
        if p.grad is not None:
            nonzero = p.grad != 0
            with_grad += int(nonzero.sum())
            moved += int((p.detach() != before[n])[nonzero].sum())
    assert with_grad > 0
    return model, moved / with_grad


def test_full_fine_tune_keeps_float32_master_weights_that_a_1e_6_step_moves(tmp_path):
    """train.peft false with train.dtype bfloat16: the weights the optimizer updates are float32 (bf16 is the compute
    dtype only), so one Adam step at 1e-6 changes nearly every weight with a gradient; in bf16 weights the same step
    is below one ulp of most of them and rounds to no change."""
    import torch

    model, share = _changed_share_after_one_step(tmp_path, {"peft": False, "dtype": "bfloat16"})
    assert share > 0.95, f"one optimizer step changed only {share:.1%} of the weights with a gradient"
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_lora_policy_keeps_the_compute_dtype(tmp_path):
    """LoRA: the frozen base stays in the compute dtype (no float32 copy of a model that is not trained)."""
    from tests.train_helpers import build_tiny_policy, tiny_profile

    model_dir = build_tiny_policy(tmp_path / "tiny")
    assert grpo.policy_load_dtype(tiny_profile(model_dir, dtype="bfloat16")) == "bfloat16"
    assert grpo.policy_load_dtype(tiny_profile(model_dir, dtype="bfloat16", peft=False)) == "float32"
