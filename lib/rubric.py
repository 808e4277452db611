"""The judge's checklists: rubric YAML files, their validation, rendering and the section score.

A rubric has two sections, `answer` and `think`; each has a prompt `template` and `items` (yes/no
questions). `must-have` items gate the score multiplicatively, `plausible` items are averaged:

    score = prod(must-have indicators) * min(mean(plausible indicators) + 0.05, 1)

`lib/assets/rubrics/default.yaml` reproduces CreativeTinyZero's checklists exactly; `lib/assets/rubrics/heldout.yaml`
rewords them for a held-out judge. Load with `load_rubric()` (default), `load_rubric("heldout")` or a path.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import yaml

from lib import paths
from lib.yamlio import read_yaml

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

ITEM_TYPES = ("must-have", "plausible")
SECTION_NAMES = ("answer", "think")  # both required in every rubric
PLAUSIBLE_FLOOR = 0.05  # the original's bonus: a text passing every gate never scores exactly 0
TEMPLATE_PLACEHOLDER = "这里写下你的"  # the system prompt's format example ("write your ... here"): copying it is a failure
MIN_THINK_CHARS = 20  # the original's cut-off: shorter think sections score 0 unjudged

_PLACEHOLDER_RE = re.compile(r"\{(entity|completion|question)\}")
_ITEM_FIELDS = ("key", "type", "question", "weight")
_SECTION_FIELDS = ("template", "items")
_TOP_FIELDS = set(SECTION_NAMES) | {"description", "relative"}
_RELATIVE_FIELDS = ("template", "question")
_RELATIVE_RE = re.compile(r"\{(entity|a|b|question)\}")


class RubricError(ValueError):
    """A rubric that cannot be used (or a score that cannot be computed); one line naming file and thing."""


@dataclass(frozen=True)
class RubricItem:
    """One yes/no question. `question` may contain `{entity}`."""

    key: str
    type: str  # "must-have" | "plausible"
    question: str
    weight: float = 1.0  # weight in the plausible mean (ignored for must-have items)


@dataclass(frozen=True)
class RubricSection:
    """A checklist for one part of a completion (`answer` or `think`) and the prompt that asks it."""

    name: str
    template: str  # holds {completion} and {question}; usually {entity}
    items: tuple[RubricItem, ...] = field(default_factory=tuple)

    @property
    def must_have(self) -> list[RubricItem]:
        return [it for it in self.items if it.type == "must-have"]

    @property
    def plausible(self) -> list[RubricItem]:
        return [it for it in self.items if it.type == "plausible"]

    @property
    def keys(self) -> list[str]:
        return [it.key for it in self.items]

    def item(self, key: str) -> RubricItem:
        for it in self.items:
            if it.key == key:
                return it
        raise RubricError(f"section {self.name!r} has no item {key!r}; items: {', '.join(self.keys)}")

    def question(self, entity: str, item: RubricItem) -> str:
        """The item's question with `{entity}` filled in."""
        return item.question.replace("{entity}", entity)

    def render(self, entity: str, completion: str, item: RubricItem) -> str:
        """The full judge prompt for one (text, question).

        One pass over the template's own placeholders, so braces or placeholder names inside the
        entity or completion are copied verbatim and never expanded.

        >>> s = RubricSection("answer", "关于{entity}：{completion}\\n问：{question}", (RubricItem("r", "must-have", "与{entity}相关？"),))
        >>> s.render("可乐", "喝{question}!", s.items[0])
        '关于可乐：喝{question}!\\n问：与可乐相关？'
        """
        return _fill(self.template, entity=entity, completion=completion, question=self.question(entity, item))

    def prefix(self, entity: str, completion: str) -> str:
        """The rendered template up to `{question}`: shared by every question about this text."""
        head = self.template.split("{question}", 1)[0]
        return _fill(head, entity=entity, completion=completion, question="")


def _fill(template: str, **values: str) -> str:
    return _PLACEHOLDER_RE.sub(lambda m: values[m.group(1)], template)


@dataclass(frozen=True)
class RelativeSpec:
    """The pairwise question of relative judging (lib.judge.pairwise): which of two texts, A or B, is the better ad.

    `template` holds {a}, {b} and {question}, usually {entity}; `question` may hold {entity}."""

    template: str
    question: str

    def render(self, entity: str, a: str, b: str) -> str:
        """The filled template; one pass, so braces inside the entity or texts are copied verbatim.

        >>> RelativeSpec("{entity} A:{a} B:{b} {question}", "哪个好？").render("可乐", "{b}", "乙")
        '可乐 A:{b} B:乙 哪个好？'
        """
        values = {"entity": entity, "a": a, "b": b, "question": self.question.replace("{entity}", entity)}
        return _RELATIVE_RE.sub(lambda m: values[m.group(1)], self.template)


@dataclass(frozen=True)
class Rubric:
    sections: dict[str, RubricSection]
    source: str  # the file it was loaded from
    content_hash: str  # sha256 of the canonical sections (see `canonical_json`), and of `relative` when present
    description: str = ""
    relative: RelativeSpec | None = None  # the pairwise question (optional `relative:` mapping)

    def __getitem__(self, name: str) -> RubricSection:
        if name not in self.sections:
            raise RubricError(f"{self.source}: no section {name!r}; sections: {', '.join(self.sections)}")
        return self.sections[name]


def canonical_json(sections: Mapping[str, RubricSection]) -> str:
    """A dump of what a rubric asks, independent of YAML layout, comments and mapping key order."""
    data = {
        name: {
            "template": s.template,
            "items": [{"key": it.key, "type": it.type, "question": it.question, "weight": float(it.weight)} for it in s.items],
        }
        for name, s in sections.items()
    }
    return json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def rubric_path(name_or_path: str | Path | None = None) -> Path:
    """None -> the default rubric; a bare name (`"heldout"`) -> `lib/assets/rubrics/<name>.yaml`; else a path."""
    if name_or_path is None:
        return paths.DEFAULT_RUBRIC
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists() or len(p.parts) > 1:
        if not p.exists():
            raise RubricError(f"rubric file not found: {p}")
        return p
    candidate = paths.RUBRICS_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(x.stem for x in paths.RUBRICS_DIR.glob("*.yaml")))
        raise RubricError(f"unknown rubric {str(name_or_path)!r}; available: {known}")
    return candidate


def load_rubric(path: str | Path | None = None) -> Rubric:
    """Load and validate a rubric YAML (None: `lib/assets/rubrics/default.yaml`).

    Every problem raises `RubricError` with one line naming the file and the section/item at fault.

    >>> r = load_rubric()
    >>> [it.key for it in r["answer"].must_have]
    ['fluency', 'is_ad', 'relevancy']
    """
    p = rubric_path(path)
    return parse_rubric(read_yaml(p, RubricError), source=str(p))


def parse_rubric(raw: object, source: str = "<dict>") -> Rubric:
    """Validate an already-parsed rubric mapping (what `load_rubric` does after reading YAML)."""
    if not isinstance(raw, dict):
        raise RubricError(f"{source}: a rubric must be a mapping with sections 'answer' and 'think', got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in _TOP_FIELDS)
    if unknown:
        raise RubricError(f"{source}: unknown top-level key {unknown[0]!r} (allowed: answer, think, description)")
    sections: dict[str, RubricSection] = {}
    for name in SECTION_NAMES:
        if name not in raw:
            raise RubricError(f"{source}: missing section {name!r}")
        sections[name] = _parse_section(raw[name], name, source)
    description = raw.get("description") or ""
    relative = _parse_relative(raw["relative"], source) if "relative" in raw else None
    canonical = canonical_json(sections)
    if relative is not None:
        canonical += json.dumps({"relative": [relative.template, relative.question]}, ensure_ascii=False)
    content_hash = hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    return Rubric(sections=sections, source=source, content_hash=content_hash, description=str(description),
                  relative=relative)


def _parse_relative(raw: object, source: str) -> RelativeSpec:
    where = f"{source}: relative"
    _check_mapping(raw, where, "'template' and 'question'", "key", _RELATIVE_FIELDS)
    for name in _RELATIVE_FIELDS:
        if not isinstance(raw.get(name), str) or not raw[name].strip():
            raise RubricError(f"{where}: {name!r} must be a non-empty string")
    for ph in ("{a}", "{b}", "{question}"):
        if ph not in raw["template"]:
            raise RubricError(f"{where}: template has no {ph} placeholder")
    return RelativeSpec(template=raw["template"], question=raw["question"])


def _parse_section(raw: object, name: str, source: str) -> RubricSection:
    where = f"{source}: section {name!r}"
    _check_mapping(raw, where, "'template' and 'items'", "key", _SECTION_FIELDS)
    template = raw.get("template")
    if not isinstance(template, str) or not template.strip():
        raise RubricError(f"{where}: 'template' must be a non-empty string")
    for ph in ("{completion}", "{question}"):
        if ph not in template:
            raise RubricError(f"{where}: template has no {ph} placeholder")
    items_raw = raw.get("items")
    if items_raw is None or items_raw == []:
        raise RubricError(f"{where}: empty section (no items)")
    if not isinstance(items_raw, list):
        raise RubricError(f"{where}: 'items' must be a list, got {type(items_raw).__name__}")
    items: list[RubricItem] = []
    seen: set[str] = set()
    for i, it in enumerate(items_raw):
        item = _parse_item(it, f"{where} item {i + 1}")
        if item.key in seen:
            raise RubricError(f"{where}: duplicate item key {item.key!r}")
        seen.add(item.key)
        items.append(item)
    plausible = [it for it in items if it.type == "plausible"]
    if plausible and sum(it.weight for it in plausible) <= 0:
        raise RubricError(f"{where}: plausible item weights sum to 0")
    return RubricSection(name=name, template=template, items=tuple(items))


def _check_mapping(raw: object, where: str, shape: str, noun: str, allowed: Sequence[str]) -> None:
    """A rubric section or item must be a mapping of known fields: a one-line RubricError otherwise."""
    if not isinstance(raw, dict):
        raise RubricError(f"{where}: must be a mapping with {shape}, got {type(raw).__name__}")
    unknown = sorted(str(k) for k in raw if k not in allowed)
    if unknown:
        raise RubricError(f"{where}: unknown {noun} {unknown[0]!r} (allowed: {', '.join(allowed)})")


def _parse_item(raw: object, where: str) -> RubricItem:
    _check_mapping(raw, where, "key, type, question", "field", _ITEM_FIELDS)
    key = raw.get("key")
    if isinstance(key, (int, float)) and not isinstance(key, bool):
        key = str(key)  # YAML reads a key like 1st as a string but 1 as an int; accept both
    if not isinstance(key, str) or not key.strip():
        raise RubricError(f"{where}: 'key' must be a non-empty string, got {key!r}")
    where = f"{where} ({key!r})"
    typ = raw.get("type")
    if typ not in ITEM_TYPES:
        raise RubricError(f"{where}: unknown item type {typ!r} (allowed: must-have, plausible)")
    question = raw.get("question")
    if not isinstance(question, str) or not question.strip():
        raise RubricError(f"{where}: 'question' must be a non-empty string")
    weight = raw.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
        raise RubricError(f"{where}: weight must be a number, got {weight!r}")
    if weight < 0:
        raise RubricError(f"{where}: negative weight {weight!r}")
    return RubricItem(key=key, type=typ, question=question, weight=float(weight))


def score_parts(section: RubricSection, indicators: Mapping[str, float]) -> dict[str, float]:
    """The pieces of `section_score`: gate (product of must-have), plausible mean, plausible factor, score.

    >>> s = load_rubric()["answer"]
    >>> score_parts(s, {"fluency": 1, "is_ad": 0.5, "relevancy": 1, "humor": 1, "detail": 0, "creativity": 0.5})
    {'gate': 0.5, 'plausible_mean': 0.5, 'plausible_factor': 0.55, 'score': 0.275}
    """
    values: dict[str, float] = {}
    for key, v in indicators.items():
        try:
            x = float(v)
        except (TypeError, ValueError):
            x = math.nan
        if not 0.0 <= x <= 1.0:  # NaN fails too
            raise RubricError(f"section {section.name!r}: indicator {key!r} must lie in [0, 1], got {v!r}")
        values[key] = x
    gate = 1.0
    for it in section.must_have:
        gate *= values.get(it.key, 0.0)
    plausible = section.plausible
    if not plausible:
        return {"gate": gate, "plausible_mean": math.nan, "plausible_factor": 1.0, "score": gate}
    total_w = sum(it.weight for it in plausible)
    mean = sum(it.weight * values.get(it.key, 0.0) for it in plausible) / total_w
    factor = min(mean + PLAUSIBLE_FLOOR, 1.0)
    return {"gate": gate, "plausible_mean": mean, "plausible_factor": factor, "score": gate * factor}


def section_score(section: RubricSection, indicators: Mapping[str, float]) -> float:
    """The original's section score: `prod(must-have) * min(mean(plausible) + 0.05, 1)`.

    `indicators` maps item keys to values in [0, 1]: hard 0/1 verdicts or soft P(yes). A key that is
    missing counts 0 (the seed judge skips plausible items once a gate failed); keys outside the
    section are ignored. Item weights turn the plausible mean into a weighted mean. A section without
    plausible items scores its gates alone (factor 1), so an all-gate rubric is a pass/fail check
    rather than one capped at 0.05.

    >>> s = load_rubric()["answer"]
    >>> section_score(s, {"fluency": 1, "is_ad": 1, "relevancy": 1, "humor": 1, "detail": 0, "creativity": 0})
    0.3833333333333333
    """
    return score_parts(section, indicators)["score"]


def item_ablation(section: RubricSection, indicators: Mapping[str, float]) -> "pd.DataFrame":
    """How much each item moves the score: the score as given, then with each item in turn set to 0.

    Columns: fails (item key, "(none)" first), type, score, delta (score minus the unablated score).
    """
    import pandas as pd

    base = section_score(section, indicators)
    rows = [{"fails": "(none)", "type": "", "score": base, "delta": 0.0}]
    for it in section.items:
        s = section_score(section, {**indicators, it.key: 0.0})
        rows.append({"fails": it.key, "type": it.type, "score": s, "delta": s - base})
    return pd.DataFrame(rows)


def plot_item_ablation(table: "pd.DataFrame", title: str, path: str | Path | None = None):
    """Horizontal bars of `item_ablation`'s score per failing item (must-have red, plausible blue).

    Saved as PNG at `path` when given; returns the Figure.
    """
    from matplotlib.figure import Figure

    colors = {"must-have": "#C44E52", "plausible": "#4C72B0", "": "#55A868"}
    fig = Figure(figsize=(6.5, 0.3 * len(table) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    labels = list(table["fails"])[::-1]
    bars = ax.barh(labels, table["score"].to_numpy()[::-1], color=[colors[t] for t in table["type"]][::-1])
    ax.bar_label(bars, fmt="%.3f", padding=2, fontsize=8)
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color=colors[t], label=t) for t in ("must-have", "plausible")], loc="lower right", fontsize=8)
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("section score when this item fails (indicator set to 0)")
    ax.set_title(title)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def think_shortcut(think_text: str) -> str | None:
    """Why a think section scores 0 without asking the judge, or None when it must be judged.

    "placeholder": it still holds the prompt's example text; "too_short": fewer than 20 characters.

    >>> think_shortcut("这里写下你的思考过程"), think_shortcut("短"), think_shortcut("我" * 20)
    ('placeholder', 'too_short', None)
    """
    if TEMPLATE_PLACEHOLDER in think_text:
        return "placeholder"
    if len(think_text) < MIN_THINK_CHARS:
        return "too_short"
    return None


def rubric_table(rubric: Rubric) -> "pd.DataFrame":
    """One row per item (section, key, type, weight, question), for display and export."""
    import pandas as pd

    rows = [
        {"section": name, "key": it.key, "type": it.type, "weight": it.weight, "question": it.question}
        for name, s in rubric.sections.items()
        for it in s.items
    ]
    return pd.DataFrame(rows, columns=["section", "key", "type", "weight", "question"])


def export_rubric(rubric: Rubric, out_dir: str | Path) -> dict[str, Path]:
    """Write the rubric for a run: per-section tables (CSV), one Markdown file, and a copy of the YAML.

    Returns {"answer_csv", "think_csv", "markdown", "yaml"} -> path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = rubric_table(rubric)
    written: dict[str, Path] = {}
    md = [f"# Rubric `{Path(rubric.source).name}`", "", f"sha256 `{rubric.content_hash}`", ""]
    for name, section in rubric.sections.items():
        part = table[table["section"] == name].drop(columns="section")
        written[f"{name}_csv"] = out / f"rubric_{name}.csv"
        part.to_csv(written[f"{name}_csv"], index=False)
        md += [f"## {name}", "", "Template:", "", "```", section.template, "```", "", part.to_markdown(index=False), ""]
    written["markdown"] = out / "rubric.md"
    written["markdown"].write_text("\n".join(md), encoding="utf-8")
    written["yaml"] = out / "rubric.yaml"
    src = Path(rubric.source)
    if src.is_file():  # the file as written, comments included
        written["yaml"].write_text(src.read_text(encoding="utf-8"), encoding="utf-8")
    else:
        written["yaml"].write_text(yaml.safe_dump(json.loads(canonical_json(rubric.sections)), allow_unicode=True, sort_keys=False), encoding="utf-8")
    return written
