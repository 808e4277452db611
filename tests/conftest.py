"""Fixtures shared by several test files."""
from __future__ import annotations

import pytest

from lib import calibration as cal
from lib.rubric import load_rubric


@pytest.fixture(scope="module")
def rubric():
    return load_rubric()


@pytest.fixture(scope="module")
def calib(rubric):
    return cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))
