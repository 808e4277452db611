"""Completions for evaluation and case studies: cached, seeded per request, with vLLM or transformers.

    cache = GenerationCache(ctx.stage("eval") / "generations.jsonl")
    texts = generate("gemma3-270m", "/path/run/train/adapter", [make_prompt("椰子水")],
                     {"max_new_tokens": 128, "temperature": 0.7, "top_p": 0.95}, seed=42, cache=cache,
                     entities=["椰子水"])

- Cache first: the key is `generation_cache_key(model, adapter key, prompt text, sampling
  plus `engine_id`, request seed)`; the adapter key is the sha256 of the adapter's files (`adapter_key`), so a retrained
  adapter is never served an old completion, while a moved run directory still is. Only misses are
  generated, and each is stored as soon as its chunk finishes.
- Request seeds: `request_seeds` derives each request's seed from the base seed and the prompt text
  (plus how often that prompt already occurred in the call), so a completion depends neither on batch
  composition nor on its position: the case studies ask for a few of the evaluation's prompts and get
  the evaluation's completions from the cache.
- vLLM backend, one in-process engine per model, shut down afterwards. On a GPU (bf16) an adapter is served unmerged:
  the base in bf16 with vLLM's LoRA support (`enable_lora`, a `LoRARequest` on every request, `serves_lora_unmerged`),
  so the adapter's delta is computed beside the weights, not rounded into them, and every row, the 7B included, runs
  in bf16. On CPU an adapter is merged into its base once (`lib.eval.merge.merged_model_dir`, keyed by base, adapter
  hash and dtype; refused when its log-probs differ from base + adapter's, `check_merge`) and the models are served
  in float32, as the CPU profiles train them: a short run's LoRA delta is below bf16's resolution, so a bf16 merge
  would evaluate another policy than the one trained.
- The evaluation's protocol (docs/evaluation.md): `generate_for_models(..., samples=k, greedy=True)` asks each model
  for k sampled completions per prompt and one greedy one (`eval_rows`), in one engine; seeds are counted per sampling.
- transformers backend (machines without vLLM): one request at a time, `torch.manual_seed(request seed)`.
- Generation stops at the end of the model's turn (`stop_token_ids`): Gemma's files name only <eos>.
"""
from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import shutil
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

from lib import paths
from lib.eval.errors import GenerationError, MergeMismatch
from lib.eval.merge import (  # noqa: F401 - merged_model_dir, prune_merged, ADAPTER_FILES re-exported
    ADAPTER_FILES, MERGE_TOLERANCE, adapter_key, check_merge, merged_model_dir, peft_reference, prune_merged,
)
from lib.hardware import eval_precision
from lib.models import (VLLM_CPU_BLOCK_SIZE, chat_prompt, close_vllm_engine, cuda_available,
                        engine_tokenizer, resolve_model, stop_token_ids, vllm_text, vllm_tokenizer_kwargs)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from lib.profiles import EvalConfig, EvalModel

SAMPLING_KEYS = ("max_new_tokens", "temperature", "top_p")
CHUNK = 64  # requests per engine call: completions are cached after each chunk (a crash loses at most one)
FULL_MODEL_DIR = "model"  # lib.train.grpo saves a full fine-tune (train.peft: false) here, not an adapter

# (model name, adapter path or None, prompt texts, sampling, request seeds) -> completions
GenerateFn = Callable[[str, "str | None", list[str], dict, list[int]], list[str]]


# ----------------------------------------------------------------------------------------------
# Generation cache
# ----------------------------------------------------------------------------------------------

def generation_cache_key(model: str, adapter: str | None, prompt: str, sampling: dict, seed: int) -> str:
    """The sha256 of the canonical JSON of everything that determines a sampled completion.

    >>> k = generation_cache_key("gemma3-270m", None, "写广告", {"temperature": 0.7}, 42)
    >>> len(k), k == generation_cache_key("gemma3-270m", None, "写广告", {"temperature": 0.7}, 42)
    (64, True)
    """
    payload = {"model": model, "adapter": adapter, "prompt": prompt, "sampling": sampling, "seed": seed}
    canonical = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class GenerationCache:
    """Completions already generated, in an append-only JSONL file (one record a line).

    Each record: {key, model, adapter, entity, prompt, completion, sampling, seed}; `key` is
    `generation_cache_key(model, adapter, prompt, sampling, seed)`. A later record with the same
    key wins. A process killed mid-write leaves a truncated last line: on opening, that line is
    dropped and the file is cut back to its last complete line (so the next append stays valid
    JSONL; a complete last record that only lacks its newline is kept and the newline added);
    `dropped_partial_line` says whether a partial line was dropped. A malformed line anywhere else is
    corruption, not a crash, and raises `GenerationError`.

    >>> cache = GenerationCache(tmp / "generations.jsonl")  # doctest: +SKIP
    >>> key = cache.put("m", None, "entity", "prompt", "<think>…", {"temperature": 0.7}, 42)  # doctest: +SKIP
    >>> cache.get(key)["completion"]  # doctest: +SKIP
    '<think>…'
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._records: dict[str, dict] = {}
        self.dropped_partial_line = False
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        data = self.path.read_bytes()
        lines = data.split(b"\n")
        # after a final "\n" split leaves b""; anything else there is an unfinished write
        complete, tail = lines[:-1], lines[-1]
        for lineno, raw in enumerate(complete, start=1):
            if not raw.strip():
                continue
            try:
                rec = json.loads(raw.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise GenerationError(f"{self.path}: line {lineno} is not valid JSON ({exc})") from None
            if not isinstance(rec, dict) or "key" not in rec:
                raise GenerationError(f"{self.path}: line {lineno} has no 'key' field")
            self._records[rec["key"]] = rec
        if tail.strip():
            try:
                rec = json.loads(tail.decode("utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError):
                rec = None
            if isinstance(rec, dict) and "key" in rec:
                self._records[rec["key"]] = rec  # complete record that only lacks its newline
                with self.path.open("ab") as f:
                    f.write(b"\n")
            else:
                self.dropped_partial_line = True
                os.truncate(self.path, len(data) - len(tail))

    def get(self, key: str) -> dict | None:
        """The record stored under `key`, or None."""
        return self._records.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._records

    def __len__(self) -> int:
        return len(self._records)

    def records(self) -> list[dict]:
        """Every stored record (the latest one per key), in first-written order."""
        return list(self._records.values())

    def put(
        self,
        model: str,
        adapter: str | None,
        entity: str,
        prompt: str,
        completion: str,
        sampling: dict,
        seed: int,
    ) -> str:
        """Append one completion (flushed at once, so a crash loses at most this line); returns its key."""
        key = generation_cache_key(model, adapter, prompt, sampling, seed)
        rec = {
            "key": key,
            "model": model,
            "adapter": adapter,
            "entity": entity,
            "prompt": prompt,
            "completion": completion,
            "sampling": sampling,
            "seed": seed,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
        self._records[key] = rec
        return key


# ----------------------------------------------------------------------------------------------
# Arguments
# ----------------------------------------------------------------------------------------------

def check_sampling(sampling: dict) -> dict:
    """The sampling dict with exactly `max_new_tokens`, `temperature`, `top_p` (typed); else GenerationError.

    >>> check_sampling({"max_new_tokens": 48, "temperature": 0.7, "top_p": 1})
    {'max_new_tokens': 48, 'temperature': 0.7, 'top_p': 1.0}
    """
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    missing = [k for k in SAMPLING_KEYS if k not in sampling]
    if unknown or missing:
        raise GenerationError(f"sampling needs exactly {', '.join(SAMPLING_KEYS)}; unknown {unknown}, missing {missing}")
    out = {"max_new_tokens": int(sampling["max_new_tokens"]), "temperature": float(sampling["temperature"]),
           "top_p": float(sampling["top_p"])}
    if out["max_new_tokens"] < 1 or out["temperature"] < 0 or not 0 < out["top_p"] <= 1:
        raise GenerationError(f"sampling out of range: {out} (max_new_tokens >= 1, temperature >= 0, 0 < top_p <= 1)")
    return out


def request_seeds(seed: int, prompts: Sequence[str]) -> list[int]:
    """One seed per request: base seed + crc32 of the prompt + how often the prompt occurred before in the call.

    >>> a = request_seeds(42, ["x", "y", "x"]); a[0] == request_seeds(42, ["x"])[0], a[2] == a[0] + 1
    (True, True)
    """
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        k = seen.get(p, 0)
        seen[p] = k + 1
        out.append((seed + zlib.crc32(p.encode("utf-8")) + k) % 2**31)
    return out


def resolve_adapter(adapter: str | Path | None, run_dir: str | Path | None = None) -> Path | None:
    """An adapter directory from None, "run" (`run_dir`'s trained adapter), a path or a run id under RUNS_DIR.

    Every failure is one line saying what to run or pass instead.
    """
    if adapter is None or str(adapter) == "":
        return None
    name = str(adapter)
    if name == "run":
        if run_dir is None:
            raise GenerationError("adapter 'run' means this run's trained adapter: pass run_dir (the notebook's ctx.dir)")
        target = Path(run_dir) / "train" / "adapter"
        if not target.is_dir():
            raise GenerationError(f"{target} not found: run the training stage (03) of {Path(run_dir).name} first")
        return target
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "adapter_config.json").is_file():
            raise GenerationError(f"{p}: no adapter_config.json (not a PEFT adapter directory)")
        return p
    by_run = paths.RUNS_DIR / name / "train" / "adapter"
    if by_run.is_dir():
        return by_run
    if (paths.RUNS_DIR / name).is_dir():
        raise GenerationError(f"run {name!r} has no trained adapter at {by_run}: run its training stage (03) first")
    raise GenerationError(f"adapter {name!r} is neither an adapter directory nor a run id under {paths.RUNS_DIR}")


# ----------------------------------------------------------------------------------------------
# The entry point
# ----------------------------------------------------------------------------------------------

def engine_id(backend: str | GenerateFn, dtype: str | None = None, unmerged_lora: bool = False) -> str:
    """What generates, as part of the cache key: "vllm:<dtype>" ("+lora": the adapter served unmerged),
    "transformers:<dtype>" or "custom" (a function)."""
    if callable(backend):
        return "custom"
    if backend == "vllm":
        return f"vllm:{dtype or serving_dtype()}" + ("+lora" if unmerged_lora else "")
    if backend == "transformers":
        return f"transformers:{'bfloat16' if cuda_available() else 'float32'}"
    raise GenerationError(f"unknown generation backend {backend!r}; use 'vllm' or 'transformers'")


def generate(
    model: str,
    adapter: str | Path | None,
    messages_list: Sequence[list[dict]],
    sampling: dict | Sequence[dict],
    seed: int,
    cache: GenerationCache | None = None,
    entities: Sequence[str] | None = None,
    backend: str | GenerateFn = "vllm",
    tokenizer=None,
    gpu_memory_utilization: float = 0.8,
    dtype: str | None = None,
    merge_tolerance: float | None = None,
) -> list[str]:
    """Completions of `model` (+ LoRA `adapter` directory) for chat prompts, in order.

    `sampling`: one dict for every request, or one per request (e.g. sampled and greedy requests in one engine:
    requests are sent to the backend grouped by their sampling). `backend`: "vllm", "transformers", or a function
    `(model, adapter, prompts, sampling, seeds) -> texts` (tests inject one). `tokenizer` renders the chat prompts
    (default: the model's). `entities` (aligned with the prompts) only label the cache records. Completions already
    in `cache` are not generated again. `dtype`: the vLLM engine's dtype (None: `serving_dtype()`).
    `merge_tolerance`: the merged model's check (`check_merge`); None: `MERGE_TOLERANCE`.
    """
    n = len(messages_list)
    samplings = [check_sampling(s) for s in (sampling if isinstance(sampling, (list, tuple)) else [sampling] * n)]
    if len(samplings) != n:
        raise GenerationError(f"{len(samplings)} sampling dicts for {n} prompts; pass one, or one per prompt")
    if adapter is not None and str(adapter) == "run":
        raise GenerationError("adapter 'run' must be resolved first: resolve_adapter('run', ctx.dir)")
    adapter_path = str(adapter) if adapter is not None else None
    akey = adapter_key(adapter_path)
    if entities is not None and len(entities) != n:
        raise GenerationError(f"{len(entities)} entities for {n} prompts; they must be aligned")
    dtype = dtype or (serving_dtype() if backend == "vllm" else None)
    engine = engine_id(backend, dtype, backend == "vllm" and adapter_path is not None and serves_lora_unmerged(dtype))
    key_samplings = [{**s, "engine": engine} for s in samplings]  # another engine samples other texts
    tok = tokenizer if tokenizer is not None else engine_tokenizer(model)  # the base, its adapters and the judge share one
    prompts = [chat_prompt(tok, m) for m in messages_list]
    # a prompt's occurrences are counted per sampling: its greedy request does not shift its samples' seeds
    groups: dict[str, list[int]] = {}
    for i, smp in enumerate(samplings):
        groups.setdefault(json.dumps(smp, sort_keys=True), []).append(i)
    seeds = [0] * n
    for idx in groups.values():
        for i, s in zip(idx, request_seeds(seed, [prompts[i] for i in idx])):
            seeds[i] = s
    keys = [generation_cache_key(model, akey, p, ks, s) for p, ks, s in zip(prompts, key_samplings, seeds)]
    out: list[str | None] = [cache.get(k)["completion"] if cache is not None and k in cache else None for k in keys]
    todo = [i for i, o in enumerate(out) if o is None]
    if not todo:
        return out  # type: ignore[return-value]
    if callable(backend):
        fn: GenerateFn = backend
        closer = None
    elif backend == "vllm":
        longest = max((samplings[i] for i in todo), key=lambda s: s["max_new_tokens"])
        gen = VLLMGenerator(model, adapter_path, tok, longest, [prompts[i] for i in todo], gpu_memory_utilization,
                            dtype=dtype, merge_tolerance=merge_tolerance)
        fn, closer = gen.generate, gen.close
    else:
        gen = TransformersGenerator(model, adapter_path, merge_tolerance=merge_tolerance)
        fn, closer = gen.generate, gen.close
    todo_set = set(todo)  # requests of one sampling go to the backend together
    groups = {k: [i for i in idx if i in todo_set] for k, idx in groups.items()}
    from tqdm.auto import tqdm

    label = model if adapter_path is None else f"{model} + adapter"
    try:
        with tqdm(total=len(todo), desc=f"generate {label}", unit="completion") as bar:
            for group in (g for g in groups.values() if g):
                for s in range(0, len(group), CHUNK):
                    idx = group[s : s + CHUNK]
                    texts = fn(model, adapter_path, [prompts[i] for i in idx], samplings[idx[0]], [seeds[i] for i in idx])
                    if len(texts) != len(idx):
                        raise GenerationError(f"backend returned {len(texts)} completions for {len(idx)} prompts")
                    for i, t in zip(idx, texts):
                        out[i] = t
                        if cache is not None:
                            cache.put(model, akey, entities[i] if entities is not None else "", prompts[i], t,
                                      key_samplings[i], seeds[i])
                    bar.update(len(idx))
    finally:
        if closer is not None:
            closer()
    return out  # type: ignore[return-value]


GREEDY = "greedy"
SAMPLED = "sample"


def eval_rows(test: "pd.DataFrame", samples: int = 1, greedy: bool = False) -> "pd.DataFrame":
    """The evaluation's requests for the rows of `test` (`entity`, `prompt`): `samples` sampled completions of each
    prompt, then (with `greedy`) one greedy one. Columns entity, prompt, decoding ("sample" or "greedy"), sample
    (0 .. samples-1; 0 for greedy). Sample-major: sample j of a prompt is that prompt's j-th occurrence, so its
    request seed (`request_seeds`) does not depend on `samples`, and raising k reuses the cached samples.

    >>> import pandas as pd
    >>> r = eval_rows(pd.DataFrame({"entity": ["a", "b"], "prompt": ["pa", "pb"]}), samples=2, greedy=True)
    >>> list(zip(r["entity"], r["decoding"], r["sample"]))
    [('a', 'sample', 0), ('b', 'sample', 0), ('a', 'sample', 1), ('b', 'sample', 1), ('a', 'greedy', 0), ('b', 'greedy', 0)]
    """
    import pandas as pd

    if samples < 0 or (samples == 0 and not greedy):
        raise GenerationError(f"eval.samples_per_prompt must be >= 1 (got {samples})")
    base = test[["entity", "prompt"]].reset_index(drop=True)
    parts = [base.assign(decoding=SAMPLED, sample=j) for j in range(samples)]
    if greedy:
        parts.append(base.assign(decoding=GREEDY, sample=0))
    return pd.concat(parts, ignore_index=True)


def greedy_sampling(sampling: dict) -> dict:
    """The greedy variant of a sampling dict (temperature 0, top-p 1, same length)."""
    return {**sampling, "temperature": 0.0, "top_p": 1.0}


def resolve_row(m: "EvalModel", run_dir: str | Path) -> tuple[str, Path | None]:
    """(model, adapter directory) of an evaluation row: adapter "run" of a run trained without LoRA
    (`train.peft: false`, a full model in `train/model/`) is that model with no adapter."""
    if m.adapter is not None and str(m.adapter) == "run":
        full = Path(run_dir) / "train" / FULL_MODEL_DIR
        if (full / "config.json").is_file() and not (Path(run_dir) / "train" / "adapter" / "adapter_config.json").is_file():
            return str(full), None
    return m.model, resolve_adapter(m.adapter, run_dir)


def generate_for_models(
    models: Sequence["EvalModel"],
    test: "pd.DataFrame",
    cfg: "EvalConfig",
    cache: GenerationCache | None,
    run_dir: str | Path,
    backend: str | GenerateFn = "vllm",
    gpu_memory_utilization: float = 0.8,
    dtype: str | None = None,
    samples: int = 1,
    greedy: bool = False,
) -> dict[str, list[str]]:
    """`generate` for each evaluation model: label -> completions aligned with `eval_rows(test, samples, greedy)`
    (with the defaults: one sampled completion per row of `test`, as the case studies ask).

    The sampling and seed come from the profile's `eval` section (greedy requests: `greedy_sampling`), one engine
    per model for all its requests; adapter "run" is `run_dir`'s trained adapter (`resolve_row`). A row whose merged
    model fails `check_merge` raises GenerationError naming the row.
    """
    if not models:
        raise GenerationError("eval.models is empty: name at least one model in the profile's eval section")
    sampling = {"max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_p": cfg.top_p}
    rows = eval_rows(test, samples, greedy)
    samplings = [greedy_sampling(sampling) if d == GREEDY else sampling for d in rows["decoding"]]
    if dtype is None and backend == "vllm":
        dtype = eval_precision(cfg.dtype, "cuda" if cuda_available() else "cpu", any(m.adapter for m in models)).dtype
    out = {}
    for m in models:
        model, adapter = resolve_row(m, run_dir)
        try:
            out[m.label] = generate(model, adapter, list(rows["prompt"]), samplings, cfg.seed, cache=cache,
                                    entities=list(rows["entity"]), backend=backend,
                                    gpu_memory_utilization=gpu_memory_utilization, dtype=dtype,
                                    merge_tolerance=cfg.merge_tolerance)
        except MergeMismatch as exc:
            raise GenerationError(f"eval row {m.label!r}: {exc}") from None
    return out


# ----------------------------------------------------------------------------------------------
# Backends
# ----------------------------------------------------------------------------------------------

def serving_dtype() -> str:
    """The vLLM dtype of a generation that names none: float32 on either device (a merged LoRA must not be rounded
    to bf16); `generate_for_models` passes the profile's `eval.dtype` (lib.hardware.eval_precision: bf16 on a GPU)."""
    return "float32"


# The ranks vLLM's LoRA engine can be sized to (vllm.config.lora.MaxLoRARanks); an adapter's rank is rounded up to one
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
EVAL_LORA_NAME = "eval-adapter"  # the LoRARequest's name; its id is 1 (one adapter per engine)


def serves_lora_unmerged(dtype: str | None, cuda: bool | None = None) -> bool:
    """Whether the vLLM backend serves a LoRA adapter unmerged (`enable_lora` and a `LoRARequest`) instead of merging it.

    On a GPU in 16 bits: vLLM's LoRA kernels add the adapter's low-rank product to the bf16 base's output, so its
    delta is not rounded away as it is in merged bf16 weights, and no row needs a float32 copy of its model. On CPU,
    and in float32 (which loses nothing in a merge), the adapter is merged and the merge checked (lib.eval.merge).
    """
    cuda = cuda_available() if cuda is None else cuda
    return bool(cuda) and dtype in ("bfloat16", "float16")


def adapter_rank(adapter: str | Path) -> int:
    """The largest LoRA rank of a PEFT adapter directory (`r`, or a larger one in its `rank_pattern`)."""
    try:
        config = json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))
        return max([int(config["r"]), *(int(v) for v in (config.get("rank_pattern") or {}).values())])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise GenerationError(f"{adapter}: no LoRA rank in adapter_config.json ({type(exc).__name__})") from None


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` vLLM accepts that holds an adapter of `rank`.

    >>> vllm_lora_rank(4), vllm_lora_rank(64), vllm_lora_rank(100)
    (8, 64, 128)
    """
    for r in VLLM_LORA_RANKS:
        if r >= rank:
            return r
    raise GenerationError(f"LoRA rank {rank} is above the largest vLLM serves ({VLLM_LORA_RANKS[-1]})")


def vllm_engine_kwargs(path: str, max_model_len: int, seed: int, dtype: str, gpu_memory_utilization: float,
                       cuda: bool, lora_rank: int | None = None) -> dict:
    """Keyword arguments of `vllm.LLM` for one evaluation engine; `lora_rank`: it also serves one LoRA adapter."""
    kwargs = dict(model=path, max_model_len=max_model_len, seed=seed, dtype=dtype, **vllm_tokenizer_kwargs())
    if cuda:
        kwargs["gpu_memory_utilization"] = gpu_memory_utilization
    else:
        kwargs.update(enforce_eager=True, block_size=VLLM_CPU_BLOCK_SIZE)  # CPU: compiling would add ~2 min to the start
    if lora_rank:
        kwargs.update(enable_lora=True, max_lora_rank=vllm_lora_rank(lora_rank), max_loras=1)
    return kwargs


def eval_lora_request(adapter: str | Path):
    """The `vllm.lora.request.LoRARequest` every request of an unmerged adapter's engine carries."""
    from vllm.lora.request import LoRARequest

    return LoRARequest(EVAL_LORA_NAME, 1, str(adapter))


class VLLMGenerator:
    """An in-process vLLM engine for one model, sized for the prompts it will get; an adapter is served unmerged on a
    GPU (`serves_lora_unmerged`), merged in (and checked) elsewhere."""

    def __init__(self, model: str, adapter: str | None, tokenizer, sampling: dict, prompts: Sequence[str],
                 gpu_memory_utilization: float = 0.8, seed: int = 0, dtype: str = "auto",
                 merge_tolerance: float | None = None):
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine core: the multiprocess one failed to start from a plain script on CPU
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
        from vllm import LLM

        cuda = cuda_available()
        self.lora = eval_lora_request(adapter) if adapter and serves_lora_unmerged(dtype, cuda) else None
        if self.lora is not None:
            path = resolve_model(model)
        else:
            path = str(merged_model_dir(model, adapter, dtype, tolerance=merge_tolerance)) if adapter else resolve_model(model)
        self.tokenizer = tokenizer
        self.stop_ids = stop_token_ids(tokenizer)
        longest = max((len(tokenizer.encode(p, add_special_tokens=False)) for p in prompts), default=0)
        max_len = max(512, 256 * math.ceil((longest + sampling["max_new_tokens"]) / 256))
        kwargs = vllm_engine_kwargs(path, max_len, seed, dtype, gpu_memory_utilization, cuda,
                                    lora_rank=adapter_rank(adapter) if self.lora is not None else None)
        try:
            self.llm = LLM(**kwargs)
        except Exception as exc:  # noqa: BLE001 - engine start failures come in many types
            raise GenerationError(f"vLLM could not start model {model!r} ({path}): {type(exc).__name__}: {exc}".splitlines()[0]) from exc

    def generate(self, model: str, adapter: str | None, prompts: list[str], sampling: dict, seeds: list[int]) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ids = [self.tokenizer.encode(p, add_special_tokens=False) for p in prompts]  # the template writes <bos>
        params = [SamplingParams(max_tokens=sampling["max_new_tokens"], temperature=sampling["temperature"],
                                 top_p=sampling["top_p"], seed=s, stop_token_ids=self.stop_ids) for s in seeds]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=i) for i in ids], params, use_tqdm=False,
                                 lora_request=self.lora)
        return [vllm_text(self.tokenizer, o.prompt_token_ids, o.outputs[0], p) for o, p in zip(outs, params)]

    def close(self) -> None:
        close_vllm_engine(self)  # drops self.llm, collects it, empties the CUDA cache


def load_for_generation(model: str, adapter: str | Path | None = None, merge_tolerance: float | None = None):
    """(model, tokenizer) with transformers, the adapter merged in; float32 on CPU, and on GPU whenever an adapter is
    merged (bf16 would round a small LoRA delta away), else bf16 there. The merge is checked as `merged_model_dir`'s
    is (`check_merge`: the merged model's log-probs against the PEFT model's, `merge_tolerance`)."""
    from lib.models import load_causal_lm

    cuda = cuda_available()
    dtype = "bfloat16" if cuda and adapter is None else "float32"
    lm, tok = load_causal_lm(model, dtype=dtype, device="cuda" if cuda else "cpu")
    if adapter is not None:
        peft_model, texts, reference = peft_reference(lm, tok, adapter, model)
        lm = peft_model.merge_and_unload()
        lm.eval()
        check_merge(reference, lm, tok, texts, MERGE_TOLERANCE if merge_tolerance is None else merge_tolerance, dtype)
    return lm, tok


def hf_generate(lm, tokenizer, prompts: Sequence[str], sampling: dict, seeds: Sequence[int], progress: bool = False) -> list[str]:
    """Sample one completion per prompt with transformers, one at a time under `torch.manual_seed(seed)`."""
    import torch

    stop = stop_token_ids(tokenizer)
    greedy = sampling["temperature"] == 0
    out = []
    it = zip(prompts, seeds)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(list(it), desc="generate", unit="completion")
    with torch.inference_mode():
        for prompt, s in it:
            enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(lm.device)
            torch.manual_seed(s)
            kw = {} if greedy else dict(temperature=sampling["temperature"], top_p=sampling["top_p"], top_k=0)
            gen = lm.generate(**enc, max_new_tokens=sampling["max_new_tokens"], do_sample=not greedy,
                              eos_token_id=stop, pad_token_id=tokenizer.pad_token_id, **kw)
            out.append(tokenizer.decode(gen[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


class TransformersGenerator:
    """transformers generation for machines without vLLM (one request at a time: slow, seeded per request)."""

    def __init__(self, model: str, adapter: str | None, merge_tolerance: float | None = None):
        self.lm, self.tokenizer = load_for_generation(model, adapter, merge_tolerance)

    def generate(self, model: str, adapter: str | None, prompts: list[str], sampling: dict, seeds: list[int]) -> list[str]:
        return hf_generate(self.lm, self.tokenizer, prompts, sampling, seeds)

    def close(self) -> None:
        self.lm = None
        gc.collect()
