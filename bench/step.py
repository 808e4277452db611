"""`python -m bench step`: seconds per GRPO step, our training setup vs the original's, same machine and model.

    python -m bench step [--json PATH] [--steps 3] [--setups ours,original] [--profile cpu]

A few GRPO steps of the profile's shape (default `cpu`: Qwen2.5-Coder-0.5B-Instruct policy and judge, 2 prompts x 8
generations, <= 128 completion tokens, LoRA r16, `dtype: auto`), run both ways one after the other, each in its own
fresh process (what one way leaves behind, e.g. the thread settings an in-process vLLM engine makes, cannot touch
the other), through the library's own path: a temporary run directory, the data stage as notebook 00 builds it
(`lib.data`: deduplicated catalogue, the profile's split, `data.max_train` capped), `lib.judge.build_judge`,
`lib.train.build_trainer` (its own `lib.rewards.JudgeRewards`), `lib.train.train` (TRL's GRPOTrainer, PEFT LoRA), with
profile overrides only:

- ours: what `lib.train` does today: rollouts from the judge's in-process vLLM engine with the current LoRA
  adapter (`train.rollout_engine: vllm_lora`, lib/train/rollouts.py), the in-process soft judge (`judge.backend:
  vllm`, `judge.mode: soft`: one judge batch per step for every judged section), TRL's gradient step;
- original: the original's setup: TRL's own HF-generation rollouts (`train.rollout_engine: hf`), the judge over
  HTTP in the original's pattern: a local `vllm serve` (bench.common.serve_command, the server's defaults) started
  before training, `judge.backend: openai`, `judge.mode: seed` (greedy 3 tokens, requests in batches of 6,
  must-have questions first, plausible ones only when all must-have passed), TRL's gradient step with its own per-row
  log-probs (`train.shared_prompt: false`, micro-batches of 2), where ours computes each prompt once per micro-batch.

Timing is the training log's own (lib/train/logs.py, `train/log.jsonl`, one row per step with `logging_steps: 1`):
`step_seconds` (wall time between two logged steps), `judge_seconds` (the judge engine's own clock: every
`judge_sections` call, HTTP included), `rollout_seconds` (LoRARollouts' clock for ours; for TRL's generation
lib.train.rollouts.GenerationTimer, which lib.train attaches whenever TRL generates itself) and
`gradient_seconds` = step - rollout - judge (TRL's log-probs, loss, backward, optimizer, the rule-based rewards).
The first step of each setup is a warm-up (vLLM loads the first LoRA adapter, caches are cold) and is discarded:
the means cover steps 2..N (the JSON says so: `warmup_steps_discarded`). Engine and server start-up are outside
every step and reported apart. `ratio` = original seconds per step / ours (the issue's goal: >= 3).

Reward weights (decided here, for both setups): the same judged work per step is the fair comparison, so both
setups compute the same rewards. The `cpu` profile weights {format: 1.0, answer: 0.1} leave think un-judged, while
the original judged think and answer; so, whenever the profile leaves out one of the original's three rewards
(format, think, answer), both setups add it, at the smallest weight the profile gives a judged reward (0.1 for
`cpu`; 1.0 when it judges none): here {format: 1.0, answer: 0.1, think: 0.1}. A weight does not change a step's
cost, only whether the reward (and its judge checklist) runs at all. Ours judging think too is slower than
today's `lib.train` on the cpu profile, where think is off: the ratio is, if anything, in the original's favour.
Seed mode asks fewer questions than soft mode (the plausible ones only after every must-have passed): the
judgements per step of each setup are in the JSON (`judge_requests`).

Results go to outputs/bench/step-<timestamp>.json (never overwritten; `--json PATH`), with per-step log rows,
the means, the ratios, the machine (CPU class from /proc/cpuinfo's flags) and versions; a short table is printed.
2 cores: run it alone (the repository's heavy-job lock), nothing else may run meanwhile.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from lib.hardware import machine_facts, profile_precisions

SETUPS = ("ours", "original")
DEFAULT_PROFILE = "cpu"
DEFAULT_STEPS = 3
WARMUP_STEPS = 1  # discarded from the means: the first step of each setup
ORIGINAL_REWARDS = ("format", "think", "answer")  # the original's three rewards
JUDGED_REWARDS = ("think", "answer")
SPLIT = ("rollout_seconds", "judge_seconds", "gradient_seconds")
MEAN_KEYS = ("step_seconds", *SPLIT, "judge_requests", "completions/mean_length", "completions/clipped_ratio", "reward")
GOAL_RATIO = 3.0  # issue 22: ours at least 3x faster per step
DESCRIPTIONS = {
    "ours": "rollouts: judge's in-process vLLM engine with the current LoRA (vllm_lora); judge: in-process vLLM, soft "
            "mode, one batch per step; gradient: TRL GRPOTrainer",
    "original": "rollouts: TRL's HF generate (hf); judge: local `vllm serve` over HTTP, seed mode (greedy 3 tokens, "
                "batches of 6, must-have first); gradient: TRL GRPOTrainer",
}


# ------------------------------------------------------------------------------------------------ pure logic


def bench_reward_weights(profile_weights: Mapping[str, float]) -> dict[str, float]:
    """Both setups' reward weights: the profile's, plus each of the original's three rewards it leaves out, at the
    smallest weight it gives a judged reward (1.0 when it judges none). See the module docstring.

    >>> bench_reward_weights({"format": 1.0, "answer": 0.1})
    {'format': 1.0, 'answer': 0.1, 'think': 0.1}
    >>> bench_reward_weights({"format": 1.0})
    {'format': 1.0, 'think': 1.0, 'answer': 1.0}
    """
    out = {k: float(v) for k, v in profile_weights.items()}
    judged = [v for k, v in out.items() if k in JUDGED_REWARDS and v > 0]
    fill = min(judged) if judged else 1.0
    for name in ORIGINAL_REWARDS:
        if out.get(name, 0) <= 0:
            out[name] = fill if name in JUDGED_REWARDS else 1.0
    return out


def setup_overrides(setup: str, steps: int, reward_weights: Mapping[str, float], judge_model: str | None = None,
                    base_url: str | None = None, max_train: int = 16) -> dict[str, Any]:
    """Profile overrides of one setup: `steps` steps, a log row each, one checkpoint at the end (after the last
    step's row), `max_train` prompts; the original's setup: HF rollouts and the seed judge at `base_url`."""
    if setup not in SETUPS:
        from bench.common import BenchError

        raise BenchError(f"unknown setup {setup!r}; known: {', '.join(SETUPS)}")
    over: dict[str, Any] = {
        "data": {"max_train": max_train},
        "train": {"max_steps": steps, "save_steps": steps, "logging_steps": 1, "reward_weights": dict(reward_weights)},
    }
    if setup == "ours":
        over["train"]["rollout_engine"] = "vllm_lora"
        over["judge"] = {"backend": "vllm", "mode": "soft"}
    else:
        # TRL's own per-row log-probs, in micro-batches of 2 (how this profile trained before shared-prompt log-probs)
        over["train"].update(rollout_engine="hf", shared_prompt=False, per_device_train_batch_size=2,
                             gradient_accumulation_steps=8)
        over["judge"] = {"backend": "openai", "mode": "seed", "base_url": base_url}
        if judge_model:
            over["judge"]["model"] = judge_model  # the served model's path (its name on the server)
    return over


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def aggregate(records: Sequence[Mapping[str, Any]], warmup: int = WARMUP_STEPS) -> dict[str, Any]:
    """Per-step means of log.jsonl rows (one row per step), steps 1..`warmup` discarded.

    Keys of MEAN_KEYS (None when no measured step logged one), `n_measured`, `measured_steps`, `discarded_steps`
    and `warmup_step_seconds` (the discarded steps' mean). BenchError when no step is left to measure.
    """
    from bench.common import BenchError

    rows = {}
    for r in records:
        if isinstance(r.get("step"), (int, float)):
            rows.setdefault(int(r["step"]), r)  # a repeated step keeps its first row, as read_log does
    steps = sorted(rows)
    measured = [s for s in steps if s > warmup]
    if not measured:
        raise BenchError(f"no step left to measure: logged steps {steps}, the first {warmup} discarded "
                         f"(warm-up); use --steps >= {warmup + 1}")
    out: dict[str, Any] = {"n_measured": len(measured), "measured_steps": measured,
                           "discarded_steps": [s for s in steps if s <= warmup]}
    for key in MEAN_KEYS:
        vals = [v for s in measured if (v := _num(rows[s].get(key))) is not None]
        out[key] = sum(vals) / len(vals) if vals else None
    warm = [v for s in out["discarded_steps"] if (v := _num(rows[s].get("step_seconds"))) is not None]
    out["warmup_step_seconds"] = sum(warm) / len(warm) if warm else None
    return out


def ratios(ours: Mapping[str, Any] | None, original: Mapping[str, Any] | None) -> dict[str, float | None]:
    """original / ours for the step and each part of it (None where either is missing or ours is 0).

    >>> ratios({"step_seconds": 10.0, "rollout_seconds": 2.0, "judge_seconds": 0.0, "gradient_seconds": 8.0},
    ...        {"step_seconds": 40.0, "rollout_seconds": 30.0, "judge_seconds": 2.0, "gradient_seconds": 8.0})
    {'step_seconds': 4.0, 'rollout_seconds': 15.0, 'judge_seconds': None, 'gradient_seconds': 1.0}
    """
    out: dict[str, float | None] = {}
    for key in ("step_seconds", *SPLIT):
        a, b = _num((ours or {}).get(key)), _num((original or {}).get(key))
        out[key] = b / a if a and b is not None else None
    return out


def report(profile: str, steps: int, reward_weights: Mapping[str, float], setups: Mapping[str, dict | None],
           errors: Mapping[str, str], shape: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The JSON layout: run facts, one entry per setup (None when it failed, see `errors`), the ratios."""
    from bench.common import machine_info, versions

    means = {s: (setups.get(s) or {}).get("mean") for s in SETUPS}
    r = ratios(means["ours"], means["original"])
    facts = machine_facts()
    vers = versions()
    for pkg in ("trl", "peft"):
        try:
            from importlib.metadata import version

            vers[pkg] = version(pkg)
        except Exception:  # noqa: BLE001 - not installed
            vers[pkg] = None
    return {
        "benchmark": "step", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": profile, "shape": dict(shape or {}), "steps_per_setup": steps,
        "warmup_steps_discarded": WARMUP_STEPS,
        "means_note": f"means over steps {WARMUP_STEPS + 1}..{steps} of each setup: the first {WARMUP_STEPS} step(s) "
                      "(warm-up) discarded; their step_seconds are in warmup_step_seconds",
        "timing": "train/log.jsonl of each run (lib.train.logs.TrainingLogger): step_seconds, rollout_seconds, "
                  "judge_seconds; gradient_seconds = step - rollout - judge",
        "reward_weights": dict(reward_weights),
        "machine": {**machine_info(), "cpu_class": facts["cpu_class"], "cpu_flags": facts["cpu_flags"],
                    "matmul_probe": facts["matmul_probe"]},
        "versions": vers,
        "setups": {s: setups.get(s) for s in SETUPS},
        "ratio": r["step_seconds"], "ratios": r,
        "goal": {"ratio_at_least": GOAL_RATIO, "met": None if r["step_seconds"] is None else r["step_seconds"] >= GOAL_RATIO},
        "errors": dict(errors),
    }


def _f(v: Any, spec: str = "7.1f") -> str:
    return "n/a".rjust(int(spec.split(".")[0])) if v is None else format(v, spec)


def format_lines(rep: Mapping[str, Any]) -> list[str]:
    m = rep["machine"]
    where = m.get("gpu") or f"{m['nproc']} x {m['cpu_model']} ({m.get('cpu_class')})"
    shape = rep.get("shape") or {}
    lines = [f"step benchmark: {rep['profile']} profile, {shape.get('policy_model', '?')}, {shape.get('prompts_per_step', '?')} "
             f"prompts x {shape.get('num_generations', '?')} generations, <= {shape.get('max_completion_length', '?')} tokens; "
             f"{rep['steps_per_setup']} steps each, step 1 discarded (warm-up); {where}",
             f"  {'':14s} {'s/step':>7s} {'rollout':>7s} {'judge':>7s} {'gradient':>8s} {'judged':>7s} {'tokens':>7s} {'warm-up':>8s}"]
    for s in SETUPS:
        entry = rep["setups"].get(s)
        if not entry:
            lines.append(f"  {s:14s} " + (f"failed: {rep['errors'][s]}" if s in rep["errors"] else "not run"))
            continue
        a = entry["mean"]
        lines.append(f"  {s:14s} {_f(a['step_seconds'])} {_f(a['rollout_seconds'])} {_f(a['judge_seconds'])} "
                     f"{_f(a['gradient_seconds'], '8.1f')} {_f(a['judge_requests'], '7.0f')} "
                     f"{_f(a['completions/mean_length'], '7.0f')} {_f(a['warmup_step_seconds'], '8.1f')}")
    r = rep["ratios"]
    cells = [_f(r[k], "6.2f") + "x" for k in ("step_seconds", *SPLIT)]
    lines.append(f"  {'original/ours':14s} {cells[0]} {cells[1]} {cells[2]} {' ' + cells[3]}")
    lines.append("  (judged: judge requests per step; tokens: mean completion length)")
    return lines


# ------------------------------------------------------------------------------------------------ one setup (child)


def prepare_run(profile, run_dir: Path):
    """A run directory holding the profile and its data stage, as notebook 00 builds it (lib.data)."""
    from lib import data
    from lib.profiles import dump_profile
    from lib.run import RunContext

    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "profile.yaml").write_text(dump_profile(profile), encoding="utf-8")
    ctx = RunContext(dir=run_dir, profile=profile)
    cfg = profile.data
    clean, _ = data.dedupe(data.load_catalogue(), cfg.near_dup_threshold)
    train, test = data.split_train_test(data.build_prompts(clean), cfg.test_size, seed=profile.seed, max_train=cfg.max_train)
    data.save_split(train, test, ctx.stage("data"))
    return ctx


def run_setup(setup: str, profile_name: str, steps: int, work_dir: Path) -> dict[str, Any]:
    """Train `steps` steps of one setup (this process; the parent runs each setup in a fresh one); its record."""
    from bench import common as bench_common
    from lib.data import read_jsonl
    from lib.judge.engine import build_judge
    from lib.models import resolve_model
    from lib.profiles import load_profile
    from lib.run import seed_everything
    from lib.train import grpo
    from lib.train.logs import LOG_JSONL

    base = load_profile(profile_name)
    weights = bench_reward_weights(base.train.reward_weights)
    out: dict[str, Any] = {"description": DESCRIPTIONS[setup], "load_avg_1m": [round(os.getloadavg()[0], 2)]}
    proc = None
    log = None
    t0 = time.perf_counter()
    try:
        if setup == "original":
            path = resolve_model(base.judge.model)
            port = bench_common.free_port()
            server_log = work_dir / "server.log"
            log = open(server_log, "w", encoding="utf-8")
            env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "2")}
            cmd = bench_common.serve_command(path, port, base.judge)
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            out["server_startup_s"] = round(bench_common.wait_for_health(f"http://127.0.0.1:{port}/health", proc,
                                                                  bench_common.SERVER_START_TIMEOUT_S), 1)
            out["server_command"] = " ".join(cmd[1:])
            over = setup_overrides(setup, steps, weights, judge_model=path, base_url=f"http://127.0.0.1:{port}/v1")
        else:
            over = setup_overrides(setup, steps, weights)
        profile = load_profile(profile_name, overrides=over)
        out["overrides"] = over
        ctx = prepare_run(profile, work_dir / "run")
        seed_everything(profile.seed)
        grpo.check_processes(profile)
        grpo.prepare_backend(profile)
        t1 = time.perf_counter()
        judge = build_judge(profile.judge, seed=profile.seed, **grpo.judge_engine_kwargs(profile))
        out["judge_startup_s"] = round(time.perf_counter() - t1, 1)
        try:
            t2 = time.perf_counter()
            trainer = grpo.build_trainer(profile, ctx, judge)
            out["trainer_build_s"] = round(time.perf_counter() - t2, 1)
            server_cpu0 = bench_common.process_cpu_seconds(proc.pid) if proc else None
            result = grpo.train(profile, ctx, judge, resume=False, trainer=trainer)
            if proc:  # an idle server that spins would show here
                out["server_cpu_seconds_during_training"] = round(bench_common.process_cpu_seconds(proc.pid) - server_cpu0, 1)
        finally:
            judge.close()
        import torch

        out["torch_threads"] = torch.get_num_threads()
        out["train_seconds"] = round(result["seconds"], 1)
        out["steps_trained"] = result["steps"]
        records = read_jsonl(grpo.train_dir(ctx) / LOG_JSONL)
        out["per_step"] = [{k: v for k, v in r.items() if k != "wall_time"} for r in records]
        out["mean"] = aggregate(records)
    finally:
        if proc is not None:
            bench_common.stop_server(proc)
        if log is not None:
            log.close()
    out["load_avg_1m"].append(round(os.getloadavg()[0], 2))
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def _child_main(argv: Sequence[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.step")
    ap.add_argument("--child", required=True, choices=SETUPS)
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--profile", default=DEFAULT_PROFILE)
    ap.add_argument("--work-dir", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    try:
        rec: dict[str, Any] = run_setup(a.child, a.profile, a.steps, a.work_dir)
        rc = 0
    except Exception as exc:  # noqa: BLE001 - the parent reports it and still runs the other setup
        import traceback

        traceback.print_exc()
        rec, rc = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}, 1
    a.out.write_text(json.dumps(rec, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    return rc


# ------------------------------------------------------------------------------------------------ the command


def child_command(setup: str, steps: int, profile: str, work_dir: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "bench.step", "--child", setup, "--steps", str(steps), "--profile", profile,
            "--work-dir", str(work_dir), "--out", str(out)]


def _children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def bench_step(steps: int = DEFAULT_STEPS, json_path: Path | None = None, setups: Sequence[str] = SETUPS,
               profile: str = DEFAULT_PROFILE, keep_runs: bool = False) -> dict[str, Any]:
    """Run each setup in a fresh process, one after the other; write and print the report."""
    from bench.common import BenchError, default_json_path, write_json
    from lib.profiles import ProfileError, load_profile

    unknown = [s for s in setups if s not in SETUPS]
    if unknown:
        raise BenchError(f"unknown setup(s) {unknown}; known: {', '.join(SETUPS)}")
    if steps < WARMUP_STEPS + 1:
        raise BenchError(f"--steps must be >= {WARMUP_STEPS + 1} (the first step is discarded as warm-up), got {steps}")
    try:
        base = load_profile(profile)
    except ProfileError as exc:
        raise BenchError(str(exc)) from None
    path = json_path or default_json_path(stem="step")
    if path.exists():
        raise BenchError(f"{path} exists; benchmarks never overwrite (choose another --json)")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    t = base.train
    shape = {"policy_model": base.policy_model, "judge_model": base.judge.model,
             "prompts_per_step": t.per_device_train_batch_size * t.gradient_accumulation_steps // t.num_generations,
             "num_generations": t.num_generations, "max_completion_length": t.max_completion_length,
             "lora_rank": t.lora_rank, "shared_prompt": t.shared_prompt,
             "dtype": {k: v.dtype for k, v in profile_precisions(base).items()}, "device": base.device}
    results: dict[str, dict | None] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-step-") as tmp:
        for s in SETUPS:  # one at a time: two at once on 2 cores ruin every figure
            if s not in setups:
                continue
            work = Path(tmp) / s
            work.mkdir()
            out = work / "result.json"
            print(f"[bench] step: {s} ({steps} steps) ...", flush=True)
            cpu0, t0 = _children_cpu_seconds(), time.perf_counter()
            rc = subprocess.call(child_command(s, steps, profile, work, out))
            rec = json.loads(out.read_text(encoding="utf-8")) if out.exists() else {"error": f"exited with code {rc}, no result"}
            if "error" in rec:
                errors[s] = rec["error"]
                results[s] = None
            else:
                rec["process_cpu_seconds"] = round(_children_cpu_seconds() - cpu0, 1)  # startup included
                rec["process_wall_s"] = round(time.perf_counter() - t0, 1)
                results[s] = rec
            print(f"[bench] step: {s}: " + (json.dumps(rec["mean"]) if results[s] else errors[s]), flush=True)
            if keep_runs and (work / "run").exists():
                import shutil

                kept = path.with_suffix("") / s
                shutil.copytree(work, kept)
                print(f"[bench] kept {kept}", flush=True)
    rep = report(profile, steps, bench_reward_weights(base.train.reward_weights), results, errors, shape)
    write_json(rep, path)
    print("\n".join(format_lines(rep)))
    print(f"written {path}")
    return rep


def add_step_parser(sub) -> None:
    """The `step` subcommand of `python -m bench` (dispatched by bench.main)."""
    p = sub.add_parser("step", help="seconds per GRPO step: ours (vLLM LoRA rollouts, in-process soft judge) vs the "
                                    "original's setup (HF rollouts, seed judge over HTTP)")
    p.add_argument("--json", type=Path, help="report path (default outputs/bench/step-<timestamp>.json)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS,
                   help=f"GRPO steps per setup, the first discarded as warm-up (default {DEFAULT_STEPS})")
    p.add_argument("--setups", default=",".join(SETUPS), help=f"comma-separated subset of {', '.join(SETUPS)}")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"whose shape and models (default {DEFAULT_PROFILE})")
    p.add_argument("--keep-runs", action="store_true", help="keep each setup's run directory next to the JSON")
    p.set_defaults(run=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.common import BenchError

    try:
        bench_step(args.steps, args.json, [s.strip() for s in args.setups.split(",") if s.strip()], args.profile,
                   keep_runs=args.keep_runs)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
