"""`python -m bench.memprobe`: where a judge process's memory goes, without HTTP.

The profile's judge (or `--judge module:factory`) judged in-process as the reward server judges
(`RewardScorer.score_batch` on its judge thread), random batches of 1-16 of the soak's distinct requests, for
`--seconds`; every 10 s the RSS, Python's allocated blocks and the number of gc objects. At the end one more RSS
after a `malloc_trim(0)`: what is left then is live memory, the rest was freed memory the allocator kept.

    python -m bench.memprobe [--profile smoke] [--seconds 180] [--trim-every 10 | --trim-every 0]
                                 [--onednn-cache N] [--json PATH]

`--trim-every 0` turns the scorer's trims off; `--onednn-cache N` sets ONEDNN_PRIMITIVE_CACHE_CAPACITY (default:
the server's). docs/reward-server-reliability.md has the runs.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any


def probe(seconds: float, trim_every: float, profile: str = "smoke", judge: str | None = None,
          onednn_cache: str | None = None, seed: int = 0) -> dict[str, Any]:
    """Judge for `seconds` and report the memory (see the module docstring)."""
    import psutil

    from lib.profiles import load_profile
    from lib.rubric import load_rubric
    from bench.serve import workload
    from lib.serve.scorer import ONEDNN_CACHE_ENV, RewardScorer, malloc_trim, server_judge

    if onednn_cache is not None:
        os.environ[ONEDNN_CACHE_ENV] = onednn_cache
    prof = load_profile(profile)
    engine = server_judge(prof, judge)
    scorer = RewardScorer(engine, load_rubric(prof.rubric.path), prof.train.reward_weights,
                          trim_every_s=trim_every if trim_every > 0 else None)
    proc, rng = psutil.Process(), random.Random(seed)
    try:
        scorer.executor.submit(scorer.warm_up).result()
        comps, ents = workload(400)
        start, rows, n = proc.memory_info().rss, [], 0
        t0 = last = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            idx = [rng.randrange(len(comps)) for _ in range(rng.choice([1, 1, 2, 3, 5, 8, 16]))]
            names = rng.choice([["think", "answer"], ["answer"], ["think"]])
            scorer.executor.submit(scorer.score_batch, [([comps[i]], [ents[i]], names) for i in idx]).result()
            n += len(idx)
            if time.perf_counter() - last >= 10:
                last = time.perf_counter()
                rows.append({"s": round(last - t0), "rss_mib": proc.memory_info().rss >> 20,
                             "py_blocks": sys.getallocatedblocks(), "gc_objects": len(gc.get_objects()), "completions": n})
        end = proc.memory_info().rss
        trim = malloc_trim()
        if trim is not None:
            scorer.executor.submit(trim, 0).result()
        trimmed = proc.memory_info().rss
    finally:
        scorer.close()
        if hasattr(engine, "close"):
            engine.close()
    return {"profile": profile, "judge": judge or "profile", "seconds": seconds, "trim_every_s": trim_every,
            "trims": scorer.trims, ONEDNN_CACHE_ENV: os.environ.get(ONEDNN_CACHE_ENV), "completions": n,
            "rss_mib": {"start": start >> 20, "end": end >> 20, "after_final_trim": trimmed >> 20}, "samples": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.memprobe", description=__doc__.splitlines()[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--judge", default=None, help="module:factory of a judge instead of the profile's (tests)")
    p.add_argument("--seconds", type=float, default=180.0)
    p.add_argument("--trim-every", type=float, default=10.0, help="seconds between the scorer's trims; 0: none")
    p.add_argument("--onednn-cache", default=None, help="ONEDNN_PRIMITIVE_CACHE_CAPACITY (default: the server's)")
    p.add_argument("--json", type=Path, default=None, help="write the report here (never overwritten)")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.trim_every < 0:
        p.error("--seconds must be positive and --trim-every at least 0")
    if args.json is not None and args.json.exists():
        p.error(f"{args.json} exists; benchmarks never overwrite (choose another --json)")
    rep = probe(args.seconds, args.trim_every, args.profile, args.judge, args.onednn_cache)
    r = rep["rss_mib"]
    print(f"memprobe: {rep['completions']} completions in {rep['seconds']:g} s, {rep['trims']} trims, "
          f"oneDNN cache {rep['ONEDNN_PRIMITIVE_CACHE_CAPACITY']}: RSS {r['start']} -> {r['end']} MiB, "
          f"{r['after_final_trim']} MiB after a final trim")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rep, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
