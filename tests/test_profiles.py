"""lib.profiles: the shipped profiles, validation errors, overrides."""
from __future__ import annotations

import pytest
import yaml

from lib.models import REGISTRY
from lib.profiles import (
    Profile,
    ProfileError,
    available_profiles,
    deep_merge,
    dump_profile,
    load_profile,
    parse_override,
)


def _write(tmp_path, text: str, name: str = "p.yaml"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg, msg
    return msg


@pytest.mark.parametrize("name", ["smoke", "cpu", "gpu"])
def test_shipped_profiles_load_and_round_trip(name):
    prof = load_profile(name)
    assert prof.name == name and prof.description
    assert prof.policy_model in REGISTRY and prof.judge.model in REGISTRY
    assert all(m.model in REGISTRY for m in prof.eval.models)
    # a run directory keeps the dumped profile; loading it back must give the same profile
    assert Profile.model_validate(yaml.safe_load(dump_profile(prof))) == prof


def test_available_profiles():
    assert {"smoke", "cpu", "gpu"} <= set(available_profiles())


def test_gpu_profile_has_the_originals_settings():
    p = load_profile("gpu")
    t = p.train
    assert p.device == "cuda" and p.seed == 42
    assert REGISTRY[p.policy_model].source == "Qwen/Qwen2.5-1.5B-Instruct"
    assert REGISTRY[p.judge.model].source == "Qwen/Qwen2.5-7B-Instruct-AWQ"
    assert (t.beta, t.temperature) == (0.01, 0.98)  # learning_rate: LoRA's 5e-6 (tests/test_full_finetune.py)
    assert (t.num_generations, t.max_prompt_length, t.max_completion_length) == (8, 512, 512)
    assert (t.per_device_train_batch_size, t.gradient_accumulation_steps) == (1, 8)
    assert (t.num_train_epochs, t.max_steps, t.lr_scheduler_type, t.warmup_ratio) == (2, -1, "cosine", 0.1)


def test_cpu_profiles_run_on_cpu():
    for name in ("smoke", "cpu"):
        p = load_profile(name)
        assert p.device == "cpu" and p.train.backend == "trl"
    assert load_profile("smoke").train.max_steps < load_profile("cpu").train.max_steps


def test_unknown_profile_names_it_and_lists_the_known():
    with pytest.raises(ProfileError) as exc:
        load_profile("no-such-profile")
    msg = _one_line(exc)
    assert "'no-such-profile'" in msg and "smoke" in msg


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="not found"):
        load_profile(tmp_path / "absent.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = _write(tmp_path, "seed: 1\ntrain:\n  beta: [0.1\n")
    with pytest.raises(ProfileError) as exc:
        load_profile(p)
    msg = _one_line(exc)
    assert str(p) in msg and "malformed YAML" in msg and "line" in msg


def test_not_a_mapping(tmp_path):
    with pytest.raises(ProfileError, match="must be a mapping"):
        load_profile(_write(tmp_path, "- 1\n- 2\n"))


@pytest.mark.parametrize("text, field", [
    ("sed: 1\n", "'sed'"),
    ("train:\n  lerning_rate: 0.1\n", "'train.lerning_rate'"),
    ("eval:\n  models:\n    - {label: a, model: b, adaptor: c}\n", "'eval.models.0.adaptor'"),
])
def test_unknown_parameter_names_it(tmp_path, text, field):
    p = _write(tmp_path, text)
    with pytest.raises(ProfileError) as exc:
        load_profile(p)
    msg = _one_line(exc)
    assert f"unknown parameter {field}" in msg and str(p) in msg


@pytest.mark.parametrize("text, field, value", [
    ("train:\n  learning_rate: fast\n", "train.learning_rate", "'fast'"),
    ("seed: [1]\n", "seed", "[1]"),
    ("judge:\n  backend: tgi\n", "judge.backend", "'tgi'"),
    ("train:\n  num_generations: 1\n", "train.num_generations", "1"),
])
def test_wrong_type_or_value_names_field_and_value(tmp_path, text, field, value):
    with pytest.raises(ProfileError) as exc:
        load_profile(_write(tmp_path, text))
    msg = _one_line(exc)
    assert f": {field}:" in msg and f"(got {value})" in msg


def test_name_defaults_to_file_stem(tmp_path):
    assert load_profile(_write(tmp_path, "seed: 7\n", "mine.yaml")).name == "mine"


def test_parse_override():
    assert parse_override("train.max_steps=5") == {"train": {"max_steps": 5}}
    assert parse_override("judge.base_url=http://x:8/v1") == {"judge": {"base_url": "http://x:8/v1"}}
    assert parse_override("train.report_to=[wandb]") == {"train": {"report_to": ["wandb"]}}
    assert parse_override("data.max_train=null") == {"data": {"max_train": None}}
    assert parse_override("seed=1=2") == {"seed": "1=2"}  # only the first "=" splits
    with pytest.raises(ProfileError, match="'train.max_steps' must look like key.sub=value"):
        parse_override("train.max_steps")


def test_overrides_merge_without_dropping_siblings():
    base = load_profile("smoke")
    over = deep_merge(parse_override("train.max_steps=5"), parse_override("train.beta=0.5"))
    p = load_profile("smoke", overrides=over)
    assert (p.train.max_steps, p.train.beta) == (5, 0.5)
    assert p.train.learning_rate == base.train.learning_rate and p.judge == base.judge
    assert deep_merge({"a": {"b": 1, "c": 2}}, {"a": {"c": 3}}) == {"a": {"b": 1, "c": 3}}


def test_bad_override_is_a_profile_error():
    with pytest.raises(ProfileError, match="unknown parameter 'train.max_stepz'"):
        load_profile("smoke", overrides=parse_override("train.max_stepz=5"))
    with pytest.raises(ProfileError, match="train.max_steps.*got 'many'"):
        load_profile("smoke", overrides=parse_override("train.max_steps=many"))


def test_eval_samples_as_trained_unless_set():
    """eval.max_new_tokens / temperature / top_p default to the training's (issue 18.5); set ones win; k per profile."""
    for name, k in (("cpu", 4), ("smoke", 2), ("gpu", 8)):
        p = load_profile(name)
        assert (p.eval.max_new_tokens, p.eval.temperature, p.eval.top_p) == (
            p.train.max_completion_length, p.train.temperature, p.train.top_p)
        assert p.eval.samples_per_prompt == k and p.eval.greedy
    assert load_profile("cpu").eval.max_new_tokens == 128
    p = load_profile("cpu", {"train": {"temperature": 0.9}, "eval": {"top_p": 0.95}})
    assert (p.eval.temperature, p.eval.top_p, p.eval.max_new_tokens) == (0.9, 0.95, 128)


def test_estimate_counts_eval_samples():
    """lib.estimate: the evaluation's generation and judging grow with k + greedy; the cpu job fits its budget."""
    from lib.estimate import estimate_run

    ref = {"cpu_class": "avx512_bf16", "matmul_probe": {"float32_gflops": 202.0, "bfloat16_gflops": 889.0}}
    dtypes = {"judge": "bfloat16", "train": "bfloat16", "eval": "float32"}
    one = estimate_run(load_profile("cpu", {"eval": {"samples_per_prompt": 1, "greedy": False}}), ref, dtypes)
    five = estimate_run(load_profile("cpu"), ref, dtypes)
    assert five["stages"]["04"] > 2 * one["stages"]["04"]
    assert five["total_s"] < load_profile("cpu").sizing.budget_minutes * 60


def test_estimate_scales_with_the_judges_size():
    """lib.estimate: a 1.5B judge (1.31B parameters outside the embeddings against 0.36B) makes calibration 3.6 times
    longer, and training and evaluation longer; a held-out judge of the reference's size halves 04's judge increase."""
    from lib.estimate import estimate_run

    ref = {"cpu_class": "avx512_bf16", "matmul_probe": {"float32_gflops": 202.0, "bfloat16_gflops": 889.0}}
    dtypes = {"judge": "bfloat16", "train": "bfloat16", "eval": "float32"}
    small = estimate_run(load_profile("cpu"), ref, dtypes)["stages"]
    big_cfg = {"judge": {"model": "qwen2.5-coder-1.5b-instruct"}}
    big = estimate_run(load_profile("cpu", big_cfg), ref, dtypes)["stages"]
    mixed = estimate_run(load_profile("cpu", {**big_cfg, "eval": {"heldout_judge": {"model": "qwen2.5-coder-0.5b-instruct"}}}),
                         ref, dtypes)["stages"]
    assert big["02"] == pytest.approx(small["02"] * 1.31 / 0.36, rel=1e-3)
    assert small["03"] < big["03"] < 1.5 * small["03"]  # the judge is a share of a step; the policy is the same
    assert small["04"] < mixed["04"] < big["04"]
    assert big["00"] == small["00"] and big["05"] == small["05"]
