"""The training configuration a profile gives: GRPOConfig arguments, dtype.

TRL's GRPOConfig arguments (the reward weights among them) and the policy's dtype (lib.train.grpo builds the trainer
from these; the reward functions: lib.rewards.build)."""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from lib.hardware import Precision, resolve_dtype
from lib.profiles import Profile, TrainConfig


class TrainError(RuntimeError):
    """Training that cannot run as configured; one line naming the field or file to fix."""


def train_precision(profile: Profile) -> "Precision":
    """The policy's dtype for this profile on this machine (`train.dtype`, lib.hardware)."""
    return resolve_dtype(profile.train.dtype, profile.device)



def grpo_config_kwargs(profile: Profile, output_dir: str | Path) -> dict:
    """Keyword arguments of `trl.GRPOConfig` for the profile (every name checked by tests/test_train.py).

    TrainConfig -> GRPOConfig: same names, except `warmup_ratio` -> `warmup_steps` (transformers 5 takes
    a float < 1 as a ratio) and `max_prompt_length`, which TRL 1.15 dropped: prompts are filtered by
    length when the dataset is built (`fit_prompts`). TRL's own `log_completions` stays off: samples go
    to samples.jsonl with the judge's details (TRL's would print rich tables into the notebook).
    """
    cfg = profile.train
    if not 0 <= cfg.warmup_ratio < 1:
        raise TrainError(f"train.warmup_ratio must be in [0, 1), got {cfg.warmup_ratio}")
    weights = [float(w) for w in profile.train.reward_weights.values()]
    world = int(os.environ.get("WORLD_SIZE", "1"))  # processes under accelerate/torchrun
    gen_batch = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps * world
    if gen_batch % cfg.num_generations:
        raise TrainError(
            f"train.per_device_train_batch_size * gradient_accumulation_steps * {world} processes = {gen_batch} must be "
            f"a multiple of train.num_generations = {cfg.num_generations} (each batch holds whole groups)"
        )
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        seed=profile.seed,
        data_seed=profile.seed,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        temperature=cfg.temperature,
        top_p=cfg.top_p,
        num_generations=cfg.num_generations,
        max_completion_length=cfg.max_completion_length,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,
        loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards,
        mask_truncated_completions=cfg.mask_truncated_completions,  # DAPO: a cut completion adds nothing to the loss
        multi_objective_aggregation=cfg.reward_aggregation,  # normalize_then_sum: GDPO's per-reward normalization
        reward_weights=weights,
        logging_steps=cfg.logging_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=list(cfg.report_to) or "none",
        # CPU: no autocast (slow there); LoRA bases load in train.dtype, a full fine-tune's weights in float32
        bf16=profile.device == "cuda" and train_precision(profile).dtype == "bfloat16",
        log_completions=False,
        remove_unused_columns=False,  # keep `entity` for the judge rewards
        # rollouts from vLLM: correct for its log-probs differing from the trainer's (lib.train.rollouts.LoRARollouts.attach)
        vllm_importance_sampling_correction=cfg.importance_sampling != "off",
        vllm_importance_sampling_mode="token_truncate" if cfg.importance_sampling == "off" else cfg.importance_sampling,
    )
    if cfg.backend == "unsloth":
        # Unsloth's engine (fast_inference) generates; its patched trainer reads these (UNVERIFIED until run on a GPU)
        kwargs.update(use_vllm=True, gradient_checkpointing=False)  # Unsloth checkpoints itself ("unsloth")
    else:
        kwargs.update(use_vllm=cfg.rollout_engine not in ("hf", "vllm_lora"), use_cpu=profile.device == "cpu",
                      gradient_checkpointing=profile.device == "cuda")  # CPU: memory is ample, recomputation is not free
        if cfg.rollout_engine == "vllm_colocate":
            if profile.device == "cpu":
                raise TrainError("train.rollout_engine 'vllm_colocate' fails at TRL's first weight sync on CPU: use 'hf'")
            kwargs.update(vllm_mode="colocate", vllm_gpu_memory_utilization=cfg.gpu_memory_utilization,
                          vllm_max_model_length=cfg.max_prompt_length + cfg.max_completion_length)
        elif cfg.rollout_engine == "vllm_server":
            if not cfg.vllm_server_base_url:
                raise TrainError("train.rollout_engine 'vllm_server' needs train.vllm_server_base_url (the `trl vllm-serve` URL)")
            kwargs.update(vllm_mode="server", vllm_server_base_url=cfg.vllm_server_base_url)
    return kwargs


def vllm_sampling_kwargs(profile: Profile) -> dict:
    """Keyword arguments of `vllm.SamplingParams` for Unsloth's rollouts (`vllm_sampling_params`).

    No `seed`: a per-request seed would make all `num_generations` samples of a prompt identical (every
    group with zero reward spread, nothing learned). Runs are seeded by the engine's and TRL's run seed.
    """
    cfg = profile.train
    return dict(temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_completion_length)


def tensorboard_dir(profile: Profile, output_dir: str | Path) -> Path | None:
    """With `train.report_to` naming tensorboard: the run's `train/tensorboard/`, set as transformers'
    TENSORBOARD_LOGGING_DIR (its TensorBoardCallback reads it), so `tensorboard --logdir outputs/runs` shows each run
    as `<run-id>/train/tensorboard`. `output_dir` is the run's `train/checkpoints/`."""
    if "tensorboard" not in profile.train.report_to:
        return None
    d = Path(output_dir).parent / "tensorboard"
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(d)
    return d


def build_grpo_config(profile: Profile, output_dir: str | Path):
    """`trl.GRPOConfig` for the profile (see `grpo_config_kwargs`)."""
    from trl import GRPOConfig

    kwargs = grpo_config_kwargs(profile, output_dir)
    tensorboard_dir(profile, output_dir)
    if profile.train.backend == "unsloth" and "vllm_sampling_params" in {f.name for f in dataclasses.fields(GRPOConfig)}:
        from vllm import SamplingParams  # Unsloth's GRPOConfig has this field; TRL's does not

        kwargs["vllm_sampling_params"] = SamplingParams(**vllm_sampling_kwargs(profile))
    return GRPOConfig(**kwargs)


_TRL_NAMES = {"warmup_ratio": "warmup_steps", "max_prompt_length": "(dataset filter)", "log_completions": "(samples.jsonl)",
              "lora_rank": "LoRA r", "lora_alpha": "LoRA alpha", "lora_dropout": "LoRA dropout",
              "lora_target_modules": "LoRA target modules", "backend": "(loader)", "gpu_memory_utilization": "(unsloth engine)",
              "unsloth_standby": "UNSLOTH_VLLM_STANDBY", "merge_final": "(merged/ at the end)",
              "rollout_engine": "use_vllm / vllm_mode", "vllm_server_base_url": "vllm_server_base_url",
              "dtype": "(loader; bf16 on CUDA)", "shared_prompt": "(log-prob forward)",
              "reward_aggregation": "multi_objective_aggregation", "format_gate": "(judge rewards)",
              "substance": "(reward substance)", "overlong_buffer": "(reward overlong)", "relative": "(rewards relative*)",
              "peft": "peft_config (None: full fine-tune)",
              "importance_sampling": "vllm_importance_sampling_correction / _mode"}


def train_config_table(profile: Profile) -> pd.DataFrame:
    """The profile's train config as a table: parameter, value, and where it goes (the GRPOConfig name)."""
    rows = []
    for name, value in profile.train.model_dump().items():
        where = _TRL_NAMES.get(name, name if name in TrainConfig.model_fields else "")
        rows.append({"parameter": name, "value": json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else value,
                     "used as": where})
    return pd.DataFrame(rows).astype({"value": str})
