"""lib.vllm_cpu: the per-adapter LoRA ops against vLLM's own, and their installation into vllm-cpu."""
from __future__ import annotations

import pytest


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cpu_lora_ops_match_vllms_for_adapters_and_skip_no_lora_rows(dtype):
    import torch
    from vllm.lora.ops.torch_ops import lora_ops as vllm_ops

    from lib import vllm_cpu

    torch.manual_seed(0)
    dt = getattr(torch, dtype)
    x = torch.randn(7, 24, dtype=dt)
    a = torch.randn(2, 1, 4, 24, dtype=dt)  # (slots, 1, rank, in)
    b = torch.randn(2, 1, 10, 4, dtype=dt)  # (slots, 1, out, rank)
    idx = torch.tensor([0, 1, 1, 0, 0, 1, 0])
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == "bfloat16" else {}
    for add in (True, False):
        want, got = torch.full((7, 4), 3.0, dtype=dt), torch.full((7, 4), 3.0, dtype=dt)
        vllm_ops.bgmv_shrink(x, a, want, idx, 0.5)
        vllm_cpu.bgmv_shrink(x, a, got, idx, 0.5)
        torch.testing.assert_close(got, want, **tol)
        y = torch.randn(7, 4, dtype=dt)
        want, got = torch.ones(7, 10, dtype=dt), torch.ones(7, 10, dtype=dt)
        vllm_ops.bgmv_expand(y, b, want, idx, add_inputs=add)
        vllm_cpu.bgmv_expand(y, b, got, idx, add_inputs=add)
        torch.testing.assert_close(got, want, **tol)
        want, got = torch.ones(7, 16, dtype=dt), torch.ones(7, 16, dtype=dt)
        vllm_ops.bgmv_expand_slice(y, b, want, idx, 3, 10, add_inputs=add)
        vllm_cpu.bgmv_expand_slice(y, b, got, idx, 3, 10, add_inputs=add)
        torch.testing.assert_close(got, want, **tol)
    # "-1" means no adapter: nothing is added to those rows (vLLM's own op would apply the last slot)
    none = torch.tensor([-1, 0, -1, -1, -1, -1, -1])
    shrunk = torch.full((7, 4), 3.0, dtype=dt)
    vllm_cpu.bgmv_shrink(x, a, shrunk, none, 1.0)
    assert torch.all(shrunk[[0, 2, 3, 4, 5, 6]] == 0) and torch.any(shrunk[1] != 0)
    out = torch.ones(7, 10, dtype=dt)
    vllm_cpu.bgmv_expand(torch.randn(7, 4, dtype=dt), b, out, none, add_inputs=True)
    assert torch.all(out[[0, 2, 3, 4, 5, 6]] == 1) and torch.any(out[1] != 1)


def test_install_cpu_lora_ops_replaces_vllms_ops_where_they_are_looked_up(monkeypatch):
    from vllm.lora.ops.torch_ops import lora_ops
    from vllm.lora.punica_wrapper import punica_cpu

    from lib import vllm_cpu

    names = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")
    def stand_in(*args, **kwargs):  # what vLLM's module holds before the install, whatever ran earlier in the process
        raise AssertionError("vLLM's own op was called")

    for module in (lora_ops, punica_cpu):  # monkeypatch puts back what the modules held after the test
        for name in names:
            if hasattr(module, name):
                monkeypatch.setattr(module, name, stand_in)
    assert lora_ops.bgmv_shrink is stand_in
    vllm_cpu.install_cpu_lora_ops()
    vllm_cpu.install_cpu_lora_ops()  # idempotent
    for name in names:
        assert getattr(lora_ops, name) is getattr(vllm_cpu, name)
        if hasattr(punica_cpu, name):
            assert getattr(punica_cpu, name) is getattr(vllm_cpu, name)
