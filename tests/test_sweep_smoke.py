"""A real two-variant sweep on the smoke profile (lib/assets/sweeps/smoke_cases.yaml: only the case studies differ),
then `lib.cli compare` and notebook 06 on its two runs. Slow (one smoke pipeline plus stage 05 once more): marked
`smoke`. Doubles as the sharing test: the second run takes stages 00-04 from the first, training and evaluation
included. The sweep runs once per session (`smoke_sweep` in conftest.py); tests/test_pipeline_smoke.py checks its
first run."""
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


def test_both_runs_finished_and_the_second_shared_00_to_04(smoke_sweep):
    code, outputs = smoke_sweep
    assert code == 0
    first, second = outputs / "runs" / "t-first", outputs / "runs" / "t-format-learned"
    m1, m2 = (json.loads((r / "manifest.json").read_text()) for r in (first, second))
    assert m1["status"] == m2["status"] == "ok" and "shared" not in m1
    assert m2["shared"] == {s: "t-first" for s in ("00_build_data", "01_rubric_design", "02_judge_calibration",
                                                   "03_grpo_training", "04_evaluation")}
    ran = [line for line in (second / "pipeline.log").read_text().splitlines() if line.split()[-1] == "running"]
    assert [line.split()[1] for line in ran] == ["05_case_studies:"]
    for f in ("data/train.parquet", "train/adapter/adapter_model.safetensors", "eval/generations.jsonl"):
        assert (second / f).read_bytes() == (first / f).read_bytes(), f
    r1, r2 = (json.loads((r / "results.json").read_text()) for r in (first, second))
    assert {k: v for k, v in r2.items() if not k.startswith(("cases.", "report."))} == \
        {k: v for k, v in r1.items() if not k.startswith(("cases.", "report."))}
    assert r2["train.steps"] == 2 and "select: format_learned" in (second / "profile.yaml").read_text()
    assert (second / "cases" / "case_studies.html").exists()
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
    assert "| first/grpo |" in out and "| format-learned/grpo |" in out
    cmp = outputs / "sweeps" / "t" / "compare"
    page = (cmp / "compare.html").read_text()
    assert "case_studies.select" in page and page.count("data:image/png;base64,") == 1
    table = (cmp / "compare_table.csv").read_text()
    assert "train_format_last" in table and "heldout_answer_lo" in table
    executed = tmp_path / "06.ipynb"
    papermill.execute_notebook(str(paths.NOTEBOOKS_DIR / "06_compare_runs.ipynb"), str(executed),
                               parameters={"SWEEP": str(outputs / "sweeps" / "t")}, cwd=str(paths.NOTEBOOKS_DIR),
                               progress_bar=False)
    nb = nbformat.read(executed, as_version=4)
    text = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", "")) for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "2 runs ->" in text and "format-learned/grpo" in text and "compare.html" in text
