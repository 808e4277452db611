"""Who is writing a run directory: its lock file, the owner recorded in the manifest, stale runs, and signals.

    with hold_run(run_dir) as owner:      # RunError naming the holder when another process writes this run
        manifest["owner"] = owner         # {"pid", "host", "started_at"} of this process
        with stop_signals():              # SIGTERM / SIGHUP raise RunInterrupted (a KeyboardInterrupt) from here on
            ...
    staleness(run_dir, manifest)          # None, or one line: "left `running` by pid 123 on host h ... which is gone"
    with space_reserve(run_dir): write_safely(run_dir, path, write)   # a full disk still lets the manifest be written

The lock is `fcntl.flock` on `<run>/run.lock`, held for as long as the process lives: the kernel releases it when
the process dies in any way (SIGKILL and the OOM killer included), so a `running` manifest whose lock is free was
left by a dead process. A lock on another host's filesystem (NFS) is not trusted; the pid is checked only on this
host (its start time guards against a reused pid).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import signal
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from lib.run import RunError

LOCK_FILE = "run.lock"
STOP_SIGNALS = ("SIGTERM", "SIGHUP")  # SIGINT already raises KeyboardInterrupt


class RunInterrupted(KeyboardInterrupt):
    """The process got a stop signal (SIGTERM, SIGHUP; SIGINT arrives as a plain KeyboardInterrupt)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.signame = signal.Signals(signum).name


def signal_name(exc: BaseException) -> str:
    return getattr(exc, "signame", "SIGINT")


def exit_code(exc: BaseException) -> int:
    """The shell's code for a death by this signal (128 + its number): 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot, /proc/<pid>/stat field 22); None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def owner_record() -> dict:
    """This process as a run's owner: pid, host, when the process started (for a pid reused later) and now."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "process_start": _process_start(os.getpid()),
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")}


def pid_alive(owner: dict) -> bool | None:
    """Whether the owner process still runs: True / False on this host, None on another host (not checkable)."""
    if owner.get("host") != socket.gethostname():
        return None
    pid = int(owner.get("pid") or 0)
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    start = _process_start(pid)
    return start is None or owner.get("process_start") in (None, start)


def _try_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on `path` (created), or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)  # not inherited by the kernels papermill starts (PEP 446)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def lock_is_held(run_dir: Path) -> bool:
    """Whether a live process holds the run's lock (False also where the run has no lock file yet)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.exists():
        return False
    try:
        fd = _try_lock(path)
    except OSError:
        return False
    if fd is None:
        return True
    os.close(fd)
    return False


@contextlib.contextmanager
def hold_run(run_dir: Path) -> Iterator[dict]:
    """Hold the run directory's lock for the block; yields this process's owner record (also written to the lock).

    Another process holding it: RunError naming its pid, host and start (a run is never written by two).
    """
    path = Path(run_dir) / LOCK_FILE
    try:
        fd = _try_lock(path)
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}") from None
    if fd is None:
        try:
            other = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, json.JSONDecodeError):
            other = {}
        raise RunError(f"run {Path(run_dir).name} is being written by pid {other.get('pid', '?')} on host "
                       f"{other.get('host', '?')} (since {other.get('started_at', '?')}): wait for it or stop it first")
    owner = owner_record()
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(owner).encode())
    except OSError:
        pass  # a full disk: the lock holds without its note
    try:
        yield owner
    finally:
        os.close(fd)  # releases the flock; the file stays (a later holder overwrites it)


def staleness(run_dir: Path, manifest: dict) -> str | None:
    """One line when the manifest says `running` but no live process writes the run (SIGKILL, OOM, power); else None."""
    if manifest.get("status") != "running" or manifest.get("interactive"):
        return None
    owner = manifest.get("owner") or {}
    if (Path(run_dir) / LOCK_FILE).exists():
        if lock_is_held(run_dir):
            return None
    elif pid_alive(owner) is not False:  # a run written before run.lock existed: only a pid on this host can tell
        return None
    stage = next((e["name"] for e in manifest.get("notebooks", []) if e.get("status") == "running"), None)
    who = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')} (started {owner.get('started_at', '?')})"
    return (f"run {Path(run_dir).name} was left `running`{f' in {stage}' if stage else ''} by {who}, which is gone "
            f"(killed with SIGKILL, out of memory, or the machine stopped)")


def mark_stale(manifest: dict, line: str, now: str) -> None:
    """Record a stale run as interrupted: the run and its `running` stage, with the time it was found."""
    for entry in manifest.get("notebooks", []):
        if entry.get("status") == "running":
            entry.update(status="interrupted", error="the process died without a word (found stale)", ended_at=now)
    manifest.update(status="interrupted", ended_at=manifest.get("ended_at") or now, stale=line)


@contextlib.contextmanager
def stop_signals() -> Iterator[None]:
    """Inside the block, SIGTERM and SIGHUP raise RunInterrupted in the main thread (as Ctrl-C raises
    KeyboardInterrupt), so `finally` blocks run: papermill shuts its kernel down, the manifest is written.
    The first signal raises; one more during the cleanup is ignored. Outside the main thread: no change."""
    fired: list[int] = []

    def handler(signum, frame):
        if fired:
            return
        fired.append(signum)
        raise RunInterrupted(signum)

    previous = {}
    try:
        for name in STOP_SIGNALS:
            sig = getattr(signal, name)
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_lines(runs_dir: Path) -> list[str]:
    """One line per run under `runs_dir` (oldest first): id, status (`stale` for a dead `running` one), stages, note."""
    lines = []
    for d in sorted(p for p in Path(runs_dir).glob("*") if p.is_dir()):
        try:
            m = json.loads((d / "manifest.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            lines.append(f"{d.name}  ?  (no readable manifest.json)")
            continue
        stale = staleness(d, m)
        status = "stale" if stale else ("interactive" if m.get("interactive") and not m.get("status") else m.get("status", "?"))
        stages = " ".join(f"{e['name'][:2]}:{e.get('status', '?')}" for e in m.get("notebooks", []))
        note = f"  ({stale}; `python -m lib.cli run --resume {d.name}` continues it)" if stale else ""
        lines.append(f"{d.name}  {status}  {stages}{note}".rstrip())
    return lines


# ------------------------------------------------------------------------------------- storage faults

RESERVE_FILE = ".space-reserve"  # given up when the disk is full, so the manifest can still say what failed
RESERVE_BYTES = 256 * 1024
_STORAGE_ERRNOS = {errno.ENOSPC: "full", errno.EDQUOT: "over quota", errno.EROFS: "read-only", errno.EACCES: "not writable"}


@contextlib.contextmanager
def space_reserve(run_dir: Path) -> Iterator[None]:
    """Hold `RESERVE_BYTES` in the run directory while the block runs (nothing when there is no room even for it)."""
    path = Path(run_dir) / RESERVE_FILE
    try:
        path.write_bytes(b"\0" * RESERVE_BYTES)
    except OSError:
        path.unlink(missing_ok=True)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def write_safely(run_dir: Path, path: Path, write) -> None:
    """`write()` (which cleans up after itself); on a full disk once more after giving up the run's space reserve.
    A write that still fails: RunError naming the path, why, and the free space there."""
    try:
        write()
        return
    except OSError as exc:
        reserve = Path(run_dir) / RESERVE_FILE
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or not reserve.exists():
            raise RunError(f"cannot write {path}: {exc.strerror or exc}{free_space_note(path)}") from None
    reserve.unlink(missing_ok=True)
    try:
        write()
    except OSError as exc:
        raise RunError(f"cannot write {path}: {exc.strerror or exc}{free_space_note(path)}") from None


def atomic_write(run_dir: Path, path: Path, text: str) -> None:
    """`text` into `path` through `<path>.tmp` and a rename (never half a file), by `write_safely`."""
    tmp = path.with_name(path.name + ".tmp")

    def write() -> None:
        try:
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    write_safely(run_dir, path, write)


def free_space_note(path: Path) -> str:
    """` (N MiB free on the filesystem of DIR)` for the nearest existing folder of `path`; "" where unknown."""
    d = Path(path)
    while not d.is_dir() and d != d.parent:
        d = d.parent
    try:
        free = shutil.disk_usage(d).free
    except OSError:
        return ""
    return f" ({free / 2**20:.1f} MiB free on the filesystem of {d})"


def storage_fault(text: str, run_dir: Path) -> str:
    """A note to append to a stage's one-line error when it is a storage fault (full, read-only, not writable)."""
    for code, what in _STORAGE_ERRNOS.items():
        if f"[Errno {code}]" in text:
            return f"; storage fault: outputs {what}{free_space_note(run_dir)}; free space, then `--resume`"
    return ""
