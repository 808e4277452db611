"""Benchmarks (commands, not tests): how fast the judge is, measured the same way for each way of running it.

    python -m bench judge [--json PATH] [--profile NAME] [--model NAME] [--texts N] [--modes soft_vllm,seed_http,soft_transformers]
    python -m bench step [--json PATH] [--steps 3] [--setups ours,original]   (bench/step.py)
    python -m bench serve ... (bench/serve.py); python -m bench soak ... (bench/soak.py)
    python -m bench precision ... (bench/precision.py)

`judge` judges the same N calibration completions (N answers and N think sections, every question of the
default rubric: 20 per completion) with the same model, one mode after the other in one process. The judge is
the profile's (`--profile`, default `cpu`: its `judge` section: model, answer scoring, context length, GPU
memory share); `--model` replaces only the model. On a machine with CUDA, vLLM runs there (`--profile gpu`).

- soft_vllm: our in-process soft judge (VLLMBackend: both sections in one batch, as a training step sends them;
  warm prefix first, identical prompts once, prefix caching; prefixes padded to a KV-block boundary only with the
  profile's `judge.prefix_pad: true`);
- seed_http: the original's topology: a local `vllm serve` (its module form) over HTTP, seed mode (greedy 3 tokens, batches of 6);
  the server is started for this mode only and stopped before the next (2 cores: nothing else may run);
- soft_transformers: the TransformersBackend, soft (full prefill of every prompt, batched).

Each mode is measured after a warm-up call on other texts. Per mode: judgements, seconds, judgements_per_s,
prompt_tokens (total), computed_prompt_tokens (as the backend reports them), min_prompt_tokens (each text's
shared prefix once plus each question's own suffix: what a perfect prefix cache computes), tokens_over_minimum
(computed / minimum), tokens per second, and CPU seconds (this process and its children: a local server counts).
At the top level: ratio_vs_seed (soft_vllm / seed_http judgements per second), ratio_vs_seed_cpu (the same in CPU
seconds per judgement, less disturbed by other jobs on a shared machine) and tokens_over_minimum (soft_vllm's). Results go to outputs/bench/judge-<timestamp>.json (never
overwritten) and are printed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from bench.common import (BENCH_DIR, SERVER_START_TIMEOUT_S, BenchError, default_json_path, free_port,  # noqa: F401
                               machine_info, process_cpu_seconds, serve_command, stop_server, versions, wait_for_health,
                               write_json)  # re-exported: `from bench.cli import BenchError` keeps working

MODES = ("soft_vllm", "seed_http", "soft_transformers")
DEFAULT_PROFILE = "cpu"  # whose `judge` the benchmark uses unless --profile says otherwise
WARMUP_TEXTS = 2  # completions (answer + think) judged before each measurement, never among the measured ones


# ------------------------------------------------------------------------------------------------ token counts


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Length of the longest common prefix of token sequences (0 for none).

    >>> common_prefix_len([[1, 2, 3], [1, 2, 4], [1, 2]])
    2
    """
    if not seqs:
        return 0
    n = min(len(s) for s in seqs)
    first = seqs[0]
    for i in range(n):
        if any(s[i] != first[i] for s in seqs[1:]):
            return i
    return n


def min_prompt_tokens(tokenize: Callable[[str], Sequence[int]], prompts_by_text: Sequence[Sequence[str]]) -> int:
    """Prompt tokens a perfect prefix cache computes: per text, the prefix its prompts share once, plus each
    prompt's remaining suffix. Texts whose prompts are identical to an earlier text's are counted once.

    >>> min_prompt_tokens(list, [["abcX", "abcYY"], ["zQ"], ["abcX", "abcYY"]])
    8
    """
    total, seen = 0, set()
    for prompts in prompts_by_text:
        key = tuple(prompts)
        if not prompts or key in seen:
            continue
        seen.add(key)
        toks = [list(tokenize(p)) for p in dict.fromkeys(prompts)]  # a prompt asked twice is computed once
        shared = common_prefix_len(toks)
        total += shared + sum(len(t) - shared for t in toks)
    return total


def prompts_asked(engine, section, entities: Sequence[str], texts: Sequence[str], results: Sequence[dict]) -> list[list[str]]:
    """The prompts `engine` sent for each text: one per judged key, built the way the engine builds them."""
    out = []
    for entity, text, res in zip(entities, texts, results):
        fitted, _ = engine.fit_text(section, entity, text)
        out.append([engine.chat(section.render(entity, fitted, section.item(k))) for k in section.keys if k in res])
    return out


# ------------------------------------------------------------------------------------------------ one measurement


@dataclass
class Workload:
    """The completions a benchmark judges: per rubric section, entities and texts (warm-up ones apart)."""

    rubric: Any
    measured: dict[str, tuple[list[str], list[str]]]  # section -> (entities, texts)
    warmup: dict[str, tuple[list[str], list[str]]]

    @property
    def n_texts(self) -> int:
        return sum(len(t) for _, t in self.measured.values())


def workload(n_texts: int, seed: int = 0) -> Workload:
    """N answers and N think sections of the calibration set (stratified by kind), plus 2 of each for warm-up."""
    from lib.judge import calibration as cal
    from lib.rubric import load_rubric

    rubric = load_rubric()
    full = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))
    sizes = full.groupby("section").size()
    most = int(sizes.min()) - WARMUP_TEXTS
    if not 1 <= n_texts <= most:
        raise BenchError(f"--texts must be between 1 and {most} (the calibration set has {dict(sizes)} texts), got {n_texts}")
    sub = cal.select_calibration_texts(full, n_texts + WARMUP_TEXTS, seed=seed)
    measured, warmup = {}, {}
    for name, grp in sub.groupby("section", sort=False):
        warm, meas = grp.iloc[:WARMUP_TEXTS], grp.iloc[WARMUP_TEXTS:]
        measured[name] = (list(meas["entity"]), list(meas["text"]))
        warmup[name] = (list(warm["entity"]), list(warm["text"]))
    return Workload(rubric, measured, warmup)


def judge_all(engine, rubric, texts_by_section: dict[str, tuple[list[str], list[str]]]) -> dict[str, list[dict]]:
    """Every section's texts in one `judge_sections` call, as the training rewards send a step's think and answer."""
    names = list(texts_by_section)
    out = engine.judge_sections([(rubric[n], *texts_by_section[n]) for n in names])
    return dict(zip(names, out))


def measure(make_engine: Callable[[], Any], work: Workload, tokenize: Callable[[str], Sequence[int]] | None = None,
            cpu_clock: Callable[[], float] = process_cpu_seconds) -> dict[str, Any]:
    """Warm up one engine on the warm-up texts, then time a fresh engine (same backend) on the measured texts.

    `make_engine()` returns a JudgeEngine on an already started backend; it is called twice (fresh stats).
    Wall seconds and CPU seconds (`cpu_clock`: this process and its children, so a local server counts too).
    """
    judge_all(make_engine(), work.rubric, work.warmup)
    eng = make_engine()
    tokenize = tokenize or (lambda s: eng.backend.tokenizer.encode(s, add_special_tokens=False))
    c0, t0 = cpu_clock(), time.perf_counter()
    results = judge_all(eng, work.rubric, work.measured)
    seconds = time.perf_counter() - t0
    cpu_seconds = cpu_clock() - c0
    prompts = [p for name, (ents, texts) in work.measured.items()
               for p in prompts_asked(eng, work.rubric[name], ents, texts, results[name])]
    return mode_record(
        judgements=eng.stats.requests, seconds=seconds,
        prompt_tokens=sum(j.prompt_tokens for res in results.values() for r in res for j in r.values()),
        computed_prompt_tokens=eng.stats.prompt_tokens,
        min_tokens=min_prompt_tokens(tokenize, prompts),
        extra={"unique_prompts": eng.stats.unique_prompts, "flagged": eng.stats.flagged, "truncated": eng.stats.truncated,
               "yes_share": _yes_share(results), "cpu_seconds": cpu_seconds,
               "cpu_seconds_per_judgement": cpu_seconds / max(eng.stats.requests, 1)},
    )


def _yes_share(results: dict[str, list[dict]]) -> float:
    verdicts = [j.verdict for res in results.values() for r in res for j in r.values()]
    return sum(verdicts) / len(verdicts) if verdicts else float("nan")


def mode_record(judgements: int, seconds: float, prompt_tokens: int, computed_prompt_tokens: int, min_tokens: int,
                extra: dict | None = None) -> dict[str, Any]:
    """One mode's entry of the JSON report (rates derived here so every mode computes them alike)."""
    s = max(seconds, 1e-9)
    return {
        "judgements": int(judgements), "seconds": seconds, "judgements_per_s": judgements / s,
        "prompt_tokens": int(prompt_tokens), "computed_prompt_tokens": int(computed_prompt_tokens),
        "min_prompt_tokens": int(min_tokens),
        "tokens_over_minimum": computed_prompt_tokens / min_tokens if min_tokens else None,
        "prompt_tokens_per_s": prompt_tokens / s, "computed_prompt_tokens_per_s": computed_prompt_tokens / s, **(extra or {}),
    }


def ratio(a: dict | None, b: dict | None) -> float | None:
    """judgements_per_s of a over b (None when either mode did not run)."""
    if not a or not b or "judgements_per_s" not in a or "judgements_per_s" not in b or not b["judgements_per_s"]:
        return None
    return a["judgements_per_s"] / b["judgements_per_s"]


def cpu_ratio(a: dict | None, b: dict | None) -> float | None:
    """CPU seconds per judgement of b over a: how many times less CPU a needs (None when unknown)."""
    per_a, per_b = (a or {}).get("cpu_seconds_per_judgement"), (b or {}).get("cpu_seconds_per_judgement")
    return per_b / per_a if per_a and per_b else None


# ------------------------------------------------------------------------------------------------ the modes


def judge_config(profile: str = DEFAULT_PROFILE, model: str | None = None):
    """The profile's judge settings (model, answer scoring, context, GPU share), `model` replacing its model."""
    from lib.profiles import ProfileError, load_profile

    try:
        cfg = load_profile(profile).judge
    except ProfileError as exc:
        raise BenchError(str(exc)) from None
    return cfg.model_copy(update={"model": model}) if model else cfg


def run_soft_vllm(base, work: Workload) -> dict[str, Any]:
    from lib.judge.backends import VLLMBackend
    from lib.judge.engine import JudgeEngine
    from lib.models import resolve_model

    cfg = base.model_copy(update={"backend": "vllm"})
    t0 = time.perf_counter()
    backend = VLLMBackend(resolve_model(cfg.model), cfg)
    start = time.perf_counter() - t0
    try:
        rec = measure(lambda: JudgeEngine(backend, cfg, mode="soft"), work)
        block = backend.prefix_block_size
    finally:
        backend.close()
    return {**rec, "startup_s": round(start, 1), "block_size": block}


def run_seed_http(base, work: Workload, log_path: Path) -> dict[str, Any]:
    from lib.judge.backends import OpenAIBackend
    from lib.judge.engine import JudgeEngine
    from lib.models import cuda_available, resolve_model

    path = resolve_model(base.model)
    port = free_port()
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "2"}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.Popen(serve_command(path, port, base, cuda=cuda_available()), stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            start = wait_for_health(f"http://127.0.0.1:{port}/health", proc, SERVER_START_TIMEOUT_S)
            cfg = base.model_copy(update={"model": path, "backend": "openai", "base_url": f"http://127.0.0.1:{port}/v1"})
            backend = OpenAIBackend(path, cfg, retries=1, timeout=300.0)
            try:
                rec = measure(lambda: JudgeEngine(backend, cfg, mode="seed"), work)
            finally:
                backend.close()
        finally:
            stop_server(proc)
    return {**rec, "startup_s": round(start, 1), "server_log": str(log_path)}


def run_soft_transformers(base, work: Workload) -> dict[str, Any]:
    from lib.judge.backends import TransformersBackend
    from lib.judge.engine import JudgeEngine
    from lib.models import cuda_available, resolve_model

    cfg = base.model_copy(update={"backend": "transformers"})
    t0 = time.perf_counter()
    backend = TransformersBackend(resolve_model(cfg.model), cfg, device="cuda" if cuda_available() else "cpu")
    start = time.perf_counter() - t0
    try:
        rec = measure(lambda: JudgeEngine(backend, cfg, mode="soft"), work)
    finally:
        backend.close()
    return {**rec, "startup_s": round(start, 1), "batch_size": cfg.batch_size}


# ------------------------------------------------------------------------------------------------ report


def report(model: str, n_texts: int, modes: dict[str, dict | None], errors: dict[str, str],
           profile: str = DEFAULT_PROFILE, judge: dict | None = None) -> dict[str, Any]:
    """The JSON layout: run facts, one entry per mode (None when it failed, see `errors`), the two ratios and
    soft_vllm's prompt tokens computed over the minimum."""
    soft = modes.get("soft_vllm") or {}
    return {
        "benchmark": "judge", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": profile, "model": model, "judge": judge, "texts_per_section": n_texts,
        "machine": machine_info(), "versions": versions(),
        **{m: modes.get(m) for m in MODES},
        "ratio_vs_seed": ratio(modes.get("soft_vllm"), modes.get("seed_http")),
        "ratio_vs_transformers": ratio(modes.get("soft_vllm"), modes.get("soft_transformers")),
        "ratio_vs_seed_cpu": cpu_ratio(modes.get("soft_vllm"), modes.get("seed_http")),
        "tokens_over_minimum": soft.get("tokens_over_minimum"),
        "errors": errors,
    }


def format_lines(rep: dict[str, Any]) -> list[str]:
    where = rep["machine"].get("gpu") or f"{rep['machine']['nproc']} x {rep['machine']['cpu_model']}"
    lines = [f"judge benchmark: {rep['model']} ({rep.get('profile')} profile), {rep['texts_per_section']} answers + "
             f"{rep['texts_per_section']} thinks, {where}"]
    for m in MODES:
        r = rep.get(m)
        if r is None:
            lines.append(f"  {m:18s} " + (f"failed: {rep['errors'][m]}" if m in rep["errors"] else "not run"))
            continue
        lines.append(f"  {m:18s} {r['judgements']:4d} judgements in {r['seconds']:7.1f} s = {r['judgements_per_s']:6.2f}/s; "
                     f"prompt tokens {r['prompt_tokens']} ({r['prompt_tokens_per_s']:.0f}/s), computed {r['computed_prompt_tokens']}, "
                     f"minimum {r['min_prompt_tokens']}")
    for key, label in (("ratio_vs_seed", "soft_vllm / seed_http"), ("ratio_vs_transformers", "soft_vllm / soft_transformers")):
        v = rep.get(key)
        lines.append(f"  {label}: " + ("n/a" if v is None else f"{v:.2f}x judgements per second"))
    v = rep.get("ratio_vs_seed_cpu")
    lines.append("  seed_http / soft_vllm CPU seconds per judgement: " + ("n/a" if v is None else f"{v:.2f}x"))
    v = rep.get("tokens_over_minimum")
    lines.append("  soft_vllm prompt tokens computed / minimum: " + ("n/a" if v is None else f"{v:.3f}"))
    return lines


def bench_judge(model: str | None, n_texts: int, json_path: Path | None, modes: Sequence[str],
                profile: str = DEFAULT_PROFILE) -> dict[str, Any]:
    """Run the judge benchmark with `profile`'s judge (`model`, when given, replaces its model)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise BenchError(f"unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    cfg = judge_config(profile, model)
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    work = workload(n_texts)
    path = json_path or default_json_path()
    results: dict[str, dict | None] = {}
    errors: dict[str, str] = {}
    runners = {
        "soft_vllm": lambda: run_soft_vllm(cfg, work),
        "seed_http": lambda: run_seed_http(cfg, work, path.with_suffix(".server.log")),
        "soft_transformers": lambda: run_soft_transformers(cfg, work),
    }
    for m in MODES:  # one at a time: two at once on 2 cores ruin every figure
        if m not in modes:
            continue
        print(f"[bench] {m} ...", flush=True)
        load_before = os.getloadavg()[0]
        try:
            results[m] = runners[m]()
            # other work on the machine shows here: with 2 cores, a 1-minute load far above 2 spoils the figures
            results[m]["load_avg_1m"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        except Exception as exc:  # noqa: BLE001 - one failed mode is reported, the others still run
            errors[m] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            results[m] = None
        print(f"[bench] {m}: " + (json.dumps(results[m]) if results[m] else errors[m]), flush=True)
    rep = report(cfg.model, n_texts, results, errors, profile=profile,
                 judge=cfg.model_dump(include={"model", "answer_scoring", "max_model_len", "enforce_eager", "gpu_memory_utilization"}))
    write_json(rep, path)
    print("\n".join(format_lines(rep)))
    print(f"written {path}")
    return rep


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("judge", help="judgements per second: in-process soft vLLM vs seed over HTTP vs transformers")
    p.add_argument("--json", type=Path, help="report path (default outputs/bench/judge-<timestamp>.json)")
    p.add_argument("--profile", default=DEFAULT_PROFILE, help=f"whose judge settings to use (default {DEFAULT_PROFILE})")
    p.add_argument("--model", help="registry name or local path (default: the profile's judge.model)")
    p.add_argument("--texts", type=int, default=16, help="answers and think sections each (default 16)")
    p.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {', '.join(MODES)}")
    from bench.serve import add_serve_parser  # `serve`: the reward server's benchmark (bench/serve.py)

    add_serve_parser(sub)
    from bench.soak import add_soak_parser  # `soak`: the reward server under load, fuzz and faults (bench/soak.py)

    add_soak_parser(sub)
    from bench.step import add_step_parser  # `step`: seconds per GRPO step, ours vs the original's setup

    add_step_parser(sub)
    p = sub.add_parser("precision", help="bf16 vs float32: one GRPO-style gradient step and a few optimizer steps (bench/precision.py)")
    p.add_argument("--json", type=Path, help="report path (default outputs/bench/precision.json)")
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct", help="registry name or local path")
    p.add_argument("--sequences", type=int, default=4, help="calibration answers in the fixed batch (default 4)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps after the first gradient (default 2)")
    args = parser.parse_args(argv)
    if args.command in ("serve", "soak", "step"):
        return args.run(args)
    if args.command == "precision":
        from bench import precision

        precision.main(args.model, args.json or BENCH_DIR / "precision.json", args.sequences, args.steps)
        return 0
    try:
        bench_judge(args.model, args.texts, args.json, [m.strip() for m in args.modes.split(",") if m.strip()], args.profile)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
