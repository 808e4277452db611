"""A non-editable install ships every module and file of lib/ (and none of bench/), and works away from the checkout."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from lib import paths


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out),
                        str(paths.PROJ_ROOT)], capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert r.returncode == 0, r.stderr[-2000:]
    (whl,) = out.glob("creative_grpo-*.whl")
    return whl


def tracked_lib_files() -> set[str]:
    r = subprocess.run(["git", "ls-files", "lib"], cwd=paths.PROJ_ROOT, capture_output=True, text=True, check=True)
    return {f for f in r.stdout.split() if "__pycache__" not in f}


def test_the_wheel_holds_every_file_of_lib_and_no_tooling(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = sorted(tracked_lib_files() - names)
    assert not missing, f"a non-editable install would lack: {missing}"
    assert not [n for n in names if n.startswith(("bench/", "tests/", "notebooks/"))]


def test_an_installed_copy_loads_profiles_rubric_and_the_calibration_set(wheel, tmp_path):
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    code = ("import lib, lib.judge.calibration as cal, lib.profiles as pr, lib.rubric as ru\n"
            "assert lib.__file__.startswith(%r), lib.__file__\n"
            "p = pr.load_profile('cpu'); rub = ru.load_rubric()\n"
            "df = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rub))\n"
            "print(len(pr.available_profiles()), len(df))\n") % str(site)
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(site)})
    assert r.returncode == 0, r.stderr[-2000:]
    n_profiles, n_labels = map(int, r.stdout.split())
    assert n_profiles >= 3 and n_labels > 0
