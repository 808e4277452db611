"""Our training path on a GPU without vLLM, Unsloth or hub weights: a few GRPO steps of random tiny Qwen2 models.

    python -m lib.gpu_tiny_check [--tokenizer NAME_OR_PATH] [--steps 3] [--run-id ID] [--json PATH]

Runs `lib.gpu_check.train_stage` (judge, rewards, `lib.train.build_trainer`, `lib.train.train`, the log report) on the
`gpu` profile shrunk to toy sizes, with `train.backend: trl` and HF rollouts: a random 2-layer Qwen2 policy and a
random Qwen2 judge (`judge.backend: transformers`, soft mode, restricted 是/否 scoring), both built from a config with
the tokenizer of `--tokenizer` (default: the gpu profile's policy, Qwen2.5-1.5B-Instruct, from the local hub cache;
any tokenizer directory works). bf16, gradient checkpointing and `report_to` are the gpu profile's.
It needs only torch, transformers, trl, peft, datasets and tensorboard: the check for a machine where the gpu
profile's vLLM and Unsloth are not installed yet. Without CUDA the same code runs on the CPU.

Prints one line `gpu_tiny_check: {json}` and exits 0 when every check passed, 1 otherwise:
- policy_on_device, judge_on_device: every policy parameter and the judge's weights on the device, the judge asked;
- trl_cuda_logprob_kernel (CUDA): TRL's Triton log-prob kernel computed the log-probs, our CPU twin never ran
  (cpu_logprob_twin without CUDA: the twin ran);
- bf16_and_gradient_checkpointing (CUDA): the trainer's bf16 and gradient checkpointing on, bf16 base weights;
- steps_logged, loss_finite, reward_columns: one log row per step, a finite loss, the three reward means;
- adapter_saved, checkpoint_saved, tensorboard_events (when reporting to tensorboard).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

from lib import gpu_check
from lib.judge import engine as judge_engine
from lib.train import cpu_logprobs, grpo

REWARD_COLUMNS = ("rewards/format_reward/mean", "rewards/think_quality_reward/mean", "rewards/answer_quality_reward/mean")
IM_END, END_OF_TEXT = "<|im_end|>", "<|endoftext|>"  # Qwen2.5-*-Instruct's end of turn and padding tokens
ENTITIES = ["无糖气泡水", "椰子水", "降噪耳机", "智能手表", "登山鞋", "猫砂", "儿童绘本", "电动牙刷", "老北京布鞋", "火锅底料"]
VERSIONS = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "triton", "tensorboard")


def build_tiny_qwen2(tokenizer_source: str, out_dir: Path, seed: int) -> Path:
    """A random Qwen2ForCausalLM (2 layers of width 64, the tokenizer's whole vocabulary, tied head) + the tokenizer."""
    import torch
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_source)
    vocab = tok.get_vocab()
    if IM_END in vocab:
        tok.eos_token = IM_END  # as Qwen2.5-*-Instruct's tokenizer says (a GGUF-derived one says <|endoftext|>)
    if END_OF_TEXT in vocab:
        tok.pad_token = END_OF_TEXT
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = sorted({tok.eos_token_id, tok.pad_token_id})
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def tiny_overrides(policy_dir: Path, judge_dir: Path, steps: int, cuda: bool) -> dict:
    """The gpu profile's overrides: toy sizes, TRL with HF rollouts, the transformers judge on the random judge."""
    report_to = ["tensorboard"] if importlib.util.find_spec("tensorboard") else []  # the gpu profile's, when installed
    return {
        "name": "gpu-tiny", "device": "cuda" if cuda else "cpu", "policy_model": str(policy_dir), "data": {"max_train": 8},
        # restricted: a random judge never ranks 是/否 among its top 20 next tokens (every question would be flagged)
        "judge": {"model": str(judge_dir), "backend": "transformers", "mode": "soft", "answer_scoring": "restricted"},
        "train": {"backend": "trl", "rollout_engine": "hf", "max_steps": steps, "save_steps": steps, "logging_steps": 1,
                  "num_generations": 4, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
                  "max_completion_length": 32, "lora_rank": 8, "lora_alpha": 16, "log_completions": 2,
                  "report_to": report_to},
    }


class _Probe:
    """Counts which log-prob path ran and where the judge's weights are, by wrapping lib.train's and
    lib.judge.engine's functions for the duration of a `with` block (restored afterwards)."""

    def __init__(self):
        self.calls: Counter = Counter()
        self.seen: dict[str, Any] = {}

    def __enter__(self):
        self.saved = (cpu_logprobs._torch_chunked_logprob, grpo.build_trainer, judge_engine.build_judge,
                      cpu_logprobs._LogProbDispatch.triton_function)
        twin, build_trainer, build_judge, _ = self.saved
        calls, seen = self.calls, self.seen

        def counted_twin(hidden, *args, **kwargs):
            calls["torch_twin"] += 1
            return twin(hidden, *args, **kwargs)

        def capture_trainer(*args, **kwargs):
            trainer = build_trainer(*args, **kwargs)
            seen["trainer"] = trainer
            triton = cpu_logprobs._LogProbDispatch.triton_function  # TRL's kernel, kept by install_cpu_logprobs
            if triton is not None:
                class CountedKernel:
                    @staticmethod
                    def apply(hidden, *rest):
                        calls["triton"] += 1
                        seen.setdefault("kernel_input", f"{hidden.device.type}/{hidden.dtype}")
                        return triton.apply(hidden, *rest)

                cpu_logprobs._LogProbDispatch.triton_function = CountedKernel
            return trainer

        def capture_judge(*args, **kwargs):
            judge = build_judge(*args, **kwargs)
            backend = judge.backend
            weights = next(backend.model.parameters())
            seen["judge_weights"] = f"{weights.device.type}/{weights.dtype}"
            yes_no = backend.yes_no

            def counted_yes_no(prompts):
                calls["judge_prompts"] += len(prompts)
                return yes_no(prompts)

            backend.yes_no = counted_yes_no
            return judge

        cpu_logprobs._torch_chunked_logprob, grpo.build_trainer, judge_engine.build_judge = counted_twin, capture_trainer, capture_judge
        return self

    def __exit__(self, *exc):
        (cpu_logprobs._torch_chunked_logprob, grpo.build_trainer, judge_engine.build_judge,
         cpu_logprobs._LogProbDispatch.triton_function) = self.saved
        return False


def run(tokenizer: str, steps: int = 3, run_id: str | None = None) -> dict[str, Any]:
    """Build the tiny models and the run, train `steps` steps through `gpu_check.train_stage`; the checks' results."""
    import importlib.metadata as md

    import pandas as pd
    import torch

    from lib import data
    from lib.models import resolve_model
    from lib.profiles import dump_profile, load_profile
    from lib.run import RunContext, create_run_dir
    from lib.train.logs import LOG_JSONL, read_log

    if steps < 1:
        raise gpu_check.GPUCheckError(f"--steps must be >= 1, got {steps}")
    cuda = torch.cuda.is_available()
    out: dict[str, Any] = {"device": "cuda" if cuda else "cpu", "versions": {}}
    for name in VERSIONS:
        try:
            out["versions"][name] = md.version(name)
        except md.PackageNotFoundError:
            out["versions"][name] = None
    if cuda:
        out["gpu"] = torch.cuda.get_device_name()
    source = tokenizer if Path(tokenizer).is_dir() else resolve_model(tokenizer)  # a tokenizer directory needs no config.json
    # the run directory first (it refuses an existing one), the models inside it, then its profile.yaml with their paths
    run_dir = create_run_dir(load_profile("gpu"), run_id or time.strftime("%Y%m%d-%H%M%S") + "-gpu-tiny-check")
    policy_dir = build_tiny_qwen2(source, run_dir / "models" / "policy", seed=0)
    judge_dir = build_tiny_qwen2(source, run_dir / "models" / "judge", seed=1)
    profile = load_profile("gpu", overrides=tiny_overrides(policy_dir, judge_dir, steps, cuda))
    (run_dir / "profile.yaml").write_text(dump_profile(profile), encoding="utf-8")
    ctx = RunContext(dir=run_dir, profile=profile)
    prompts = data.build_prompts(pd.DataFrame({"entity": ENTITIES, "domain": ["d"] * len(ENTITIES)}))
    data.save_split(prompts.iloc[:8], prompts.iloc[8:], ctx.stage("data"))

    with _Probe() as probe:
        out["train"] = gpu_check.train_stage(ctx)
    calls, seen, trainer = probe.calls, probe.seen, probe.seen["trainer"]
    params = list(trainer.model.parameters())
    devices = Counter(p.device.type for p in params)
    dtypes = Counter(str(p.dtype).removeprefix("torch.") for p in params)
    want = out["device"]
    checks: dict[str, bool] = {
        "policy_on_device": set(devices) == {want},
        "judge_on_device": seen.get("judge_weights", "").startswith(want) and calls["judge_prompts"] > 0,
    }
    if cuda:
        checks["trl_cuda_logprob_kernel"] = calls["triton"] > 0 and calls["torch_twin"] == 0
        checks["bf16_and_gradient_checkpointing"] = bool(trainer.args.bf16 and trainer.args.gradient_checkpointing
                                                         and dtypes.get("bfloat16"))
    else:
        checks["cpu_logprob_twin"] = calls["torch_twin"] > 0
    log = read_log(grpo.train_dir(ctx) / LOG_JSONL)
    checks["steps_logged"] = list(log["step"]) == list(range(1, steps + 1))
    checks["loss_finite"] = "loss" in log.columns and bool(log["loss"].map(lambda v: v is not None and math.isfinite(v)).all())
    checks["reward_columns"] = all(c in log.columns and not log[c].isna().any() for c in REWARD_COLUMNS)
    train_out = grpo.train_dir(ctx)
    checks["adapter_saved"] = (train_out / grpo.ADAPTER_DIR / "adapter_model.safetensors").is_file()
    checks["checkpoint_saved"] = grpo.last_checkpoint(train_out / grpo.CHECKPOINTS_DIR) is not None
    if profile.train.report_to:
        checks["tensorboard_events"] = any(train_out.rglob("events.out.tfevents*"))
    out.update(
        policy={"param_devices": dict(devices), "param_dtypes": dict(dtypes), "bf16": bool(trainer.args.bf16),
                "gradient_checkpointing": bool(trainer.args.gradient_checkpointing)},
        judge={"weights": seen.get("judge_weights"), "prompts": calls["judge_prompts"]},
        logprob_calls={"triton": calls["triton"], "torch_twin": calls["torch_twin"], "kernel_input": seen.get("kernel_input")},
        loss=[None if v is None else float(v) for v in log["loss"]] if "loss" in log.columns else None,
        checks=checks, failed=[k for k, ok in checks.items() if not ok],
    )
    if cuda:
        out["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / gpu_check.GIB, 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lib.gpu_tiny_check", description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default="qwen2.5-1.5b-instruct", help="registry name, hub id or tokenizer directory")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--run-id", default=None, help="new run directory name under outputs/runs/")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)
    try:
        out = run(a.tokenizer, a.steps, a.run_id)
    except Exception as exc:
        if not (isinstance(exc, gpu_check.GPUCheckError) or type(exc).__module__.startswith("lib.")):
            raise  # not one of ours: keep the traceback
        print(f"gpu_tiny_check FAILED: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1, ensure_ascii=False, default=str), encoding="utf-8")
    print(f"gpu_tiny_check: {json.dumps(out, ensure_ascii=False, default=str)}", flush=True)
    if out["failed"]:
        print(f"gpu_tiny_check FAILED: checks {', '.join(out['failed'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
