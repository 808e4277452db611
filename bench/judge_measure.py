"""Measure a judge model on the calibration set in notebook 02's terms: AUROC per section, kappa, judgements/s.

    python -m bench.judge_measure --model qwen2.5-coder-1.5b-instruct [--profile cpu] [--prefix-pad] [--json PATH]

The profile's judge settings (answer scoring, also_no, context, dtype) with `--model` replacing the model; every
text of the calibration set (lib/assets/calibration.jsonl), soft mode, threshold from the profile. Prints one JSON
object: per section and overall: n, AUROC, accuracy, kappa (95% bootstrap interval), ECE, predicted-yes rate; the
judge's start and judging seconds and judgements per second; the CPU class. `--p-yes CSV` also writes every P(yes).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.judge_measure", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--prefix-pad", action="store_true", help="judge.prefix_pad: true (vLLM prefixes padded to KV blocks)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--p-yes", type=Path, help="also write every (id, section, key, label, p_yes) here")
    a = ap.parse_args()

    from lib.hardware import cpu_class
    from lib.judge import build_judge
    from lib.judge import calibration as cal
    from lib.profiles import load_profile
    from lib.rubric import load_rubric
    from lib.stats import kappa_ci

    profile = load_profile(a.profile)
    cfg = profile.judge.model_copy(update={"model": a.model, "prefix_pad": a.prefix_pad})
    rubric = load_rubric(profile.rubric.path)
    calib = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))
    labels = cal.long_labels(calib)
    t0 = time.perf_counter()
    judge = build_judge(cfg, seed=profile.seed)
    start_s = time.perf_counter() - t0
    judged = cal.judge_calibration_set(judge, rubric, calib)
    long = labels.merge(judged, on=["id", "section", "key"], validate="one_to_one")
    table = cal.metrics_table(long["label"], long["p_yes"], threshold=cfg.threshold, by=long["section"])
    result = {"model": a.model, "profile": a.profile, "cpu_class": cpu_class(), "dtype": judge.backend.precision.dtype,
              "answer_scoring": cfg.answer_scoring, "also_no": cfg.also_no, "prefix_pad": a.prefix_pad,
              "threshold": cfg.threshold, "start_seconds": round(start_s, 1),
              "judgements": judge.stats.requests, "judge_seconds": round(judge.stats.seconds, 1),
              "judgements_per_s": round(judge.stats.requests / judge.stats.seconds, 2),
              "prompt_tokens_computed": judge.stats.prompt_tokens, "sections": {}}
    for group, row in table.iterrows():
        sub = long if group == "overall" else long[long["section"] == group]
        ok = sub["p_yes"].notna()
        k = kappa_ci(sub.loc[ok, "label"].to_numpy(bool), (sub.loc[ok, "p_yes"] >= cfg.threshold).to_numpy(),
                     n_resamples=profile.eval.n_bootstrap, seed=profile.seed)
        result["sections"][group] = {"n": int(row["n"]), "auroc": round(float(row["auroc"]), 3),
                                     "accuracy": round(float(row["accuracy"]), 3), "kappa": round(float(k[0]), 3),
                                     "kappa_ci": [round(float(k[1]), 3), round(float(k[2]), 3)],
                                     "ece": round(float(row["ece"]), 3), "pred_yes_rate": round(float(row["pred_yes_rate"]), 3),
                                     "yes_rate": round(float(row["yes_rate"]), 3)}
    per_item = cal.metrics_table(long["label"], long["p_yes"], threshold=cfg.threshold, by=long["section"] + "/" + long["key"])
    result["auroc_per_item"] = {g: round(float(v), 3) for g, v in per_item["auroc"].items() if g != "overall"}
    judge.close()
    if a.p_yes:
        long[["id", "section", "key", "label", "p_yes"]].to_csv(a.p_yes, index=False)
    text = json.dumps(result, ensure_ascii=False, indent=1)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
