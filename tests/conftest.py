"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from lib.judge import calibration as cal
from lib.rubric import load_rubric


@pytest.fixture(scope="session")
def smoke_sweep(tmp_path_factory):
    """The one real smoke pipeline of the suite, run once: `lib.cli sweep lib/assets/sweeps/smoke_cases.yaml`
    (headless, papermill, real engines). Its first run (`t-first`) is the smoke profile as it is; the second takes
    stages 00-04 from it and runs its case studies only. Returns (exit code, outputs folder); tests that read it through
    lib.paths point paths there themselves."""
    from lib import paths
    from lib.cli import main
    from lib.pipeline import prepare_environment

    outputs = tmp_path_factory.mktemp("outputs")
    mp = pytest.MonkeyPatch()
    mp.setenv("CREATIVE_GRPO_OUTPUTS", str(outputs))
    mp.setattr(paths, "RUNS_DIR", outputs / "runs")
    try:
        prepare_environment()
        code = main(["sweep", str(paths.SWEEPS_DIR / "smoke_cases.yaml"), "--sweep-id", "t"])
    finally:
        mp.undo()
    return code, outputs


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


@pytest.fixture(scope="module")
def calib(rubric):
    return cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))


def pytest_collection_modifyitems(config, items):
    """Tests marked `gpu` need a CUDA device: skipped without one (scripts/gpu_check.sh runs them on the GPU)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    try:
        import torch

        cuda = torch.cuda.is_available()
    except ImportError:
        cuda = False
    if not cuda:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))
