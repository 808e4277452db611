"""GRPO log-probs with each prompt computed once per micro-batch, its keys/values shared by its completions.

    install_shared_prompt_logps(trainer)    # `train.shared_prompt: true`; trl backend, text-only models

TRL's `GRPOTrainer._get_per_token_logps_and_entropies` runs the model on prompt + completion for every row, so a
group of 8 completions computes its ~250-token prompt 8 times, forward and backward. Here the rows of a micro-batch
are grouped by prompt (its tokens without padding); each prompt but its last token runs once with `use_cache=True`,
its cache is repeated for the group's rows, and the rows then run [last prompt token, completion] on that cache.
Gradients reach the prompt's computation through the shared keys/values (summed over the rows), so loss and
gradients equal TRL's up to float rounding (tests/test_shared_prompt.py checks both on a tiny model). The log-probs come
from the same `_ChunkedLogProbFunction` TRL's fused LM head calls (the Triton kernel on CUDA, lib.train.cpu_logprobs
off it), with TRL's temperature, logit scale and `cast_lm_head_to_fp32`. Micro-batches with images or other extra
inputs take TRL's own path.

Refused (`SharedPromptError`): gradient checkpointing (transformers' checkpointed layers drop `past_key_values` in
training, so completions would be scored without their prompt) and a model under a `.module` wrapper such as DDP
(the backbone is called directly, past the wrapper's forward, so DDP would never all-reduce the gradients).
"""
from __future__ import annotations

import types
from typing import Any

EXTRA_INPUTS = ("pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
                "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids")


class SharedPromptError(ValueError):
    """`train.shared_prompt: true` with a setting it cannot compute correctly."""


def _lm(model):
    """The causal LM under PEFT (the module whose backbone and head to call); refuses DDP-style `.module` wrappers."""
    if hasattr(model, "module"):  # DDP, DeepSpeed: calling past their forward skips the gradients' all-reduce
        raise SharedPromptError(f"train.shared_prompt: true cannot run under {type(model).__name__} (multi-process "
                                f"training): its forward would be skipped and gradients not synchronized; set "
                                f"train.shared_prompt: false")
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _refuse_checkpointing(backbone) -> None:
    """Checkpointed layers in training mode drop `past_key_values` (transformers' GradientCheckpointingLayer)."""
    if any(getattr(m, "gradient_checkpointing", False) is True and m.training for m in backbone.modules()):
        raise SharedPromptError("train.shared_prompt: true needs gradient checkpointing off (checkpointed layers drop "
                                "the shared prompt's cache in training); set train.shared_prompt: false")


def logit_scale(cfg) -> float:
    """The logits' multiplier before softcapping, read from a text config as TRL's `add_fused_lm_head` reads it."""
    scale = getattr(cfg, "logit_scale", None)  # None: unscaled; a real 0.0 is kept, as TRL keeps it
    if scale is None:
        scale = getattr(cfg, "output_multiplier", None)
    if scale is None:
        scale = getattr(cfg, "lm_head_multiplier", None)
    if scale is None and getattr(cfg, "logits_scaling", None) is not None:
        # Granite and MiniCPM3 divide the logits by it, HyperCLOVA X multiplies them
        scale = cfg.logits_scaling if getattr(cfg, "model_type", None) == "hyperclovax" else 1 / cfg.logits_scaling
    return 1.0 if scale is None else scale


def prompt_groups(input_ids, attention_mask, prompt_len: int) -> dict[tuple[int, ...], list[int]]:
    """Rows of a micro-batch by their prompt's real tokens (left padding removed), in order of first appearance."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for i in range(input_ids.size(0)):
        ids = input_ids[i, :prompt_len][attention_mask[i, :prompt_len].bool()]
        groups.setdefault(tuple(ids.tolist()), []).append(i)
    return groups


def shared_prompt_logps(model, input_ids, attention_mask, logits_to_keep: int, temperature: float,
                        compute_entropy: bool = False, cast_lm_head_to_fp32: bool = False):
    """(log-probs, entropies or None) of the last `logits_to_keep` tokens of each row, shape (rows, logits_to_keep)."""
    import contextlib

    import torch
    from trl.trainer import utils as trl_utils

    lm = _lm(model)
    backbone = getattr(lm, lm.base_model_prefix)
    _refuse_checkpointing(backbone)
    head = lm.get_output_embeddings()
    cfg = lm.config.get_text_config()
    softcap = getattr(cfg, "final_logit_softcapping", None)
    scale = logit_scale(cfg)
    outputs = ("log_probs", "entropy") if compute_entropy else ("log_probs",)
    rows_n, width = input_ids.shape
    c = logits_to_keep
    p = width - c
    logps = torch.zeros(rows_n, c, dtype=torch.float32, device=input_ids.device)
    ents = torch.zeros_like(logps) if compute_entropy else None
    for prompt, rows in prompt_groups(input_ids, attention_mask, p).items():
        g = len(rows)
        ids = torch.tensor(prompt, dtype=input_ids.dtype, device=input_ids.device)[None]
        cache, past = None, ids.size(1) - 1
        if past > 0:
            cache = backbone(input_ids=ids[:, :-1], use_cache=True).past_key_values
            if g > 1:
                cache.batch_repeat_interleave(g)
        idx = torch.tensor(rows, device=input_ids.device)
        completion, cmask = input_ids[idx, p:], attention_mask[idx, p:]
        x = torch.cat([ids[:, -1:].expand(g, 1), completion], dim=1)
        mask = torch.cat([torch.ones(g, past + 1, dtype=attention_mask.dtype, device=attention_mask.device), cmask], dim=1)
        hidden = backbone(input_ids=x, attention_mask=mask, past_key_values=cache, use_cache=cache is not None).last_hidden_state
        hidden = hidden[:, :c].to(head.weight.device)  # position k predicts completion token k
        if cast_lm_head_to_fp32:  # TRL's option: the (float32) head projects float32 hidden states outside autocast
            hidden = hidden.float()
        with torch.autocast(hidden.device.type, enabled=False) if cast_lm_head_to_fp32 else contextlib.nullcontext():
            flat = trl_utils._ChunkedLogProbFunction.apply(
                hidden.reshape(-1, hidden.size(-1)), head.weight, head.bias, completion.reshape(-1), temperature,
                trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE, softcap, scale, outputs)
        keep = cmask.to(torch.float32)  # padding after a completion: 0, as TRL's fused head gives it
        logps[idx] = flat[0].reshape(g, c).float() * keep
        if compute_entropy:
            ents[idx] = flat[1].reshape(g, c).float() * keep
    return logps, ents


def install_shared_prompt_logps(trainer) -> None:
    """Route `trainer._get_per_token_logps_and_entropies` through `shared_prompt_logps` for text-only batches.

    Refuses (`SharedPromptError`) a trainer with gradient checkpointing on or more than one process."""
    if getattr(trainer.args, "gradient_checkpointing", False):
        raise SharedPromptError("train.shared_prompt: true needs gradient checkpointing off (the trl backend turns it "
                                "on for device: cuda); set train.shared_prompt: false")
    if trainer.accelerator.num_processes > 1:
        raise SharedPromptError(f"train.shared_prompt: true runs one process only (got {trainer.accelerator.num_processes}: "
                                f"DDP's gradient all-reduce would be skipped); set train.shared_prompt: false")
    cast_head = bool(getattr(trainer.args, "cast_lm_head_to_fp32", False))
    original = trainer._get_per_token_logps_and_entropies

    def patched(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False,
                compute_aux_loss=False, **extra: Any):
        if compute_aux_loss or any(extra.get(k) is not None for k in EXTRA_INPUTS):
            return original(model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                            compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **extra)
        with self.accelerator.autocast():
            logps, ents = shared_prompt_logps(model, input_ids, attention_mask, logits_to_keep, self.temperature,
                                              compute_entropy, cast_lm_head_to_fp32=cast_head)
        return logps, ents, None

    trainer._get_per_token_logps_and_entropies = types.MethodType(patched, trainer)
    trainer.shared_prompt_logps = True
