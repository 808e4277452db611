"""Quick start, offline: write one ad with the policy model (optionally with a trained LoRA adapter).

    >>> generate_ad("无糖气泡水")["answer"]  # doctest: +SKIP
    python -m lib.infer --entity 无糖气泡水 [--adapter RUN_ID_OR_PATH] [--max-new-tokens 256]
    python -m lib.cli infer --entity 无糖气泡水          # the same through the project's CLI

One prompt does not pay for vLLM's import and an engine start (~15 s on CPU): transformers `generate` it is.
The prompt is the training prompt (lib.data.make_prompt: the original's system prompt and user turn).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from lib.data import make_prompt
from lib.eval.generation import GenerationError, hf_generate, load_for_generation, request_seeds, resolve_adapter
from lib.models import chat_prompt
from lib.rewards import format_score

DEFAULT_MODEL = "gemma3-270m"


def split_completion(text: str) -> tuple[str, str]:
    """(think, answer) of a completion, stripped; "" for a part the model did not write.

    think: between `<think>` (or the start) and `</think>` (or `<answer>`, or the end) when a think tag
    occurs. answer: after the last `<answer>` up to `</answer>`; without `<answer>`, what follows
    `</think>`; with no tag at all, the whole text.

    >>> split_completion("<think>想想卖点</think>\\n<answer>清爽一夏！</answer>")
    ('想想卖点', '清爽一夏！')
    >>> split_completion("清爽一夏！")
    ('', '清爽一夏！')
    """
    has_think = "<think>" in text or "</think>" in text
    think = ""
    if has_think:
        body = text.split("<think>", 1)[1] if "<think>" in text else text
        think = body.split("</think>", 1)[0].split("<answer>", 1)[0]
    if "<answer>" in text:
        answer = text.rsplit("<answer>", 1)[1].split("</answer>", 1)[0]
    elif "</think>" in text:
        answer = text.split("</think>", 1)[1]
    else:
        answer = "" if has_think else text
    return think.strip(), answer.strip()


def generate_ad(
    entity: str,
    model: str | None = DEFAULT_MODEL,
    adapter: str | None = None,
    max_new_tokens: int = 256,
    seed: int = 42,
    temperature: float = 0.7,
    top_p: float = 0.95,
) -> dict:
    """One ad for `entity`: {completion, think, answer, format, model, adapter, seconds}.

    `model`: registry name, hub id or path (None: gemma3-270m). `adapter`: a PEFT adapter directory or a
    run id under outputs/runs (its `train/adapter`). The sample is seeded: the same call gives the same text.
    """
    if not entity or not entity.strip():
        raise GenerationError("entity is empty: say what the ad is for, e.g. --entity 椰子水")
    model = model or DEFAULT_MODEL
    adapter_dir = resolve_adapter(adapter)
    t0 = time.perf_counter()
    lm, tok = load_for_generation(model, adapter_dir)
    prompt = chat_prompt(tok, make_prompt(entity.strip()))
    sampling = {"max_new_tokens": max_new_tokens, "temperature": temperature, "top_p": top_p}
    completion = hf_generate(lm, tok, [prompt], sampling, request_seeds(seed, [prompt]))[0]
    think, answer = split_completion(completion)
    return {"completion": completion, "think": think, "answer": answer, "format": format_score(completion),
            "model": model, "adapter": str(adapter_dir) if adapter_dir else None,
            "seconds": round(time.perf_counter() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    """`python -m lib.infer --entity 无糖气泡水 [--model NAME] [--adapter RUN_OR_PATH] ...`"""
    ap = argparse.ArgumentParser(prog="python -m lib.infer", description="Write one ad (think + answer) with a model.")
    ap.add_argument("--entity", required=True, help="what the ad is for, e.g. 无糖气泡水")
    ap.add_argument("--model", default=DEFAULT_MODEL, help="registry name, hub id or path")
    ap.add_argument("--adapter", default=None, help="LoRA adapter directory or a run id (its train/adapter)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    a = ap.parse_args(argv)
    try:
        r = generate_ad(a.entity, a.model, a.adapter, a.max_new_tokens, a.seed, a.temperature)
    except Exception as exc:
        if not type(exc).__module__.startswith("lib."):
            raise  # not one of ours: keep the traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if a.json:
        print(json.dumps(r, ensure_ascii=False, indent=2))
    else:
        print(f"[think]\n{r['think'] or '(none)'}\n\n[answer]\n{r['answer'] or '(none)'}\n\n"
              f"(format reward {r['format']:.2f}, {r['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
