"""Judge backends: the model that answers each yes/no prompt, with P(yes) from its top log-probs.

- VLLMBackend: vLLM in the same process (CPU build or CUDA), prefix caching on; it can also serve the training
  policy's LoRA adapters (lib.train.rollouts).
- TransformersBackend: a transformers model, batched, no prefix cache.
- OpenAIBackend: an OpenAI-compatible completions endpoint with logprobs (`vllm serve`): the original's topology.

lib.judge.engine.JudgeEngine turns rubric sections into prompts for a backend (`build_judge` builds both).
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Protocol, Sequence, Union

from lib.hardware import Precision, resolve_dtype
from lib.models import (REGISTRY, VLLM_CPU_BLOCK_SIZE, close_vllm_engine, cuda_available,
                        engine_tokenizer, resolve_model, stop_token_ids, vllm_text, vllm_tokenizer_kwargs)
from lib.profiles import JudgeConfig

YES_WORD, NO_WORD = "是", "否"
# A negative answer a judge may give for 否 ("is not"); counted as no only where `judge.also_no` names it.
NO_ALSO = ("不是",)
# Tokens per vllm-cpu engine step (its default: 4096): the fastest on the judge benchmark's workload, as smaller steps
# keep a layer's activations in cache. Longer prompts are prefilled in chunks (chunked prefill).
VLLM_CPU_MAX_BATCHED_TOKENS = 1024


class JudgeError(RuntimeError):
    """A judge that cannot work as configured; one line naming the model, endpoint or value."""


@dataclass
class YesNo:
    """What a backend returns for one prompt."""

    p_yes: float | None  # normalized over yes+no; None when neither was seen
    mass: float  # P(yes)+P(no) among the seen tokens: how much the judge answers the question at all
    prompt_tokens: int
    computed_tokens: int  # prompt tokens actually computed (not served from the prefix cache)


Prompt = Union[str, list[int]]  # text, or token ids (only for backends with a `prefix_block_size`)


class Backend(Protocol):
    tokenizer: object
    max_model_len: int
    prefix_block_size: int | None  # KV block size of a prefix cache that reuses whole blocks; None: no such cache

    def yes_no(self, prompts: list[Prompt]) -> list[YesNo]: ...

    def generate(self, prompts: list[str], max_tokens: int) -> list[tuple[str, int, int]]: ...

    def close(self) -> None: ...


def p_yes_from_logprobs(logprobs: dict[int, float], yes_ids: Sequence[int], no_ids: Sequence[int]) -> tuple[float | None, float]:
    """P(yes) = p(yes) / (p(yes) + p(no)), summing each word's token variants.

    >>> p, mass = p_yes_from_logprobs({1: math.log(0.3), 2: math.log(0.1), 3: math.log(0.5)}, [1], [2])
    >>> round(p, 3), round(mass, 3)
    (0.75, 0.4)
    >>> p_yes_from_logprobs({3: -0.1}, [1], [2])
    (None, 0.0)
    """
    py = sum(math.exp(logprobs[i]) for i in yes_ids if i in logprobs)
    pn = sum(math.exp(logprobs[i]) for i in no_ids if i in logprobs)
    if py + pn <= 0.0:
        return None, 0.0
    return py / (py + pn), py + pn


# --------------------------------------------------------------------------------------------- backends


class VLLMBackend:
    """vLLM in the same process (CPU build `vllm-cpu` here, CUDA vLLM on GPU), prefix caching on."""

    def __init__(self, model: str, cfg: JudgeConfig, seed: int = 0, max_lora_rank: int | None = None):
        """`max_lora_rank`: also serve LoRA adapters of that rank (the training policy's rollouts, lib.train.rollouts)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core (Unsloth sets it too)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm import LLM

        self.precision = resolve_dtype(cfg.dtype, "cuda" if cuda_available() else "cpu")
        kwargs = dict(
            model=model,
            dtype=self.precision.dtype,
            max_model_len=cfg.max_model_len,
            enable_prefix_caching=True,
            enforce_eager=cfg.enforce_eager,
            seed=seed,
            max_logprobs=max(cfg.top_logprobs, 20),
            **vllm_tokenizer_kwargs(),
        )
        if max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
            # the rollouts' log-probs after temperature / top-p (TRL compares them with the trainer's, which divide
            # by the temperature); the judge's greedy requests read the same numbers in either mode
            kwargs["logprobs_mode"] = "processed_logprobs"
            if not cuda_available():
                from lib.vllm_cpu import install_cpu_lora_ops

                install_cpu_lora_ops()  # vllm-cpu's own LoRA ops are slow and apply the adapter to no-LoRA requests
        self.restricted = cfg.answer_scoring == "restricted"
        # restricted: the log-probabilities of exactly the 是/否 tokens (`logprob_token_ids`); their ratio is the one
        # of a next token restricted to them, without the vocabulary-wide mask that `allowed_token_ids` builds for
        # every request (a measurable share of a judge call on CPU). Without that option (older vLLM): the mask,
        # with the logprobs read after it.
        self.token_logprobs = self.restricted and _has_logprob_token_ids()
        if self.restricted and not self.token_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"
        if cuda_available():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization  # leaves room for the policy's engine
        else:
            kwargs["block_size"] = VLLM_CPU_BLOCK_SIZE  # vllm-cpu defaults to 128: judge prompts (~80-400 tokens) would share few cached blocks
            kwargs["max_num_batched_tokens"] = VLLM_CPU_MAX_BATCHED_TOKENS
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - engine start failures come in many types
            raise JudgeError(f"vLLM could not start the judge model {model!r}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self.tokenizer = engine_tokenizer(model)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.max_model_len = cfg.max_model_len
        self.prefix_block_size = int(self.llm.llm_engine.vllm_config.cache_config.block_size)
        self.top_logprobs = cfg.top_logprobs
        self._yes_ids: list[int] = []
        self._no_ids: list[int] = []

    def set_answer_ids(self, yes_ids: list[int], no_ids: list[int]) -> None:
        self._yes_ids, self._no_ids = yes_ids, no_ids

    def _run(self, prompts: list[Prompt], params):
        from vllm.inputs import TokensPrompt

        ids = [p if isinstance(p, list) else self.tokenizer.encode(p, add_special_tokens=False)  # the template writes <bos>
               for p in prompts]
        return self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False)

    def yes_no(self, prompts: list[Prompt]) -> list[YesNo]:
        from vllm import SamplingParams

        if self.token_logprobs:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprob_token_ids=self._yes_ids + self._no_ids)
        elif self.restricted:
            allowed = self._yes_ids + self._no_ids
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(allowed), allowed_token_ids=allowed)
        else:
            params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
        out = []
        for o in self._run(prompts, params):
            top = o.outputs[0].logprobs[0] if o.outputs[0].logprobs else {}
            p, mass = p_yes_from_logprobs({k: v.logprob for k, v in top.items()}, self._yes_ids, self._no_ids)
            n = len(o.prompt_token_ids)
            out.append(YesNo(p, mass, n, n - (o.num_cached_tokens or 0)))
        return out

    def generate(self, prompts: list[str], max_tokens: int) -> list[tuple[str, int, int]]:
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_token_ids=self.stop_ids)
        out = []
        for o in self._run(prompts, params):
            n = len(o.prompt_token_ids)
            out.append((vllm_text(self.tokenizer, o.prompt_token_ids, o.outputs[0], params), n, n - (o.num_cached_tokens or 0)))
        return out

    def close(self) -> None:
        close_vllm_engine(self)  # drops self.llm, collects it, empties the CUDA cache


class TransformersBackend:
    """The same P(yes) math from full next-token logits, batched, for machines without vLLM."""

    def __init__(self, model: str, cfg: JudgeConfig, device: str = "cpu"):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "left"
        self.precision = resolve_dtype(cfg.dtype, device)
        if cfg.dtype == "auto" and device == "cpu" and self.precision.dtype == "bfloat16":
            # batches are padded: in bf16 that moved P(yes) by 1.2e-4 against the same prompt alone (float32: within 1e-4)
            self.precision = Precision("float32", "auto", device, self.precision.cpu_class,
                                       "transformers judge on CPU: float32 keeps P(yes) independent of the batch's padding")
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, self.precision.dtype)).to(device).eval()
        self.device = device
        self.max_model_len = cfg.max_model_len
        self.prefix_block_size = None  # no prefix cache: every prompt is computed in full
        self.batch_size = cfg.batch_size
        self.top_k = None if cfg.answer_scoring == "restricted" else cfg.top_logprobs
        self._yes_ids: list[int] = []
        self._no_ids: list[int] = []

    def set_answer_ids(self, yes_ids: list[int], no_ids: list[int]) -> None:
        self._yes_ids, self._no_ids = yes_ids, no_ids

    def _batches(self, prompts: list[str]):
        # Sort by length so padding stays small; results are put back in order.
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s : s + self.batch_size]
            enc = self.tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            yield idx, enc.to(self.device)

    def yes_no(self, prompts: list[str]) -> list[YesNo]:
        torch = self.torch
        out: list[YesNo | None] = [None] * len(prompts)
        with torch.inference_mode():
            for idx, enc in self._batches(prompts):
                # only the last position's logits: all of them would be batch x length x vocabulary floats (GBs)
                logits = self.model(**enc, logits_to_keep=1).logits[:, -1, :].float()
                probs = torch.softmax(logits, dim=-1)
                if self.top_k is not None:  # same rule as the vLLM backend: only what is among the top-k counts
                    kth = probs.topk(self.top_k, dim=-1).values[:, -1:]
                    probs = torch.where(probs >= kth, probs, torch.zeros_like(probs))
                py = probs[:, self._yes_ids].sum(-1)
                pn = probs[:, self._no_ids].sum(-1)
                lengths = enc["attention_mask"].sum(-1)
                for row, i in enumerate(idx):
                    mass = float(py[row] + pn[row])
                    p = float(py[row] / (py[row] + pn[row])) if mass > 0 else None
                    n = int(lengths[row])
                    out[i] = YesNo(p, mass, n, n)
        return out  # type: ignore[return-value]

    def generate(self, prompts: list[str], max_tokens: int) -> list[tuple[str, int, int]]:
        torch = self.torch
        out: list[tuple[str, int, int] | None] = [None] * len(prompts)
        with torch.inference_mode():
            for idx, enc in self._batches(prompts):
                gen = self.model.generate(**enc, max_new_tokens=max_tokens, do_sample=False,
                                          pad_token_id=self.tokenizer.pad_token_id)
                new = gen[:, enc["input_ids"].shape[1]:]
                lengths = enc["attention_mask"].sum(-1)
                for row, i in enumerate(idx):
                    n = int(lengths[row])
                    out[i] = (self.tokenizer.decode(new[row], skip_special_tokens=True), n, n)
        return out  # type: ignore[return-value]

    def close(self) -> None:
        self.model = None


class OpenAIBackend:
    """A `vllm serve` (or any OpenAI-compatible completions endpoint with logprobs): the original's topology."""

    def __init__(self, model: str, cfg: JudgeConfig, retries: int = 2, timeout: float = 60.0):
        if not cfg.base_url:
            raise JudgeError("judge.backend 'openai' needs judge.base_url (e.g. http://127.0.0.1:8000/v1)")
        from openai import OpenAI

        self.base_url = cfg.base_url
        self.client = OpenAI(base_url=cfg.base_url, api_key=os.environ.get("OPENAI_API_KEY", "EMPTY"),
                             max_retries=retries, timeout=timeout)
        self.retries = retries
        self.model = self._served_model(model)
        from transformers import AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_source(model))
        except Exception:  # noqa: BLE001 - a served model may not exist locally; the server's template is used then
            self.tokenizer = None
        self.max_model_len = cfg.max_model_len
        self.prefix_block_size = None  # the server's block size is not known here: plain text prompts
        self.top_logprobs = min(cfg.top_logprobs, 20)
        self.also_no = tuple(cfg.also_no)
        # restricted: the logprobs of exactly the 是/否 ids (vLLM's `logprob_token_ids` completions extension, the same
        # numbers the in-process vLLM backend reads); a server without it answers HTTP 400, reported in one line
        self.restricted = cfg.answer_scoring == "restricted"
        if self.restricted and self.tokenizer is None:
            raise JudgeError(f"judge.answer_scoring 'restricted' on the openai backend needs the tokenizer of {model!r} "
                             "locally (for the 是/否 token ids); use a registry name or local path as judge.model")
        self._yes_ids: list[int] = []
        self._no_ids: list[int] = []

    def set_answer_ids(self, yes_ids: list[int], no_ids: list[int]) -> None:
        self._yes_ids, self._no_ids = yes_ids, no_ids

    def _prompts(self, prompts: list[Prompt]) -> list:
        """What the server gets: token ids, tokenized here as the other backends do (whole prompt, no special tokens
        added: the chat template writes them; a server tokenizing text would add a BOS for Gemma), where the
        tokenizer is local; else the text."""
        if self.tokenizer is None:
            return prompts
        return [p if isinstance(p, list) else self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]

    def _call(self, **kwargs):
        import openai

        try:
            return self.client.completions.create(**kwargs)
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise JudgeError(f"judge endpoint {self.base_url} unreachable after {self.retries + 1} tries: {type(exc).__name__}") from None
        except openai.APIStatusError as exc:
            raise JudgeError(f"judge endpoint {self.base_url} answered HTTP {exc.status_code}: {str(exc)[:200]}") from None

    def _served_model(self, model: str) -> str:
        import openai

        try:
            served = [m.id for m in self.client.models.list().data]
        except (openai.APIConnectionError, openai.APITimeoutError) as exc:
            raise JudgeError(f"judge endpoint {self.base_url} unreachable after {self.retries + 1} tries: {type(exc).__name__}") from None
        return model if model in served or not served else served[0]

    def yes_no(self, prompts: list[Prompt]) -> list[YesNo]:
        if self.restricted:
            ids = self._yes_ids + self._no_ids
            if not ids:
                raise JudgeError("openai backend, restricted scoring: no 是/否 token ids set (build it through JudgeEngine)")
            resp = self._call(model=self.model, prompt=self._prompts(prompts), max_tokens=1, temperature=0.0,
                              logprobs=len(ids),
                              extra_body={"logprob_token_ids": ids, "return_tokens_as_token_ids": True})
        else:
            resp = self._call(model=self.model, prompt=self._prompts(prompts), max_tokens=1, temperature=0.0,
                              logprobs=self.top_logprobs)
        out = []
        for ch in sorted(resp.choices, key=lambda c: c.index):
            top = (ch.logprobs.top_logprobs or [{}])[0] if ch.logprobs else {}
            if self.restricted:  # keys "token_id:N"
                by_id = {int(k.rsplit(":", 1)[1]): v for k, v in top.items() if k.startswith("token_id:")}
                p, mass = p_yes_from_logprobs(by_id, self._yes_ids, self._no_ids)
                if p is None:
                    raise JudgeError(f"judge endpoint {self.base_url} returned no logprobs for the 是/否 token ids: "
                                     "judge.answer_scoring 'restricted' needs a vLLM server with `logprob_token_ids`")
                out.append(YesNo(p, mass, 0, 0))
                continue
            py = sum(math.exp(v) for k, v in top.items() if k.strip() == YES_WORD)
            pn = sum(math.exp(v) for k, v in top.items() if k.strip() in (NO_WORD, *self.also_no))
            p = py / (py + pn) if py + pn > 0 else None
            out.append(YesNo(p, py + pn, 0, 0))
        n_prompt, n_computed = usage_per_prompt(resp.usage, len(out))
        for y in out:  # usage is per request; spread evenly for the stats
            y.prompt_tokens, y.computed_tokens = n_prompt, n_computed
        return out

    def generate(self, prompts: list[str], max_tokens: int) -> list[tuple[str, int, int]]:
        resp = self._call(model=self.model, prompt=self._prompts(prompts), max_tokens=max_tokens, temperature=0.0)
        n_prompt, n_computed = usage_per_prompt(resp.usage, len(prompts))
        return [(ch.text, n_prompt, n_computed) for ch in sorted(resp.choices, key=lambda c: c.index)]

    def close(self) -> None:
        self.client.close()


def tokenizer_source(model: str) -> str:
    """Where a served model's tokenizer loads from: registry names map to their local copy or hub id.

    >>> tokenizer_source("qwen2.5-7b-instruct-awq")
    'Qwen/Qwen2.5-7B-Instruct-AWQ'
    """
    spec = REGISTRY.get(model)
    if spec is None:
        return model
    return resolve_model(model) if spec.kind == "packaged-gguf" else spec.source  # hub: tokenizer files only


def usage_per_prompt(usage, n: int) -> tuple[int, int]:
    """(prompt tokens, computed prompt tokens) per prompt from an OpenAI `usage`, spread evenly over `n` prompts.

    Computed = prompt minus `prompt_tokens_details.cached_tokens` (vLLM reports it with --enable-prompt-tokens-details).
    """
    total = getattr(usage, "prompt_tokens", 0) or 0
    cached = getattr(getattr(usage, "prompt_tokens_details", None), "cached_tokens", 0) or 0
    n = max(n, 1)
    return total // n, (total - cached) // n


def _has_logprob_token_ids() -> bool:
    """Whether this vLLM's SamplingParams can return the logprobs of given token ids (vLLM 0.32 can)."""
    from vllm import SamplingParams

    try:
        SamplingParams(max_tokens=1, logprob_token_ids=[0])
    except TypeError:
        return False
    return True


def build_backend(cfg: JudgeConfig, seed: int = 0, max_lora_rank: int | None = None) -> Backend:
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.model, cfg)
    model = resolve_model(cfg.model)
    if cfg.backend == "vllm":
        return VLLMBackend(model, cfg, seed=seed, max_lora_rank=max_lora_rank)
    if cfg.backend == "transformers":
        return TransformersBackend(model, cfg, device="cuda" if cuda_available() else "cpu")
    raise JudgeError(f"unknown judge backend {cfg.backend!r}")
