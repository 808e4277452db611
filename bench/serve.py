"""`python -m bench serve`: the reward server's throughput and latency against concurrent clients.

    python -m bench serve [--json PATH] [--profile smoke] [--clients 1,2,4,8] [--batch 8] [--requests 1]
                              [--rewards think,answer] [--original-batch 6]

One judge engine (the profile's), one server (uvicorn in a thread of this process, dynamic batching on), then:
- in-process: the judged rewards of `max(clients) x requests x batch` completions in one `lib.rewards` call per
  reward on the same engine (what one trainer judging in-process does);
- for each client count c: c clients (threads, one HTTP connection each) start together and each sends
  `requests` requests of `batch` completions one after the other; judgements/s over the wall time, p50/p99 of
  the request latencies, and how many requests each judge call merged;
- the original's pattern: one client, requests of `original_batch` completions via `lib.serve.original`'s
  functions (one request per reward, as the original training script did), the same total as the in-process run.

Every completion is distinct (its own entity from the catalogue, calibration think/answer texts), so no run
profits from another's prefix cache beyond the shared template head. Judgements are counted by the engine.
Writes the JSON (never overwritten) and a figure next to it (`<json stem>.png`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

DEFAULT_CLIENTS = (1, 2, 4, 8)


def add_serve_parser(sub) -> None:
    """The `serve` subcommand of `python -m bench` (dispatched by bench.main)."""
    p = sub.add_parser("serve", help="reward server: judgements/s and latency vs concurrent clients (lib.serve)")
    p.add_argument("--json", type=Path, help="report path (default outputs/bench/serve-<timestamp>.json); the figure goes next to it")
    p.add_argument("--profile", default="smoke", help="profile whose judge is served (default smoke: Gemma 3 270M)")
    p.add_argument("--clients", default=",".join(map(str, DEFAULT_CLIENTS)), help="client counts (default 1,2,4,8)")
    p.add_argument("--batch", type=int, default=8, help="completions per request (default 8)")
    p.add_argument("--requests", type=int, default=1, help="requests per client per client count (default 1)")
    p.add_argument("--rewards", default="think,answer", help="judged rewards asked (default think,answer)")
    p.add_argument("--original-batch", type=int, default=6, help="completions per request in the original's pattern (default 6)")
    p.add_argument("--max-wait-ms", type=float, default=20.0)
    p.add_argument("--max-batch", type=int, default=128)
    p.set_defaults(run=run_from_args)


def run_from_args(args: argparse.Namespace) -> int:
    from bench.common import BenchError

    try:
        clients = [int(x) for x in args.clients.split(",") if x.strip()]
        rewards = [x.strip() for x in args.rewards.split(",") if x.strip()]
    except ValueError:
        print(f"error: --clients must be comma-separated integers, got {args.clients!r}", file=sys.stderr)
        return 2
    try:
        bench_serve(args.profile, args.json, clients, args.batch, args.requests, rewards, args.original_batch,
                    args.max_wait_ms, args.max_batch)
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def workload(n: int, think_and_answer: bool = True) -> tuple[list[str], list[str]]:
    """n distinct (completion, entity) pairs: catalogue entities, calibration think and answer texts."""
    from lib.judge import calibration as cal
    from bench.common import BenchError
    from lib.data import load_catalogue
    from lib.rubric import think_shortcut

    entities = list(dict.fromkeys(load_catalogue()["entity"]))
    if n > len(entities):
        raise BenchError(f"the workload needs {n} distinct entities; the catalogue has {len(entities)} (use fewer clients/requests)")
    calib = cal.load_calibration_set()
    thinks = [t for t in calib[calib["section"] == "think"]["text"] if think_shortcut(t) is None]  # all judged
    answers = [t for t in calib[calib["section"] == "answer"]["text"] if t.strip()]
    completions = [f"<think>{thinks[i % len(thinks)]}</think><answer>{answers[i % len(answers)]}</answer>" for i in range(n)]
    return completions, entities[:n]


def _percentiles(latencies: Sequence[float]) -> dict[str, float]:
    from lib.serve.prometheus import percentile

    s = sorted(latencies)
    return {"p50_s": percentile(s, 0.5), "p99_s": percentile(s, 0.99), "min_s": s[0], "max_s": s[-1]}


def bench_serve(profile_name: str, json_path: Path | None, clients: Sequence[int], batch: int, requests: int,
                rewards: Sequence[str], original_batch: int, max_wait_ms: float = 20.0, max_batch: int = 128) -> dict[str, Any]:
    from lib import rewards as rewards_mod
    from bench.common import BenchError, machine_info, versions, write_json
    from lib.judge.engine import build_judge
    from lib.profiles import load_profile
    from lib.rubric import load_rubric
    from lib.serve.app import create_app
    from lib.serve.scorer import JUDGED, Limits, RewardScorer
    from lib.serve.server import ServerThread
    from lib.serve.client import RemoteRewards
    from lib.serve import original

    bad = [r for r in rewards if r not in JUDGED]
    if bad or not rewards:
        raise BenchError(f"--rewards must be judged rewards among {', '.join(JUDGED)}, got {','.join(rewards) or 'nothing'}")
    if not clients or min(clients) < 1 or batch < 1 or requests < 1 or original_batch < 1:
        raise BenchError("--clients, --batch, --requests and --original-batch must be positive")
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
    path = json_path or default_json_path()
    if path.exists():
        raise BenchError(f"{path} exists; benchmarks never overwrite (choose another --json)")

    per_level = [c * requests * batch for c in clients]
    total = max(per_level)
    completions, entities = workload(sum(per_level) + 2 * total)
    cursor = 0

    def take(n: int) -> tuple[list[str], list[str]]:
        nonlocal cursor
        out = completions[cursor : cursor + n], entities[cursor : cursor + n]
        cursor += n
        return out

    profile = load_profile(profile_name)
    rubric = load_rubric(profile.rubric.path)
    t0 = time.perf_counter()
    judge = build_judge(profile.judge, seed=profile.seed)
    startup = time.perf_counter() - t0
    scorer = RewardScorer(judge, rubric, profile.train.reward_weights,
                          {"profile": profile.name, "model": profile.judge.model, "backend": profile.judge.backend})
    rep: dict[str, Any] = {
        "benchmark": "serve", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "profile": profile.name, "model": profile.judge.model, "mode": judge.mode, "rewards": list(rewards),
        "batch": batch, "requests_per_client": requests, "original_batch": original_batch,
        "max_wait_ms": max_wait_ms, "max_batch": max_batch, "machine": machine_info(), "versions": versions(),
        "startup_s": round(startup, 1),
    }
    try:
        rep["warm_up_s"] = round(scorer.warm_up(), 1)
        stats = judge.stats

        def in_process(comps: list[str], ents: list[str]) -> None:
            # the same work as the server's batches: only the asked rewards' sections are judged (the scorer's
            # profile may name think and answer, which would judge both whichever reward is called)
            jr = rewards_mod.JudgeRewards(judge, rubric, sections=rewards)
            for name in rewards:
                jr.func(name)(comps, entity=ents)

        comps, ents = take(total)
        print(f"[bench serve] in-process: {total} completions ...", flush=True)
        load0, j0, t0 = os.getloadavg()[0], stats.requests, time.perf_counter()
        scorer.executor.submit(in_process, comps, ents).result()  # the judge's thread, as the server uses it
        seconds = time.perf_counter() - t0
        rep["in_process"] = _record(stats.requests - j0, seconds, total, load0)

        app = create_app(scorer, Limits(max_batch=max_batch, max_wait_ms=max_wait_ms))
        batcher = app.state.batcher
        with ServerThread(app) as url:
            levels = []
            for c, n in zip(clients, per_level):
                print(f"[bench serve] {c} client(s) x {requests} request(s) x {batch} completions ...", flush=True)
                work = [take(requests * batch) for _ in range(c)]
                latencies: list[float] = []
                errors: list[str] = []
                barrier = threading.Barrier(c)

                def client(comps: list[str], ents: list[str]) -> None:
                    remote = RemoteRewards(url, timeout=1800.0, retries=0)
                    try:
                        remote.health()  # connect first: a trainer's connection is open before its batch is ready
                        barrier.wait()
                        for r in range(requests):
                            sl = slice(r * batch, (r + 1) * batch)
                            t = time.perf_counter()
                            remote.score(comps[sl], ents[sl], rewards)
                            latencies.append(time.perf_counter() - t)
                    except Exception as exc:  # noqa: BLE001 - reported in the JSON
                        errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    finally:
                        remote.close()

                threads = [threading.Thread(target=client, args=w) for w in work]
                load0, j0, b0 = os.getloadavg()[0], stats.requests, dict(batcher.totals)
                t0 = time.perf_counter()
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                seconds = time.perf_counter() - t0
                if errors:
                    raise BenchError(f"{c} clients: {errors[0]}")
                merged = {k: batcher.totals[k] - b0[k] for k in b0}
                levels.append({"clients": c, **_record(stats.requests - j0, seconds, n, load0), **_percentiles(latencies),
                               "judge_calls": merged["batches"],
                               "requests_per_judge_call": merged["requests"] / max(merged["batches"], 1),
                               "requests_in_each_judge_call": [r for r, _ in list(batcher.recent)[len(batcher.recent) - merged["batches"]:]]})
                print(f"[bench serve] {c} client(s): {json.dumps(levels[-1])}", flush=True)
            rep["levels"] = levels

            print(f"[bench serve] original pattern: 1 client, {original_batch} completions per request ...", flush=True)
            original.set_url(url)
            comps, ents = take(total)
            funcs = {"think": original.think_quality_reward_func, "answer": original.answer_quality_reward_func}
            latencies = []
            load0, j0, t0 = os.getloadavg()[0], stats.requests, time.perf_counter()
            for s in range(0, total, original_batch):
                t = time.perf_counter()
                for name in rewards:
                    funcs[name](comps[s : s + original_batch], entity=ents[s : s + original_batch])
                latencies.append(time.perf_counter() - t)
            seconds = time.perf_counter() - t0
            rep["original_pattern"] = {**_record(stats.requests - j0, seconds, total, load0), **_percentiles(latencies),
                                       "requests": len(latencies) * len(rewards)}
    finally:
        scorer.close()
        judge.close()

    top = max(rep["levels"], key=lambda r: r["clients"])
    rep["ratio_max_clients_vs_in_process"] = top["judgements_per_s"] / rep["in_process"]["judgements_per_s"]
    rep["ratio_max_clients_vs_original"] = top["judgements_per_s"] / rep["original_pattern"]["judgements_per_s"]
    rep["figure"] = str(plot(rep, path.with_suffix(".png")))
    write_json(rep, path)
    print("\n".join(format_lines(rep)))
    print(f"written {path} and {rep['figure']}")
    return rep


def _record(judgements: int, seconds: float, completions: int, load_before: float) -> dict[str, Any]:
    s = max(seconds, 1e-9)
    return {"completions": completions, "judgements": int(judgements), "seconds": round(seconds, 2),
            "judgements_per_s": judgements / s, "completions_per_s": completions / s,
            "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


def default_json_path(now: datetime | None = None) -> Path:
    from bench.common import default_json_path as default

    return default(now, stem="serve")


def plot(rep: dict[str, Any], path: Path) -> Path:
    """Throughput and p50/p99 latency against the number of clients (log2 axis), with the in-process batch and
    the original's pattern for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = rep["levels"]
    xs = [r["clients"] for r in levels]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(xs, [r["judgements_per_s"] for r in levels], "o-", label="server, dynamic batching")
    ax1.axhline(rep["in_process"]["judgements_per_s"], color="gray", ls="--", label="one in-process batch")
    ax1.plot([1], [rep["original_pattern"]["judgements_per_s"]], "s", color="C3",
             label=f"original pattern (1 client, batches of {rep['original_batch']})")
    ax1.set(xscale="log", xlabel="concurrent clients", ylabel="judgements / s", title="throughput")
    ax1.set_ylim(bottom=0)
    ax2.plot(xs, [r["p50_s"] for r in levels], "o-", label="p50")
    ax2.plot(xs, [r["p99_s"] for r in levels], "o--", label="p99")
    ax2.set(xscale="log", xlabel="concurrent clients", ylabel="seconds per request", title=f"latency (requests of {rep['batch']})")
    ax2.set_ylim(bottom=0)
    for ax in (ax1, ax2):
        ax.set_xticks(xs, [str(x) for x in xs])
        ax.minorticks_off()
        ax.legend(fontsize=8)
    fig.suptitle(f"reward server: {rep['model']} judge ({rep['mode']}), rewards {'+'.join(rep['rewards'])}, "
                 f"{rep['machine']['nproc']} CPUs", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def format_lines(rep: dict[str, Any]) -> list[str]:
    ip, orig = rep["in_process"], rep["original_pattern"]
    lines = [f"reward server benchmark: {rep['model']} ({rep['mode']}), rewards {','.join(rep['rewards'])}, "
             f"requests of {rep['batch']}, {rep['machine']['nproc']} x {rep['machine']['cpu_model']}",
             f"  in-process, one batch of {ip['completions']:4d}: {ip['judgements_per_s']:6.2f} judgements/s ({ip['seconds']:.1f} s)"]
    for r in rep["levels"]:
        lines.append(f"  {r['clients']} client(s): {r['judgements_per_s']:6.2f} judgements/s, p50 {r['p50_s']:.1f} s, "
                     f"p99 {r['p99_s']:.1f} s, requests per judge call {r['requests_in_each_judge_call']}")
    lines.append(f"  original pattern (1 client, batches of {rep['original_batch']}): {orig['judgements_per_s']:6.2f} judgements/s, "
                 f"p50 {orig['p50_s']:.1f} s, p99 {orig['p99_s']:.1f} s")
    lines.append(f"  {max(r['clients'] for r in rep['levels'])} clients / in-process: {rep['ratio_max_clients_vs_in_process']:.2f}; "
                 f"/ original pattern: {rep['ratio_max_clients_vs_original']:.2f}")
    return lines
