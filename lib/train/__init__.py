"""GRPO training (notebook 03, `python -m lib.train`).

- grpo: the trainer from a profile (`build_trainer`, `train`) and its config (the reward functions: lib.rewards.build)
- logs: the training logs (log.jsonl, samples, curves, summary)
- trend: does a metric rise? the first vs the last logged steps with a HAC interval
- rollouts: rollouts from the judge's vLLM engine with the current LoRA adapter (CPU)
- cpu_logprobs: TRL's Triton log-prob kernel replaced by PyTorch off CUDA
"""
from lib.train.grpo import (
    TrainError,
    build_grpo_config,
    build_trainer,
    judge_engine_kwargs,
    last_checkpoint,
    prepare_backend,
    train,
    train_config_table,
    train_dir,
)

__all__ = ["TrainError", "build_grpo_config", "build_trainer", "judge_engine_kwargs", "last_checkpoint",
           "prepare_backend", "train", "train_config_table", "train_dir"]
