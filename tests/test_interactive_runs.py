"""lib.run's interactive runs: what a notebook opened in JupyterLab with RUN_DIR "" writes into."""
from __future__ import annotations

import json

import pytest

from lib import paths
from lib.cli import main
from lib.run import RunError, create_run_dir, newest_interactive_run, open_run
from lib.profiles import load_profile


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path / "runs")
    return tmp_path / "runs"


def test_notebooks_continue_the_newest_interactive_run_of_their_profile(runs, capsys):
    first = open_run("", "smoke", setup=False, starts_run=True)  # notebook 00: nothing yet, a new run
    assert f"run {first.dir} (new interactive run of profile 'smoke')" in capsys.readouterr().out
    manifest = json.loads((first.dir / "manifest.json").read_text())
    assert manifest["interactive"] is True and manifest["profile"] == "smoke"
    first.stage("data")

    later = open_run("", "smoke", setup=False)  # notebook 03 opened next
    assert later.dir == first.dir
    assert f"run {first.dir} (continuing the newest interactive run of profile 'smoke')" in capsys.readouterr().out
    create_run_dir(load_profile("smoke"), "20991231-000000-smoke")  # a headless run, newer: never continued
    assert open_run("", "smoke", setup=False).dir == first.dir
    assert open_run("", "cpu", setup=False).dir != first.dir  # another profile: its own run

    again = open_run("", "smoke", setup=False, starts_run=True)  # 00 re-run: the run has data, so a new run
    assert again.dir != first.dir and newest_interactive_run("smoke") == again.dir
    assert open_run("", "smoke", setup=False).dir == again.dir


def test_cli_new_makes_the_run_notebook_00_then_fills(runs, capsys):
    assert main(["new", "--profile", "smoke", "--set", "train.max_steps=3", "--run-id", "mine"]) == 0
    assert capsys.readouterr().out.strip() == str(runs / "mine")
    ctx = open_run("", "smoke", setup=False, starts_run=True)  # still empty: 00 takes it
    assert ctx.dir == runs / "mine" and ctx.profile.train.max_steps == 3
    assert main(["new", "--profile", "smoke", "--set", "train.max_stepz=3"]) == 2
    assert "unknown parameter 'train.max_stepz'" in capsys.readouterr().err


def test_a_missing_earlier_stage_names_the_notebook_to_run(runs):
    ctx = open_run("", "smoke", setup=False)
    with pytest.raises(RunError) as info:
        ctx.find("data", "test.parquet")
    msg = str(info.value)
    assert "\n" not in msg and "no data/test.parquet" in msg and "run notebooks/00_build_data.ipynb first" in msg
    with pytest.raises(RunError, match="run notebooks/03_grpo_training.ipynb first"):
        ctx.find("train", "adapter")


def test_overrides_on_an_existing_run_are_written_to_its_profile(runs):
    rd = create_run_dir(load_profile("smoke"), "r1")
    ctx = open_run(rd, setup=False, overrides={"train": {"rollout_engine": "hf"}})
    assert ctx.profile.train.rollout_engine == "hf"
    assert open_run(rd, setup=False).profile.train.rollout_engine == "hf"  # later stages see it
