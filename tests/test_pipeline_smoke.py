"""The whole pipeline, headless, on the embedded Gemma 270M under the `smoke` profile (real vLLM judge, real TRL).

Slow (minutes): marked `smoke`. It is the test that the README's run command works end to end.
"""
from __future__ import annotations

import json

import nbformat
import pytest

from lib import paths
from lib.pipeline import run_pipeline

pytestmark = pytest.mark.smoke


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setattr(paths, "RUNS_DIR", runs)
    try:
        run_dir = run_pipeline("smoke", run_id="smoke-test")
    finally:
        mp.undo()
    return run_dir


def test_every_stage_ran(smoke_run):
    manifest = json.loads((smoke_run / "manifest.json").read_text())
    assert manifest["status"] == "ok"
    names = [n["name"] for n in manifest["notebooks"]]
    assert names[:6] == ["00_build_data", "01_rubric_design", "02_judge_calibration",
                         "03_grpo_training", "04_evaluation", "05_case_studies"]
    assert all(n["status"] == "ok" for n in manifest["notebooks"]), manifest["notebooks"]
    assert manifest["git_sha"] is None or len(manifest["git_sha"]) == 40


def test_data_and_rubric_outputs(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["data.n_test"] == 20
    assert (smoke_run / "data" / "train.parquet").exists()
    assert (smoke_run / "data" / "hf").is_dir()
    assert len(results["rubric.hash"]) == 64


def test_executed_00_shows_a_gemma_completion(smoke_run):
    nb = nbformat.read(smoke_run / "notebooks" / "00_build_data.ipynb", as_version=4)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    sample = json.loads((smoke_run / "results.json").read_text())["data.sample_completion"]
    assert sample.strip(), "the policy model produced an empty completion"
    assert sample.strip()[:20] in text


def test_training_logged_and_saved_an_adapter(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["train.steps"] == 2
    log = [json.loads(line) for line in (smoke_run / "train" / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in log]
    assert steps == sorted(set(steps)) and steps[-1] == 2
    assert (smoke_run / "train" / "adapter" / "adapter_config.json").exists()
    assert any(p.suffix == ".png" for p in (smoke_run / "train").iterdir())


def test_judge_was_real_and_calibrated(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    assert results["calibration.n_labels"] > 0
    assert 0.0 <= results["calibration.accuracy"] <= 1.0


def test_evaluation_cases_and_report(smoke_run):
    results = json.loads((smoke_run / "results.json").read_text())
    for label in ("base", "grpo"):
        for metric in ("format", "think", "answer"):
            assert 0.0 <= results[f"eval.{label}.{metric}"] <= 1.0
    assert (smoke_run / "cases" / "case_studies.html").exists()
    report = (smoke_run / "report.html").read_text()
    assert "data:image/png;base64," in report
    assert "stage not run" not in report
