"""Hygiene of the source notebooks: clean (no outputs), one literal `parameters` cell, a title first."""
from __future__ import annotations

import ast

import nbformat
import pytest

from lib import paths

NOTEBOOKS = sorted(paths.NOTEBOOKS_DIR.glob("*.ipynb"))
DISPLAY_KNOBS = {"EXAMPLE_ENTITY",  # 01: the product of its hand-written examples (changes no result of the run)
                 "SWEEP", "RUNS"}  # 06: which runs it compares (it is not a stage of a run)


def test_there_are_notebooks():
    assert NOTEBOOKS, f"no notebooks in {paths.NOTEBOOKS_DIR}"


def _parameters_cells(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


def literal_assignments(source: str) -> list[str]:
    """Names assigned in a parameters cell; AssertionError on anything but `NAME[: T] = <literal>`."""
    names = []
    for stmt in ast.parse(source).body:
        assert isinstance(stmt, (ast.Assign, ast.AnnAssign)), f"not an assignment: {ast.unparse(stmt)}"
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        assert all(isinstance(t, ast.Name) for t in targets), f"not a plain name: {ast.unparse(stmt)}"
        assert stmt.value is not None, f"no value: {ast.unparse(stmt)}"
        try:
            ast.literal_eval(stmt.value)
        except ValueError:
            raise AssertionError(f"not a literal: {ast.unparse(stmt)}") from None
        names += [t.id for t in targets]
    return names


def test_literal_assignments_checker():
    assert literal_assignments('A: int = 1  # x\nB = [1, "a", None]\nC: dict = {"k": -1.5}') == ["A", "B", "C"]
    for bad in ("A = 1 + len('x')", "import os", "A = B", "A: int", "a.b = 1", "A = f'{1}'"):
        with pytest.raises(AssertionError):
            literal_assignments(bad)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs, f"{path.name} cell {i} has outputs"
            assert cell.execution_count is None, f"{path.name} cell {i} has an execution count"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_structure(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# "), f"{path.name}: first cell is not a '# ' title"
    params = _parameters_cells(nb)
    assert len(params) == 1, f"{path.name}: {len(params)} cells tagged 'parameters'"
    assert params[0].cell_type == "code"
    names = literal_assignments(params[0].source)
    assert {"RUN_DIR", "PROFILE"} <= set(names), f"{path.name}: parameters cell lacks RUN_DIR/PROFILE"
    # anything that changes a result or a resource belongs in the profile (so `--set` reaches it)
    assert set(names) <= {"RUN_DIR", "PROFILE", *DISPLAY_KNOBS}, f"{path.name}: parameters {set(names) - {'RUN_DIR', 'PROFILE'}}"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


def test_notebooks_are_named_by_stage():
    for p in NOTEBOOKS:
        assert p.name[:2].isdigit() and p.name[2] == "_" and p.stem == p.stem.lower(), p.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_papermill_injects_the_run_after_the_parameters_cell(path):
    """The headless path (lib.pipeline) on the real notebooks, short of executing them (the smoke test runs them in
    JupyterLab's way, with RUN_DIR empty)."""
    from papermill.iorw import load_notebook_node
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(load_notebook_node(str(path)), {"RUN_DIR": "/runs/x", "PROFILE": "cpu"})
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    at = next(i for i, t in enumerate(tags) if "injected-parameters" in t)
    assert "parameters" in tags[at - 1]
    assert 'RUN_DIR = "/runs/x"' in nb.cells[at].source and 'PROFILE = "cpu"' in nb.cells[at].source
