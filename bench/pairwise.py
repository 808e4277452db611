"""`python -m bench.pairwise`: cost and signal of relative (pairwise) judging on a profile's judge."""
from __future__ import annotations

import time
from typing import Sequence

from lib.judge.pairwise import RelativeJudge, ring_pairs


def measure(profile_name: str = "cpu", group: int = 8, opponents: int = 1, out: str | None = None) -> dict:
    """Cost and signal of relative judging on a profile's judge, from the calibration set's answers.

    Cost: round-robin over groups of `group` answers (one entity each), timed on two disjoint groups (the first
    also starts the engine's caches), against the answer checklist on the same texts. Signal: every (good, other)
    pair of answers about the same entity, asked in both orders: how often the good one wins, and the position bias.
    `python -m bench.pairwise --profile cpu --group 8` (loads the judge model: run it under the shared lock)."""
    import json

    from lib.hardware import cpu_class
    from lib.judge.calibration import load_calibration_set
    from lib.judge.engine import build_judge
    from lib.profiles import load_profile
    from lib.rubric import load_rubric

    profile = load_profile(profile_name)
    rubric = load_rubric(profile.rubric.path)
    df = load_calibration_set()
    answers = df[df["section"] == "answer"].reset_index(drop=True)
    t0 = time.perf_counter()
    engine = build_judge(profile.judge, seed=profile.seed)
    start_s = time.perf_counter() - t0
    rel = RelativeJudge(engine, rubric.relative)
    result: dict = {"profile": profile_name, "judge": profile.judge.model, "group": group, "opponents": opponents,
                    "engine_start_s": round(start_s, 1), "cpu_class": cpu_class()}
    runs = []
    for g in range(2):
        texts = list(answers["text"][g * group:(g + 1) * group])
        entity = str(answers["entity"][g * group])
        pairs = ring_pairs(len(texts), opponents)
        calls0 = rel.calls
        t = time.perf_counter()
        rel.compare([entity] * len(pairs), [texts[i] for i, _ in pairs], [texts[j] for _, j in pairs])
        rel_s = time.perf_counter() - t
        t = time.perf_counter()
        engine.judge_section(rubric["answer"], [entity] * len(texts), texts)
        check_s = time.perf_counter() - t
        runs.append({"relative_s": round(rel_s, 2), "relative_prompts": rel.calls - calls0,
                     "checklist_s": round(check_s, 2), "checklist_prompts": len(texts) * len(rubric["answer"].items)})
    result["runs"] = runs
    good = answers[answers["kind"] == "good"]
    other = answers[answers["kind"] != "good"]
    pairs = [(g.text, o.text, g.entity) for g in good.itertuples() for o in other.itertuples() if o.entity == g.entity]
    if pairs:
        res = rel.compare([e for _, _, e in pairs], [g for g, _, _ in pairs], [o for _, o, _ in pairs])
        wins = [r.win for r in res]
        biases = [r.position_bias for r in res if r.position_bias is not None]
        result["signal"] = {"pairs": len(pairs), "mean_win_good": round(sum(wins) / len(wins), 3),
                            "good_wins_share": round(sum(w > 0.5 for w in wins) / len(wins), 3),
                            "mean_position_bias": round(sum(biases) / len(biases), 3) if biases else None}
    engine.close()
    if out:
        from pathlib import Path

        Path(out).write_text(json.dumps(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return result


def main(argv: Sequence[str] | None = None) -> None:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m bench.pairwise", description=measure.__doc__.splitlines()[0])
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--opponents", type=int, default=1)
    ap.add_argument("--out", default=None, help="also write the result as JSON here")
    args = ap.parse_args(argv)
    print(json.dumps(measure(args.profile, args.group, args.opponents, args.out), ensure_ascii=False, indent=1))


if __name__ == "__main__":
    main()
