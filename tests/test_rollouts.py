"""lib.train.rollouts: GRPO rollouts on vLLM with the current LoRA adapter (the engine is faked here; the smoke
pipeline test runs the real one), and the training-side checks of train.rollout_engine 'vllm_lora'."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from lib.profiles import load_profile
from lib.train.rollouts import LoRARollouts, chat_token_ids, sample_seed
from lib.train import TrainError, grpo
from tests.train_helpers import build_tiny_policy


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory):
    return build_tiny_policy(tmp_path_factory.mktemp("tiny") / "model")


class FakeLLM:
    """Records what vLLM's `LLM.generate` was asked; answers each prompt with its last token id + 1, then stop."""

    def __init__(self, stop_id: int):
        self.calls = []
        self.stop_id = stop_id

    def generate(self, prompts, params, lora_request=None, use_tqdm=True):
        self.calls.append(SimpleNamespace(prompts=prompts, params=params, lora=lora_request,
                                          adapter_files=sorted(p.name for p in Path(lora_request.lora_path).iterdir())))
        outs = []
        for p in prompts:
            ids = [p["prompt_token_ids"][-1] + 1, self.stop_id]
            # vLLM's shape: per token a dict {token id: Logprob}; the stop token's entry is missing to test None
            lps = [{ids[0]: SimpleNamespace(logprob=-0.25), 99999: SimpleNamespace(logprob=-9.0)}, {}]
            outs.append(SimpleNamespace(outputs=[SimpleNamespace(token_ids=ids, logprobs=lps)]))
        return outs


class FakeAdapterModel:
    def __init__(self):
        self.saved = 0

    def save_pretrained(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "adapter_config.json").write_text(json.dumps({"r": 8}))
        (Path(path) / "adapter_model.safetensors").write_bytes(b"w%d" % self.saved)
        self.saved += 1


def fake_trainer(model, step):
    return SimpleNamespace(state=SimpleNamespace(global_step=step), model=model,
                           accelerator=SimpleNamespace(unwrap_model=lambda m: m))


def test_sample_seeds_differ_within_a_step_and_repeat_across_runs():
    seeds = [sample_seed(42, 7, i) for i in range(64)]
    assert len(set(seeds)) == 64 and all(0 <= s < 2**31 for s in seeds)
    assert seeds == [sample_seed(42, 7, i) for i in range(64)]
    assert sample_seed(42, 8, 0) != seeds[0] and sample_seed(43, 7, 0) != seeds[0]


def test_rollouts_use_the_current_adapter_and_the_chat_template(tiny_policy, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_policy)
    cfg = load_profile("smoke", overrides={"train": {"max_completion_length": 7, "temperature": 0.9, "top_p": 0.8}}).train
    llm = FakeLLM(stop_id=tok.eos_token_id)
    rollouts = LoRARollouts(llm, tok, cfg, seed=42, adapter_dir=tmp_path / "adapters")
    prompt = [{"role": "user", "content": "请为椰子水设计一段创意广告文案"}]
    model = FakeAdapterModel()
    out = rollouts([prompt, prompt], fake_trainer(model, step=0))
    expected_ids = chat_token_ids(tok, prompt)
    assert out["prompt_ids"] == [expected_ids, expected_ids] and out["logprobs"] == [[-0.25, None]] * 2
    assert out["completion_ids"] == [[expected_ids[-1] + 1, tok.eos_token_id]] * 2
    call = llm.calls[0]
    assert call.adapter_files == ["adapter_config.json", "adapter_model.safetensors"]
    assert [p.logprobs for p in call.params] == [0, 0]  # the sampled token's log-prob
    assert [p.max_tokens for p in call.params] == [7, 7] and call.params[0].temperature == 0.9 and call.params[0].top_p == 0.8
    assert call.params[0].seed != call.params[1].seed  # a group's samples must differ
    assert tok.eos_token_id in call.params[0].stop_token_ids
    rollouts(["plain text prompt"], fake_trainer(model, step=1))
    assert llm.calls[1].lora.lora_int_id > llm.calls[0].lora.lora_int_id  # a new id: vLLM loads the new weights
    assert [p.name for p in (tmp_path / "adapters").iterdir()] == ["step-1"]  # only the current adapter is kept
    assert rollouts.calls == 2 and rollouts.completion_tokens == 6 and rollouts.seconds > 0


def test_two_rollouts_on_one_engine_never_share_a_lora_id(tmp_path):
    # vLLM keeps the adapters it loaded by id: a restarted count would serve the first instance's weights
    cfg = load_profile("smoke").train
    tok = SimpleNamespace(eos_token_id=0, convert_tokens_to_ids=lambda t: None)
    llm = FakeLLM(stop_id=0)
    for k in range(2):
        r = LoRARollouts(llm, tok, cfg, seed=0, adapter_dir=tmp_path / str(k))
        r.generate([[1, 2]], r.save_adapter(FakeAdapterModel(), 0), 0)
    assert llm.calls[0].lora.lora_int_id != llm.calls[1].lora.lora_int_id


def test_rollouts_refuse_an_engine_with_raw_logprobs_at_another_temperature(tmp_path):
    from lib.train.rollouts import RolloutError

    cfg = load_profile("smoke", overrides={"train": {"temperature": 0.9}}).train
    llm = FakeLLM(stop_id=0)
    llm.llm_engine = SimpleNamespace(model_config=SimpleNamespace(logprobs_mode="raw_logprobs"))
    with pytest.raises(RolloutError, match="raw_logprobs.*processed_logprobs"):
        LoRARollouts(llm, None, cfg, seed=0, adapter_dir=tmp_path)
    llm.llm_engine.model_config.logprobs_mode = "processed_logprobs"
    LoRARollouts(llm, SimpleNamespace(eos_token_id=0, convert_tokens_to_ids=lambda t: None), cfg, seed=0,
                 adapter_dir=tmp_path)


def test_attach_turns_on_trls_importance_sampling_without_a_trl_engine(tmp_path):
    cfg = load_profile("smoke").train
    tok = SimpleNamespace(eos_token_id=0, convert_tokens_to_ids=lambda t: None)
    for on in (True, False):
        trainer = SimpleNamespace(args=SimpleNamespace(vllm_importance_sampling_correction=on), use_vllm=False,
                                  state=SimpleNamespace(global_step=3))
        LoRARollouts(FakeLLM(stop_id=0), tok, cfg, seed=0, adapter_dir=tmp_path).attach(trainer)
        assert trainer.use_vllm is on
        if on:
            assert trainer.vllm_generation.sync_weights() is None and trainer._last_loaded_step == 3


def test_vllm_lora_on_the_judge_engine_needs_its_lora(tmp_path):
    profile = load_profile("cpu")
    no_lora = SimpleNamespace(backend=SimpleNamespace(llm=SimpleNamespace(llm_engine=SimpleNamespace(
        vllm_config=SimpleNamespace(lora_config=None)))))
    with pytest.raises(TrainError, match="judge_engine_kwargs"):
        grpo.lora_rollouts(profile, judge=no_lora, tokenizer=None, out=tmp_path)
    with pytest.raises(TrainError, match="needs train.backend 'trl'"):
        grpo.lora_rollouts(load_profile("cpu", {"train": {"backend": "unsloth"}}), judge=None, tokenizer=None, out=tmp_path)


def test_a_judge_of_another_model_gets_a_second_engine_for_the_rollouts(tmp_path):
    """A judge that is not the policy's model: its engine serves no LoRA, and the rollouts run on the policy's own
    engine (here a stand-in with the LoRA config a real one has)."""
    profile = load_profile("cpu", overrides={"judge": {"model": "gemma3-270m"}})
    assert not grpo.rollouts_share_the_judge_engine(profile) and grpo.judge_engine_kwargs(profile) == {}
    llm = FakeLLM(stop_id=0)
    policy = SimpleNamespace(llm=llm)
    tok = SimpleNamespace(eos_token_id=0, convert_tokens_to_ids=lambda t: None)
    rollouts = grpo.lora_rollouts(profile, judge=None, tokenizer=tok, out=tmp_path, policy_backend=policy)
    assert rollouts.llm is llm
    assert grpo.rollouts_share_the_judge_engine(load_profile("cpu"))


def test_vllm_lora_builds_the_judge_with_lora_and_no_trl_vllm(tmp_path):
    profile = load_profile("cpu")
    assert grpo.judge_engine_kwargs(profile) == {"max_lora_rank": profile.train.lora_rank}
    assert grpo.judge_engine_kwargs(load_profile("cpu", overrides={"train": {"rollout_engine": "hf"}})) == {}
    kw = grpo.grpo_config_kwargs(profile, tmp_path)
    assert kw["use_vllm"] is False and kw["bf16"] is False  # TRL's own vLLM stays off; no autocast on CPU


def test_generation_timer_times_trls_own_generation_call():
    from lib.train.logs import TrainingLogger
    from lib.train.rollouts import GenerationTimer, RolloutError

    class FakeTrainer:
        def _generate_single_turn(self, prompt_ids, *rest):
            return [[1, 2, 3], [4]], None

    trainer = FakeTrainer()
    timer = GenerationTimer().attach(trainer)
    assert trainer._generate_single_turn([[0], [0]], None, {}, 2) == ([[1, 2, 3], [4]], None)
    assert timer.calls == 1 and timer.completion_tokens == 4 and timer.seconds > 0
    with pytest.raises(RolloutError, match="_generate_single_turn"):
        GenerationTimer().attach(object())
    # the training log reads it as it reads LoRARollouts: rollout and gradient seconds per step
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        logger = TrainingLogger(d, rollouts=timer)
        state = SimpleNamespace(global_step=0, epoch=0.0, max_steps=1, is_world_process_zero=True)
        logger.on_train_begin(None, state, None)
        timer.seconds += 0.5
        state.global_step = 1
        logger.on_log(None, state, None, logs={"loss": 0.1})
        row = json.loads((Path(d) / "log.jsonl").read_text().splitlines()[0])
        assert row["rollout_seconds"] == pytest.approx(0.5) and "gradient_seconds" in row


def test_trl_backend_times_hf_rollouts(monkeypatch, tmp_path):
    """build_trainer gives TRL's own generation a GenerationTimer (hf rollouts), the logger reads it."""
    from lib.train.rollouts import GenerationTimer

    made = {}

    class FakeGRPOTrainer:
        def __init__(self, **kwargs):
            made.update(kwargs)
            self.args = SimpleNamespace(gradient_checkpointing=False)  # what the shared-prompt install checks
            self.accelerator = SimpleNamespace(num_processes=1)

        def _generate_single_turn(self, *a):
            return [[1]], None

        def _get_per_token_logps_and_entropies(self, *a, **k):  # replaced by the smoke profile's shared-prompt path
            raise AssertionError("not called here")

    import trl

    monkeypatch.setattr(trl, "GRPOTrainer", FakeGRPOTrainer)
    monkeypatch.setattr(grpo, "load_train_dataset", lambda *a: None)
    monkeypatch.setattr(grpo, "build_grpo_config", lambda *a: None)
    profile = load_profile("smoke", overrides={"train": {"rollout_engine": "hf", "reward_weights": {"format": 1.0}}})
    ctx = SimpleNamespace(stage=lambda name: tmp_path / name)
    (tmp_path / "train").mkdir()
    trainer = grpo.build_trainer(profile, ctx, judge=None, policy=(None, None, None))
    logger = made["callbacks"][0]
    assert isinstance(logger.rollouts, GenerationTimer) and made["rollout_func"] is None
    trainer._generate_single_turn()
    assert logger.rollouts.calls == 1
