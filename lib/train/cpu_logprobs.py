"""Log-probs for TRL's GRPOTrainer off CUDA: a pure-PyTorch twin of TRL's Triton log-prob kernel.

    install_cpu_logprobs()     # before training on CPU; CUDA tensors still take the Triton kernel
"""
from __future__ import annotations


def _torch_chunked_logprob(hidden, weight, bias, targets, temperature, chunk_size, final_logit_softcapping=None,
                           logit_scale=1.0, outputs=("log_probs",)):
    """Pure-PyTorch twin of TRL's Triton `_ChunkedLogProbFunction.apply` (same arguments and outputs).

    Per selected token: log p(target), and when asked, the entropy, log sum p^2, mean logit and whether the
    target is the top-1 token (the first maximum, as TRL's `target > max_before_target` rule), for logits
    `softcap(z * logit_scale) / temperature`. As in TRL's forward, `z = hidden @ weight.T + bias` comes out in the
    inputs' dtype (bf16 weights: bf16 logits) and everything after is float32. Autograd does the backward.
    """
    import torch

    # logits in the compute dtype, then float32: TRL's forward also writes its GEMM tiles in the compute dtype
    # (`mm_buf`, `torch.mm(..., out=tile)`) and folds them in float32
    z = torch.nn.functional.linear(hidden, weight, bias).float() * logit_scale
    if final_logit_softcapping is not None:
        z = final_logit_softcapping * torch.tanh(z / final_logit_softcapping)
    z = z / temperature
    log_z = torch.logsumexp(z, dim=-1)
    target = z.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    logprobs = target - log_z
    entropy = log_z - (torch.softmax(z, dim=-1) * z).sum(-1) if "entropy" in outputs else None
    with torch.no_grad():
        log_sum_sq = torch.logsumexp(2 * (z - log_z.unsqueeze(-1)), dim=-1) if "log_sum_sq_probs" in outputs else None
        mean_logits = z.mean(-1) if "mean_logits" in outputs else None
        # TRL counts the first maximum only (argmax): a tie with an earlier token is not a top-1 prediction
        is_top1 = z.argmax(-1) == targets.long() if "is_top1" in outputs else None
    return logprobs, entropy, log_sum_sq, mean_logits, is_top1


class _LogProbDispatch:
    """Routes TRL's fused LM-head log-probs: the Triton kernel on CUDA, `_torch_chunked_logprob` elsewhere."""

    triton_function = None  # TRL's original, kept for CUDA tensors

    @classmethod
    def apply(cls, hidden, *args):
        if hidden.is_cuda and cls.triton_function is not None:
            return cls.triton_function.apply(hidden, *args)
        return _torch_chunked_logprob(hidden, *args)


def install_cpu_logprobs() -> None:
    """Let TRL 1.15's GRPOTrainer compute log-probs off CUDA.

    TRL 1.15 computes every GRPO log-prob with a Triton kernel (`trl.trainer.utils._ChunkedLogProbFunction`),
    and Triton has no CPU backend here ("0 active drivers"): without this, CPU training fails at step 1.
    CUDA tensors still take the Triton kernel. Idempotent.
    """
    from trl.trainer import utils as trl_utils

    current = getattr(trl_utils, "_ChunkedLogProbFunction", None)
    if current is _LogProbDispatch:
        return
    _LogProbDispatch.triton_function = current
    trl_utils._ChunkedLogProbFunction = _LogProbDispatch
