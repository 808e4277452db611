"""YAML and JSON-lines reading with one-line errors (a leaf module: imports no lib).

Shared by profiles, rubrics, probe files and the labelled sets.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import yaml


def read_yaml(path: str | Path, error: type[Exception]):
    """Parse a YAML file; malformed YAML raises `error` with one line naming the file and line."""
    try:
        return yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise error(f"{path}:{at} malformed YAML: {problem}") from None


def jsonl_objects(path: str | Path, error: type[Exception]) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """(line number, "file:line", object) for each non-empty line of a JSON-lines file whose lines are JSON objects;
    a missing file, bad JSON or a line that is not an object raises `error` with one line naming the file and line."""
    p = Path(path)
    if not p.exists():
        raise error(f"{p}: file not found")
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise error(f"{where}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, where, obj
