"""lib.sweep and `lib.cli sweep`: the definition, the stage keys, sharing and resume, on tiny throwaway notebooks
(the real lib.pipeline runner and kernels; each execution about 1-2 s). The smoke pipeline version is
tests/test_sweep_smoke.py."""
from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from lib import paths
from lib.cli import main
from lib.profiles import load_profile
from lib.sweep import SHARED_STAGES, SweepError, load_sweep, load_sweep_dir, plan, run_sweep, stage_key
from tests.fakes import stage_notebook

STAGE_BODY = """
from lib.run import open_run
ctx = open_run(RUN_DIR, PROFILE, setup=False)
with open(ctx.dir / 'order.txt', 'a') as f:
    f.write('{name}\\n')
(ctx.stage('{folder}') / 'out.txt').write_text('{name} of ' + ctx.dir.name)
ctx.record('{folder}.value', ctx.profile.{field})
"""
FAIL_ONCE = """
import os
flag = {flag!r}
if os.path.exists(flag):
    os.remove(flag)
    raise RuntimeError('killed')
"""


def _notebook(path: Path, body: str) -> None:
    stage_notebook(path, body, title=False)


STAGES = [("00_build_data", "data", "data.test_size"), ("01_rubric_design", "rubric", "rubric.path"),
          ("02_judge_calibration", "calibration", "judge.threshold"), ("03_grpo_training", "train", "train.learning_rate"),
          ("04_evaluation", "eval", "eval.n_prompts"), ("05_case_studies", "cases", "case_studies.n")]
UP_TO_02 = [s for s, _, _ in STAGES[:3]]


@pytest.fixture
def sandbox(tmp_path, monkeypatch):
    """Four tiny stages 00-03 named like the pipeline's; runs and sweeps in tmp_path."""
    return _sandbox(tmp_path, monkeypatch, STAGES[:4])


def _sandbox(tmp_path, monkeypatch, stages):
    nb_dir, runs = tmp_path / "notebooks", tmp_path / "outputs" / "runs"
    nb_dir.mkdir()
    flag = tmp_path / "fail-train-once"
    for name, folder, field in stages:
        body = STAGE_BODY.format(name=name, folder=folder, field=field)
        _notebook(nb_dir / f"{name}.ipynb", (FAIL_ONCE.format(flag=str(flag)) if name.startswith("03") else "") + body)
    monkeypatch.setattr(paths, "NOTEBOOKS_DIR", nb_dir)
    monkeypatch.setattr(paths, "RUNS_DIR", runs)
    monkeypatch.setenv("CREATIVE_GRPO_OUTPUTS", str(tmp_path / "outputs"))
    return tmp_path, flag


def _sweep_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(text, encoding="utf-8")
    return p


THREE = """
base: smoke
set: [train.max_steps=1]
variants:
  a: []
  b: {train: {learning_rate: 1.0e-4}}
  c: [data.test_size=10]
"""


def _order(run_dir: Path) -> list[str]:
    return (run_dir / "order.txt").read_text().split()


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


# ----------------------------------------------------------------------------------------------------- definition

def test_variants_from_lists_mappings_and_a_grid(tmp_path):
    f = _sweep_file(tmp_path, "base: smoke\nset: {train: {max_steps: 1}}\nvariants:\n  x: [train.beta=0.5]\n"
                              "grid:\n  train.learning_rate: [1.0e-5, 2.0e-5]\n  seed: [1, 2]\n")
    s = load_sweep(f, sweep_id="t")
    assert [v.name for v in s.variants] == ["x", "learning_rate=1.0e-05_seed=1", "learning_rate=1.0e-05_seed=2",
                                            "learning_rate=2.0e-05_seed=1", "learning_rate=2.0e-05_seed=2"]
    assert s.variants[0].overrides == ["train.max_steps=1", "train.beta=0.5"] and s.variants[0].run_id == "t-x"
    prof = s.profile(s.variants[4])
    assert (prof.train.learning_rate, prof.seed, prof.train.max_steps, prof.name) == (2.0e-5, 2, 1, "smoke")


@pytest.mark.parametrize("text, message", [
    ("base: smoke\nvariants: {a: [train.nope=1]}\n", r"s.yaml: variants.a: .*smoke.yaml: unknown parameter 'train.nope'"),
    ("base: smoke\nvariants: {a: {train: {learning_rate: fast}}}\n", r"s.yaml: variants.a: .*train.learning_rate"),
    ("base: smoke\nvariant: {a: []}\n", r"s.yaml: unknown field 'variant'"),
    ("base: nosuch\nvariants: {a: []}\n", r"s.yaml: base: unknown profile 'nosuch'"),
    ("base: smoke\n", r"s.yaml: no variants"),
    ("base: smoke\nvariants: {a: [learning_rate]}\n", r"s.yaml: variants.a: 'learning_rate' must look like key.sub=value"),
    ("base: smoke\nvariants: {a: [], b: [seed=42]}\n", r"variants 'a' and 'b' give the same profile"),
    ("base: smoke\nvariants: {'a b': []}\n", r"variants.a b: a variant name is"),
    ("base: smoke\nvariants: [a, b]\n", r"s.yaml: variants: "),
    ("base: smoke\nvariants: {a: [}\n", r"s.yaml: line 2 malformed YAML"),
])
def test_bad_sweep_files_name_the_file_and_field(tmp_path, text, message):
    with pytest.raises(SweepError, match=message):
        load_sweep(_sweep_file(tmp_path, text))


def test_the_example_sweeps_load():
    for f in sorted((paths.SWEEPS_DIR).glob("*.yaml")):
        assert load_sweep(f).variants, f


# ----------------------------------------------------------------------------------------------------- stage keys

def test_stage_keys_follow_the_fields_each_stage_reads():
    base = load_profile("smoke")
    key = lambda p, s, machine="avx512_bf16", sha="abc": stage_key(p, s, machine, sha)  # noqa: E731
    train_only = load_profile("smoke", {"train": {"learning_rate": 1.0}, "eval": {"n_prompts": 4}})
    assert all(key(base, s) == key(train_only, s) for s in UP_TO_02)
    assert key(base, "03_grpo_training") != key(train_only, "03_grpo_training")
    eval_only = load_profile("smoke", {"eval": {"n_prompts": 4}, "description": "x"})
    assert all(key(base, s) == key(eval_only, s) for s in SHARED_STAGES if s != "04_evaluation")
    assert key(base, "04_evaluation") != key(eval_only, "04_evaluation")
    cases_only = load_profile("smoke", {"case_studies": {"n": 5}})
    assert all(key(base, s) == key(cases_only, s) for s in SHARED_STAGES)
    assert list(SHARED_STAGES) == [s for s, _, _ in STAGES[:5]]  # case studies (05) never share
    judge = load_profile("smoke", {"judge": {"threshold": 0.7}})
    assert key(base, "00_build_data") == key(judge, "00_build_data") and key(base, "01_rubric_design") == key(judge, "01_rubric_design")
    assert key(base, "02_judge_calibration") != key(judge, "02_judge_calibration")
    data = load_profile("smoke", {"data": {"test_size": 3}})
    assert key(base, "00_build_data") != key(data, "00_build_data") and key(base, "02_judge_calibration") == key(data, "02_judge_calibration")
    seed = load_profile("smoke", {"seed": 1})
    assert key(base, "00_build_data") != key(seed, "00_build_data") and key(base, "02_judge_calibration") != key(seed, "02_judge_calibration")
    boot = load_profile("smoke", {"eval": {"n_bootstrap": 50}})  # 02 bootstraps its probe intervals with it
    assert key(base, "02_judge_calibration") != key(boot, "02_judge_calibration")
    assert key(base, "01_rubric_design") != key(load_profile("smoke", {"rubric": {"heldout_path": "default"}}), "01_rubric_design")
    for s in SHARED_STAGES:  # another CPU class or another commit computes it again
        assert key(base, s) != key(base, s, machine="avx2") and key(base, s) != key(base, s, sha="def")


# ----------------------------------------------------------------------------------------------------- running

def test_sweep_shares_unchanged_stages_and_resume_never_redoes_a_run(sandbox, capsys):
    tmp_path, flag = sandbox
    f = _sweep_file(tmp_path, THREE)
    flag.write_text("")  # the first 03 to run (variant a's) fails once: a killed sweep
    assert main(["sweep", str(f), "--sweep-id", "sw"]) == 1
    assert "failed variants: a" in capsys.readouterr().err
    runs = paths.RUNS_DIR
    a, b, c = runs / "sw-a", runs / "sw-b", runs / "sw-c"
    assert _manifest(a)["status"] == "failed" and _order(a) == ["00_build_data", "01_rubric_design", "02_judge_calibration"]
    # b differs in training only: 00-02 copied from a (finished there), only 03 ran
    assert _order(b) == ["03_grpo_training"] and _manifest(b)["status"] == "ok"
    assert _manifest(b)["shared"] == {"00_build_data": "sw-a", "01_rubric_design": "sw-a", "02_judge_calibration": "sw-a"}
    entries = {e["name"]: e for e in _manifest(b)["notebooks"]}
    assert entries["00_build_data"]["shared_from"] == "sw-a" and "shared_from" not in entries["03_grpo_training"]
    assert (b / "data" / "out.txt").read_text() == "00_build_data of sw-a" and (b / "notebooks" / "00_build_data.ipynb").exists()
    results = json.loads((b / "results.json").read_text())
    assert results["data.value"] == 20 and results["train.value"] == 1.0e-4
    # c differs in data: 00 ran again, 01 and 02 shared
    assert _order(c) == ["00_build_data", "03_grpo_training"] and json.loads((c / "results.json").read_text())["data.value"] == 10
    assert set(_manifest(c)["shared"]) == {"01_rubric_design", "02_judge_calibration"}
    state = json.loads((tmp_path / "outputs" / "sweeps" / "sw" / "sweep.json").read_text())
    assert [(v["name"], v["status"]) for v in state["variants"]] == [("a", "failed"), ("b", "ok"), ("c", "ok")]

    b_manifest = (b / "manifest.json").read_text()
    assert main(["sweep", "--resume", "sw"]) == 0
    out = capsys.readouterr().out
    assert "b: finished earlier (sw-b), not redone" in out and "a: continuing sw-a (was failed)" in out
    assert _order(a) == ["00_build_data", "01_rubric_design", "02_judge_calibration", "03_grpo_training"]  # 03 only
    assert _manifest(a)["status"] == "ok" and (b / "manifest.json").read_text() == b_manifest and _order(b) == ["03_grpo_training"]
    assert main(["sweep", str(f), "--sweep-id", "sw"]) == 2  # the same id again without --resume: refused
    assert "already exists" in capsys.readouterr().err


def test_a_sweep_over_evaluation_or_case_studies_trains_once(tmp_path, monkeypatch):
    _sandbox(tmp_path, monkeypatch, STAGES)
    f = _sweep_file(tmp_path, "base: smoke\nvariants:\n  a: []\n  ev: [eval.n_prompts=4]\n  cs: [case_studies.n=1]\n"
                              "  both: [eval.n_prompts=4, case_studies.n=1]\n")
    ahead = {r["variant"]: r for r in plan(load_sweep(f, "sw"))}
    assert list(ahead["cs"]["shared_when_run_in_order"]) == list(SHARED_STAGES)
    assert main(["sweep", str(f), "--sweep-id", "sw"]) == 0
    runs = paths.RUNS_DIR
    assert _order(runs / "sw-ev") == ["04_evaluation", "05_case_studies"]
    assert _order(runs / "sw-cs") == ["05_case_studies"]
    assert _manifest(runs / "sw-cs")["shared"] == {s: "sw-a" for s in SHARED_STAGES}
    assert (runs / "sw-cs" / "train" / "out.txt").read_text() == "03_grpo_training of sw-a"
    # both: 00-03 from a (the first run with them), evaluation from ev: ev trained nothing itself (it has a's copy)
    assert _order(runs / "sw-both") == ["05_case_studies"]
    shared = _manifest(runs / "sw-both")["shared"]
    assert shared["03_grpo_training"] == "sw-a" and shared["04_evaluation"] == "sw-ev"
    results = json.loads((runs / "sw-both" / "results.json").read_text())
    assert results["eval.value"] == 4 and results["train.value"] == 5.0e-5


def test_training_and_evaluation_come_from_one_run(tmp_path):
    from lib.sweep import STAGE_FOLDERS, find_donors

    prof = load_profile("smoke")
    stages = list(SHARED_STAGES)

    def fake_run(name: str, ok: list[str]) -> None:
        rd = paths.RUNS_DIR / name
        rd.mkdir(parents=True)
        (rd / "profile.yaml").write_text((paths.PROFILES_DIR / "smoke.yaml").read_text())
        for stage in ok:
            (rd / STAGE_FOLDERS[stage]).mkdir()
        (rd / "manifest.json").write_text(json.dumps({"git_sha": "abc", "machine": {"cpu_class": "avx2"},
                                                      "notebooks": [{"name": s, "status": "ok"} for s in ok]}))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(paths, "RUNS_DIR", tmp_path / "runs")
        fake_run("r1", stages[:4])  # trained, evaluation not finished
        fake_run("r2", stages)  # trained and evaluated: same keys, another training
        donors = find_donors(prof, ["r1", "r2"], "avx2", "abc")
        assert {s: d.name for s, d in donors.items()} == {**{s: "r1" for s in stages[:3]}, **{s: "r2" for s in stages[3:]}}
        fake_run("r0", stages[:2] + stages[3:])  # 02 missing: training and evaluation are not taken without it
        donors = find_donors(prof, ["r0"], "avx2", "abc")
        assert list(donors) == stages[:2]


def test_only_runs_the_named_variants_and_joins_the_sweep(sandbox, capsys):
    tmp_path, _ = sandbox
    f = _sweep_file(tmp_path, THREE)
    ahead = {r["variant"]: r for r in plan(load_sweep(f, "sw"))}  # nothing run yet: what running in order would share
    assert ahead["a"]["shared_when_run_in_order"] == {} and ahead["b"]["shared_when_run_in_order"] == {s: "a" for s in UP_TO_02}
    assert ahead["c"]["shared_when_run_in_order"] == {"01_rubric_design": "a", "02_judge_calibration": "a"}
    assert main(["sweep", str(f), "--sweep-id", "sw", "--only", "b"]) == 0
    assert not (paths.RUNS_DIR / "sw-a").exists() and _order(paths.RUNS_DIR / "sw-b")[0] == "00_build_data"
    rows = {r["variant"]: r for r in plan(load_sweep_dir("sw"))}  # the dry run: what would run and share
    assert rows["b"]["action"] == "skip" and rows["a"]["action"] == "start"
    assert rows["a"]["shared"] == {s: "sw-b" for s in UP_TO_02} and set(rows["c"]["shared"]) == {"01_rubric_design", "02_judge_calibration"}
    assert main(["sweep", str(f), "--sweep-id", "sw", "--only", "a,c"]) == 0  # another process: joins
    assert _order(paths.RUNS_DIR / "sw-a") == ["03_grpo_training"]
    assert main(["sweep", str(f), "--only", "a"]) == 2 and "--only needs --sweep-id" in capsys.readouterr().err
    assert main(["sweep", str(f), "--sweep-id", "sw", "--only", "zz"]) == 2
    assert "no variant 'zz'" in capsys.readouterr().err
    f.write_text(THREE.replace("1.0e-4", "2.0e-4"))
    assert main(["sweep", str(f), "--sweep-id", "sw", "--only", "b"]) == 2  # a changed definition cannot join
    assert "differs from" in capsys.readouterr().err


def test_a_changed_base_profile_does_not_change_a_resumed_sweep(sandbox):
    tmp_path, _ = sandbox
    base = tmp_path / "mybase.yaml"
    base.write_text((paths.PROFILES_DIR / "smoke.yaml").read_text())
    f = _sweep_file(tmp_path, "base: mybase.yaml\nvariants:\n  a: []\n  b: [train.beta=0.5]\n")
    run_sweep(load_sweep(f, "sw"), only=["a"], log=lambda _: None)
    base.write_text(base.read_text().replace("test_size: 20", "test_size: 7"))
    resumed = load_sweep_dir("sw")
    assert resumed.profile(resumed.variants[1]).data.test_size == 20  # the sweep's own copy of the base
    run_sweep(resumed, join=True, log=lambda _: None)
    assert _order(paths.RUNS_DIR / "sw-b") == ["03_grpo_training"]
    with pytest.raises(SweepError, match="differs from the sweep's copy"):
        run_sweep(load_sweep(f, "sw"), only=["b"], join=True, log=lambda _: None)


def test_notebook_06_is_not_a_pipeline_stage(tmp_path, monkeypatch):
    from lib.pipeline import discover_stages

    assert [n for n, _ in discover_stages()][-1] == "05_case_studies"  # the real notebooks: 06 compares runs
    assert (paths.NOTEBOOKS_DIR / "06_compare_runs.ipynb").exists()
    _notebook(tmp_path / "00_a.ipynb", "pass")
    _notebook(tmp_path / "06_b.ipynb", "pass")
    assert [n for n, _ in discover_stages(tmp_path)] == ["00_a", "06_b"]
    nb = nbformat.read(tmp_path / "06_b.ipynb", as_version=4)
    nb.metadata["creative_grpo"] = {"pipeline_stage": False}
    nbformat.write(nb, tmp_path / "06_b.ipynb")
    assert [n for n, _ in discover_stages(tmp_path)] == ["00_a"]


def test_shared_stage_fields_cover_what_the_notebooks_read():
    """Every `profile.<field>` a shared stage's notebook reads is in its SHARED_STAGES entry (or under one of them):
    a field left out would let a variant reuse a stage computed with another value."""
    import re

    from lib.paths import NOTEBOOKS_DIR

    for stage, fields in SHARED_STAGES.items():
        nb = nbformat.read(NOTEBOOKS_DIR / f"{stage}.ipynb", as_version=4)
        src = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
        read = set(re.findall(r"profile\.([a-z_]+(?:\.[a-z_]+)?)", src)) - {"yaml"}
        missing = [r for r in sorted(read) if not any(r == f or r.startswith(f + ".") for f in fields)]
        assert not missing, f"{stage} reads profile fields {missing} that lib.sweep.SHARED_STAGES does not key it on"
