"""The shared-prompt GRPO log-probs equal TRL's per-row ones, values and gradients, on a tiny random Qwen2."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny_policy(seed: int = 0):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from lib.train.cpu_logprobs import install_cpu_logprobs

    install_cpu_logprobs()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    lm = Qwen2ForCausalLM(cfg).float()
    add_fused_lm_head(lm, temperature=0.9, outputs=("log_probs", "entropy"))
    model = get_peft_model(lm, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                                          init_lora_weights=False))
    return model


def _batch():
    """Two prompts (lengths 7 and 5, left-padded to 7) with 3 and 2 completions (right-padded to 6), interleaved."""
    g = torch.Generator().manual_seed(1)
    pa, pb = torch.randint(3, 96, (7,), generator=g), torch.randint(3, 96, (5,), generator=g)
    rows, masks = [], []
    for k, (prompt, n_real) in enumerate([(pa, 6), (pb, 4), (pa, 3), (pb, 6), (pa, 1)]):
        comp = torch.randint(3, 96, (6,), generator=g)
        cmask = torch.tensor([1] * n_real + [0] * (6 - n_real))
        pad = 7 - len(prompt)
        rows.append(torch.cat([torch.zeros(pad, dtype=torch.long), prompt, comp * cmask]))
        masks.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(len(prompt), dtype=torch.long), cmask]))
    return torch.stack(rows), torch.stack(masks)


def _trl_logps(model, input_ids, attention_mask, logits_to_keep):
    """TRL 1.15's `_get_per_token_logps_and_entropies` loop body, one row at a time (no padding effects)."""
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :-logits_to_keep] = -100
    out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels, fused_lm_head=True)
    return out.log_probs[:, -logits_to_keep:], out.entropy[:, -logits_to_keep:]


def test_prompt_groups_ignore_left_padding():
    from lib.train.shared_prompt import prompt_groups

    ids, mask = _batch()
    assert list(prompt_groups(ids, mask, 7).values()) == [[0, 2, 4], [1, 3]]


def test_shared_prompt_logps_and_gradients_equal_trls():
    from lib.train.shared_prompt import shared_prompt_logps

    model = _tiny_policy()
    ids, mask = _batch()
    cmask = mask[:, 7:].float()
    params = [p for p in model.parameters() if p.requires_grad]

    ref_lp, ref_ent = zip(*(_trl_logps(model, ids[i:i + 1], mask[i:i + 1], 6) for i in range(ids.size(0))))
    ref_lp, ref_ent = torch.cat(ref_lp), torch.cat(ref_ent)
    ref_grads = torch.autograd.grad((ref_lp * cmask).sum() + (ref_ent * cmask).sum(), params)

    lp, ent = shared_prompt_logps(model, ids, mask, 6, temperature=0.9, compute_entropy=True)
    grads = torch.autograd.grad((lp * cmask).sum() + (ent * cmask).sum(), params)

    assert torch.allclose(lp * cmask, ref_lp * cmask, atol=1e-5)
    assert torch.allclose(ent * cmask, ref_ent * cmask, atol=1e-5)
    assert (lp * (1 - cmask)).abs().max() == 0  # padding after a completion is 0, as TRL's head gives it
    for g, r in zip(grads, ref_grads, strict=True):
        assert torch.allclose(g, r, atol=1e-5, rtol=1e-4)
