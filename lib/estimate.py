"""How long a pipeline run will take on this machine, said before it starts, and which sizing fits the time budget.

    est = estimate_run(profile, machine_facts(), dtypes)   # {"stages": {"00": 56.0, ...}, "total_s": ..., ...}
    profile, sizing = size_for_machine(profile)             # `sizing.reduced` when the full run overruns the budget

The model: each stage's seconds in a reference run (a cold `make run` of the `cpu` profile on an AVX-512 BF16
machine: bf16 judge and policy, float32 evaluation), split by the engine whose dtype sets its speed, scaled by the
stage's work relative to that run (steps, completion and gradient tokens, texts, sequences), by the size of the model
doing it (`model_scale`: its parameters outside the embeddings against the reference's 0.5B), and by this machine's
speed in that engine's dtype relative to the reference machine's (the `lib.hardware.matmul_probe` GFLOP/s). Work
measured in bf16 but run in float32 costs FP32_OVER_BF16 times more on the reference machine. The estimate is only
as good as those constants: every run records it (`manifest.json` "sizing" → "estimate") beside its actual stage
times ("estimate_vs_actual"), so the error is visible.
Imports lib.paths, lib.profiles, lib.hardware and lib.models only (the probe is the one measurement: about a second).
"""
from __future__ import annotations

from typing import Any

from lib import paths
from lib.hardware import NATIVE_BF16_CLASSES
from lib.models import REGISTRY, registry_spec
from lib.profiles import Profile, deep_merge

# Calibrated constants: the reference run's stage times, probe speeds and work (where they came from:
# docs/precision-and-time.md). Each stage is split into parts by the engine whose dtype decides its speed ("judge",
# "train", "eval", or None: no model work): (engine, fixed seconds, seconds that scale with the part's work). The
# fixed parts are engine starts and model loads.
REFERENCE = {
    "cpu_class": "avx512_bf16",
    "probe_gflops": {"float32": 155.0, "bfloat16": 816.0},  # lib.hardware.matmul_probe on the reference machine
    "dtypes": {"judge": "bfloat16", "train": "bfloat16", "eval": "float32"},
    "parts": {
        "00": [(None, 16.4, 0.0)],  # + CONVERSION_SECONDS on a cold model cache
        "01": [(None, 3.0, 0.0)],
        # engine start, the probes and adversarial probes (fixed), and the labels (scale with the texts)
        "02": [("judge", 94.0, 33.1)],
        # rollouts and judge run on the judge's engine, in the same dtype; with the rollouts' log-probs TRL makes one
        # more no-grad forward per step (its importance-sampling correction)
        "03": [("train", 45.0, 750.9)],
        "04": [("eval", 40.0, 144.5), ("judge", 25.0, 537.9)],  # generation, then the two judges
        "05": [(None, 8.0, 0.0)],
    },
    # the reference evaluation: 50 prompts x 2 models x (4 samples + greedy), 128 new tokens
    "work": {"steps": 24, "completion_tokens_per_step": 16 * 128, "gradient_tokens_per_step": 4 * 2 * 250 + 16 * 128,
             "calibration_texts": 86, "eval_sequences": 500, "eval_new_tokens": 128},
    # the share of a training step's time in rollouts and judge (scales with the completions); the rest is the
    # policy's log-probs, backward and optimizer (scales with the tokens it computes)
    "generation_share": 0.330,
    "judge_share": 0.12,  # of a training step: the judge's part of generation_share (a cpu-sized step, 0.5B judge)
    "model": "qwen2.5-coder-0.5b-instruct",  # the reference run's policy and judge
}
# Calibrated: float32 / bf16 seconds of the same work on the reference machine (docs/precision-and-time.md).
FP32_OVER_BF16 = 2.5
CONVERSION_SECONDS = 44.0  # 00: a packaged GGUF dequantized into the model cache (first run only)
PROMPT_TOKENS = 250  # a training prompt of the original's format, with the chat template (Qwen tokenizer)
STAGE_NAMES = {"00": "data", "01": "rubric", "02": "calibration", "03": "training", "04": "evaluation", "05": "case studies"}


def gradient_tokens_per_step(profile: Profile) -> float:
    """Tokens the policy's forward+backward computes per step: prompt and completion of every sequence, or with
    `train.shared_prompt` each micro-batch's distinct prompts once (TRL shuffles a step's sequences into micro-batches)
    plus every completion.

    >>> from lib.profiles import load_profile
    >>> gradient_tokens_per_step(load_profile("cpu", {"train": {"shared_prompt": False, "per_device_train_batch_size": 2,
    ...                                                          "gradient_accumulation_steps": 8}}))
    6048
    >>> gradient_tokens_per_step(load_profile("cpu"))  # 4 micro-batches x 2 prompts x 250 + 16 x 128
    4048
    """
    t = profile.train
    seqs = t.per_device_train_batch_size * t.gradient_accumulation_steps
    if not t.shared_prompt:
        return seqs * (PROMPT_TOKENS + t.max_completion_length)
    prompts_per_step = max(seqs // t.num_generations, 1)
    distinct = min(prompts_per_step, t.per_device_train_batch_size)
    return t.gradient_accumulation_steps * distinct * PROMPT_TOKENS + seqs * t.max_completion_length


def _work(profile: Profile) -> dict[str, float]:
    t, e = profile.train, profile.eval
    steps = t.max_steps if t.max_steps > 0 else REFERENCE["work"]["steps"]  # epochs: not known before the data stage
    cal = REFERENCE["work"]["calibration_texts"]
    if profile.calibration_max_texts is not None:
        cal = min(cal, 2 * profile.calibration_max_texts)  # the cap is per section (answer, think)
    seqs = t.per_device_train_batch_size * t.gradient_accumulation_steps
    return {"steps": steps, "completion_tokens_per_step": seqs * t.max_completion_length,
            "gradient_tokens_per_step": gradient_tokens_per_step(profile), "calibration_texts": cal,
            "eval_sequences": e.n_prompts * max(len(e.models), 1) * eval_completions_per_prompt(profile),
            "eval_new_tokens": e.max_new_tokens}


def eval_completions_per_prompt(profile: Profile) -> int:
    """Completions each evaluation model writes (and each judge scores) per prompt: `eval.samples_per_prompt`
    sampled ones plus the greedy one (`eval.greedy`).

    >>> from lib.profiles import load_profile
    >>> eval_completions_per_prompt(load_profile("cpu", {"eval": {"samples_per_prompt": 4}}))
    5
    """
    return profile.eval.samples_per_prompt + int(profile.eval.greedy)


def model_scale(model: str | None) -> float:
    """Work of `model` per token against the reference model's: the ratio of their parameters outside the embeddings
    (`ModelSpec.core_params_b`); 1.0 for a model the registry does not size (a path, an unknown hub id).

    >>> round(model_scale("qwen2.5-coder-1.5b-instruct"), 3)  # 1.31B / 0.36B
    3.639
    >>> model_scale("/some/local/model")
    1.0
    """
    spec = registry_spec(model)
    if spec is None or spec.core_params_b is None:
        return 1.0
    return spec.core_params_b / REGISTRY[REFERENCE["model"]].core_params_b


def speed_factor(dtype: str | None, facts: dict, native_bf16: bool) -> float:
    """Seconds here / seconds on the reference for work that the reference ran in its stage dtype (`dtype` here)."""
    probe, ref = facts.get("matmul_probe") or {}, REFERENCE["probe_gflops"]
    if dtype is None or not probe:
        return 1.0
    if dtype == "bfloat16" and native_bf16:
        return ref["bfloat16"] / probe["bfloat16_gflops"]
    if dtype == "bfloat16":  # emulated: float32 work at the probe's bf16 speed
        return ref["float32"] / probe["bfloat16_gflops"]
    return ref["float32"] / probe["float32_gflops"]


def estimate_run(profile: Profile, facts: dict, dtypes: dict[str, str] | None = None, model_cached: bool = True) -> dict[str, Any]:
    """Seconds per stage ("00" ... "05") and in total for `profile` on the machine `facts` describes.

    `dtypes`: the dtype of each engine ("judge", "train", "eval"), from lib.hardware.profile_precisions.
    >>> from lib.profiles import load_profile
    >>> ref = {"cpu_class": "avx512_bf16", "matmul_probe": {"float32_gflops": 155.0, "bfloat16_gflops": 816.0}}
    >>> est = estimate_run(load_profile("cpu"), ref, {"judge": "bfloat16", "train": "bfloat16", "eval": "float32"})
    >>> round(est["total_s"])  # the reference run itself: 1697.8 s
    1698
    """
    dtypes = {**REFERENCE["dtypes"], **(dtypes or {})}
    native = facts.get("cpu_class") in NATIVE_BF16_CLASSES
    w, rw = _work(profile), REFERENCE["work"]
    eval_work = (w["eval_sequences"] * w["eval_new_tokens"]) / (rw["eval_sequences"] * rw["eval_new_tokens"])
    scale = {
        "02": w["calibration_texts"] / rw["calibration_texts"],
        "03": w["steps"] / rw["steps"] * (
            REFERENCE["generation_share"] * w["completion_tokens_per_step"] / rw["completion_tokens_per_step"]
            + (1 - REFERENCE["generation_share"]) * w["gradient_tokens_per_step"] / rw["gradient_tokens_per_step"]),
        "04eval": eval_work, "04judge": w["eval_sequences"] / rw["eval_sequences"],
    }
    # the size of the model doing each part's work: the policy trains and generates, the judges judge (04: the training
    # and the held-out judge score the same completions); a training step's judge share scales with the judge
    policy, judge = model_scale(profile.policy_model), model_scale(profile.judge.model)
    heldout = model_scale(profile.eval.heldout_judge.model) if profile.eval.heldout_judge else judge
    judge_share = REFERENCE["judge_share"]
    sizes = {"02judge": judge, "03train": (1 - judge_share) * policy + judge_share * judge,
             "04eval": policy, "04judge": (judge + heldout) / 2}
    out = {}
    for stage, parts in REFERENCE["parts"].items():
        seconds = CONVERSION_SECONDS if stage == "00" and not model_cached else 0.0
        for engine, fixed, variable in parts:
            if engine is None:
                seconds += fixed
                continue
            ref_dtype, dtype = REFERENCE["dtypes"][engine], dtypes[engine]
            cost = 1.0
            if ref_dtype == "bfloat16" and dtype == "float32":
                cost = FP32_OVER_BF16  # the same work in float32 on the reference machine
            elif ref_dtype == "float32" and dtype == "bfloat16" and native:
                cost = 1 / FP32_OVER_BF16
            work = scale.get(f"{stage}{engine}", scale.get(stage, 1.0))
            size = sizes[f"{stage}{engine}"]  # fixed parts (engine starts, model loads) do not shrink below the reference's
            seconds += (fixed * max(size, 1.0) + variable * work * size) * cost * speed_factor(dtype, facts, native)
        out[stage] = round(seconds, 1)
    return {"stages": out, "total_s": round(sum(out.values()), 1), "reference": REFERENCE["cpu_class"],
            "dtypes": dtypes}


def choose_sizing(profile: Profile, estimate_of) -> tuple[Profile, dict[str, Any]]:
    """The profile's full sizing, or its `sizing.reduced` overrides when the full one's estimate exceeds
    `sizing.budget_minutes`; `estimate_of(profile)` returns an `estimate_run` result. Returns (profile, record)."""
    budget = profile.sizing.budget_minutes
    full = estimate_of(profile)
    record: dict[str, Any] = {"chosen": "full", "budget_minutes": budget, "full_estimate_s": full["total_s"]}
    if budget is None or full["total_s"] <= budget * 60 or not profile.sizing.reduced:
        record["why"] = ("no time budget" if budget is None else
                         f"estimate {full['total_s'] / 60:.0f} min within the {budget:g}-minute budget" if full["total_s"] <= budget * 60
                         else f"estimate {full['total_s'] / 60:.0f} min exceeds the {budget:g}-minute budget, and the profile has no reduced sizing")
        return profile, {**record, "estimate": full}
    reduced = type(profile).model_validate(deep_merge(profile.model_dump(), profile.sizing.reduced))
    est = estimate_of(reduced)
    record.update(chosen="reduced", overrides=profile.sizing.reduced, estimate=est,
                  why=f"full sizing estimated {full['total_s'] / 60:.0f} min > the {budget:g}-minute budget on this machine")
    return reduced, record


def format_estimate(est: dict[str, Any]) -> str:
    """One line: the total and each stage, in minutes.

    >>> format_estimate({"stages": {"00": 60.0, "03": 1200.0}, "total_s": 1260.0})
    '~21 min (data 1.0, training 20.0 min)'
    """
    parts = [f"{STAGE_NAMES.get(s, s)} {v / 60:.1f}" for s, v in est["stages"].items()]
    return f"~{est['total_s'] / 60:.0f} min ({', '.join(parts)} min)"


def compare(est: dict[str, Any], actual: dict[str, float]) -> dict[str, Any]:
    """Estimate against actual seconds per stage and in total; error = (actual - estimate) / estimate.

    >>> compare({"stages": {"00": 100.0, "01": 10.0}, "total_s": 110.0}, {"00": 120.0, "01": 12.0})["error"]
    0.2
    """
    stages = {s: {"estimate_s": e, "actual_s": actual.get(s)} for s, e in est["stages"].items()}
    done = [s for s in stages if stages[s]["actual_s"] is not None]
    e_total = sum(est["stages"][s] for s in done)
    a_total = sum(actual[s] for s in done)
    return {"stages": stages, "estimate_s": round(e_total, 1), "actual_s": round(a_total, 1),
            "error": round((a_total - e_total) / e_total, 3) if e_total else None}


def size_for_machine(prof: Profile, facts: dict | None = None) -> tuple[Profile, dict]:
    """The profile sized for this machine (`choose_sizing`) and the record of why, with the estimate."""
    from lib.hardware import machine_facts, profile_precisions

    facts = facts or machine_facts()

    def estimate_of(p: Profile) -> dict:
        dtypes = {engine: prec.dtype for engine, prec in profile_precisions(p).items()}
        cached = any((paths.CACHE_DIR / "models").glob(f"{p.policy_model}-*"))
        return estimate_run(p, facts, dtypes, model_cached=cached)

    return choose_sizing(prof, estimate_of)
