"""lib.eval.generation: cache-first generation with an injected backend, adapter identity, adapter resolution;
lib.models.text_generator's shape with a stand-in model (no real model is loaded here)."""
from __future__ import annotations

import json

import pytest
import torch

from lib import models, paths
from lib.eval import generation
from lib.eval.generation import (
    GenerationCache, GenerationError, adapter_key, generate, generation_cache_key, request_seeds, resolve_adapter,
)

SAMPLING = {"max_new_tokens": 16, "temperature": 0.7, "top_p": 0.95}
CACHE_SAMPLING = {"temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256}


class ChatTokenizer:
    """Renders messages as `role:content|...|model:` (stands in for a chat template)."""

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "|".join(f"{m['role']}:{m['content']}" for m in messages) + ("|model:" if add_generation_prompt else "")


class FakeBackend:
    """Records every call; the completion names its prompt and seed, so tests can tell them apart."""

    def __init__(self):
        self.calls: list[tuple[str, str | None, list[str], list[int]]] = []

    def __call__(self, model, adapter, prompts, sampling, seeds):
        self.calls.append((model, adapter, list(prompts), list(seeds)))
        return [f"<think>{p}</think><answer>{s}</answer>" for p, s in zip(prompts, seeds)]

    @property
    def n_generated(self) -> int:
        return sum(len(c[2]) for c in self.calls)


def msgs(*entities: str) -> list[list[dict]]:
    return [[{"role": "user", "content": f"请为{e}设计一段创意广告文案"}] for e in entities]


def run(backend, messages, cache=None, adapter=None, seed=42, entities=None, sampling=SAMPLING, dtype=None):
    return generate("fake-model", adapter, messages, sampling, seed, cache=cache, entities=entities,
                    backend=backend, tokenizer=ChatTokenizer(), dtype=dtype)


@pytest.fixture
def adapter_dir(tmp_path):
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_config.json").write_text('{"r": 8, "peft_type": "LORA"}')
    (d / "adapter_model.safetensors").write_bytes(b"\x00weights-v1")
    return d


def test_cache_hits_skip_generation(tmp_path):
    cache = GenerationCache(tmp_path / "generations.jsonl")
    backend = FakeBackend()
    first = run(backend, msgs("椰子水", "无糖气泡水"), cache, entities=["椰子水", "无糖气泡水"])
    assert backend.n_generated == 2 and len(cache) == 2
    again = run(backend, msgs("椰子水", "无糖气泡水", "电动牙刷"), cache, entities=["椰子水", "无糖气泡水", "电动牙刷"])
    assert backend.n_generated == 3, "only the new prompt may be generated"
    assert backend.calls[-1][2] == ["user:请为电动牙刷设计一段创意广告文案|model:"]
    assert again[:2] == first
    # a fresh process reads the same file: nothing is generated at all
    reopened = GenerationCache(tmp_path / "generations.jsonl")
    assert run(FakeBackend(), msgs("电动牙刷"), reopened) == again[2:]
    assert {r["entity"] for r in reopened.records()} == {"椰子水", "无糖气泡水", "电动牙刷"}


class FakeEngine:
    """Stands in for VLLMGenerator / TransformersGenerator; counts starts and closes."""

    started: list = []

    def __init__(self, model, adapter, *args, **kwargs):
        FakeEngine.started.append((model, adapter, kwargs.get("dtype")))
        self.closed = False

    def generate(self, model, adapter, prompts, sampling, seeds):
        return [f"engine:{p}:{s}" for p, s in zip(prompts, seeds)]

    def close(self):
        FakeEngine.started.append("closed")


def test_engines_start_only_for_misses_and_are_closed(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "VLLMGenerator", FakeEngine)
    monkeypatch.setattr(generation, "TransformersGenerator", FakeEngine)
    monkeypatch.setattr(generation, "cuda_available", lambda: False)
    FakeEngine.started = []
    cache = GenerationCache(tmp_path / "g.jsonl")
    first = run("vllm", msgs("椰子水"), cache)
    assert FakeEngine.started == [("fake-model", None, "float32"), "closed"]  # CPU serves float32
    assert run("vllm", msgs("椰子水"), cache) == first and len(FakeEngine.started) == 2  # all hits: no engine
    run("transformers", msgs("椰子水"), cache)  # another engine samples other texts: not a hit
    assert len(FakeEngine.started) == 4 and len(cache) == 2
    run("vllm", msgs("椰子水"), cache, dtype="bfloat16")
    assert FakeEngine.started[-2] == ("fake-model", None, "bfloat16") and len(cache) == 3
    assert {r["sampling"]["engine"] for r in cache.records()} == {"vllm:float32", "transformers:float32", "vllm:bfloat16"}


def test_completion_does_not_depend_on_batch_or_position():
    alone = run(FakeBackend(), msgs("椰子水"))
    in_batch = run(FakeBackend(), msgs("电动牙刷", "椰子水"))
    assert in_batch[1] == alone[0]
    assert run(FakeBackend(), msgs("椰子水"), seed=7) != alone  # the base seed matters


def test_repeated_prompt_gets_distinct_seeds():
    seeds = request_seeds(42, ["a", "a", "b"])
    assert seeds[0] != seeds[1] and len(set(seeds)) == 3
    assert all(0 <= s < 2**31 for s in seeds)


def test_sampling_and_seed_are_part_of_the_key(tmp_path):
    cache = GenerationCache(tmp_path / "g.jsonl")
    backend = FakeBackend()
    run(backend, msgs("椰子水"), cache)
    run(backend, msgs("椰子水"), cache, sampling={**SAMPLING, "temperature": 1.0})
    run(backend, msgs("椰子水"), cache, seed=43)
    assert backend.n_generated == 3


def test_adapter_key_changes_with_adapter_files(adapter_dir, tmp_path):
    k1 = adapter_key(adapter_dir)
    assert k1.startswith("sha256:") and k1 == adapter_key(adapter_dir)
    (adapter_dir / "README.md").write_text("model card")  # not a weight or config file: same adapter
    assert adapter_key(adapter_dir) == k1
    (adapter_dir / "adapter_model.safetensors").write_bytes(b"\x00weights-v2")
    k2 = adapter_key(adapter_dir)
    assert k2 != k1
    (adapter_dir / "adapter_config.json").write_text('{"r": 16, "peft_type": "LORA"}')
    assert adapter_key(adapter_dir) not in (k1, k2)
    assert adapter_key(None) is None


def test_changed_adapter_misses_the_cache(adapter_dir, tmp_path):
    cache = GenerationCache(tmp_path / "g.jsonl")
    backend = FakeBackend()
    run(backend, msgs("椰子水"), cache, adapter=adapter_dir)
    run(backend, msgs("椰子水"), cache, adapter=adapter_dir)
    assert backend.n_generated == 1
    assert backend.calls[0][1] == str(adapter_dir)  # the backend gets the adapter's path
    moved = tmp_path / "moved"
    adapter_dir.rename(moved)
    run(backend, msgs("椰子水"), cache, adapter=moved)  # same files elsewhere: still a hit
    assert backend.n_generated == 1
    (moved / "adapter_model.safetensors").write_bytes(b"retrained")
    run(backend, msgs("椰子水"), cache, adapter=moved)
    assert backend.n_generated == 2
    run(backend, msgs("椰子水"), cache, adapter=None)  # the base model is another key again
    assert backend.n_generated == 3


def test_not_an_adapter_directory(tmp_path):
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(GenerationError, match="not a PEFT adapter directory"):
        adapter_key(tmp_path)


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert msg and "\n" not in msg
    return msg


def test_run_adapter_resolution_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    with pytest.raises(GenerationError) as e:
        resolve_adapter("run")
    assert "run_dir" in one_line(e)
    with pytest.raises(GenerationError) as e:
        resolve_adapter("run", run_dir)
    msg = one_line(e)
    assert "train" in msg and "r1" in msg
    with pytest.raises(GenerationError) as e:
        run(FakeBackend(), msgs("椰子水"), adapter="run")
    assert "resolve_adapter" in one_line(e)
    with pytest.raises(GenerationError) as e:
        resolve_adapter("r1")  # a run id without a trained adapter
    assert "r1" in one_line(e) and "03" in str(e.value)
    with pytest.raises(GenerationError) as e:
        resolve_adapter("no-such-run")
    assert "no-such-run" in one_line(e)
    (tmp_path / "plain").mkdir()
    with pytest.raises(GenerationError) as e:
        resolve_adapter(tmp_path / "plain")
    assert "adapter_config.json" in one_line(e)


def test_run_adapter_resolution(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    adapter = tmp_path / "runs" / "r1" / "train" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    assert resolve_adapter("run", tmp_path / "runs" / "r1") == adapter
    assert resolve_adapter("r1") == adapter
    assert resolve_adapter(str(adapter)) == adapter
    assert resolve_adapter(None) is None


def test_bad_arguments_are_named():
    with pytest.raises(GenerationError, match="missing"):
        run(FakeBackend(), msgs("椰子水"), sampling={"temperature": 0.7})
    with pytest.raises(GenerationError, match="unknown"):
        run(FakeBackend(), msgs("椰子水"), sampling={**SAMPLING, "top_k": 5})
    with pytest.raises(GenerationError, match="aligned"):
        run(FakeBackend(), msgs("椰子水"), entities=["a", "b"])
    with pytest.raises(GenerationError, match="unknown generation backend"):
        run("llama.cpp", msgs("椰子水"))
    with pytest.raises(GenerationError, match="returned 0 completions"):
        run(lambda *a: [], msgs("椰子水"))


def test_chunked_backend_calls_store_as_they_go(tmp_path, monkeypatch):
    monkeypatch.setattr(generation, "CHUNK", 2)
    cache = GenerationCache(tmp_path / "g.jsonl")
    calls = []

    def flaky(model, adapter, prompts, sampling, seeds):
        calls.append(len(prompts))
        if len(calls) == 2:
            raise RuntimeError("engine died")
        return ["x"] * len(prompts)

    with pytest.raises(RuntimeError):
        run(flaky, msgs("a", "b", "c", "d"), cache)
    assert len(cache) == 2  # the first chunk survived the crash
    run(FakeBackend(), msgs("a", "b", "c", "d"), cache)
    assert len(cache) == 4


# ----------------------------------------------------------------------------------------------
# lib.models.text_generator with a stand-in model


class TinyTokenizer:
    pad_token_id, eos_token_id, unk_token_id = 0, 1, 3
    padding_side = "right"

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "<u>" + messages[0]["content"] + "<m>"

    def convert_tokens_to_ids(self, token):
        return 106 if token == "<end_of_turn>" else self.unk_token_id

    def __call__(self, texts, return_tensors="pt", padding=True, add_special_tokens=False):
        assert self.padding_side == "left"
        width = max(len(t) for t in texts)
        ids = torch.tensor([[0] * (width - len(t)) + [ord(c) % 50 + 5 for c in t] for t in texts])

        class Enc(dict):
            def to(self, device):
                return self

        return Enc(input_ids=ids, attention_mask=(ids != 0).long())

    def batch_decode(self, rows, skip_special_tokens=True):
        return ["".join(chr(0x4e00 + int(i)) for i in r) for r in rows]


class TinyLM:
    device = "cpu"

    def __init__(self):
        self.calls = []

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        self.calls.append((input_ids.shape, max_new_tokens, kw))
        new = torch.arange(max_new_tokens).repeat(input_ids.shape[0], 1) + 7
        return torch.cat([input_ids, new], dim=1)


def test_text_generator_shape(monkeypatch):
    lm, tok = TinyLM(), TinyTokenizer()
    loads = []
    monkeypatch.setattr(models, "load_causal_lm", lambda name, **kw: loads.append(name) or (lm, tok))
    ask = models.text_generator("gemma3-270m", max_new_tokens=4, seed=1, batch_size=2)
    assert loads == []  # nothing loads before the first call
    answers = ask(["列出饮料", "列出零食", "列出玩具"])
    assert len(answers) == 3 and all(len(a) == 4 for a in answers)  # only the new tokens come back
    assert loads == ["gemma3-270m"] and [c[0][0] for c in lm.calls] == [2, 1]  # batches of 2 then 1
    assert lm.calls[0][2]["eos_token_id"] == [1, 106]  # stops at the end of the model's turn
    ask(["再来"])
    assert loads == ["gemma3-270m"]  # loaded once


def test_prune_merged_keeps_the_most_recent(tmp_path):
    import os

    for i, name in enumerate(["a", "b", "c", "d"]):
        d = tmp_path / name
        d.mkdir()
        (d / "config.json").write_text("{}")
        os.utime(d, (1000 + i, 1000 + i))
    (tmp_path / "e.tmp123").mkdir()  # a merge in progress is never touched
    deleted = generation.prune_merged(tmp_path, keep=2)
    assert sorted(p.name for p in deleted) == ["a", "b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "d", "e.tmp123"]


# --- cache -------------------------------------------------------------------------------------

def test_cache_key_is_canonical_and_sensitive():
    k = generation_cache_key("m", None, "写广告", CACHE_SAMPLING, 42)
    assert len(k) == 64
    assert k == generation_cache_key("m", None, "写广告", dict(reversed(list(CACHE_SAMPLING.items()))), 42)
    assert k != generation_cache_key("m", None, "写广告", CACHE_SAMPLING, 43)
    assert k != generation_cache_key("m", "adapter", "写广告", CACHE_SAMPLING, 42)
    assert k != generation_cache_key("m", None, "写广告", {**CACHE_SAMPLING, "temperature": 1.0}, 42)


def test_cache_round_trip(tmp_path):
    path = tmp_path / "gen.jsonl"
    cache = GenerationCache(path)
    key = cache.put("m", None, "椰子水", "写广告", "<think>想</think><answer>好喝</answer>", CACHE_SAMPLING, 42)
    assert key == generation_cache_key("m", None, "写广告", CACHE_SAMPLING, 42)
    again = GenerationCache(path)
    assert len(again) == 1 and key in again
    rec = again.get(key)
    assert rec["completion"] == "<think>想</think><answer>好喝</answer>"
    assert rec["entity"] == "椰子水" and rec["sampling"] == CACHE_SAMPLING and rec["seed"] == 42
    assert again.get("nope") is None


def test_cache_later_record_wins(tmp_path):
    cache = GenerationCache(tmp_path / "gen.jsonl")
    k1 = cache.put("m", None, "e", "p", "first", CACHE_SAMPLING, 1)
    k2 = cache.put("m", None, "e", "p", "second", CACHE_SAMPLING, 1)
    assert k1 == k2
    assert GenerationCache(tmp_path / "gen.jsonl").get(k1)["completion"] == "second"


def test_cache_tolerates_truncated_last_line(tmp_path):
    path = tmp_path / "gen.jsonl"
    cache = GenerationCache(path)
    k1 = cache.put("m", None, "e1", "p1", "c1", CACHE_SAMPLING, 1)
    k2 = cache.put("m", None, "e2", "p2", "c2", CACHE_SAMPLING, 1)
    with path.open("a", encoding="utf-8") as f:
        f.write('{"key": "abc", "model": "m", "compl')  # killed mid-write
    reopened = GenerationCache(path)
    assert reopened.dropped_partial_line
    assert len(reopened) == 2 and reopened.get(k1)["completion"] == "c1" and k2 in reopened
    assert path.read_bytes().endswith(b"\n")
    k3 = reopened.put("m", None, "e3", "p3", "c3", CACHE_SAMPLING, 1)
    final = GenerationCache(path)
    assert not final.dropped_partial_line
    assert len(final) == 3 and final.get(k3)["completion"] == "c3"


def test_cache_tolerates_line_cut_inside_a_character(tmp_path):
    path = tmp_path / "gen.jsonl"
    GenerationCache(path).put("m", None, "e1", "p1", "c1", CACHE_SAMPLING, 1)
    partial = json.dumps({"key": "x", "completion": "椰子水"}, ensure_ascii=False).encode("utf-8")
    with path.open("ab") as f:
        f.write(partial[: partial.index("椰".encode()) + 1])  # half of a UTF-8 character
    cache = GenerationCache(path)
    assert cache.dropped_partial_line and len(cache) == 1


def test_cache_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text(json.dumps({"key": "k", "completion": "c"}), encoding="utf-8")
    cache = GenerationCache(path)
    assert cache.get("k")["completion"] == "c" and not cache.dropped_partial_line
    cache.put("m", None, "e", "p", "c2", CACHE_SAMPLING, 1)
    assert len(GenerationCache(path)) == 2


def test_cache_corrupt_middle_line_raises(tmp_path):
    path = tmp_path / "gen.jsonl"
    path.write_text('{"key": "a"}\nnot json\n{"key": "b"}\n', encoding="utf-8")
    with pytest.raises(GenerationError, match="line 2"):
        GenerationCache(path)


# ------------------------------------------------------------------------------------------ merge check (issue 18.1)

@pytest.fixture(scope="module")
def tiny_lora(tmp_path_factory):
    """A random 2-layer Llama (tests.train_helpers) and a LoRA adapter on it with a small random delta."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.train_helpers import build_tiny_policy

    tmp = tmp_path_factory.mktemp("tiny-lora")
    model_dir = build_tiny_policy(tmp / "tiny")
    torch.manual_seed(0)
    lm = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir),
                        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                                   init_lora_weights=False))
    lm.save_pretrained(tmp / "adapter")
    return model_dir, tmp / "adapter"


def test_float32_merge_passes_the_check_and_records_it(tiny_lora, tmp_path):
    model_dir, adapter = tiny_lora
    merged = generation.merged_model_dir(str(model_dir), adapter, "float32", cache_dir=tmp_path)
    record = json.loads((merged / "MERGED_FROM.json").read_text())
    assert record["max_logprob_diff"] < 1e-5 < generation.MERGE_TOLERANCE and record["check_tokens"] > 50


def test_bf16_rounded_merge_trips_the_check(tiny_lora, tmp_path):
    """The merge rounded to bf16 is not the trained policy: refused with the difference, and nothing is kept."""
    model_dir, adapter = tiny_lora
    with pytest.raises(generation.MergeMismatch, match=r"bfloat16\).*max \|Δ log p\| [0-9.e-]+ per token > tolerance 0.001"):
        generation.merged_model_dir(str(model_dir), adapter, "bfloat16", cache_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_cached_merge_is_checked_again(tiny_lora, tmp_path):
    """A cached merge above a (stricter) tolerance is refused; one merged before the check existed is redone."""
    model_dir, adapter = tiny_lora
    merged = generation.merged_model_dir(str(model_dir), adapter, "float32", cache_dir=tmp_path)
    with pytest.raises(generation.MergeMismatch, match="tolerance 1e-12"):
        generation.merged_model_dir(str(model_dir), adapter, "float32", cache_dir=tmp_path, tolerance=1e-12)
    record = json.loads((merged / "MERGED_FROM.json").read_text())
    del record["max_logprob_diff"]
    (merged / "MERGED_FROM.json").write_text(json.dumps(record))
    again = generation.merged_model_dir(str(model_dir), adapter, "float32", cache_dir=tmp_path)
    assert "max_logprob_diff" in json.loads((again / "MERGED_FROM.json").read_text())


def test_merge_mismatch_names_the_eval_row(tiny_lora, tmp_path, monkeypatch):
    """generate_for_models: a row whose merge fails the check is one line naming the row (before any engine starts)."""
    import pandas as pd

    from lib.data import make_prompt
    from lib.profiles import EvalConfig, EvalModel

    model_dir, adapter = tiny_lora
    monkeypatch.setattr(paths, "CACHE_DIR", tmp_path / "cache")
    cfg = EvalConfig(max_new_tokens=4, temperature=1.0, top_p=1.0)
    test = pd.DataFrame({"entity": ["椰子水"], "prompt": [make_prompt("椰子水")]})
    rows = [EvalModel(label="grpo", model=str(model_dir), adapter=str(adapter))]
    with pytest.raises(GenerationError, match=r"^eval row 'grpo': the merged model as served \(bfloat16\)") as info:
        generation.generate_for_models(rows, test, cfg, None, tmp_path, backend="vllm", dtype="bfloat16")
    assert "\n" not in str(info.value)


def test_transformers_path_checks_its_merge(tiny_lora, monkeypatch):
    """load_for_generation merges in float32 and checks it (passes); a merge that changed the weights is refused."""
    model_dir, adapter = tiny_lora
    lm, tok = generation.load_for_generation(str(model_dir), adapter)
    assert lm.dtype == torch.float32
    real = generation.check_merge

    def after_rounding(reference, served, *a, **k):
        for p in served.parameters():
            p.data = p.data.to(torch.bfloat16).to(torch.float32)
        return real(reference, served, *a, **k)

    monkeypatch.setattr(generation, "check_merge", after_rounding)
    with pytest.raises(generation.MergeMismatch, match="float32"):
        generation.load_for_generation(str(model_dir), adapter)


# ------------------------------------------------------------------------------------------ protocol (issue 18.5)

def test_k_samples_plus_greedy_in_one_engine_at_the_training_sampling(tmp_path):
    """generate_for_models: k sampled completions per prompt at the profile's training temperature/top-p/length,
    each with its own seed, plus one greedy, in one backend per model; raising k reuses the cached samples."""
    import pandas as pd

    from lib.data import make_prompt
    from lib.profiles import load_profile

    profile = load_profile("cpu")
    cfg = profile.eval
    assert (cfg.max_new_tokens, cfg.temperature, cfg.top_p) == (profile.train.max_completion_length,
                                                               profile.train.temperature, profile.train.top_p)
    seen = []

    def backend(model, adapter, prompts, sampling, seeds):
        seen.append((dict(sampling), list(seeds)))
        return [f"{sampling['temperature']}:{s}" for s in seeds]

    test = pd.DataFrame({"entity": ["椰子水", "猫砂"], "prompt": [make_prompt("椰子水"), make_prompt("猫砂")]})
    models = [m for m in cfg.models if m.adapter is None]
    cache = GenerationCache(tmp_path / "g.jsonl")
    out = generation.generate_for_models(models, test, cfg, cache, tmp_path, backend=backend, samples=3, greedy=True)
    rows = generation.eval_rows(test, 3, True)
    texts = out[models[0].label]
    assert len(texts) == len(rows) == 2 * 4
    sampled = [t for t, d in zip(texts, rows.decoding) if d == "sample"]
    assert len(set(sampled)) == 6  # every sample has its own seed
    samplings = {json.dumps(s, sort_keys=True) for s, _ in seen}
    assert {"max_new_tokens": 128, "temperature": 0.98, "top_p": 1.0} in [s for s, _ in seen]
    assert {"max_new_tokens": 128, "temperature": 0.0, "top_p": 1.0} in [s for s, _ in seen]
    assert len(samplings) == 2
    n_calls = sum(len(s) for _, s in seen)
    more = generation.generate_for_models(models, test, cfg, cache, tmp_path, backend=backend, samples=4, greedy=True)
    assert sum(len(s) for _, s in seen) - n_calls == 2  # only the 4th samples are new
    assert more[models[0].label][:6] == texts[:6]


def test_eval_rows_reject_no_samples():
    import pandas as pd

    with pytest.raises(GenerationError, match="samples_per_prompt"):
        generation.eval_rows(pd.DataFrame({"entity": ["a"], "prompt": ["p"]}), 0, False)


def test_full_fine_tune_run_is_evaluated_as_its_model(tmp_path):
    """adapter 'run' of a run trained without LoRA (train.peft: false) is its saved full model."""
    from lib.profiles import EvalModel

    full = tmp_path / "train" / generation.FULL_MODEL_DIR
    full.mkdir(parents=True)
    (full / "config.json").write_text("{}")
    assert generation.resolve_row(EvalModel(label="g", model="m", adapter="run"), tmp_path) == (str(full), None)
    assert generation.resolve_row(EvalModel(label="b", model="m"), tmp_path) == ("m", None)
