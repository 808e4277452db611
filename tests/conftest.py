"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from lib.judge import calibration as cal
from lib.rubric import load_rubric


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
