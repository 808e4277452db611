"""Is bf16 training sound on CPU? The same GRPO-style gradient step of the policy in float32 and in bf16, side by side.

    python -m bench precision [--model qwen2.5-coder-0.5b-instruct] [--json PATH]

For each dtype: the policy with a fresh LoRA (same seed), a fixed batch of prompts with completions taken from the
calibration set's texts (wrapped in the think/answer format), fixed advantages of +1/-1, one forward and backward
of the policy-gradient loss -mean(A * log p(completion)), timed, then `steps` optimizer steps (AdamW) and the loss
after each. Reported: per-token log-prob difference, cosine between the LoRA gradients, the loss curves, and the
time ratio. bf16 holds the base weights in bf16; the LoRA weights and AdamW's state stay float32 (PEFT's default).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from lib import paths


def _batch(tokenizer, n: int) -> tuple[list[list[int]], list[int]]:
    """(token ids of prompt+completion, index where the completion starts) for `n` calibration texts."""
    from lib.data import make_prompt, read_jsonl

    rows = read_jsonl(paths.CALIBRATION_SET)
    answers = [r for r in rows if r["section"] == "answer"][:n]
    seqs, starts = [], []
    for r in answers:
        prompt = tokenizer.apply_chat_template(make_prompt(r["entity"]), tokenize=True, add_generation_prompt=True,
                                               return_dict=False)
        completion = tokenizer.encode(f"<think>先分析{r['entity']}的卖点和受众。</think><answer>{r['text']}</answer>",
                                      add_special_tokens=False)
        seqs.append(list(prompt) + completion)
        starts.append(len(prompt))
    return seqs, starts


def _completion_logprobs(model, seqs, starts, torch):
    """Per-sequence tensors of log p(token) for the completion tokens."""
    out = []
    for ids, start in zip(seqs, starts):  # one sequence at a time: no padding to reason about
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, start - 1 : -1].float()
        out.append(torch.log_softmax(logits, -1).gather(-1, x[0, start:].unsqueeze(-1)).squeeze(-1))
    return out


def run_dtype(model_name: str, dtype: str, n: int, steps: int, lr: float, seed: int) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model

    from lib.models import load_causal_lm

    model, tok = load_causal_lm(model_name, dtype=dtype)
    torch.manual_seed(seed)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                                                  "gate_proj", "up_proj", "down_proj"]))
    model.train()
    seqs, starts = _batch(tok, n)
    adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(seqs))])
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    losses, first = [], {}
    for step in range(steps + 1):
        t0 = time.perf_counter()
        logps = _completion_logprobs(model, seqs, starts, torch)
        loss = -torch.stack([a * lp.mean() for a, lp in zip(adv, logps)]).mean()
        opt.zero_grad()
        loss.backward()
        seconds = time.perf_counter() - t0
        losses.append(float(loss.detach()))
        if step == 0:
            first = {"seconds": seconds, "logprobs": torch.cat([lp.detach().float() for lp in logps]),
                     "grad": torch.cat([p.grad.detach().float().flatten() for p in params])}
        if step < steps:
            opt.step()
    return {"dtype": dtype, "losses": losses, "param_dtype": str(params[0].dtype), **first}


def compare(model_name: str = "qwen2.5-coder-0.5b-instruct", n: int = 4, steps: int = 2, lr: float = 2e-4,
            seed: int = 0) -> dict[str, Any]:
    import torch

    runs = {d: run_dtype(model_name, d, n, steps, lr, seed) for d in ("float32", "bfloat16")}
    f, b = runs["float32"], runs["bfloat16"]
    cos = float(torch.nn.functional.cosine_similarity(f["grad"], b["grad"], dim=0))
    return {
        "model": model_name, "sequences": n, "completion_tokens": int(f["logprobs"].numel()), "steps": steps, "lr": lr,
        "lora_param_dtype": {"float32": f["param_dtype"], "bfloat16": b["param_dtype"]},
        "logprob_abs_diff_mean": float((f["logprobs"] - b["logprobs"]).abs().mean()),
        "logprob_abs_diff_max": float((f["logprobs"] - b["logprobs"]).abs().max()),
        "grad_cosine": cos,
        "grad_norm_ratio_bf16_over_fp32": float(b["grad"].norm() / f["grad"].norm()),
        "losses": {"float32": f["losses"], "bfloat16": b["losses"]},
        "fwd_bwd_seconds": {"float32": f["seconds"], "bfloat16": b["seconds"]},
        "speedup_bf16": f["seconds"] / b["seconds"],
    }


def main(model: str, json_path: Path | None, n: int, steps: int) -> dict[str, Any]:
    rep = compare(model, n=n, steps=steps)
    print(json.dumps(rep, indent=1))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(rep, indent=1), encoding="utf-8")
        print(f"written {json_path}")
    return rep
