"""YAML reading with one-line errors, shared by profiles, rubrics and probe files (a leaf module: imports no lib)."""
from __future__ import annotations

from pathlib import Path

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
