"""Every path the project uses. Notebooks and library code ask here; nobody builds paths by hand."""
from __future__ import annotations

import os
from pathlib import Path

PROJ_ROOT = Path(__file__).resolve().parents[1]
LIB_DIR = PROJ_ROOT / "lib"
ASSETS_DIR = LIB_DIR / "assets"  # files, not code: profiles, rubrics, sweeps, the catalogue and the labelled sets
DATA_DIR = ASSETS_DIR  # small data files written in this project (catalogue, calibration set)
PROFILES_DIR = ASSETS_DIR / "profiles"
RUBRICS_DIR = ASSETS_DIR / "rubrics"
SWEEPS_DIR = ASSETS_DIR / "sweeps"
ACCELERATE_DIR = ASSETS_DIR / "accelerate"
NOTEBOOKS_DIR = PROJ_ROOT / "notebooks"
OUTPUTS_DIR = Path(os.environ.get("CREATIVE_GRPO_OUTPUTS", PROJ_ROOT / "outputs"))
RUNS_DIR = OUTPUTS_DIR / "runs"
# Materialized models (GGUF -> safetensors) live outside the repo so fresh clones reuse them.
CACHE_DIR = Path(os.environ.get("CREATIVE_GRPO_CACHE", Path.home() / ".cache" / "creative-grpo"))
MODEL_CACHE_DIR = CACHE_DIR / "models"

ENTITY_CATALOGUE = DATA_DIR / "entities.csv"
CALIBRATION_SET = DATA_DIR / "calibration.jsonl"
DEFAULT_RUBRIC = RUBRICS_DIR / "default.yaml"
