"""Merging a LoRA adapter into its base for serving, and the check that the merge is the trained policy.

    path = merged_model_dir("qwen2.5-coder-0.5b-instruct", run / "train" / "adapter", dtype="float32")

The merge runs in float32 and is saved in the serving dtype. Rounding can lose the adapter's change (a short run's
LoRA delta is below bf16's resolution for most weights), so every merge is checked before it is kept: the per-token
log-probs of fixed texts under the saved merge (loaded in the serving dtype) against those of base + adapter (PEFT,
float32); above `MERGE_TOLERANCE` the merge is refused (`MergeMismatch`, one line with the dtype and the difference).
The check runs with transformers: vLLM serves the same weights in the same dtype but with its own kernels, which
the check does not measure.
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from lib import paths
from lib.eval.errors import GenerationError, MergeMismatch
from lib.models import chat_prompt, engine_tokenizer, resolve_model

ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")

MERGED_KEEP = 3  # merged models kept in the cache (least recently used go first): each is a full model
# Per-token |log p(merged, as served) - log p(base + adapter, PEFT, float32)| allowed on the check texts (653 tokens
# with Qwen's tokenizer). Measured on a cpu-profile adapter (Qwen2.5-Coder-0.5B, reduced sizing; avx512_bf16 class):
# float32 merge 9.2e-5, bf16 merge 0.24, the adapter itself moves them by up to 4.4 (docs/evaluation.md).
MERGE_TOLERANCE = 1e-3
# The merge check's fixed texts: prompts of the training format and completions of the trained format
CHECK_ENTITIES = ("椰子水", "降噪耳机", "老北京布鞋")
CHECK_COMPLETION = "<think>先想目标人群和卖点，再写一句好记的口号。</think><answer>{entity}，一口清爽，一整天都轻松！</answer>"


def merged_model_dir(model: str, adapter: str | Path, dtype: str = "auto", cache_dir: Path | None = None,
                     tolerance: float | None = None) -> Path:
    """The base model with the LoRA adapter merged in, saved once (safetensors + tokenizer); its directory.

    The merge runs in float32 and is saved in `dtype` ("auto": the base's own). Keyed by the resolved base,
    the adapter's content hash and the dtype, so a retrained adapter gets a new merge. Before it is kept, the saved
    merge (loaded in `dtype`, as vLLM serves it) must give the PEFT model's log-probs on the fixed check texts within
    `tolerance` (`check_merge`; default `MERGE_TOLERANCE`), else `MergeMismatch` and nothing is kept; the measured
    difference is in the merge's MERGED_FROM.json, and a cached merge above the tolerance is refused too.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tolerance = MERGE_TOLERANCE if tolerance is None else tolerance
    base = resolve_model(model)
    if dtype == "auto":
        dtype = str(getattr(AutoConfig.from_pretrained(base), "dtype", None) or "float32").removeprefix("torch.")
    digest = hashlib.sha256(f"{base}\0{adapter_key(adapter)}\0{dtype}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)[-60:]
    target = (cache_dir or paths.CACHE_DIR / "merged") / f"{safe}-{digest}"
    if (target / "config.json").exists():
        record = json.loads((target / "MERGED_FROM.json").read_text()) if (target / "MERGED_FROM.json").exists() else {}
        diff = record.get("max_logprob_diff")
        if diff is not None:
            if diff > tolerance:
                raise MergeMismatch(_mismatch(dtype, diff, tolerance, record.get("check_tokens", 0)))
            os.utime(target)  # recently used: pruned last
            return target
        shutil.rmtree(target, ignore_errors=True)  # merged before the check existed: merge (and check) again
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = engine_tokenizer(base)  # the evaluation's engines read the same one
    lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # merge in float32: no rounding of the delta
    peft_model, texts, reference = peft_reference(lm, tokenizer, adapter, model)
    merged = peft_model.merge_and_unload()
    merged.to(getattr(torch, dtype)).save_pretrained(tmp, safe_serialization=True)
    del merged, peft_model, lm
    served = AutoModelForCausalLM.from_pretrained(tmp, dtype=getattr(torch, dtype))
    try:
        diff = check_merge(reference, served, tokenizer, texts, tolerance, dtype)
    except MergeMismatch:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        del served
        gc.collect()
    tokenizer.save_pretrained(tmp)
    (tmp / "MERGED_FROM.json").write_text(json.dumps({"model": model, "base": base, "adapter": str(adapter),
                                                      "adapter_key": adapter_key(adapter), "dtype": dtype,
                                                      "max_logprob_diff": diff, "tolerance": tolerance,
                                                      "check_tokens": int(sum(r.numel() for r in reference))}, indent=1))
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.rename(target)
    except OSError:  # another process finished the same merge first
        shutil.rmtree(tmp, ignore_errors=True)
    prune_merged(target.parent, keep=MERGED_KEEP)
    return target


def check_texts(tokenizer) -> list[str]:
    """The merge check's texts: `CHECK_ENTITIES`' prompts (lib.data.make_prompt, the chat template) followed by a
    fixed completion in the trained format."""
    from lib.data import make_prompt

    return [chat_prompt(tokenizer, make_prompt(e)) + CHECK_COMPLETION.format(entity=e) for e in CHECK_ENTITIES]


def token_logprobs(lm, tokenizer, texts: Sequence[str]) -> list:
    """Per text, log p of each token after the first given the ones before (float32 log-softmax), on CPU tensors."""
    import torch

    out = []
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([tokenizer.encode(t, add_special_tokens=False)], device=lm.device)
            logits = lm(input_ids=ids).logits[0, :-1].float()
            out.append(torch.log_softmax(logits, -1).gather(-1, ids[0, 1:, None])[:, 0].cpu())
    return out


def _mismatch(dtype: str, diff: float, tolerance: float, n_tokens: int) -> str:
    return (f"the merged model as served ({dtype}) differs from base + adapter (PEFT, float32) by max |Δ log p| "
            f"{diff:.3g} per token > tolerance {tolerance:g} on {n_tokens} tokens of fixed texts: the merge lost the "
            f"adapter's change; serve it in float32 (eval.dtype: auto or float32)")


def check_merge(reference: Sequence, served_lm, tokenizer, texts: Sequence[str], tolerance: float = MERGE_TOLERANCE,
                dtype: str = "") -> float:
    """The max per-token |Δ log p| between `reference` (`token_logprobs` of the PEFT model) and `served_lm` on
    `texts`; `MergeMismatch` (one line: dtype, the difference, the tolerance) when it exceeds `tolerance`."""
    served = token_logprobs(served_lm, tokenizer, texts)
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, served))
    if not diff <= tolerance:  # NaN fails too
        raise MergeMismatch(_mismatch(dtype or str(served_lm.dtype).removeprefix("torch."), diff, tolerance,
                                      int(sum(r.numel() for r in reference))))
    return diff


def prune_merged(cache_dir: Path, keep: int = MERGED_KEEP) -> list[Path]:
    """Delete all but the `keep` most recently used merged models in `cache_dir`; returns what was deleted.

    Every training run makes a new adapter and so a new merge: without pruning the cache grows by a model per run.
    """
    done = sorted((d for d in Path(cache_dir).iterdir() if d.is_dir() and ".tmp" not in d.name and (d / "config.json").exists()),
                  key=lambda d: d.stat().st_mtime, reverse=True)
    for d in done[keep:]:
        shutil.rmtree(d, ignore_errors=True)
    return done[keep:]


def adapter_key(adapter: str | Path | None) -> str | None:
    """The cache identity of a LoRA adapter: `sha256:<hex>` over its config and weight files, None for none."""
    if adapter is None:
        return None
    d = Path(adapter)
    files = [d / f for f in ADAPTER_FILES if (d / f).is_file()]
    if not (d / "adapter_config.json").is_file() or len(files) < 2:
        raise GenerationError(f"{d}: not a PEFT adapter directory (needs adapter_config.json and adapter_model.safetensors)")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def peft_reference(lm, tokenizer, adapter, model: str):
    """`lm` with the LoRA `adapter` (PEFT), the check texts and their per-token log-probs under it: what a merge of it
    must reproduce. A one-line GenerationError when the adapter does not fit the model."""
    from peft import PeftModel

    try:
        peft_model = PeftModel.from_pretrained(lm, str(adapter))
    except Exception as exc:  # noqa: BLE001 - peft raises many types for a mismatched adapter
        raise GenerationError(f"adapter {adapter} does not fit model {model!r}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    texts = check_texts(tokenizer)
    return peft_model, texts, token_logprobs(peft_model, tokenizer, texts)
