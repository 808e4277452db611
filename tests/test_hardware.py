"""Precision follows the hardware: the CPU class from its flags, `auto` resolved per device, the probe's veto."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lib import hardware
from lib.profiles import ProfileError, load_profile

CPUINFO = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma {extra}\n\n"


@pytest.mark.parametrize("extra, klass", [("", "avx2"), ("avx512f", "avx512"), ("avx512f avx512_bf16", "avx512_bf16"),
                                          ("avx512f amx_bf16 avx512_bf16", "amx_bf16")])
def test_cpu_class_from_cpuinfo_flags(tmp_path, extra, klass):
    f = tmp_path / "cpuinfo"
    f.write_text(CPUINFO.format(extra=extra))
    assert hardware.classify(hardware.cpu_flags(f)) == klass


def test_missing_cpuinfo_falls_back_to_torch_capability(tmp_path):
    assert hardware.cpu_flags(tmp_path / "none") == frozenset()
    assert hardware.classify(frozenset(), "AVX2") == "avx2"


@pytest.mark.parametrize("requested, device, klass, cuda_bf16, dtype", [
    ("auto", "cpu", "avx2", None, "float32"),
    ("auto", "cpu", "avx512", None, "float32"),  # AVX-512 without its BF16 extension emulates bf16 too
    ("auto", "cpu", "avx512_bf16", None, "bfloat16"),
    ("auto", "cpu", "amx_bf16", None, "bfloat16"),
    ("auto", "cuda", "avx2", True, "bfloat16"),
    ("auto", "cuda", "avx2", False, "float32"),
    ("bfloat16", "cpu", "avx2", None, "bfloat16"),  # explicit wins, with the warning in the reason
    ("float32", "cpu", "avx512_bf16", None, "float32"),
])
def test_auto_picks_bf16_only_where_it_is_native(requested, device, klass, cuda_bf16, dtype):
    p = hardware.choose(requested, device, klass, cuda_bf16)
    assert p.dtype == dtype and p.cpu_class == klass and p.reason


def test_a_bad_dtype_is_one_line_naming_it():
    with pytest.raises(hardware.HardwareError, match=r"^dtype 'fp8': use one of auto, float32, bfloat16$"):
        hardware.choose("fp8", "cpu", "avx2")
    with pytest.raises(ProfileError, match=r"judge\.dtype"):
        load_profile("smoke", {"judge": {"dtype": "fp16"}})


def test_a_probe_that_finds_bf16_slow_overrules_the_flags(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_class", lambda: "avx512_bf16")
    monkeypatch.setattr(hardware, "matmul_probe", lambda: {"float32_gflops": 50.0, "bfloat16_gflops": 1.0, "bf16_over_fp32": 0.02})
    p = hardware.resolve_dtype("auto", "cpu")
    assert p.dtype == "float32" and "probe" in p.reason


def test_the_probe_measures_emulated_bf16_as_slow():
    """oneDNN limited to AVX2 emulates bf16 matmuls (as an AVX2-only CPU does): the probe must see it, whatever
    this CPU's flags say (on an AVX2-only machine the limit changes nothing and bf16 is slow anyway)."""
    code = "import json; from lib import hardware; print(json.dumps(hardware.matmul_probe()))"
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["bf16_over_fp32"] < hardware.BF16_MIN_SPEED_RATIO, probe


def test_every_engine_of_a_profile_gets_a_precision():
    prec = hardware.profile_precisions(load_profile("cpu"))
    assert set(prec) == {"judge", "train", "eval"}
    assert prec["eval"].dtype == "float32"  # the cpu profile evaluates a LoRA adapter: never rounded to bf16
    assert prec["judge"].dtype == prec["train"].dtype == hardware.resolve_dtype("auto", "cpu").dtype
    assert hardware.profile_precisions(load_profile("smoke"))["judge"].dtype == "float32"  # set explicitly there
