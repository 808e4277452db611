"""The calibration set: read and validate the labelled texts, subset them, and ask a judge every question.

`lib/assets/calibration.jsonl` (see `lib/assets/CALIBRATION.md`) holds answer texts and think sections, each with a
human yes/no label for every question of its rubric section. Pure logic, no LLM: the judge is passed in (any
`lib.judge.SectionJudge`). Bad data raises `CalibrationError` naming the file, line and field.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import pandas as pd

from lib import paths
from lib.yamlio import jsonl_objects
from lib.rubric import SECTION_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from lib.judge.types import SectionJudge
    from lib.rubric import Rubric


REQUIRED_FIELDS = ("id", "section", "entity", "text", "labels")
OPTIONAL_FIELDS = ("kind", "note", "domain")


class CalibrationError(ValueError):
    """Bad calibration data or arguments; one line naming the file, line and field (or the argument)."""


def rubric_keys(rubric: "Rubric") -> dict[str, list[str]]:
    """The item keys of each rubric section, e.g. {"answer": ["fluency", ...], "think": [...]}."""
    return {name: list(section.keys) for name, section in rubric.sections.items()}


def load_calibration_set(
    path: str | Path | None = None, rubric_keys: Mapping[str, Sequence[str]] | None = None
) -> pd.DataFrame:
    """Read and validate the calibration set (default `lib.paths.CALIBRATION_SET`), one row per text.

    Each JSONL line: `{"id", "section", "entity", "text", "labels": {key: bool}}` plus optional
    `kind`, `note`, `domain`. With `rubric_keys` ({section: [keys]}) every line must label exactly
    those keys; without it, every line of a section must label the same keys as its first line.
    Any problem raises `CalibrationError("<file>:<line>: field '<name>': ...")`.

    Returns columns id, section, entity, domain, kind, text, labels (dict), note, in file order.
    """
    p = Path(path) if path is not None else paths.CALIBRATION_SET
    if not p.exists():
        raise CalibrationError(f"{p}: calibration set not found")
    rows: list[dict[str, Any]] = []
    id_lines: dict[str, int] = {}
    first_keys: dict[str, tuple[list[str], int]] = {}
    for lineno, where, obj in jsonl_objects(p, CalibrationError):
        row = _validate_row(obj, where)
        if row["id"] in id_lines:
            raise CalibrationError(f"{where}: field 'id': duplicate id {row['id']!r} (first on line {id_lines[row['id']]})")
        id_lines[row["id"]] = lineno
        keys = list(row["labels"])
        section = row["section"]
        if rubric_keys is not None:
            if section not in rubric_keys:
                raise CalibrationError(f"{where}: field 'section': {section!r} is not in the rubric's sections {sorted(rubric_keys)}")
            _check_key_set(keys, list(rubric_keys[section]), where, f"the rubric's {section!r} items; a new or renamed "
                           f"rubric item needs a true/false label on every {section!r} line of this file (lib/assets/CALIBRATION.md)")
        elif section in first_keys:
            ref, ref_line = first_keys[section]
            _check_key_set(keys, ref, where, f"line {ref_line} (first {section!r} line)")
        else:
            first_keys[section] = (keys, lineno)
        rows.append(row)
    if not rows:
        raise CalibrationError(f"{p}: no rows")
    return pd.DataFrame(rows, columns=["id", "section", "entity", "domain", "kind", "text", "labels", "note"])


def _validate_row(obj: dict, where: str) -> dict[str, Any]:
    for f in REQUIRED_FIELDS:
        if f not in obj:
            raise CalibrationError(f"{where}: missing field {f!r}")
    for f in obj:
        if f not in REQUIRED_FIELDS and f not in OPTIONAL_FIELDS:
            raise CalibrationError(f"{where}: unknown field {f!r} (allowed: {', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)})")
    for f in ("id", "entity", "text"):
        if not isinstance(obj[f], str) or not obj[f].strip():
            raise CalibrationError(f"{where}: field {f!r}: expected a non-empty string, got {obj[f]!r}")
    for f in OPTIONAL_FIELDS:
        if f in obj and not isinstance(obj[f], str):
            raise CalibrationError(f"{where}: field {f!r}: expected a string, got {obj[f]!r}")
    if obj["section"] not in SECTION_NAMES:
        raise CalibrationError(f"{where}: field 'section': unknown section {obj['section']!r} (known: {', '.join(SECTION_NAMES)})")
    labels = obj["labels"]
    if not isinstance(labels, dict) or not labels:
        raise CalibrationError(f"{where}: field 'labels': expected a non-empty object of key: true/false, got {labels!r}")
    for k, v in labels.items():
        if not isinstance(v, bool):
            raise CalibrationError(f"{where}: field 'labels.{k}': expected true or false, got {v!r}")
    return {
        "id": obj["id"], "section": obj["section"], "entity": obj["entity"], "domain": obj.get("domain", ""),
        "kind": obj.get("kind", ""), "text": obj["text"], "labels": dict(labels), "note": obj.get("note", ""),
    }


def _check_key_set(keys: list[str], expected: list[str], where: str, against: str) -> None:
    missing = [k for k in expected if k not in keys]
    extra = [k for k in keys if k not in expected]
    if missing:
        raise CalibrationError(f"{where}: field 'labels': missing key(s) {missing} (expected those of {against})")
    if extra:
        raise CalibrationError(f"{where}: field 'labels': unknown key(s) {extra} (expected those of {against})")


def long_labels(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (text, question): id, section, entity, text, key, label (bool), kind, domain."""
    records = [
        {"id": r.id, "section": r.section, "entity": r.entity, "text": r.text, "key": k, "label": bool(v),
         "kind": r.kind, "domain": r.domain}
        for r in df.itertuples(index=False)
        for k, v in r.labels.items()
    ]
    return pd.DataFrame(records, columns=["id", "section", "entity", "text", "key", "label", "kind", "domain"])


def label_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Label counts per question: section, key, n, yes, no, yes_rate (rubric order kept)."""
    long = long_labels(df)
    g = long.groupby(["section", "key"], sort=False)["label"]
    out = pd.DataFrame({"n": g.size(), "yes": g.sum().astype(int)})
    out["no"] = out["n"] - out["yes"]
    out["yes_rate"] = out["yes"] / out["n"]
    return out.reset_index()


def select_calibration_texts(df: pd.DataFrame, max_texts: int | None, seed: int = 0) -> pd.DataFrame:
    """At most `max_texts` texts per section, stratified by `kind`, the same ones for the same seed.

    Within each kind the texts are ranked in a random order (`numpy.random.default_rng(seed)`), and a
    text's place in line is (rank + 0.5) / (size of its kind): taking the first `max_texts` places
    gives every kind a share close to its share of the section (small kinds may get none). None, or
    a cap at least the section's size, keeps every text. File order is kept.

    >>> df = pd.DataFrame({"id": list("abcdef"), "section": "answer", "kind": ["good"] * 4 + ["bad"] * 2})
    >>> list(select_calibration_texts(df, 3).kind.value_counts().sort_index())
    [1, 2]
    """
    if max_texts is None:
        return df
    if max_texts < 1:
        raise CalibrationError(f"select_calibration_texts: max_texts must be >= 1 or None, got {max_texts}")
    rng = np.random.default_rng(seed)
    keep: list[Any] = []
    for _, sec in df.groupby("section", sort=True):
        if len(sec) <= max_texts:
            keep += list(sec.index)
            continue
        places = []
        for kind, grp in sec.groupby("kind", sort=True):
            order = rng.permutation(len(grp))
            places += [((r + 0.5) / len(grp), str(kind), idx) for r, idx in zip(order, grp.index)]
        keep += [idx for _, _, idx in sorted(places, key=lambda t: (t[0], t[1]))[:max_texts]]
    return df.loc[sorted(keep, key=df.index.get_loc)]


def judge_calibration_set(judge: "SectionJudge", rubric: "Rubric", df: pd.DataFrame) -> pd.DataFrame:
    """Ask `judge` every question about every text of the calibration set.

    Returns one row per (id, key): id, section, key, p_yes (NaN when flagged or not asked),
    verdict (bool), flagged, asked (False where seed mode skipped a plausible item, which counts 0).
    """
    rows = []
    for name, sub in df.groupby("section", sort=False):
        section = rubric[name]
        results = judge.judge_section(section, list(sub["entity"]), list(sub["text"]))
        if len(results) != len(sub):
            raise CalibrationError(f"judge returned {len(results)} results for {len(sub)} {name!r} texts")
        for rid, verdicts in zip(sub["id"], results):
            for key in section.keys:
                j = verdicts.get(key)
                rows.append({
                    "id": rid, "section": name, "key": key,
                    "p_yes": np.nan if j is None or j.p_yes is None else float(j.p_yes),
                    "verdict": bool(j.verdict) if j is not None else False,
                    "flagged": bool(j.flagged) if j is not None else False,
                    "asked": j is not None,
                })
    return pd.DataFrame(rows, columns=["id", "section", "key", "p_yes", "verdict", "flagged", "asked"])

