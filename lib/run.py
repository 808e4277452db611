"""The run directory: where every stage of one pipeline run writes, and where later stages look.

Layout of `outputs/runs/<run-id>/`:
    profile.yaml      the resolved profile          manifest.json   git SHA, versions, timings, status
    results.json      key results each notebook recorded (tests and later notebooks read them)
    notebooks/        executed notebooks            data/ rubric/ calibration/ train/ eval/ cases/  stage outputs
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
            raise RunError(f"{p} not found: run the '{stage}' stage of {self.dir.name} first")
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


def create_run_dir(profile: Profile, run_id: str | None = None) -> Path:
    run_id = run_id or new_run_id(profile.name)
    run_dir = paths.RUNS_DIR / run_id
    if run_dir.exists():
        raise RunError(f"run directory already exists: {run_dir} (choose another --run-id)")
    run_dir.mkdir(parents=True)
    (run_dir / "profile.yaml").write_text(dump_profile(profile), encoding="utf-8")
    return run_dir


def open_run(run_dir: str | Path = "", profile: str = "smoke", setup: bool = True) -> RunContext:
    """What every notebook calls first. `run_dir` empty: a fresh interactive run of `profile`.

    A run directory keeps its own resolved `profile.yaml`; that one wins over `profile`.
    """
    if run_dir:
        rd = Path(run_dir)
        if not rd.is_dir():
            raise RunError(f"run directory not found: {rd}")
        prof = load_profile(rd / "profile.yaml") if (rd / "profile.yaml").exists() else load_profile(profile)
    else:
        prof = load_profile(profile)
        rd = create_run_dir(prof, new_run_id(prof.name) + "-interactive")
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
