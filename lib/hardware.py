"""What this machine computes natively, and the precision every engine and the trainer use on it.

    precision = resolve_dtype("auto", "cpu")     # Precision(dtype='float32', reason='CPU avx2: no native bf16 ...')
    cpu_class()                                   # 'avx512_bf16' | 'amx_bf16' | 'avx512' | 'avx2' | 'other'

`auto` picks bfloat16 only where the device computes it natively: CUDA with bf16 support, or a CPU with
AVX-512 BF16 or AMX. Elsewhere bf16 is emulated (on an AVX2-only CPU a bf16 matmul ran at 1.0 GFLOP/s against
52 GFLOP/s in float32, one thread), so `auto` gives float32. An explicit `float32` / `bfloat16` always wins.
The decision rests on the CPU's flags (/proc/cpuinfo; torch's own dispatch level where that file is missing)
and is confirmed by a short matmul probe (`matmul_probe`) that the run records beside it.
Leaf module: imports nothing from lib, and torch only inside the functions that measure.
"""
from __future__ import annotations

import functools
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

DTYPES = ("auto", "float32", "bfloat16")
FLAGS = ("amx_bf16", "avx512_bf16", "avx512f", "avx2")  # what decides the class, in order of preference
NATIVE_BF16_CLASSES = ("amx_bf16", "avx512_bf16")
# The probe's shape: a transformer MLP slice (0.5B model: hidden 896), small enough to take under a second even
# where bf16 is emulated (~1 GFLOP/s there).
PROBE_SHAPE = (256, 896, 1024)
# bf16 slower than this fraction of float32 in the probe means it is emulated, whatever the flags say.
BF16_MIN_SPEED_RATIO = 0.8
PROBE_ROUNDS = 3  # alternating float32 / bf16 rounds of the matmul probe


class HardwareError(ValueError):
    """A precision that cannot be used here; one line naming the value."""


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str]:
    """The flags of FLAGS that the CPU reports (empty where /proc/cpuinfo is missing)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            words = set(line.split(":", 1)[1].split())
            return frozenset(f for f in FLAGS if f in words)
    return frozenset()


def classify(flags: frozenset[str] | set[str], torch_capability: str | None = None) -> str:
    """The CPU class from its flags; torch's capability ("AVX512", "AVX2", "DEFAULT") where no flags are known.

    >>> classify({"avx2", "avx512f", "avx512_bf16"}), classify({"avx2"}), classify(set(), "AVX512"), classify(set())
    ('avx512_bf16', 'avx2', 'avx512', 'other')
    """
    for name in ("amx_bf16", "avx512_bf16"):
        if name in flags:
            return name
    if "avx512f" in flags:
        return "avx512"
    if "avx2" in flags:
        return "avx2"
    cap = (torch_capability or "").upper()
    return {"AVX512": "avx512", "AVX2": "avx2"}.get(cap, "other")


def torch_cpu_capability() -> str | None:
    """torch's CPU dispatch level ("AVX512", "AVX2", ...), or None without torch."""
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - torch missing or too old: the flags decide
        return None


@functools.lru_cache(maxsize=1)
def cpu_class() -> str:
    """This machine's CPU class (cached: it does not change while a process runs)."""
    flags = cpu_flags()
    return classify(flags, None if flags else torch_cpu_capability())


def cuda_bf16() -> bool | None:
    """Whether the CUDA device computes bf16; None when no CUDA device is visible (a GPU profile read elsewhere)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        return bool(torch.cuda.is_bf16_supported())
    except Exception:  # noqa: BLE001
        return None


@dataclass(frozen=True)
class Precision:
    """The dtype chosen for one device, and why (recorded in every run's manifest)."""

    dtype: str  # "float32" | "bfloat16"
    requested: str  # what the profile asked for
    device: str
    cpu_class: str
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def choose(requested: str, device: str, klass: str, cuda_has_bf16: bool | None = False) -> Precision:
    """The rule, without looking at the machine.

    >>> choose("auto", "cpu", "avx2").dtype, choose("auto", "cpu", "avx512_bf16").dtype
    ('float32', 'bfloat16')
    >>> choose("bfloat16", "cpu", "avx2").reason
    'bfloat16 asked for explicitly (emulated on a avx2 CPU: slow)'
    """
    if requested not in DTYPES:
        raise HardwareError(f"dtype {requested!r}: use one of {', '.join(DTYPES)}")
    if requested != "auto":
        slow = device == "cpu" and requested == "bfloat16" and klass not in NATIVE_BF16_CLASSES
        return Precision(requested, requested, device, klass,
                         f"{requested} asked for explicitly" + (f" (emulated on a {klass} CPU: slow)" if slow else ""))
    if device == "cuda":
        if cuda_has_bf16:
            return Precision("bfloat16", requested, device, klass, "CUDA device with bf16 support")
        if cuda_has_bf16 is None:  # e.g. the gpu profile checked on a CPU machine: the GPUs it targets (Ampere on) have bf16
            return Precision("bfloat16", requested, device, klass, "CUDA profile read without a visible GPU: bf16 assumed")
        return Precision("float32", requested, device, klass, "CUDA device without bf16 support")
    if klass in NATIVE_BF16_CLASSES:
        return Precision("bfloat16", requested, device, klass, f"CPU {klass}: native bf16 matmuls")
    return Precision("float32", requested, device, klass, f"CPU {klass}: no native bf16 (it would be emulated, ~50x slower)")


def resolve_dtype(requested: str = "auto", device: str = "cpu") -> Precision:
    """`choose` for this machine; on a CPU that claims native bf16, a probe that finds bf16 slow overrules it."""
    p = choose(requested, device, cpu_class(), cuda_bf16() if device == "cuda" else False)
    if requested == "auto" and device == "cpu" and p.dtype == "bfloat16":
        probe = matmul_probe()
        if probe["bf16_over_fp32"] < BF16_MIN_SPEED_RATIO:
            return Precision("float32", requested, device, p.cpu_class,
                             f"CPU {p.cpu_class} claims native bf16 but the probe ran it at {probe['bf16_over_fp32']:.2f}x float32")
    return p


def eval_precision(requested: str, device: str, any_adapter: bool) -> Precision:
    """The generation dtype of an evaluation, one for every row (base models, the trained policy, larger models).

    CPU: `auto` is float32 as soon as one model carries a LoRA adapter: there the adapter is merged into its base, a
    merge saved in bf16 keeps a short run's change in few weights (most deltas are below bf16's resolution), and the
    base rows must be generated at the same precision to compare with it.
    CUDA: the hardware's rule (bf16): vLLM serves the adapter unmerged (lib.eval.generation.serves_lora_unmerged),
    its delta added by the LoRA kernels rather than rounded into the weights, so no row, the 7B included, needs float32.
    >>> eval_precision("auto", "cpu", True).dtype
    'float32'
    """
    if requested == "auto" and any_adapter and device != "cuda":
        return Precision("float32", requested, device, cpu_class(),
                         "evaluation of a LoRA adapter: merged in float32, every row served in float32 (bf16 rounds the delta away)")
    p = resolve_dtype(requested, device)
    if device == "cuda" and any_adapter and p.dtype != "float32":
        return Precision(p.dtype, requested, device, p.cpu_class, f"{p.reason}; LoRA adapters served unmerged by vLLM")
    return p


@functools.lru_cache(maxsize=1)
def matmul_probe() -> dict:
    """GFLOP/s of a PROBE_SHAPE matmul in float32 and bf16 on this CPU (best of several, torch's own thread count),
    and their ratio.

    The two dtypes are timed in alternating rounds and each keeps its best time, so a burst of other work on the
    machine slows both alike instead of one (a one-off slow bf16 sample would otherwise veto native bf16 for a
    whole run). Takes about a second where bf16 is native, a few where it is emulated.
    """
    import torch

    m, k, n = PROBE_SHAPE
    flop = 2.0 * m * k * n
    mats, best = {}, {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        g = torch.Generator().manual_seed(0)
        mats[name] = (torch.randn(m, k, generator=g).to(dtype), torch.randn(k, n, generator=g).to(dtype))
        mats[name][0] @ mats[name][1]  # warm-up: kernel selection, page faults
        best[name] = float("inf")
    for _ in range(PROBE_ROUNDS):
        for name, (a, b) in mats.items():
            deadline = time.perf_counter() + 0.25
            for _ in range(3):
                t0 = time.perf_counter()
                a @ b
                best[name] = min(best[name], time.perf_counter() - t0)
                if time.perf_counter() > deadline:
                    break
    out = {f"{name}_gflops": round(flop / t / 1e9, 2) for name, t in best.items()}
    out["bf16_over_fp32"] = round(out["bfloat16_gflops"] / out["float32_gflops"], 3)
    out["threads"] = torch.get_num_threads()
    return out


def machine_facts() -> dict:
    """What a run records about the machine: CPU class and flags, torch's capability, cores, the probe."""
    return {"cpu_class": cpu_class(), "cpu_flags": sorted(cpu_flags()), "torch_cpu_capability": torch_cpu_capability(),
            "cpus": os.cpu_count(), "matmul_probe": matmul_probe()}


def profile_precisions(profile) -> dict[str, Precision]:
    """The dtype of each engine of a pipeline run: "judge" (calibration, training's judge and its rollouts, the
    reward server), "train" (the policy's weights) and "eval" (evaluation's generation), from the profile's fields."""
    device = "cuda" if profile.device == "cuda" else "cpu"
    return {"judge": resolve_dtype(profile.judge.dtype, device),
            "train": resolve_dtype(profile.train.dtype, device),
            "eval": eval_precision(profile.eval.dtype, device, any(m.adapter for m in profile.eval.models))}
