"""The run directory: where every stage of one pipeline run writes, and where later stages look.

Layout of `outputs/runs/<run-id>/`:
    profile.yaml      the resolved profile          manifest.json   git SHA, versions, timings, status
    results.json      key results each notebook recorded (tests and later notebooks read them)
    notebooks/        executed notebooks            data/ rubric/ calibration/ train/ eval/ cases/  stage outputs

Interactive runs (a notebook opened in JupyterLab with `RUN_DIR` empty, or `python -m lib.cli new`) carry
`"interactive": true` in their manifest; a notebook with `RUN_DIR` empty continues the newest of them for its profile.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lib import paths
from lib.profiles import Profile, dump_profile, load_profile

STAGES = ("data", "rubric", "calibration", "train", "eval", "cases", "report")
# The notebook that writes each stage folder (what to run first when a later notebook finds it missing).
STAGE_NOTEBOOKS = {"data": "00_build_data", "rubric": "01_rubric_design", "calibration": "02_judge_calibration",
                   "train": "03_grpo_training", "eval": "04_evaluation", "cases": "05_case_studies"}
# A line a notebook prints with this prefix is echoed to the terminal of a headless run (`lib.cli run`).
PROGRESS_PREFIX = "[progress] "


class RunError(RuntimeError):
    """A run directory that cannot be used as asked; one line naming it."""


def new_run_id(profile_name: str) -> str:
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{profile_name}"


@dataclass
class RunContext:
    dir: Path
    profile: Profile

    def stage(self, name: str) -> Path:
        """The folder a stage writes into (created)."""
        if name not in STAGES:
            raise RunError(f"unknown stage {name!r}; known: {', '.join(STAGES)}")
        d = self.dir / name
        d.mkdir(parents=True, exist_ok=True)
        return d

    def find(self, stage: str, filename: str) -> Path:
        """An earlier stage's output; a clear error when that stage has not run in this run."""
        p = self.dir / stage / filename
        if not p.exists():
            notebook = STAGE_NOTEBOOKS.get(stage, stage)
            raise RunError(f"run {self.dir.name} has no {stage}/{filename}: run notebooks/{notebook}.ipynb first "
                           f"(or `python -m lib.cli stage {self.dir.name} {notebook[:2]}`)")
        return p

    def record(self, key: str, value: Any) -> None:
        """Record a key result in results.json (read by tests, later notebooks and the report)."""
        results = self.results()
        results[key] = value
        tmp = self.dir / "results.json.tmp"
        tmp.write_text(json.dumps(results, ensure_ascii=False, indent=2, default=_jsonable), encoding="utf-8")
        os.replace(tmp, self.dir / "results.json")

    def results(self) -> dict:
        p = self.dir / "results.json"
        return json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}


def _jsonable(x: Any):
    if hasattr(x, "item"):
        return x.item()
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _claim_dir(run_id: str | None, default: str) -> Path:
    """Create the run directory atomically (mkdir either creates it or fails): two runs started together never share
    one. A given `run_id` that exists is a RunError; the default id gets `-2`, `-3`, ... when taken."""
    try:
        paths.RUNS_DIR.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(f"cannot create {paths.RUNS_DIR}: {exc.strerror or exc}") from None
    n = 1
    while True:
        run_dir = paths.RUNS_DIR / (run_id or (default if n == 1 else f"{default}-{n}"))
        try:
            run_dir.mkdir()
            return run_dir
        except FileExistsError:
            if run_id:
                raise RunError(f"run directory already exists: {run_dir} (choose another --run-id)") from None
            n += 1
        except OSError as exc:
            raise RunError(f"cannot create {run_dir}: {exc.strerror or exc}") from None


def create_run_dir(profile: Profile, run_id: str | None = None, interactive: bool = False) -> Path:
    run_dir = _claim_dir(run_id, new_run_id(profile.name) + ("-interactive" if interactive else ""))
    run_id = run_dir.name
    try:
        (run_dir / "profile.yaml").write_text(dump_profile(profile), encoding="utf-8")
    except OSError as exc:
        raise RunError(f"cannot write {run_dir / 'profile.yaml'}: {exc.strerror or exc}") from None
    if interactive:  # the pipeline runner writes its own manifest; an interactive run is marked by this one
        manifest = {"run_id": run_id, "profile": profile.name, "interactive": True,
                    "created_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
        (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return run_dir


def new_interactive_run(profile: str | Path = "smoke", overrides: dict | None = None, run_id: str | None = None) -> Path:
    """A fresh interactive run of `profile` (what `python -m lib.cli new` makes); notebooks then continue it.
    Sized for this machine as a headless run is (lib.estimate.size_for_machine); the choice goes into its manifest."""
    from lib.estimate import size_for_machine

    prof, sizing = size_for_machine(load_profile(profile, overrides=overrides))
    run_dir = create_run_dir(prof, run_id, interactive=True)
    manifest = json.loads((run_dir / "manifest.json").read_text(encoding="utf-8"))
    (run_dir / "manifest.json").write_text(json.dumps({**manifest, "sizing": sizing}, indent=2, default=str), encoding="utf-8")
    return run_dir


def newest_interactive_run(profile_name: str) -> Path | None:
    """The most recently created interactive run of this profile under RUNS_DIR, or None."""
    found = []
    for manifest in paths.RUNS_DIR.glob("*/manifest.json"):
        try:
            m = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(m, dict) and m.get("interactive") is True and m.get("profile") == profile_name:
            found.append((str(m.get("created_at", "")), manifest.parent.name, manifest.parent))
    return max(found)[2] if found else None


def _has_stage_output(run_dir: Path) -> bool:
    return any((run_dir / s).exists() for s in STAGES)


def open_run(run_dir: str | Path = "", profile: str = "smoke", setup: bool = True, starts_run: bool = False,
             overrides: dict | None = None) -> RunContext:
    """What every notebook calls first; prints which run it writes to.

    `run_dir` given (the pipeline runner, papermill): that run; its own `profile.yaml` wins over `profile`.
    `run_dir` empty (JupyterLab): the newest interactive run of `profile`, a new one when there is none. A notebook
    that `starts_run` (00, the first stage) takes a new run instead when the newest one already has stage outputs,
    so re-running it never overwrites an earlier run. `overrides` (a nested dict) are merged into the run's profile
    and written back to its `profile.yaml`, so later stages see them too.
    """
    if run_dir:
        rd = Path(run_dir)
        if not rd.is_dir():
            raise RunError(f"run directory not found: {rd}")
        source = rd / "profile.yaml" if (rd / "profile.yaml").exists() else profile
        prof = load_profile(source, overrides=overrides)
        if overrides:  # atomic: every rank of a multi-process `lib.train --set` writes the same file
            tmp = rd / f"profile.yaml.{os.getpid()}.tmp"
            tmp.write_text(dump_profile(prof), encoding="utf-8")
            os.replace(tmp, rd / "profile.yaml")
    else:
        name = load_profile(profile).name
        rd = newest_interactive_run(name)
        how = "continuing the newest interactive run of profile"
        if rd is None or (starts_run and _has_stage_output(rd)):
            rd = new_interactive_run(profile, overrides)
            how = "new interactive run of profile"
            overrides = None
        ctx = open_run(rd, profile, setup=setup, overrides=overrides)
        print(f"run {rd} ({how} {name!r})")
        return ctx
    if setup:
        seed_everything(prof.seed)
    return RunContext(dir=rd, profile=prof)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed)
    except ImportError:
        pass
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:
        pass
