"""The shared-prompt GRPO log-probs equal TRL's per-row ones, values and gradients, on a tiny random Qwen2."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def _tiny_policy(seed: int = 0, cast_lm_head_to_fp32: bool = False, **config):
    """A tiny random Qwen2 with TRL's fused head and a LoRA adapter; `config`: extra text-config attributes (read by
    TRL's head); `cast_lm_head_to_fp32`: bf16 weights with a float32 head, as TRL's option leaves them."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2Config, Qwen2ForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from lib.train.cpu_logprobs import install_cpu_logprobs

    install_cpu_logprobs()
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=128, attn_implementation="sdpa")
    for k, v in config.items():
        setattr(cfg, k, v)
    lm = Qwen2ForCausalLM(cfg).float()
    if cast_lm_head_to_fp32:
        lm = lm.to(torch.bfloat16)
        lm.lm_head = lm.lm_head.float()
    add_fused_lm_head(lm, temperature=0.9, cast_lm_head_to_fp32=cast_lm_head_to_fp32, outputs=("log_probs", "entropy"))
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


def _reference(model, ids, mask):
    lp, ent = zip(*(_trl_logps(model, ids[i:i + 1], mask[i:i + 1], 6) for i in range(ids.size(0))))
    return torch.cat(lp), torch.cat(ent)


def test_gradient_checkpointing_is_refused(monkeypatch):
    from lib.train import shared_prompt as sp

    model = _tiny_policy()
    ids, mask = _batch()
    cmask = mask[:, 7:].float()
    model.get_base_model().gradient_checkpointing_enable()
    with torch.no_grad():
        ref_lp, _ = _reference(model, ids, mask)
        model.eval()  # checkpointing is inactive in eval mode: the shared cache is used, the values are TRL's
        lp, _ = sp.shared_prompt_logps(model, ids, mask, 6, temperature=0.9)
        assert torch.allclose(lp * cmask, ref_lp * cmask, atol=1e-5)
        model.train()  # what the refusal prevents: checkpointed layers in training keep no cache for the prompt
        with monkeypatch.context() as m:
            m.setattr(sp, "_refuse_checkpointing", lambda backbone: None)
            try:  # Qwen2 here: no cache comes back, or the completions' mask outgrows their keys (a cryptic error)
                lp, _ = sp.shared_prompt_logps(model, ids, mask, 6, temperature=0.9)
            except (AttributeError, RuntimeError):
                lp = None
        assert lp is None or (lp * cmask - ref_lp * cmask).abs().max() > 0.1  # never TRL's log-probs
        with pytest.raises(sp.SharedPromptError, match="train.shared_prompt: true needs gradient checkpointing off"):
            sp.shared_prompt_logps(model, ids, mask, 6, temperature=0.9)


def test_a_ddp_wrapped_model_is_refused(tmp_path):
    """DDP's all-reduce is armed in its forward, which calling the inner backbone would skip."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from lib.train.shared_prompt import SharedPromptError, shared_prompt_logps

    model = _tiny_policy()
    ids, mask = _batch()
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        with pytest.raises(SharedPromptError, match="DistributedDataParallel"):
            shared_prompt_logps(ddp, ids, mask, 6, temperature=0.9)
    finally:
        dist.destroy_process_group()


def _fake_trainer(gradient_checkpointing=False, num_processes=1, cast_lm_head_to_fp32=False):
    """What `install_shared_prompt_logps` reads of a GRPOTrainer."""
    import contextlib
    from types import SimpleNamespace

    def trl_path(*args, **kwargs):
        raise AssertionError("TRL's own path was taken")

    return SimpleNamespace(
        args=SimpleNamespace(gradient_checkpointing=gradient_checkpointing, cast_lm_head_to_fp32=cast_lm_head_to_fp32),
        accelerator=SimpleNamespace(num_processes=num_processes, autocast=contextlib.nullcontext),
        temperature=0.9, _get_per_token_logps_and_entropies=trl_path)


@pytest.mark.parametrize("setting, match", [({"gradient_checkpointing": True}, "gradient checkpointing off"),
                                            ({"num_processes": 2}, "one process only")])
def test_install_refuses_checkpointing_and_several_processes(setting, match):
    from lib.train.shared_prompt import SharedPromptError, install_shared_prompt_logps

    trainer = _fake_trainer(**setting)
    with pytest.raises(SharedPromptError, match=match):
        install_shared_prompt_logps(trainer)
    assert not getattr(trainer, "shared_prompt_logps", False)


@pytest.mark.parametrize("config", [{"logit_scale": 2.0}, {"output_multiplier": 2.0}, {"lm_head_multiplier": 0.5},
                                    {"logits_scaling": 4.0}])
def test_logit_scaling_attributes_as_trls(config):
    from lib.train.shared_prompt import shared_prompt_logps

    model = _tiny_policy(**config)
    ids, mask = _batch()
    cmask = mask[:, 7:].float()
    with torch.no_grad():
        ref_lp, ref_ent = _reference(model, ids, mask)
        lp, ent = shared_prompt_logps(model, ids, mask, 6, temperature=0.9, compute_entropy=True)
    assert torch.allclose(lp * cmask, ref_lp * cmask, atol=1e-5)
    assert torch.allclose(ent * cmask, ref_ent * cmask, atol=1e-5)


def test_logit_scale_reads_trls_attributes_in_trls_order():
    from types import SimpleNamespace as C

    from lib.train.shared_prompt import logit_scale

    assert logit_scale(C()) == 1.0 and logit_scale(C(logit_scale=None)) == 1.0
    assert logit_scale(C(logit_scale=0.0, output_multiplier=2.0)) == 0.0  # a real 0 is kept, as TRL keeps it
    assert logit_scale(C(output_multiplier=2.0, lm_head_multiplier=3.0)) == 2.0
    assert logit_scale(C(lm_head_multiplier=3.0, logits_scaling=4.0)) == 3.0
    assert logit_scale(C(logits_scaling=4.0, model_type="granite")) == 0.25
    assert logit_scale(C(logits_scaling=4.0, model_type="hyperclovax")) == 4.0


def test_cast_lm_head_to_fp32_as_trls():
    """TRL's `cast_lm_head_to_fp32`: a float32 head on bf16 hidden states, through the installed trainer method."""
    from lib.train.shared_prompt import install_shared_prompt_logps

    model = _tiny_policy(cast_lm_head_to_fp32=True)
    ids, mask = _batch()
    cmask = mask[:, 7:].float()
    trainer = _fake_trainer(cast_lm_head_to_fp32=True)
    install_shared_prompt_logps(trainer)
    with torch.no_grad():
        ref_lp, ref_ent = _reference(model, ids, mask)
        lp, ent, _ = trainer._get_per_token_logps_and_entropies(model, ids, mask, 6, compute_entropy=True)
    assert lp.dtype == torch.float32
    assert torch.allclose(lp * cmask, ref_lp * cmask, atol=2e-2)
    assert torch.allclose(ent * cmask, ref_ent * cmask, atol=2e-2)


def test_profiles_refuse_shared_prompt_where_the_trl_backend_checkpoints():
    from lib.profiles import ProfileError, load_profile

    assert load_profile("cpu").train.shared_prompt and load_profile("smoke").train.shared_prompt  # CPU: no checkpointing
    assert load_profile("cpu", {"device": "cuda", "train": {"shared_prompt": False}}).device == "cuda"
    with pytest.raises(ProfileError, match="train.shared_prompt: true needs gradient checkpointing off"):
        load_profile("cpu", {"device": "cuda"})
    with pytest.raises(ProfileError, match="train.shared_prompt: true needs gradient checkpointing off"):
        load_profile("gpu", {"train": {"backend": "trl", "rollout_engine": "hf", "shared_prompt": True}})
