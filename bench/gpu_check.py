"""The first run on a GPU machine: the `gpu` profile's parts one at a time, in about 10 minutes.

    bash scripts/gpu_check.sh                       # every stage; stops at the first failure, naming it
    python -m bench.gpu_check preflight --profile gpu
    python -m bench.gpu_check logprobs --profile gpu
    python -m bench.gpu_check judge --profile gpu [--texts 20]
    python -m bench.gpu_check train --profile gpu --run-id ID [--steps 3]
    python -m bench.gpu_check eval --run-id ID [--prompts 5]
    python -m bench.gpu_check bench --profile gpu

The script runs each stage in its own process, so every stage starts on an empty card. Each stage prints
`gpu_check <stage>: {json}` and exits 0, or exits non-zero (our errors: one line `gpu_check <stage> FAILED: ...`).

- preflight: CUDA, the packages the profile needs (vllm, unsloth, its `report_to` integrations), every model the
  later stages load; the card's memory and the share each engine is planned to take (`memory_plan`).
- logprobs: the policy's rollout engine loaded as lib.train loads it (Unsloth's `fast_inference` engine) reports the
  `logprobs_mode` TRL's importance-sampling correction needs (`processed_logprobs`), else one line naming what it has.
- judge: the profile's judge alone on 20 calibration texts: accuracy against the hand labels, flagged share,
  judgements per second, engine start-up, GPU memory it took.
- train: a fresh run (its data stage built here, no notebook) and `--steps` GRPO steps exactly as lib.train runs
  them (judge first, then the policy): step time, judge share, reward means, the share of groups without reward
  spread (all of them: identical rollouts), free GPU memory after each engine.
- eval: the policy before and after training (the profile's eval models on its policy) on 5 test prompts, judged
  with the training judge, then the held-out judge (notebook 04's score tables in the run's eval/). The two
  generation engines start one after the other, each asking for most of the card: the second starts only if the
  first gave its memory back.
- bench: `python -m bench judge` with the profile's judge, when bench accepts `--profile`; otherwise skipped.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from lib import paths
from lib.judge import engine as judge_engine
from lib.profiles import Profile, load_profile

GIB = 1024**3
CUDA_CONTEXT_GIB = 0.5  # the process's CUDA context and torch outside the engines' budgets (assumed; preflight measures)
# `train.report_to` names (transformers integrations) -> the module each needs
REPORT_TO_MODULES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet_ml",
                     "trackio": "trackio"}
TRAIN_OVERRIDES = {"data": {"max_train": 64}}  # a few prompts suffice for 3 steps (one prompt a step on the gpu profile)


class GPUCheckError(RuntimeError):
    """A stage whose result is wrong or whose prerequisites are missing; one line naming what."""


# ------------------------------------------------------------------------------------------------ memory


def gpu_memory() -> dict[str, float] | None:
    """Free and total memory of the current CUDA device in GiB (None without CUDA)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return {"free_gib": round(free / GIB, 2), "total_gib": round(total / GIB, 2)}


def memory_plan(profile: Profile, total_gib: float, context_gib: float = CUDA_CONTEXT_GIB) -> dict[str, float | None]:
    """GiB each engine of a training process is planned to take on a card of `total_gib`.

    The in-process vLLM judge starts first and takes `judge.gpu_memory_utilization` of the card. Unsloth then
    sizes its engine to `train.gpu_memory_utilization` of the memory still *free* (unsloth_zoo's
    `approximate_vllm_memory_usage`), TRL's colocated engine to that share of the whole card; training (LoRA
    weights, gradients, optimizer states, activations) gets what is left. A transformers judge has no set share.

    >>> memory_plan(load_profile("gpu"), total_gib=80.0)
    {'total_gib': 80.0, 'judge_gib': 28.0, 'free_after_judge_gib': 51.5, 'policy_engine_gib': 18.0, 'training_gib': 33.5}
    """
    in_process_judge = profile.device == "cuda" and profile.judge.backend == "vllm"
    judge = profile.judge.gpu_memory_utilization * total_gib if in_process_judge else 0.0
    free = total_gib - judge - context_gib
    cfg = profile.train
    if cfg.backend == "unsloth":
        policy = cfg.gpu_memory_utilization * free
    elif cfg.rollout_engine == "vllm_colocate":
        policy = cfg.gpu_memory_utilization * total_gib
    else:
        policy = 0.0
    return {"total_gib": round(total_gib, 1), "judge_gib": round(judge, 1), "free_after_judge_gib": round(free, 1),
            "policy_engine_gib": round(policy, 1), "training_gib": round(free - policy, 1)}


# Weights (GiB) of the evaluation judges the gpu profile names, in their vLLM dtype: the held-out judge's share must
# hold them and leave KV cache. Yi-1.5-9B-Chat: 8.83e9 parameters in bf16 (UNVERIFIED here: not downloaded).
JUDGE_WEIGHTS_GIB = {"yi-1.5-9b-chat": 16.5, "qwen2.5-7b-instruct": 14.2, "qwen2.5-7b-instruct-awq": 5.2}


def eval_memory_plan(profile: Profile, total_gib: float) -> dict[str, float | None]:
    """GiB each engine of the evaluation (notebook 04) is planned to take on a card of `total_gib`, one at a time.

    Notebook 04 never holds two engines: each model's generation engine (`eval.gpu_memory_utilization`) is shut down
    before the next, all before a judge starts; the training judge (`judge.gpu_memory_utilization`) is closed before
    a held-out judge with its own engine starts (lib.eval.scoring.heldout_judge), which may so take a larger share
    (`eval.heldout_judge.gpu_memory_utilization`). `heldout_kv_gib`: what its share leaves after its weights
    (`JUDGE_WEIGHTS_GIB`; None for a model not listed there); the peak is the largest single engine.

    >>> eval_memory_plan(load_profile("gpu"), total_gib=80.0)
    {'total_gib': 80.0, 'generation_gib': 64.0, 'train_judge_gib': 28.0, 'heldout_judge_gib': 40.0, 'heldout_kv_gib': 23.5, 'peak_gib': 64.0}
    """
    e, hj = profile.eval, profile.eval.heldout_judge
    held = (hj or profile.judge).gpu_memory_utilization * total_gib
    weights = JUDGE_WEIGHTS_GIB.get((hj or profile.judge).model)
    plan = {"total_gib": round(total_gib, 1), "generation_gib": round(e.gpu_memory_utilization * total_gib, 1),
            "train_judge_gib": round(profile.judge.gpu_memory_utilization * total_gib, 1),
            "heldout_judge_gib": round(held, 1), "heldout_kv_gib": None if weights is None else round(held - weights, 1)}
    plan["peak_gib"] = max(plan["generation_gib"], plan["train_judge_gib"], plan["heldout_judge_gib"])
    return plan


# ------------------------------------------------------------------------------------------------ preflight


def needed_modules(profile: Profile) -> list[str]:
    """Modules the profile's stages import: vLLM for in-process engines, Unsloth, the report_to integrations."""
    mods = ["vllm"]
    if profile.train.backend == "unsloth":
        mods.append("unsloth")
    for name in profile.train.report_to:
        if name not in REPORT_TO_MODULES:
            raise GPUCheckError(f"train.report_to: unknown integration {name!r}; known: {', '.join(REPORT_TO_MODULES)}")
        mods.append(REPORT_TO_MODULES[name])
    return mods


def eval_models(profile: Profile) -> list:
    """The eval models on the profile's policy (before and after training); else the first eval model."""
    models = [m for m in profile.eval.models if m.model == profile.policy_model]
    if not models and not profile.eval.models:
        raise GPUCheckError("eval.models is empty: the eval stage needs at least one model")
    return models or list(profile.eval.models[:1])


def needed_models(profile: Profile) -> list[str]:
    names = [profile.policy_model] + [m.model for m in eval_models(profile)]
    for judge in (profile.judge, profile.eval.heldout_judge):  # the eval stage asks the held-out judge too
        if judge is not None and judge.backend != "openai":
            names.append(judge.model)
    return list(dict.fromkeys(names))


def preflight(profile: Profile) -> dict[str, Any]:
    """Everything the later stages need, checked at once: one GPUCheckError listing every problem."""
    from lib.models import REGISTRY, ModelError, resolve_model

    problems = []
    mem = gpu_memory()
    if profile.device == "cuda" and mem is None:
        problems.append("no CUDA device (torch.cuda.is_available() is False)")
    missing = [m for m in needed_modules(profile) if importlib.util.find_spec(m) is None]
    if missing:
        problems.append(f"missing packages {', '.join(missing)} (`make setup EXTRAS=gpu,dev`)")
    absent = []
    for name in needed_models(profile):
        try:
            resolve_model(name)
        except ModelError:
            absent.append(REGISTRY[name].source if name in REGISTRY else name)
    if absent:
        problems.append(f"models not available {', '.join(absent)} (`hf download ID` with hub access)")
    if problems:
        raise GPUCheckError("; ".join(problems))
    out: dict[str, Any] = {"profile": profile.name, "device": profile.device}
    if mem is not None:
        import torch

        out.update(gpu=torch.cuda.get_device_name(), **mem, plan=memory_plan(profile, mem["total_gib"]))
    return out


# ------------------------------------------------------------------------------------------------ logprobs


def logprobs_stage(profile: Profile) -> dict[str, Any]:
    """The `logprobs_mode` of the profile's rollout engine (`grpo.check_rollout_logprobs`: processed_logprobs where
    TRL's importance-sampling correction is on). Unsloth's engine is loaded as lib.train loads it; TRL's colocated
    engine and the judge's LoRA engine (`vllm_lora`) are built with the mode by TRL and VLLMBackend themselves."""
    from lib.train import grpo

    cfg = profile.train
    out: dict[str, Any] = {"backend": cfg.backend, "rollout_engine": cfg.rollout_engine,
                           "importance_sampling": cfg.importance_sampling}
    if cfg.backend != "unsloth":
        return {**out, "logprobs_mode": None, "checked": False}
    grpo.check_processes(profile)
    grpo.prepare_backend(profile)
    model, _, _ = grpo.load_policy(profile)
    engine = getattr(model, "vllm_engine", None)
    grpo.check_rollout_logprobs(profile, engine)
    return {**out, "logprobs_mode": grpo.engine_logprobs_mode(engine), "checked": cfg.importance_sampling != "off"}


# ------------------------------------------------------------------------------------------------ judge


def calibration_sample(rubric, n_texts: int, seed: int = 0):
    """`n_texts` calibration texts, split evenly over the rubric's sections, stratified by kind."""
    from lib.judge import calibration as cal

    full = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))
    per_section = max(1, math.ceil(n_texts / len(rubric.sections)))
    return cal.select_calibration_texts(full, per_section, seed=seed)


def judge_stage(profile: Profile, n_texts: int = 20) -> dict[str, Any]:
    """The profile's judge alone on `n_texts` calibration texts: accuracy, flagged share, judgements/s."""
    from lib.judge import calibration as cal
    from lib.rubric import load_rubric

    rubric = load_rubric(profile.rubric.path)
    texts = calibration_sample(rubric, n_texts, seed=profile.seed)
    before = gpu_memory()
    t0 = time.perf_counter()
    judge = judge_engine.build_judge(profile.judge, seed=profile.seed)
    startup = time.perf_counter() - t0
    after = gpu_memory()
    try:
        t0 = time.perf_counter()
        judged = cal.judge_calibration_set(judge, rubric, texts)
        seconds = time.perf_counter() - t0
        judgements = judge.stats.requests
    finally:
        judge.close()
    labels = cal.long_labels(texts)[["id", "key", "label"]]
    asked = judged.merge(labels, on=["id", "key"], how="inner")
    asked = asked[asked["asked"]]
    out = {
        "judge": profile.judge.model, "backend": profile.judge.backend, "mode": profile.judge.mode,
        "texts": len(texts), "judgements": int(judgements), "startup_s": round(startup, 1), "seconds": round(seconds, 2),
        "judgements_per_s": round(judgements / max(seconds, 1e-9), 1),
        "accuracy": round(float((asked["verdict"] == asked["label"]).mean()), 3),
        "flagged_share": round(float(asked["flagged"].mean()), 3),
    }
    if before and after:
        out["judge_engine_gib"] = round(before["free_gib"] - after["free_gib"], 2)
    if out["flagged_share"] > 0.5:
        raise GPUCheckError(f"the judge answered neither 是 nor 否 on {out['flagged_share']:.0%} of the questions: "
                            f"check judge.answer_scoring ({profile.judge.answer_scoring}) and judge.model")
    return out


# ------------------------------------------------------------------------------------------------ train


def train_overrides(steps: int) -> dict:
    """Profile overrides of the train stage: `steps` steps, one checkpoint at the end, a log line every step."""
    if steps < 1:
        raise GPUCheckError(f"--steps must be >= 1, got {steps}")
    return {**TRAIN_OVERRIDES, "train": {"max_steps": steps, "save_steps": steps, "logging_steps": 1}}


def prepare_run(profile_name: str, run_id: str, steps: int):
    """A new run of the profile (with `train_overrides`) and its data stage, as notebook 00 builds it."""
    from lib import data
    from lib.run import RunContext, create_run_dir

    profile = load_profile(profile_name, overrides=train_overrides(steps))
    ctx = RunContext(dir=create_run_dir(profile, run_id), profile=profile)
    cfg = profile.data
    clean, _ = data.dedupe(data.load_catalogue(), cfg.near_dup_threshold)
    train, test = data.split_train_test(data.build_prompts(clean), cfg.test_size, seed=profile.seed, max_train=cfg.max_train)
    data.save_split(train, test, ctx.stage("data"))
    return ctx


def train_log_report(log) -> dict[str, Any]:
    """Step time, judge share and reward means of a training log; GPUCheckError when no group had reward spread.

    TRL's `frac_reward_zero_std` is the share of groups whose `num_generations` completions all scored the
    same: 1 at every step means nothing can be learned (identical rollouts, e.g. a fixed per-request seed).
    """
    from lib.train.logs import read_log, reward_metrics

    df = read_log(log)
    if df.empty:
        raise GPUCheckError("the training log has no steps")
    out: dict[str, Any] = {"steps": int(df["step"].max())}
    for col in ("step_seconds", "judge_share", "frac_reward_zero_std", "completions/mean_length"):
        if col in df.columns:
            out[col] = round(float(df[col].mean()), 3)
    out["reward_means"] = {n: round(float(df[f"rewards/{n}/mean"].mean()), 3) for n in reward_metrics(df)}
    if "frac_reward_zero_std" in df.columns and (df["frac_reward_zero_std"] >= 1).all():
        raise GPUCheckError("no group had reward spread at any step (frac_reward_zero_std = 1): the num_generations "
                            "completions of a prompt are identical or scored alike, nothing is learned")
    return out


def train_stage(ctx) -> dict[str, Any]:
    """Train the run as lib.train does (judge first, then the policy), with GPU memory after each engine."""
    from lib.train import grpo
    from lib.train.logs import LOG_JSONL

    profile = ctx.profile
    grpo.check_processes(profile)
    grpo.prepare_backend(profile)
    memory = {"start": gpu_memory()}
    judge = judge_engine.build_judge(profile.judge, seed=profile.seed)
    memory["after_judge"] = gpu_memory()
    try:
        trainer = grpo.build_trainer(profile, ctx, judge)
        memory["after_policy"] = gpu_memory()
        result = grpo.train(profile, ctx, judge, trainer=trainer)
        memory["after_training"] = gpu_memory()
    finally:
        judge.close()
    out = {"run_dir": str(ctx.dir), "trainer": type(trainer).__name__, "seconds": round(result["seconds"], 1),
           "judge_share": round(result["judge_share"] or 0.0, 3), **train_log_report(grpo.train_dir(ctx) / LOG_JSONL)}
    if memory["start"] is not None:
        import torch

        out["free_gib"] = {k: v["free_gib"] for k, v in memory.items() if v}
        out["peak_torch_allocated_gib"] = round(torch.cuda.max_memory_allocated() / GIB, 2)
    if out["steps"] != profile.train.max_steps:
        raise GPUCheckError(f"trained {out['steps']} steps, asked for {profile.train.max_steps}")
    return out


# ------------------------------------------------------------------------------------------------ eval


def eval_stage(ctx, n_prompts: int = 5) -> dict[str, Any]:
    """`eval_models` on the first `n_prompts` test prompts (generation engines one after the other), scored as
    notebook 04 scores them: the training judge, then the held-out judge (`scoring.heldout_judge`: its own engine
    only after the training judge's is closed); both score tables saved in the run's eval/ (`scores_*.csv`)."""
    from lib.eval import generation, scoring, tables
    from lib.data import load_split
    from lib.eval.generation import GenerationCache
    from lib.rubric import load_rubric

    profile, cfg = ctx.profile, ctx.profile.eval
    models = eval_models(profile)
    _, test = load_split(ctx.find("data", "test.parquet").parent)
    test = test.head(n_prompts).reset_index(drop=True)
    entities = list(test["entity"])
    cache = GenerationCache(ctx.stage("eval") / "generations.jsonl")
    memory = {"start": gpu_memory()}
    t0 = time.perf_counter()
    completions = generation.generate_for_models(models, test, cfg, cache, ctx.dir, backend=cfg.generation_backend,
                                                 gpu_memory_utilization=cfg.gpu_memory_utilization)
    generation_s = time.perf_counter() - t0
    memory["after_generation"] = gpu_memory()
    judge, heldout = judge_engine.build_judge(profile.judge, seed=profile.seed), None
    try:
        train_items, _ = scoring.score_completions(completions, entities, judge, load_rubric(profile.rubric.path))
        heldout, _ = scoring.heldout_judge(profile, judge)
        heldout_items, _ = scoring.score_completions(completions, entities, heldout,
                                                     load_rubric(profile.rubric.heldout_path or "heldout"), "heldout")
    finally:
        for j in (heldout, judge):  # closing twice is harmless (a shared engine is the same backend)
            if j is not None:
                j.close()
    score_tables = {"train": tables.score_table(train_items, n_resamples=cfg.n_bootstrap, seed=cfg.seed),
                    "heldout": tables.score_table(heldout_items, metrics=("think", "answer"),
                                                  n_resamples=cfg.n_bootstrap, seed=cfg.seed)}
    for name, table in score_tables.items():
        tables.save_table(table, ctx.stage("eval") / f"scores_{name}")
    out = {"prompts": len(test), "models": [m.label for m in models], "generation_s": round(generation_s, 1),
           "means": {name: t[tables.interval_columns(t)].round(3).to_dict(orient="index")
                     for name, t in score_tables.items()}}
    if memory["start"] is not None:
        out["free_gib"] = {k: v["free_gib"] for k, v in memory.items() if v}
    return out


# ------------------------------------------------------------------------------------------------ bench


def bench_command(profile_name: str, json_path: Path) -> list[str] | None:
    """`python -m bench judge --profile NAME --json PATH`, or None while bench has no `--profile` option."""
    probe = subprocess.run([sys.executable, "-m", "bench", "judge", "--help"], cwd=paths.PROJ_ROOT,
                           capture_output=True, text=True, timeout=120)
    if probe.returncode != 0 or "--profile" not in probe.stdout:
        return None
    return [sys.executable, "-m", "bench", "judge", "--profile", profile_name, "--json", str(json_path)]


# ------------------------------------------------------------------------------------------------ CLI


def _run_dir(run_id: str) -> Path:
    p = Path(run_id)
    return p if p.is_dir() else paths.RUNS_DIR / run_id


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="stage", required=True)
    for name in ("preflight", "logprobs", "judge", "bench"):
        p = sub.add_parser(name)
        p.add_argument("--profile", default="gpu")
        if name == "judge":
            p.add_argument("--texts", type=int, default=20, help="calibration texts, split over the sections (default 20)")
    p = sub.add_parser("train")
    p.add_argument("--profile", default="gpu")
    p.add_argument("--run-id", required=True, help="new run directory name under outputs/runs/")
    p.add_argument("--steps", type=int, default=3)
    p = sub.add_parser("eval")
    p.add_argument("--run-id", required=True, help="the train stage's run id (or run directory)")
    p.add_argument("--prompts", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        if a.stage == "preflight":
            out = preflight(load_profile(a.profile))
        elif a.stage == "logprobs":
            out = logprobs_stage(load_profile(a.profile))
        elif a.stage == "judge":
            out = judge_stage(load_profile(a.profile), a.texts)
        elif a.stage == "train":
            out = train_stage(prepare_run(a.profile, a.run_id, a.steps))
        elif a.stage == "eval":
            from lib.run import open_run

            out = eval_stage(open_run(_run_dir(a.run_id)), a.prompts)
        else:
            cmd = bench_command(a.profile, paths.OUTPUTS_DIR / "bench" / f"judge-{a.profile}-{time.strftime('%Y%m%d-%H%M%S')}.json")
            if cmd is None:
                print("gpu_check bench: skipped: `python -m bench judge` has no --profile option to take the "
                      f"{a.profile} profile's judge")
                return 0
            return subprocess.run(cmd, cwd=paths.PROJ_ROOT).returncode
    except Exception as exc:
        if not (isinstance(exc, GPUCheckError) or type(exc).__module__.startswith("lib.")):
            raise  # not one of ours: keep the traceback
        print(f"gpu_check {a.stage} FAILED: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    print(f"gpu_check {a.stage}: {json.dumps(out, ensure_ascii=False, default=str)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
