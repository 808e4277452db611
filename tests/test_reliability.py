"""How runs stop and share a machine (lib.runlock, lib.pipeline, lib.models): signals, stale runs, two jobs at once,
a full or unwritable outputs/. Pipelines run real papermill kernels on tiny throwaway notebooks (docs/reliability.md)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lib import paths
from lib.cli import main
from lib.pipeline import run_pipeline
from lib.run import RunError
from tests.fakes import stage_notebook
from lib.runlock import LOCK_FILE, hold_run, run_lines, staleness

# `python -c` wrapper: the CLI with the notebooks folder (and optionally the default run id) of a test sandbox
CLI = ("import sys; from pathlib import Path; from lib import paths, run; paths.NOTEBOOKS_DIR = Path(sys.argv[1]); "
       "fixed = sys.argv[2]; run.new_run_id = (lambda name: fixed) if fixed else run.new_run_id; "
       "from lib.cli import main; sys.exit(main(sys.argv[3:]))")
# notebook 00 of the signal tests: the first time, note the kernel's pid and sleep (to be killed); later, return at once
SLEEPER = ("import os, time\nfrom pathlib import Path\nmark = Path(RUN_DIR) / 'started'\n"
           "if not mark.exists():\n    mark.write_text(str(os.getpid()))\n    time.sleep(120)\n")


def _notebook(path: Path, body: str) -> Path:
    return stage_notebook(path, body)


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    nb_dir, outputs = tmp_path / "notebooks", tmp_path / "outputs"
    nb_dir.mkdir()
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setattr(paths, "RUNS_DIR", outputs / "runs")
    monkeypatch.setenv("CREATIVE_GRPO_OUTPUTS", str(outputs))
    return nb_dir, outputs / "runs"


def _cli(nb_dir: Path, *args: str, fixed_id: str = "", **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLI, str(nb_dir), fixed_id, *args], cwd=paths.PROJ_ROOT,
                            env={**os.environ, "PYTHONPATH": str(paths.PROJ_ROOT)}, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def _stage(m: dict, name: str) -> dict:
    return next(e for e in m["notebooks"] if e["name"] == name)


def _wait_for(path: Path, proc: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, f"exited early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.1)


def _gone(pid: int, seconds: float = 20) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if Path(f"/proc/{pid}/stat").exists() and Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return True  # a zombie: exited, not yet reaped
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT], ids=lambda s: s.name)
def test_a_stop_signal_marks_the_run_interrupted_and_resume_continues(sandbox, sig):
    """SIGTERM / SIGHUP / SIGINT during a stage: run and stage `interrupted` with an end time, the kernel shut down,
    one line on stderr, exit 128 + signal; while it ran, a second writer was refused and `runs` said `running`."""
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", SLEEPER)
    _notebook(nb_dir / "01_rubric_design.ipynb", "print('ok')")
    proc = _cli(nb_dir, "run", "--profile", "smoke", "--run-id", "r")
    run = runs / "r"
    _wait_for(run / "started", proc)
    kernel_pid = int((run / "started").read_text())
    if sig == signal.SIGTERM:  # the run is live: a second writer is refused, the listing does not call it stale
        with pytest.raises(RunError, match=rf"run r is being written by pid {proc.pid} on host"):
            run_pipeline("", resume="r")
        assert staleness(run, _manifest(run)) is None and run_lines(runs) == ["r  running  00:running 01:pending"]
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + sig, err[-2000:]
    assert err.strip().splitlines()[-1] == f"interrupted by {sig.name}"
    m = _manifest(run)
    assert m["status"] == "interrupted" and m["ended_at"] and m["interrupted_by"] == sig.name
    assert _stage(m, "00_build_data")["status"] == "interrupted" and _stage(m, "00_build_data")["ended_at"]
    assert _stage(m, "00_build_data")["error"] == f"interrupted ({sig.name})"
    assert _gone(kernel_pid), "the notebook's kernel outlived the run"
    if sig == signal.SIGTERM:
        assert run_pipeline("", resume="r") == run
        m = _manifest(run)
        assert m["status"] == "ok" and [e["status"] for e in m["notebooks"]] == ["ok", "ok"]


def test_a_sigkilled_run_is_found_stale_by_runs_and_resume(sandbox, capsys):
    """SIGKILL (as the OOM killer does): the manifest still says `running`; `runs` and `--resume` say in one line
    that its process is gone; resume marks it interrupted and finishes it."""
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", SLEEPER)
    proc = _cli(nb_dir, "run", "--profile", "smoke", "--run-id", "k")
    run = runs / "k"
    _wait_for(run / "started", proc)
    kernel_pid = int((run / "started").read_text())
    proc.kill()
    proc.communicate(timeout=30)
    try:
        m = _manifest(run)
        assert m["status"] == "running" and m["owner"]["pid"] == proc.pid  # what a dead process leaves
        assert main(["runs"]) == 0
        line = capsys.readouterr().out.strip()
        assert line.startswith("k  stale  00:running  (run k was left `running` in 00_build_data by pid "
                               f"{proc.pid} on host ") and line.endswith("`python -m lib.cli run --resume k` continues it)")
        assert run_pipeline("", resume="k") == run
        err = capsys.readouterr().err
        assert f"run k was left `running` in 00_build_data by pid {proc.pid}" in err and "; resuming it" in err
        m = _manifest(run)
        assert m["status"] == "ok" and "gone" in m["stale"] and staleness(run, m) is None
    finally:
        if not _gone(kernel_pid, 0.1):  # the orphaned kernel of the killed run
            os.kill(kernel_pid, signal.SIGKILL)


def test_stale_detection_without_a_lock_file_checks_the_pid(tmp_path):
    """A manifest written before run.lock existed: a dead pid on this host is stale, a live one is not."""
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    base = {"status": "running", "notebooks": [{"name": "03_grpo_training", "status": "running"}]}
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    assert staleness(tmp_path, {**base, "owner": me}) is None
    assert "by pid" in staleness(tmp_path, {**base, "owner": {**me, "pid": int(dead.stdout)}})
    assert staleness(tmp_path, {**base, "owner": {**me, "host": "elsewhere"}}) is None  # cannot tell: say nothing
    with hold_run(tmp_path):  # with a lock file, the lock decides
        assert staleness(tmp_path, {**base, "owner": {**me, "pid": int(dead.stdout)}}) is None
    assert (tmp_path / LOCK_FILE).exists() and "gone" in staleness(tmp_path, {**base, "owner": me})


def test_two_runs_started_together_get_their_own_directories(sandbox):
    """Two `lib.cli run` processes started at once with the same default run id: two directories (-2 suffix), each
    written by its own process only, both complete."""
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", "from pathlib import Path\n(Path(RUN_DIR) / 'mine').write_text(str(__import__('os').getppid()))")
    procs = [_cli(nb_dir, "run", "--profile", "smoke", fixed_id="same") for _ in range(2)]
    outs = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    dirs = sorted(Path(o[0].strip().splitlines()[-1]).name for o in outs)
    assert dirs == ["same", "same-2"]
    for p, (out, _) in zip(procs, outs):
        d = runs / Path(out.strip().splitlines()[-1]).name
        m = _manifest(d)
        assert m["status"] == "ok" and m["owner"]["pid"] == p.pid and m["run_id"] == d.name
        assert (d / "mine").read_text() == str(p.pid)  # the stage's kernel was this process's child


@pytest.mark.smoke
def test_two_smoke_jobs_at_once_write_their_own_runs_beside_one_model_cache(tmp_path):
    """Two real smoke jobs started together (`lib.cli run --profile smoke --stages 00`, the real notebook 00: it
    loads the policy through the user's model cache and generates a sample) with the same default run id and one
    outputs/: two directories, each written by its own process only, equal data, and no half-written entry left in
    the model cache they share. (Two materializers on an empty cache: test_a_second_materializer_waits_and_reuses.)"""
    outputs, cache = tmp_path / "outputs", paths.MODEL_CACHE_DIR

    def partial_entries() -> set[str]:  # what _convert and the index writer leave while writing (`<name>.tmp<pid>`)
        return {f.name for f in cache.iterdir() if ".tmp" in f.name} if cache.is_dir() else set()

    partial_before = partial_entries()
    # one thread per job (and its kernel): two jobs on 2 cores, no oversubscribed sample generation
    env = {**os.environ, "PYTHONPATH": str(paths.PROJ_ROOT), "CREATIVE_GRPO_OUTPUTS": str(outputs), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", CLI, str(paths.NOTEBOOKS_DIR), "both", "run", "--profile", "smoke",
                               "--stages", "00"], cwd=paths.PROJ_ROOT, env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    dirs = [outputs / "runs" / Path(o[0].strip().splitlines()[-1]).name for o in outs]
    assert sorted(d.name for d in dirs) == ["both", "both-2"]
    for p, d in zip(procs, dirs):
        m = _manifest(d)
        assert m["status"] == "ok" and m["owner"]["pid"] == p.pid and _stage(m, "00_build_data")["status"] == "ok"
        log = (d / "pipeline.log").read_text()
        assert f"run {d.name}: profile smoke" in log and f"run {dirs[1 - dirs.index(d)].name}:" not in log
    assert partial_entries() <= partial_before, partial_entries() - partial_before
    a, b = ((d / "data" / "train.parquet").read_bytes() for d in dirs)
    assert a == b  # same seed, same data: neither job wrote into the other's files


def test_a_given_run_id_that_exists_is_one_line(sandbox):
    nb_dir, runs = sandbox
    (runs / "x").mkdir(parents=True)
    with pytest.raises(RunError, match=r"run directory already exists: .*x \(choose another --run-id\)"):
        run_pipeline("smoke", run_id="x")


def test_a_second_materializer_waits_and_reuses(tmp_path):
    """Two processes materialize one packaged model at once: one converts, the other waits on the lock and reuses
    the folder; the index is whole. (The conversion itself is replaced by a slow writer: a unit test of the lock.)"""
    script = (
        "import sys, time; from pathlib import Path; from lib import models\n"
        "def slow(gguf, target, spec):\n"
        "    tmp = target.with_name(target.name + '.tmp'); tmp.mkdir(); time.sleep(1.5)\n"
        "    (tmp / 'config.json').write_text('{}'); tmp.rename(target)\n"
        "    with open(sys.argv[2], 'a') as f: f.write('converted\\n')\n"
        "models._convert = slow\n"
        "spec = models.ModelSpec('m', 'packaged-gguf', 'test', lambda: Path(sys.argv[1]))\n"
        "print(models.materialize_gguf(spec, Path(sys.argv[3])))\n")
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF" * 100)
    args = [sys.executable, "-c", script, str(gguf), str(tmp_path / "conversions"), str(tmp_path / "cache")]
    env = {**os.environ, "PYTHONPATH": str(paths.PROJ_ROOT)}
    procs = [subprocess.Popen(args, cwd=paths.PROJ_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    assert outs[0][0] == outs[1][0] and (tmp_path / "conversions").read_text() == "converted\n"
    index = json.loads((tmp_path / "cache" / "m.index.json").read_text())
    assert list(index.values()) == [Path(outs[0][0].strip()).name]


# ------------------------------------------------------------------------------------- storage faults


def _tmpfs(path: Path, options: str) -> bool:
    """Mount a tmpfs at `path` (root with CAP_SYS_ADMIN only); False where the machine does not allow it."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True).returncode == 0


@pytest.fixture
def mounts():
    made: list[Path] = []
    yield made
    for m in made:
        subprocess.run(["umount", "-l", str(m)], capture_output=True)


def test_unwritable_outputs_fails_with_one_line_naming_the_path(sandbox, mounts, capsys):
    """outputs/ read-only (a read-only tmpfs as root, chmod otherwise): `run` exits 2 with one line naming the path."""
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", "print('ok')")
    outputs = runs.parent
    if _tmpfs(outputs, "ro,size=1m"):
        mounts.append(outputs)
    elif os.geteuid() != 0:
        outputs.mkdir(parents=True, exist_ok=True)
        outputs.chmod(0o555)
    else:
        pytest.skip("root without mount: a read-only outputs/ cannot be made here")
    try:
        assert main(["run", "--profile", "smoke", "--run-id", "ro"]) == 2
    finally:
        outputs.chmod(0o755) if not mounts else None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot create {runs}") and ("Read-only" in err[0] or "Permission" in err[0])


def test_a_full_disk_fails_the_stage_keeps_earlier_outputs_and_resume_works(sandbox, mounts):
    """outputs/ on a 1 MiB tmpfs; stage 01 writes 2 MiB: it is `failed` with one line naming the run directory and the
    free space, stage 00's output is intact; with space back (the tmpfs grown), `--resume` re-runs 01 only."""
    nb_dir, runs = sandbox
    if not _tmpfs(runs.parent, "size=1m"):
        pytest.skip("needs root with mount (a tiny tmpfs); not allowed on this machine")
    mounts.append(runs.parent)
    _notebook(nb_dir / "00_build_data.ipynb", "from pathlib import Path\n(Path(RUN_DIR) / 'data').mkdir()\n"
                                              "(Path(RUN_DIR) / 'data' / 'prompts.txt').write_text('椰子水\\n' * 100)")
    _notebook(nb_dir / "01_rubric_design.ipynb", "from pathlib import Path\n(Path(RUN_DIR) / 'rubric').mkdir(exist_ok=True)\n"
                                                 "(Path(RUN_DIR) / 'rubric' / 'big.bin').write_bytes(b'x' * (2 << 20))")
    from lib.pipeline import PipelineError

    with pytest.raises(PipelineError, match="notebook 01_rubric_design failed: OSError: .Errno 28. No space left on device"):
        run_pipeline("smoke", run_id="full")
    run = runs / "full"
    m = _manifest(run)
    assert m["status"] == "failed" and _stage(m, "00_build_data")["status"] == "ok"
    err = _stage(m, "01_rubric_design")["error"]
    assert _stage(m, "01_rubric_design")["status"] == "failed" and "storage fault: outputs full" in err and str(run) in err
    assert (run / "data" / "prompts.txt").read_text() == "椰子水\n" * 100
    (run / "rubric" / "big.bin").unlink()  # what the failed stage left
    subprocess.run(["mount", "-o", "remount,size=16m", str(runs.parent)], check=True)
    assert run_pipeline("", resume="full") == run
    m = _manifest(run)
    assert m["status"] == "ok" and [e["status"] for e in m["notebooks"]] == ["ok", "ok"]
    assert (run / "rubric" / "big.bin").stat().st_size == 2 << 20 and not (run / ".space-reserve").exists()
