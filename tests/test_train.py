"""lib.train and lib.train.logs: config mapping, keyword arguments against the installed libraries,
reward selection, the training logger, curves, the first/last verdict, and (smoke) kill-and-resume."""
from __future__ import annotations

import ast
import dataclasses
import importlib.util
import inspect
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yaml

from lib import paths, rewards
from lib.data import read_jsonl
from lib.train import cpu_logprobs, grpo, logs, trend
from lib.profiles import TrainConfig, load_profile
from lib.rubric import load_rubric
from lib.train import TrainError
from lib.train.logs import RewardRecorder, TrainingLogger, TrainLogError, plot_training
from lib.train.trend import first_last_comparison
from tests.fakes import KeywordJudge

PROFILES = ("smoke", "cpu", "gpu")
ACCELERATE_DIR = paths.ACCELERATE_DIR


def _params(obj) -> tuple[set[str], bool]:
    """Accepted keyword names of a callable or dataclass, and whether it also takes **kwargs."""
    if dataclasses.is_dataclass(obj):
        return {f.name for f in dataclasses.fields(obj)}, False
    sig = inspect.signature(obj)
    return set(sig.parameters), any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def call_keywords(path: Path, callee: str) -> list[set[str]]:
    """Keyword names passed to `callee(...)` in a source file, following `**name` to a dict built in the
    same function (`name = dict(...)`, `name = {...}`, `name["k"] = ...`, `name.update(k=...)`)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        dicts: dict[str, set[str]] = {}
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                t, v = node.targets[0], node.value
                if isinstance(t, ast.Name) and isinstance(v, ast.Call) and getattr(v.func, "id", None) == "dict":
                    dicts.setdefault(t.id, set()).update(k.arg for k in v.keywords if k.arg)
                elif isinstance(t, ast.Name) and isinstance(v, ast.Dict):
                    dicts.setdefault(t.id, set()).update(k.value for k in v.keys if isinstance(k, ast.Constant))
                elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Name) and isinstance(t.slice, ast.Constant):
                    dicts.setdefault(t.value.id, set()).add(t.slice.value)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "update"
                  and isinstance(node.func.value, ast.Name)):
                dicts.setdefault(node.func.value.id, set()).update(k.arg for k in node.keywords if k.arg)
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", None)
            if name != callee:
                continue
            keys = {k.arg for k in node.keywords if k.arg}
            for k in node.keywords:
                if k.arg is None and isinstance(k.value, ast.Name):
                    keys |= dicts.get(k.value.id, set())
            found.append(keys)
    return found


def test_call_keywords_follows_dicts(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("def f(c):\n    kw = dict(a=1)\n    kw['b'] = 2\n    kw.update(c=3)\n    return X(d=4, **kw)\n")
    assert call_keywords(src, "X") == [{"a", "b", "c", "d"}]
    assert call_keywords(src, "Y") == []


# --------------------------------------------------------------------------------- GRPOConfig mapping


@pytest.mark.parametrize("name", PROFILES)
def test_every_grpo_config_keyword_exists(name, tmp_path):
    from trl import GRPOConfig

    kwargs = grpo.grpo_config_kwargs(load_profile(name), tmp_path)
    fields, _ = _params(GRPOConfig)
    assert set(kwargs) <= fields, f"not in trl.GRPOConfig: {sorted(set(kwargs) - fields)}"
    assert "max_prompt_length" not in kwargs  # TRL 1.15 dropped it: prompts are filtered instead


@pytest.mark.parametrize("name", ["smoke", "cpu"])
def test_grpo_config_mapping(name, tmp_path):
    p = load_profile(name)
    cfg = grpo.build_grpo_config(p, tmp_path / "ckpt")
    t = p.train
    for field in ("learning_rate", "beta", "temperature", "top_p", "num_generations", "max_completion_length",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "num_train_epochs", "max_steps",
                  "loss_type", "scale_rewards", "mask_truncated_completions", "logging_steps", "save_steps",
                  "save_total_limit"):
        assert getattr(cfg, field) == getattr(t, field), field
    assert cfg.lr_scheduler_type.value == t.lr_scheduler_type
    assert cfg.warmup_steps == t.warmup_ratio
    assert cfg.reward_weights == [t.reward_weights[k] for k in t.reward_weights]
    assert cfg.seed == p.seed and cfg.output_dir == str(tmp_path / "ckpt")
    assert cfg.use_cpu and not cfg.use_vllm and not cfg.bf16
    assert not cfg.remove_unused_columns  # `entity` must reach the rewards
    assert cfg.report_to == (list(t.report_to) or ["none"]) or (not t.report_to and cfg.report_to in ([], "none"))


def test_mask_truncated_completions_reaches_grpo_config(tmp_path):
    """train.mask_truncated_completions (default false in every profile) is TRL's argument of the same name."""
    assert all(not load_profile(n).train.mask_truncated_completions for n in PROFILES)
    p = load_profile("smoke", overrides={"train": {"mask_truncated_completions": True, "loss_type": "dr_grpo",
                                                   "scale_rewards": "none"}})
    cfg = grpo.build_grpo_config(p, tmp_path / "ckpt")
    assert cfg.mask_truncated_completions is True and cfg.loss_type == "dr_grpo" and cfg.scale_rewards == "none"
    assert grpo.build_grpo_config(load_profile("smoke"), tmp_path / "c2").mask_truncated_completions is False


def test_gpu_profile_uses_unsloth_engine(tmp_path):
    kw = grpo.grpo_config_kwargs(load_profile("gpu"), tmp_path)
    assert kw["use_vllm"] is True and kw["bf16"] is True and "use_cpu" not in kw
    p = load_profile("gpu")
    load = grpo.unsloth_load_kwargs(p, "some/model")
    assert load["fast_inference"] is True and load["max_lora_rank"] == p.train.lora_rank
    assert load["gpu_memory_utilization"] == p.train.gpu_memory_utilization
    assert load["max_seq_length"] == p.train.max_prompt_length + p.train.max_completion_length
    peft_kw = grpo.unsloth_peft_kwargs(p)
    assert peft_kw["r"] == p.train.lora_rank and peft_kw["random_state"] == p.seed


def test_rollout_engines_of_the_trl_backend(tmp_path):
    from trl import GRPOConfig

    fields, _ = _params(GRPOConfig)
    # shared_prompt off: the profiles refuse it with CUDA's gradient checkpointing
    over = {"device": "cuda", "train": {"rollout_engine": "vllm_server", "vllm_server_base_url": "http://h:8000",
                                        "shared_prompt": False}}
    kw = grpo.grpo_config_kwargs(load_profile("smoke", overrides=over), tmp_path)
    assert kw["use_vllm"] and kw["vllm_mode"] == "server" and kw["vllm_server_base_url"] == "http://h:8000"
    assert set(kw) <= fields
    over = {"device": "cuda", "train": {"rollout_engine": "vllm_colocate", "gpu_memory_utilization": 0.4, "shared_prompt": False}}
    kw = grpo.grpo_config_kwargs(load_profile("smoke", overrides=over), tmp_path)
    assert kw["vllm_mode"] == "colocate" and kw["vllm_gpu_memory_utilization"] == 0.4 and set(kw) <= fields
    with pytest.raises(TrainError, match="vllm_server_base_url"):
        grpo.grpo_config_kwargs(load_profile("smoke", overrides={"train": {"rollout_engine": "vllm_server"}}), tmp_path)
    with pytest.raises(TrainError, match="weight sync"):
        grpo.grpo_config_kwargs(load_profile("smoke", overrides={"train": {"rollout_engine": "vllm_colocate"}}), tmp_path)


def test_generation_batch_must_hold_whole_groups(tmp_path):
    p = load_profile("smoke", overrides={"train": {"num_generations": 3, "per_device_train_batch_size": 2}})
    with pytest.raises(TrainError, match="num_generations"):
        grpo.grpo_config_kwargs(p, tmp_path)
    p = load_profile("smoke", overrides={"train": {"warmup_ratio": 1.0}})
    with pytest.raises(TrainError, match="warmup_ratio"):
        grpo.grpo_config_kwargs(p, tmp_path)


def test_grpo_trainer_and_lora_keywords_exist():
    from peft import LoraConfig
    from trl import GRPOTrainer

    src = Path(grpo.__file__)
    calls = call_keywords(src, "GRPOTrainer")
    assert calls, "lib/train/grpo.py no longer calls GRPOTrainer(...)"
    accepted, _ = _params(GRPOTrainer.__init__)
    for keys in calls:
        assert keys <= accepted, f"not GRPOTrainer arguments: {sorted(keys - accepted)}"
    accepted, _ = _params(LoraConfig)
    p = load_profile("smoke")
    assert set(grpo.lora_kwargs(p)) <= accepted
    cfg = LoraConfig(**grpo.lora_kwargs(p))
    assert cfg.r == p.train.lora_rank and cfg.lora_alpha == p.train.lora_alpha
    assert set(cfg.target_modules) == set(p.train.lora_target_modules)


def test_vllm_keywords_exist():
    """Every keyword we pass to vllm.LLM / vllm.SamplingParams anywhere in lib/ exists (no engine is started)."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed")
    from vllm import LLM, SamplingParams
    from vllm.engine.arg_utils import EngineArgs

    llm_ok = _params(LLM.__init__)[0] | {f.name for f in dataclasses.fields(EngineArgs)}  # LLM passes **kwargs on
    sp_ok, _ = _params(SamplingParams)
    n_llm = n_sp = 0
    for src in sorted(paths.LIB_DIR.rglob("*.py")):
        for keys in call_keywords(src, "LLM"):
            n_llm += 1
            assert keys <= llm_ok, f"{src.name}: not vllm.LLM arguments: {sorted(keys - llm_ok)}"
        for keys in call_keywords(src, "SamplingParams"):
            n_sp += 1
            assert keys <= sp_ok, f"{src.name}: not SamplingParams arguments: {sorted(keys - sp_ok)}"
    for name in PROFILES:
        keys = set(grpo.vllm_sampling_kwargs(load_profile(name)))
        assert keys <= sp_ok, f"not SamplingParams arguments: {sorted(keys - sp_ok)}"
    assert n_sp >= 1  # the judge's calls at least


def test_unsloth_keywords_exist():
    if importlib.util.find_spec("unsloth") is None:
        pytest.skip("unsloth is not installed (GPU only)")
    from unsloth import FastLanguageModel

    p = load_profile("gpu")
    for fn, kw in ((FastLanguageModel.from_pretrained, grpo.unsloth_load_kwargs(p, "m")),
                   (FastLanguageModel.get_peft_model, grpo.unsloth_peft_kwargs(p))):
        accepted, _ = _params(fn)  # named parameters only: what **kwargs would swallow is not checked by Unsloth
        assert set(kw) <= accepted, f"{fn.__name__}: {sorted(set(kw) - accepted)}"


def test_train_config_table_lists_every_field():
    table = grpo.train_config_table(load_profile("smoke"))
    assert list(table["parameter"]) == list(TrainConfig.model_fields)
    row = table.set_index("parameter").loc["warmup_ratio"]
    assert row["used as"] == "warmup_steps"


# --------------------------------------------------------------------------------- rewards


def test_reward_functions_follow_profile_order():
    p = load_profile("smoke", overrides={"train": {"reward_weights": {"answer": 2.0, "format": 0.5, "tag_count": 1.0}}})
    jr = rewards.JudgeRewards(KeywordJudge(), load_rubric())
    funcs, weights = rewards.build_reward_functions(p, judge_rewards=jr)
    assert [f.__name__ for f in funcs] == ["answer_quality_reward", "format_reward", "tag_count_reward"]
    assert funcs[0].__self__ is jr  # the judge reward is the caller's own object's method
    assert weights == [2.0, 0.5, 1.0]
    with pytest.raises(rewards.RewardError, match="rewards answer need a judge"):
        rewards.build_reward_functions(p)


def test_unknown_reward_names_it():
    from lib.profiles import ProfileError

    with pytest.raises(ProfileError, match=r"train\.reward_weights: .*unknown reward 'fromat'; known: format, think, answer"):
        load_profile("smoke", overrides={"train": {"reward_weights": {"format": 1.0, "fromat": 1.0}}})
    p = load_profile("smoke")
    with pytest.raises(ValueError, match="unknown reward 'fromat'"):  # an assignment is checked like a loaded profile
        p.train.reward_weights = {"format": 1.0, "fromat": 1.0}
    with pytest.raises(ValueError, match="name at least one reward"):
        p.train.reward_weights = {}
    assert p.train.reward_weights == load_profile("smoke").train.reward_weights


@pytest.mark.parametrize("together", [False, True])
def test_recorder_keeps_names_and_groups_one_batch(together):
    judge = KeywordJudge()
    p = load_profile("smoke")
    jr = rewards.JudgeRewards(judge, load_rubric(), sections=p.train.reward_weights if together else ())
    rec = RewardRecorder(jr)
    funcs, _ = rewards.build_reward_functions(p, judge_rewards=jr, wrap=rec.wrap)
    assert [f.__name__ for f in funcs] == [f.__name__ for f in rewards.build_reward_functions(p, judge_rewards=jr)[0]]
    good = "<think>" + "我先分析一下用户需求和品牌定位，再想创意。" * 2 + "</think><answer>椰子水，清爽一夏！</answer>"
    comps = [[{"role": "assistant", "content": good}], [{"role": "assistant", "content": "乱写"}]]
    prompts = [[{"role": "user", "content": "请为椰子水设计一段创意广告文案"}]] * 2
    for f in funcs:
        out = f(comps, prompts=prompts, entity=["椰子水", "椰子水"])
        assert len(out) == 2
    for f in funcs:  # a second generation batch
        f(comps, prompts=prompts, entity=["椰子水", "椰子水"])
    batches = rec.drain()
    assert len(batches) == 2 and rec.drain() == []
    b = batches[0]
    assert set(b["rewards"]) == set(p.train.reward_weights)
    assert b["rewards"]["format"][0] > 0 and b["rewards"]["format"][1] == 0
    assert b["prompts"][0] == "请为椰子水设计一段创意广告文案"
    rows = logs.sample_rows(b, step=3, n=1)
    assert len(rows) == 1 and rows[0]["step"] == 3 and rows[0]["completion"] == good
    assert rows[0]["answer"]["p_yes"]["relevancy"] == pytest.approx(0.9)  # the entity occurs in the answer
    assert rows[0]["think"]["shortcut"] is None and rows[0]["think"]["score"] == b["rewards"]["think"][0]
    assert len(judge.batches) == (2 if together else 4)  # two generation batches: think and answer together or apart


def test_build_trainer_needs_a_judge(tmp_path):
    from lib.run import RunContext

    with pytest.raises(rewards.RewardError, match="need a judge: pass judge="):
        grpo.build_trainer(load_profile("smoke"), RunContext(tmp_path, load_profile("smoke")))


# --------------------------------------------------------------------------------- CPU log-probs


@pytest.mark.parametrize("softcap", [None, 5.0])
def test_torch_logprobs_match_a_plain_log_softmax(softcap):
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(7, 6, generator=g, requires_grad=True)
    weight = torch.randn(11, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 11, (7,), generator=g)
    lp, ent, lsq, mean, top1 = cpu_logprobs._torch_chunked_logprob(
        hidden, weight, None, targets, 0.7, 4096, softcap, 1.5, ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1"))
    z = hidden @ weight.T * 1.5
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    z = z / 0.7
    ref = torch.log_softmax(z, -1)
    torch.testing.assert_close(lp, ref.gather(-1, targets[:, None]).squeeze(-1))
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1))
    torch.testing.assert_close(lsq, torch.log((ref.exp() ** 2).sum(-1)))
    torch.testing.assert_close(mean, z.mean(-1))
    assert torch.equal(top1, z.argmax(-1) == targets)
    (g1,) = torch.autograd.grad((lp.sum() + ent.sum()), [weight])
    ref_lp = ref.gather(-1, targets[:, None]).sum() + (-(ref.exp() * ref).sum())
    (g2,) = torch.autograd.grad(ref_lp, [weight])
    torch.testing.assert_close(g1, g2)


def test_torch_logprobs_is_top1_counts_the_first_maximum_only():
    import torch

    hidden = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    weight = torch.tensor([[0.0, 1.0], [2.0, 0.0], [2.0, 0.0], [1.0, 0.0]])  # tokens 1 and 2 tie for the top logit
    targets = torch.tensor([1, 2, 3])
    *_, top1 = cpu_logprobs._torch_chunked_logprob(hidden, weight, None, targets, 1.0, 4096, outputs=("log_probs", "is_top1"))
    assert top1.tolist() == [True, False, False]  # TRL: (target >= max) & (target > max before the target)


def test_torch_logprobs_bf16_as_trl_forward():
    import torch

    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, 64, generator=g).bfloat16()
    weight = (torch.randn(300, 64, generator=g) * 0.3).bfloat16()
    targets = torch.randint(0, 300, (9,), generator=g)
    lp, ent, *_ = cpu_logprobs._torch_chunked_logprob(hidden, weight, None, targets, 0.8, 4096, None, 1.0, ("log_probs", "entropy"))
    assert lp.dtype == torch.float32 and ent.dtype == torch.float32
    # TRL's forward: the GEMM tile in the compute dtype (bf16, `torch.mm(..., out=tile)`), then a float32 log-sum-exp
    ref = torch.log_softmax(torch.mm(hidden, weight.t()).float() / 0.8, -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(lp, ref, rtol=1e-6, atol=1e-6)
    # within bf16 rounding of float32 logits
    z32 = hidden.float() @ weight.float().t() / 0.8
    torch.testing.assert_close(lp, torch.log_softmax(z32, -1).gather(-1, targets[:, None]).squeeze(-1), rtol=0, atol=0.05)


def test_cpu_logprob_dispatch_is_installed_once():
    from trl.trainer import utils as trl_utils

    cpu_logprobs.install_cpu_logprobs()
    cpu_logprobs.install_cpu_logprobs()
    assert trl_utils._ChunkedLogProbFunction is cpu_logprobs._LogProbDispatch
    assert cpu_logprobs._LogProbDispatch.triton_function is not cpu_logprobs._LogProbDispatch


# --------------------------------------------------------------------------------- checkpoints


def test_last_checkpoint_skips_incomplete(tmp_path):
    assert grpo.last_checkpoint(tmp_path / "none") is None
    for step, state in ((2, "{}"), (5, "{}"), (7, None), (9, "{broken")):
        d = tmp_path / f"checkpoint-{step}"
        d.mkdir()
        if state is not None:
            (d / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-x").mkdir()
    assert grpo.last_checkpoint(tmp_path) == tmp_path / "checkpoint-5"


def test_no_resume_refuses_existing_checkpoints(tmp_path):
    from lib.run import RunContext

    ck = tmp_path / "train" / "checkpoints" / "checkpoint-1"
    ck.mkdir(parents=True)
    (ck / "trainer_state.json").write_text("{}")
    with pytest.raises(TrainError, match="already has checkpoints"):
        grpo.train(load_profile("smoke"), RunContext(tmp_path, load_profile("smoke")), resume=False)


# --------------------------------------------------------------------------------- the logger


def _state(step: int, epoch: float = 0.0):
    return SimpleNamespace(global_step=step, epoch=epoch, is_world_process_zero=True)


class _StatsJudge:
    def __init__(self):
        self.stats = SimpleNamespace(seconds=0.0, requests=0)


def test_logger_writes_jsonl_csv_and_samples(tmp_path, capsys):
    judge = _StatsJudge()
    rec = RewardRecorder()
    fmt = rec.wrap("format", rewards.format_reward)
    lg = TrainingLogger(tmp_path, recorder=rec, judge=judge, n_samples=1)
    lg.on_train_begin(None, _state(0), None)
    for step in (1, 2, 3):
        fmt(["<think>想一想这个产品。</think><answer>好喝！</answer>", "x"], prompts=["p", "p"], entity=["e", "e"])
        judge.stats.seconds += 0.5
        judge.stats.requests += 10
        lg.on_log(None, _state(step, step / 10), None, logs={"loss": 0.1 * step, "rewards/format_reward/mean": 0.375,
                                                              "learning_rate": 1e-5, "note": "text is dropped"})
    lg.on_log(None, _state(3), None, logs={"train_runtime": 9.0, "train_loss": 0.2})
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3]
    assert log[0]["loss"] == pytest.approx(0.1) and "note" not in log[0]
    assert log[1]["judge_seconds"] == pytest.approx(0.5) and log[1]["judge_requests"] == 10
    assert 0 < log[1]["judge_share"]  # 0.5 s of judge in a step that took far less wall time: share > 0
    csv = pd.read_csv(tmp_path / "log.csv")
    assert list(csv["step"]) == [1, 2, 3] and list(csv.columns[:3]) == ["step", "epoch", "wall_time"]
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert [s["step"] for s in samples] == [1, 2, 3] and samples[0]["rewards"]["format"] > 0
    assert json.loads((tmp_path / "train_summary.json").read_text())["train_runtime"] == 9.0
    progress = capsys.readouterr().out.splitlines()  # one line per step for the terminal (not the summary)
    assert [line.split(":")[0] for line in progress] == [f"[progress] train step {i}" for i in (1, 2, 3)]


def test_logger_resume_skips_written_steps_and_repairs_a_cut_line(tmp_path):
    lg = TrainingLogger(tmp_path)
    for step in (1, 2, 3):
        lg.on_log(None, _state(step), None, logs={"loss": float(step)})
    with (tmp_path / "log.jsonl").open("a") as f:
        f.write('{"step": 4, "loss": 4.')  # killed mid-write
    lg2 = TrainingLogger(tmp_path)  # the resumed run (from checkpoint 2)
    assert lg2.last_logged == 3
    lg2.on_train_begin(None, _state(2), None)
    for step in (3, 4, 5):
        lg2.on_log(None, _state(step), None, logs={"loss": 10.0 + step, "kl": 0.01})  # kl: a new column
    log = read_jsonl(tmp_path / "log.jsonl")
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5]
    assert log[2]["loss"] == 3.0 and log[3]["loss"] == 14.0
    csv = pd.read_csv(tmp_path / "log.csv")
    assert list(csv["step"]) == [1, 2, 3, 4, 5] and "kl" in csv.columns and csv["kl"].isna().sum() == 3


def test_logger_answers_every_callback_event(tmp_path):
    from transformers.trainer_callback import CallbackHandler, TrainerCallback, TrainerControl, TrainerState

    events = [n for n, _ in inspect.getmembers(TrainerCallback, inspect.isfunction) if n.startswith("on_")]
    assert "on_log" in events and "on_step_end" in events
    handler = CallbackHandler([TrainingLogger(tmp_path)], None, None, None, None)
    state = TrainerState(global_step=1, max_steps=1, epoch=0.5)
    for ev in events:
        kwargs = {"logs": {"loss": 1.0}} if ev == "on_log" else {"metrics": {}} if ev in ("on_evaluate", "on_predict") else {}
        handler.call_event(ev, None, state, TrainerControl(), **kwargs)
    assert logs.last_step(tmp_path / "log.jsonl") == 1
    with pytest.raises(AttributeError):
        TrainingLogger(tmp_path).not_an_event  # noqa: B018


# --------------------------------------------------------------------------------- curves and verdict


def _synthetic_log(n: int = 12, with_kl: bool = False) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    steps = np.arange(1, n + 1)
    df = pd.DataFrame({
        "step": steps,
        "rewards/format_reward/mean": np.linspace(0.1, 0.6, n) + rng.normal(0, 0.02, n),
        "rewards/format_reward/std": np.full(n, 0.1),
        "rewards/think_quality_reward/mean": rng.uniform(0, 0.2, n),
        "rewards/answer_quality_reward/mean": rng.uniform(0, 0.2, n),
        "reward": rng.uniform(0, 1, n), "reward_std": rng.uniform(0, 0.3, n), "loss": rng.normal(0, 0.01, n),
        "learning_rate": np.linspace(1e-5, 0, n), "grad_norm": rng.uniform(0, 1, n),
        "completions/mean_length": rng.uniform(20, 64, n), "frac_reward_zero_std": rng.uniform(0, 1, n),
        "judge_share": rng.uniform(0.3, 0.6, n),
    })
    if with_kl:
        df["kl"] = np.linspace(0, 0.01, n)
    return df


def test_plot_training_skips_missing_metrics(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in _synthetic_log().to_dict("records")) + "\n")
    written = plot_training(log, tmp_path / "fig")
    names = [p.name for p in written]
    assert names[0] == "curves.png" and all(p.exists() and p.stat().st_size > 0 for p in written)
    assert names[1:4] == ["curve_reward_think_quality_reward.png", "curve_reward_format_reward.png",
                          "curve_reward_answer_quality_reward.png"]
    assert "curve_kl.png" not in names and "curve_entropy.png" not in names
    assert "curve_judge_share.png" in names and "curve_zero_std_share.png" in names
    assert "curve_kl.png" in [p.name for p in plot_training(_synthetic_log(with_kl=True), tmp_path / "fig2")]
    assert plot_training(pd.DataFrame({"step": [1, 2]}), tmp_path / "fig3") == []


def test_first_last_comparison_rising_flat_falling():
    df = _synthetic_log(20)
    r = first_last_comparison(df, k=5)
    assert r["verdict"] == "rises" and r["diff_lo"] > 0 and r["k"] == 5
    assert r["first_steps"] == [1, 5] and r["last_steps"] == [16, 20]
    rng = np.random.default_rng(1)
    flat = pd.DataFrame({"step": range(1, 21), "m": 0.3 + rng.normal(0, 0.05, 20)})
    r = first_last_comparison(flat, "m", k=5)
    assert r["verdict"] == "no clear change" and r["diff_lo"] < 0 < r["diff_hi"]
    falling = flat.assign(m=np.linspace(1, 0, 20))
    assert first_last_comparison(falling, "m")["verdict"] == "falls"
    r = first_last_comparison(flat.head(3), "m")
    assert r["verdict"] == "too few steps" and r["k"] == 1 and r["diff_lo"] is None
    assert first_last_comparison(flat.head(1), "m")["diff"] is None
    assert "too few" in trend.describe_comparison(r)
    assert "rises" in trend.describe_comparison(first_last_comparison(df, k=5))
    with pytest.raises(TrainLogError, match="not in the training log"):
        first_last_comparison(flat, "rewards/nope/mean")


def test_training_summary_weights_records_by_the_steps_they_cover(tmp_path):
    log = pd.DataFrame({"step": [2, 4, 6], "step_seconds": [1.0, 2.0, 3.0], "judge_seconds": [0.5, 0.5, 1.5]})
    s = logs.training_summary(log)
    assert s == {"steps": 6, "seconds": 12.0, "judge_seconds": 5.0, "judge_share": pytest.approx(5 / 12)}
    assert logs.training_summary(tmp_path / "missing.jsonl")["judge_share"] is None


def test_first_last_comparison_is_reproducible():
    df = _synthetic_log(20)
    assert first_last_comparison(df, k=4) == first_last_comparison(df, k=4)


def test_first_last_interval_respects_autocorrelated_windows():
    # each window is a smooth ramp (consecutive steps strongly dependent): a bootstrap of the steps as independent
    # draws calls +0.04 a rise ([+0.004, +0.076]); the HAC interval does not
    first, last = [0.50, 0.52, 0.54, 0.56, 0.58], [0.62, 0.60, 0.58, 0.56, 0.54]
    rows = [{"step": i + 1, "m": v} for i, v in enumerate(first + [0.55] * 6 + last)]
    r = first_last_comparison(rows, "m", k=5)
    assert r["diff"] == pytest.approx(0.04) and r["diff_lo"] < 0 < r["diff_hi"] and r["verdict"] == "no clear change"
    assert "HAC" in r["interval"] and "HAC" in trend.describe_comparison(r)


# --------------------------------------------------------------------------------- accelerate configs


@pytest.mark.parametrize("name,kind,stage", [("ddp", "MULTI_GPU", None), ("zero2", "DEEPSPEED", 2), ("zero3", "DEEPSPEED", 3)])
def test_accelerate_configs_load(name, kind, stage):
    path = ACCELERATE_DIR / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    for key in ("compute_environment", "distributed_type", "num_processes", "num_machines", "mixed_precision"):
        assert key in raw, f"{path.name}: missing {key}"
    assert raw["distributed_type"] == kind
    if stage is not None:
        assert raw["deepspeed_config"]["zero_stage"] == stage
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.distributed_type.value == kind and cfg.num_processes == raw["num_processes"]


# --------------------------------------------------------------------------------- tiny policy


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    from tests.train_helpers import build_tiny_policy

    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "policy")


def test_fit_prompts_drops_long_prompts(tiny_policy):
    from transformers import AutoTokenizer

    from lib import data

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    df = data.build_prompts(pd.DataFrame({"entity": ["椰子水", "椰子水" * 40]}))
    lengths = grpo.prompt_lengths(list(df["prompt"]), tok)
    assert lengths[0] < lengths[1]
    kept, dropped = grpo.fit_prompts(df, tok, lengths[0])
    assert list(kept["entity"]) == ["椰子水"] and dropped == 1
    with pytest.raises(TrainError, match="max_prompt_length"):
        grpo.fit_prompts(df, tok, lengths[0] - 1)


def _untimed(path: Path) -> list[dict]:
    """The records of a training log without their clock readings (wall time, seconds, shares)."""
    return [{k: v for k, v in r.items() if not any(t in k for t in ("time", "seconds", "share"))}
            for r in read_jsonl(path)]


@pytest.mark.smoke
def test_sigkill_between_checkpoints_then_resume_equals_an_uninterrupted_run(tmp_path, tiny_policy):
    """Killed (SIGKILL) after step 3 with the last checkpoint at step 2, then resumed: the logs hold each step once,
    the adapter and the merged model are written, and the per-step log (every step, rewards, losses, grad norms,
    sampled completions and their judge details), the final adapter and the results numbers are bitwise those of an
    uninterrupted run with the same seed (CPU, float32, one thread each). The uninterrupted run started again finds
    its final checkpoint: it trains and logs nothing and saves that checkpoint's adapter again."""
    from safetensors.torch import load_file

    from tests.train_helpers import make_training_run

    max_steps, steps = 4, [1, 2, 3, 4]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    runs = {name: make_training_run(tmp_path / name, tiny_policy, max_steps=max_steps, save_steps=2, merge_final=True)
            for name in ("straight", "killed")}
    straight, killed = runs["straight"] / "train", runs["killed"] / "train"

    def start(name: str, result: str, *extra: str) -> subprocess.Popen:
        """tests.train_helpers on run `name` (stderr to a file: a full pipe would stall a run nobody reads yet)."""
        with open(tmp_path / f"{result}.err", "w") as err:
            return subprocess.Popen([sys.executable, "-m", "tests.train_helpers", str(runs[name]),
                                     str(tmp_path / f"{result}.json"), *extra],
                                    cwd=paths.PROJ_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)

    def finish(proc: subprocess.Popen, result: str, code: int = 0) -> dict | None:
        proc.wait(300)
        assert proc.returncode == code, (tmp_path / f"{result}.err").read_text()[-3000:]
        return json.loads((tmp_path / f"{result}.json").read_text()) if code == 0 else None

    # the uninterrupted run (then started again in its process) trains on the other core while the killed run is
    # killed and resumed
    straight_proc = start("straight", "straight", "--rerun", str(tmp_path / "rerun.json"))
    try:
        finish(start("killed", "first", "--kill-at-step", "3"), "first", code=-signal.SIGKILL)
        assert grpo.last_checkpoint(killed / "checkpoints").name == "checkpoint-2"
        assert [r["step"] for r in read_jsonl(killed / "log.jsonl")] == [1, 2]
        assert not (killed / "adapter").exists(), "the first run finished before it was killed"
        result = finish(start("killed", "resumed"), "resumed")
        finish(straight_proc, "straight")
    finally:
        if straight_proc.poll() is None:  # a failed assertion above: do not leave it training
            straight_proc.kill()
            straight_proc.wait(30)

    # the resumed run: each step logged once, the run's outputs written
    assert Path(result["resumed_from"]).name == "checkpoint-2" and result["steps"] == max_steps
    assert [r["step"] for r in read_jsonl(killed / "log.jsonl")] == steps
    assert list(pd.read_csv(killed / "log.csv")["step"]) == steps
    sample_steps = [r["step"] for r in read_jsonl(killed / "samples.jsonl")]
    assert sorted(set(sample_steps)) == steps and sample_steps == sorted(sample_steps)
    state = json.loads((grpo.last_checkpoint(killed / "checkpoints") / "trainer_state.json").read_text())
    assert state["global_step"] == max_steps
    assert (killed / "adapter" / "adapter_config.json").exists() and (killed / "merged" / "config.json").exists()
    assert result["total_seconds"] > 0 and 0 < result["total_judge_share"] < 1

    # the finished run started again: nothing is trained (transformers would add one step), nothing logged
    rerun = json.loads((tmp_path / "rerun.json").read_text())
    assert rerun["steps"] == max_steps and rerun["train_loss"] is None
    assert Path(rerun["resumed_from"]).name == f"checkpoint-{max_steps}"
    assert (straight / "log.jsonl").read_text() == rerun["log_found"]
    assert grpo.last_checkpoint(straight / "checkpoints").name == f"checkpoint-{max_steps}"
    a = load_file(straight / "adapter" / "adapter_model.safetensors")
    final = load_file(straight / "checkpoints" / f"checkpoint-{max_steps}" / "adapter_model.safetensors")
    assert a.keys() == final.keys() and all(torch_equal(a[k], final[k]) for k in a)  # the trained weights

    # the resumed run is bitwise the uninterrupted one
    log = _untimed(straight / "log.jsonl")
    assert [r["step"] for r in log] == steps and any(r["grad_norm"] > 0 for r in log)
    assert _untimed(killed / "log.jsonl") == log
    assert read_jsonl(killed / "samples.jsonl") == read_jsonl(straight / "samples.jsonl")
    b = load_file(killed / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch_equal(a[k], b[k]) for k in a)
    before = load_file(straight / "checkpoints" / "checkpoint-2" / "adapter_model.safetensors")
    assert not all(torch_equal(a[k], before[k]) for k in a)  # steps 3-4 moved the adapter
    # the numbers notebook 03 records in results.json come from the log: the same on both
    same = [json.dumps(first_last_comparison(d / "log.jsonl", "reward", k=2), sort_keys=True, default=str)
            for d in (straight, killed)]
    assert same[0] == same[1]


def torch_equal(x, y) -> bool:
    import torch

    return bool(torch.equal(x, y))
