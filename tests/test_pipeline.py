"""lib.pipeline and lib.cli on tiny throwaway notebooks (each execution starts a real kernel: about 1-2 s)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import nbformat
import pytest

from lib import paths
from lib.cli import main
from lib.run import RunError
from tests.fakes import stage_notebook
from lib.pipeline import PipelineError, discover_stages, kernel_name, run_pipeline, run_stage

ENV_VARS = ("VLLM_ENABLE_V1_MULTIPROCESSING", "VLLM_CPU_KVCACHE_SPACE", "TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE")


def _notebook(path: Path, body: str) -> Path:
    return stage_notebook(path, body)


def _log_stage(name: str) -> str:
    """Notebook body appending its name (and the parameters it got) to RUN_DIR/order.txt."""
    return ("from pathlib import Path\n"
            "with open(Path(RUN_DIR) / 'order.txt', 'a') as f:\n"
            f"    f.write('{name} ' + PROFILE + '\\n')\n"
            "print('done')")


FAILING = "print('partial output before the error')\nraise ValueError('boom in stage')"


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Runs and notebooks in tmp_path; the runner's environment changes are undone afterwards."""
    nb_dir, runs = tmp_path / "notebooks", tmp_path / "outputs" / "runs"
    nb_dir.mkdir()
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setattr(paths, "RUNS_DIR", runs)
    monkeypatch.setenv("CREATIVE_GRPO_OUTPUTS", str(tmp_path / "outputs"))
    for var in ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return nb_dir, runs


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))


def _by_name(manifest: dict) -> dict:
    return {e["name"]: e for e in manifest["notebooks"]}


def test_discover_orders_by_number(sandbox):
    nb_dir, _ = sandbox
    _notebook(nb_dir / "01_rubric_design.ipynb", "pass")
    _notebook(nb_dir / "00_build_data.ipynb", "pass")
    _notebook(nb_dir / "03_train.ipynb", "pass")
    stages = discover_stages()
    assert [n for n, _ in stages] == ["00_build_data", "01_rubric_design", "03_train"]
    assert [p for _, p in stages] == [nb_dir / "00_build_data.ipynb", nb_dir / "01_rubric_design.ipynb", nb_dir / "03_train.ipynb"]


def test_two_notebooks_for_one_number_is_an_error(sandbox):
    nb_dir, _ = sandbox
    _notebook(nb_dir / "00_a.ipynb", "pass")
    _notebook(nb_dir / "00_b.ipynb", "pass")
    with pytest.raises(RunError, match="two notebooks for stage 00.*00_a.ipynb, 00_b.ipynb"):
        discover_stages()


def test_kernel_runs_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager

    name = kernel_name()
    assert name in ("creative-grpo", "python3")
    argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    # jupyter_client swaps a bare `python`/`python3` for sys.executable; an absolute path must be ours.
    assert argv0 in ("python", "python3") or Path(argv0).parent == Path(sys.executable).parent


def test_run_in_order_manifest_and_skips(sandbox, capsys):
    from lib.run import PROGRESS_PREFIX

    nb_dir, runs = sandbox
    _notebook(nb_dir / "01_rubric_design.ipynb", _log_stage("01"))
    # a training-like stage: its progress lines reach the terminal and pipeline.log, its other output does not
    _notebook(nb_dir / "00_build_data.ipynb", _log_stage("00") + f"\nfor i in (1, 2):\n    print('{PROGRESS_PREFIX}train step ' + str(i))")
    run_dir = run_pipeline("smoke", run_id="r-ok", overrides=["train.max_steps=3"])
    out = capsys.readouterr().out
    assert "00_build_data: train step 1" in out and "00_build_data: train step 2" in out and "done" not in out

    assert run_dir == runs / "r-ok"
    assert (run_dir / "order.txt").read_text().split("\n")[:2] == ["00 smoke", "01 smoke"]
    assert "max_steps: 3" in (run_dir / "profile.yaml").read_text()
    m = _manifest(run_dir)
    assert m["run_id"] == "r-ok" and m["profile"] == "smoke" and m["status"] == "ok"
    assert m["overrides"] == ["train.max_steps=3"]
    assert set(m) >= {"git_sha", "git_dirty", "packages", "hostname", "started_at", "ended_at"}
    assert m["packages"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert m["packages"]["papermill"] and "torch" in m["packages"] and "vllm" in m["packages"]
    assert datetime.fromisoformat(m["started_at"]) <= datetime.fromisoformat(m["ended_at"])
    entries = _by_name(m)
    assert [e["name"] for e in m["notebooks"]] == ["00_build_data", "01_rubric_design"]
    for name in ("00_build_data", "01_rubric_design"):
        e = entries[name]
        assert e["status"] == "ok" and e["seconds"] > 0 and "error" not in e
        executed = nbformat.read(run_dir / e["output"], as_version=4)
        # papermill injected our parameters into the executed copy, and the cells ran
        injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and f'RUN_DIR = "{run_dir}"' in injected[0].source
        assert any(o.get("text", "").startswith("done\n") for c in executed.cells if c.cell_type == "code" for o in c.outputs)
    assert m["report"] == "report.html" and (run_dir / "report.html").exists()
    log = (run_dir / "pipeline.log").read_text()
    assert "00_build_data: ok" in log and "01_rubric_design: ok" in log
    assert "00_build_data: train step 2" in log and "done" not in log
    assert not nbformat.read(nb_dir / "00_build_data.ipynb", as_version=4).cells[2].outputs  # source stays clean
    assert os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] == "0" and os.environ["HF_HUB_OFFLINE"] == "1"
    assert m["env"]["TOKENIZERS_PARALLELISM"] == "false"


def test_stop_at_first_failure_keeps_partial_notebook(sandbox, capsys):
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", _log_stage("00"))
    _notebook(nb_dir / "01_rubric_design.ipynb", FAILING)
    _notebook(nb_dir / "02_judge_calibration.ipynb", _log_stage("02"))

    rc = main(["run", "--profile", "smoke", "--run-id", "r-fail"])
    err = capsys.readouterr().err
    assert rc == 1
    error_lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(error_lines) == 1 and "01_rubric_design" in error_lines[0] and "ValueError: boom in stage" in error_lines[0]

    run_dir = runs / "r-fail"
    m = _manifest(run_dir)
    e = _by_name(m)
    assert m["status"] == "failed"
    assert e["00_build_data"]["status"] == "ok"
    assert e["01_rubric_design"]["status"] == "failed"
    assert e["01_rubric_design"]["error"] == "ValueError: boom in stage"
    assert e["02_judge_calibration"]["status"] == "skipped" and "01_rubric_design failed" in e["02_judge_calibration"]["note"]
    assert (run_dir / "order.txt").read_text() == "00 smoke\n"  # 02 never ran
    partial = nbformat.read(run_dir / "notebooks" / "01_rubric_design.ipynb", as_version=4)
    texts = [o.get("text", "") for c in partial.cells if c.cell_type == "code" for o in c.outputs]
    assert "partial output before the error\n" in texts


def test_failure_raises_pipeline_error_then_resume_runs_the_rest(sandbox):
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", _log_stage("00"))
    bad = _notebook(nb_dir / "01_rubric_design.ipynb", FAILING)
    with pytest.raises(PipelineError, match="notebook 01_rubric_design failed: ValueError: boom") as info:
        run_pipeline("smoke", run_id="r-resume", stages=["00", "01"])
    assert info.value.run_dir == runs / "r-resume"

    _notebook(bad, _log_stage("01"))  # fixed
    run_dir = run_pipeline("ignored", resume="r-resume")
    m = _manifest(run_dir)
    assert m["status"] == "ok" and len(m["resumed_at"]) == 1
    assert (run_dir / "order.txt").read_text() == "00 smoke\n01 smoke\n"  # 00 was ok: not re-run
    prev = _by_name(m)["01_rubric_design"]["previous"]
    assert ".prev-" in prev and (run_dir / prev).exists()


def test_existing_run_id_is_refused_untouched(sandbox):
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", _log_stage("00"))
    existing = runs / "taken"
    existing.mkdir(parents=True)
    (existing / "keep.txt").write_text("mine")
    with pytest.raises(RunError, match="already exists"):
        run_pipeline("smoke", run_id="taken")
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


def test_bad_stage_and_override_fail_before_creating_a_run(sandbox):
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", "pass")
    with pytest.raises(RunError, match="unknown stage '09'"):
        run_pipeline("smoke", run_id="x", stages=["09"])
    from lib.profiles import ProfileError

    with pytest.raises(ProfileError, match="unknown parameter 'train.max_stepz'"):
        run_pipeline("smoke", run_id="x", overrides=["train.max_stepz=3"])
    assert not runs.exists() or not any(runs.iterdir())


def test_rerun_single_stage_keeps_previous(sandbox):
    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", _log_stage("00"))
    run_dir = run_pipeline("smoke", run_id="r-stage", stages=["00"])
    first = (run_dir / "notebooks" / "00_build_data.ipynb").read_bytes()

    out = run_stage("r-stage", "00")
    assert out == run_dir / "notebooks" / "00_build_data.ipynb"
    prevs = sorted((run_dir / "notebooks").glob("00_build_data.prev-*.ipynb"))
    assert len(prevs) == 1 and prevs[0].read_bytes() == first
    assert (run_dir / "order.txt").read_text() == "00 smoke\n00 smoke\n"
    m = _manifest(run_dir)
    assert len(m["reruns"]) == 1
    rerun = m["reruns"][0]
    assert rerun["name"] == "00_build_data" and rerun["status"] == "ok" and rerun["previous"] == str(prevs[0].relative_to(run_dir))

    with pytest.raises(RunError, match="unknown stage '07'"):
        run_stage("r-stage", "07")
    with pytest.raises(RunError, match="unknown run 'no-such-run'"):
        run_stage("no-such-run", "00")
    with pytest.raises(RunError, match="unknown stage '02_judge_calibration'"):
        run_stage(run_dir, "02_judge_calibration")


def test_report_failure_does_not_fail_the_run(sandbox, monkeypatch):
    import lib.eval.report

    nb_dir, _ = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", "pass")

    def broken(run_dir):
        raise lib.eval.report.ReportError("cannot build")

    monkeypatch.setattr(lib.eval.report, "build_run_report", broken)
    m = _manifest(run_pipeline("smoke", run_id="r-report"))
    assert m["status"] == "ok" and "report" not in m and m["report_error"] == "ReportError: cannot build"


def test_cli_errors_are_one_line(sandbox, capsys):
    assert main(["run", "--profile", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown profile 'nope'")
    assert main(["stage", "missing-run", "03"]) == 2
    assert capsys.readouterr().err.startswith("error: unknown run 'missing-run'")
    assert main(["show-profile", "smoke", "--set", "train.max_steps"]) == 2
    assert "must look like key.sub=value" in capsys.readouterr().err


def test_cli_as_a_process_exits_2_with_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "lib.cli", "show-profile", "no-such-profile"], capture_output=True,
                          text=True, cwd=paths.PROJ_ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith("error: unknown profile")


def test_cli_lists(capsys):
    assert main(["profiles"]) == 0
    names = [ln.split()[0] for ln in capsys.readouterr().out.splitlines()]
    assert {"smoke", "cpu", "gpu"} <= set(names)
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "gemma3-270m" in out and "Qwen/Qwen2.5-7B-Instruct-AWQ" in out
    assert main(["show-profile", "gpu", "--set", "train.beta=0.02"]) == 0
    assert "beta: 0.02" in capsys.readouterr().out


def test_interrupt_leaves_a_truthful_manifest(sandbox, monkeypatch):
    import lib.pipeline

    nb_dir, runs = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", "pass")

    def interrupted(*args, **kwargs):
        on_disk = _manifest(runs / "r-int")  # written before the notebook started
        assert _by_name(on_disk)["00_build_data"]["status"] == "running" and on_disk["status"] == "running"
        raise KeyboardInterrupt

    monkeypatch.setattr(lib.pipeline, "_execute", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_pipeline("smoke", run_id="r-int")
    m = _manifest(runs / "r-int")
    assert m["status"] == "interrupted" and _by_name(m)["00_build_data"]["error"] == "interrupted (SIGINT)"



def test_run_records_machine_precision_sizing_and_estimate_vs_actual(sandbox, capsys):
    from lib.hardware import cpu_class
    from lib.run import PROGRESS_PREFIX

    nb_dir, _ = sandbox
    _notebook(nb_dir / "00_build_data.ipynb", _log_stage("00"))
    _notebook(nb_dir / "03_grpo_training.ipynb",
              f"print('{PROGRESS_PREFIX}train step 1/4: reward 0.5, 10.0 s, training left ~0.5 min')")
    _notebook(nb_dir / "04_evaluation.ipynb", _log_stage("04"))
    run_dir = run_pipeline("cpu", run_id="r-sized", overrides=["sizing.budget_minutes=0.01"])
    out = capsys.readouterr().out
    m = _manifest(run_dir)
    assert m["machine"]["cpu_class"] == cpu_class() and m["machine"]["matmul_probe"]["float32_gflops"] > 0
    assert set(m["precision"]) == {"judge", "train", "eval"} and m["precision"]["eval"]["dtype"] == "float32"
    # the full cpu job cannot fit 0.6 s: the reduced sizing was chosen, written into the run's profile, and said
    assert m["sizing"]["chosen"] == "reduced" and "budget" in m["sizing"]["why"]
    assert "max_steps: 18" in (run_dir / "profile.yaml").read_text()
    first = out.splitlines()[:8]
    assert any(l.startswith("machine: CPU class ") for l in first) and any(l.startswith("precision: judge ") for l in first)
    assert any(l.startswith("sizing: reduced (") for l in first) and any(l.startswith("estimate: ~") for l in first)
    # a training line gets the whole run's time left: its own plus the estimate of the notebooks after it (here 04)
    later = m["sizing"]["estimate"]["stages"]["04"]
    assert f"training left ~0.5 min, run left ~{0.5 + later / 60:.1f} min" in out
    check = m["estimate_vs_actual"]
    assert {s for s, v in check["stages"].items() if v["actual_s"] is not None} == {"00", "03", "04"}
    assert check["actual_s"] == pytest.approx(sum(e["seconds"] for e in m["notebooks"]), abs=0.2)
    assert check["error"] is not None and "time: estimated" in out


def test_sizing_keeps_the_full_job_within_the_budget():
    from lib.estimate import choose_sizing
    from lib.profiles import load_profile

    prof = load_profile("cpu")
    fits, rec = choose_sizing(prof, lambda p: {"total_s": 60.0 * 30, "stages": {}})
    assert fits is prof and rec["chosen"] == "full" and "within the 40-minute budget" in rec["why"]
    est = {"cpu": 60.0 * 60}
    reduced, rec = choose_sizing(prof, lambda p: {"total_s": est["cpu"] if p.train.max_steps == 24 else 1500.0, "stages": {}})
    assert rec["chosen"] == "reduced" and reduced.train.max_steps == 18 and reduced.eval.n_prompts == 24
    assert reduced.eval.samples_per_prompt == 2 and reduced.eval.greedy
    assert reduced.train.learning_rate == 1e-4 and reduced.train.per_device_train_batch_size == 4
