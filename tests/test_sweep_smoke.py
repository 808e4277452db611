"""A real two-variant sweep on the smoke profile (lib/assets/sweeps/smoke_lr.yaml: the learning rate differs, training
only), then `lib.cli compare` and notebook 06 on its two runs. Slow (minutes, one smoke pipeline plus stages 03-05
once more): marked `smoke`. Doubles as the sharing test: the second run takes stages 00-02 from the first. The
sweep runs once per session (`smoke_sweep` in conftest.py); tests/test_pipeline_smoke.py checks its first run."""
from __future__ import annotations

import json

import nbformat
import pytest

from lib import paths
from lib.cli import main

pytestmark = pytest.mark.smoke


@pytest.fixture(autouse=True)
def _sweep_outputs(smoke_sweep, monkeypatch):
    """lib.paths (this process's and the kernels') point at the sweep's outputs for each test here."""
    outputs = smoke_sweep[1]
    monkeypatch.setenv("CREATIVE_GRPO_OUTPUTS", str(outputs))
    monkeypatch.setattr(paths, "RUNS_DIR", outputs / "runs")


def test_both_runs_finished_and_the_second_shared_00_to_02(smoke_sweep):
    code, outputs = smoke_sweep
    assert code == 0
    first, second = outputs / "runs" / "t-lr-5e-5", outputs / "runs" / "t-lr-1e-4"
    m1, m2 = (json.loads((r / "manifest.json").read_text()) for r in (first, second))
    assert m1["status"] == m2["status"] == "ok" and "shared" not in m1
    assert m2["shared"] == {"00_build_data": "t-lr-5e-5", "01_rubric_design": "t-lr-5e-5", "02_judge_calibration": "t-lr-5e-5"}
    ran = [line for line in (second / "pipeline.log").read_text().splitlines() if line.split()[-1] == "running"]
    assert [line.split()[1] for line in ran] == ["03_grpo_training:", "04_evaluation:", "05_case_studies:"]
    assert (second / "data" / "train.parquet").read_bytes() == (first / "data" / "train.parquet").read_bytes()
    r1, r2 = (json.loads((r / "results.json").read_text()) for r in (first, second))
    assert r2["calibration.auroc"] == r1["calibration.auroc"] and r2["train.steps"] == 2
    assert "learning_rate: 0.0001" in (second / "profile.yaml").read_text()
    for run in (first, second):  # train.report_to: [tensorboard]: TRL's events beside the run's training log
        assert list((run / "train" / "tensorboard").glob("events.out.tfevents.*")), run
    state = json.loads((outputs / "sweeps" / "t" / "sweep.json").read_text())
    assert [v["status"] for v in state["variants"]] == ["ok", "ok"]


def test_resume_redoes_nothing(smoke_sweep, capsys):
    _, outputs = smoke_sweep
    before = {r.name: (r / "manifest.json").read_text() for r in (outputs / "runs").iterdir()}
    assert main(["sweep", "--resume", "t"]) == 0
    assert capsys.readouterr().out.count("not redone") == 2
    assert {r.name: (r / "manifest.json").read_text() for r in (outputs / "runs").iterdir()} == before


def test_compare_and_notebook_06_on_the_two_runs(smoke_sweep, capsys, tmp_path):
    import papermill

    _, outputs = smoke_sweep
    assert main(["compare", "--sweep", "t"]) == 0
    out = capsys.readouterr().out
    assert "| lr-5e-5/grpo |" in out and "| lr-1e-4/grpo |" in out
    cmp = outputs / "sweeps" / "t" / "compare"
    page = (cmp / "compare.html").read_text()
    assert "train.learning_rate" in page and page.count("data:image/png;base64,") == 1
    table = (cmp / "compare_table.csv").read_text()
    assert "train_format_last" in table and "heldout_answer_lo" in table
    executed = tmp_path / "06.ipynb"
    papermill.execute_notebook(str(paths.NOTEBOOKS_DIR / "06_compare_runs.ipynb"), str(executed),
                               parameters={"SWEEP": str(outputs / "sweeps" / "t")}, cwd=str(paths.NOTEBOOKS_DIR),
                               progress_bar=False)
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "2 runs ->" in text and "lr-1e-4/grpo" in text and "compare.html" in text
