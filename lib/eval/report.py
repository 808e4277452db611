"""Case-study pages (before/after RL, side by side) and the one-file HTML report of a run.

Everything written here is self-contained: inline CSS, images as base64 data URIs, no scripts and
no external assets, so a report opens offline from a copied run directory. All model text and
every file's content is escaped with html.escape.

Case dict schema (validated by `Case`; `case_entry` builds a model's entry from Judgements):

    {"entity": "椰子水",                          # what the ad is for
     "prompt": "...",                             # optional: the user prompt
     "models": {                                  # label -> entry, shown left to right
        "before RL": {
            "completion": "<think>…</think><answer>…</answer>",
            "think": "…", "answer": "…",          # optional: extracted from completion when absent
            "format": 1.0,                        # format reward
            "think_score": 0.61, "answer_score": 0.48,   # section scores (None: not judged)
            "think_items":  [{"key": "k1", "question": "…？", "p_yes": 0.83, "verdict": True}, ...],
            "answer_items": [...]},               # p_yes None: the judge gave neither yes nor no
        "after RL": {...}}}
"""
from __future__ import annotations

import base64
import dataclasses
import html
import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from lib.rewards import extract_answer, extract_think


class ReportError(ValueError):
    """A case or run directory the report cannot use; one line naming it."""


# ----------------------------------------------------------------------------------------------
# Case schema
# ----------------------------------------------------------------------------------------------

class CaseItem(BaseModel):
    """One checklist question as judged. Extra keys (e.g. a Judgement's `flagged`) are ignored."""

    model_config = ConfigDict(extra="ignore")
    key: str
    question: str
    p_yes: float | None = None
    verdict: bool | None = None


class CaseModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    completion: str = ""
    think: str | None = None  # None: extract_think(completion)
    answer: str | None = None  # None: extract_answer(completion)
    format: float | None = None
    think_score: float | None = None
    answer_score: float | None = None
    think_items: list[CaseItem] = []
    answer_items: list[CaseItem] = []

    def parts(self) -> tuple[str, str]:
        think = self.think if self.think is not None else (extract_think(self.completion) or "")
        answer = self.answer if self.answer is not None else (extract_answer(self.completion) or "")
        return think, answer


class Case(BaseModel):
    model_config = ConfigDict(extra="forbid")
    entity: str
    prompt: str | None = None
    models: dict[str, CaseModelEntry]


def validate_cases(cases: Iterable[Mapping | Case]) -> list[Case]:
    """The cases as `Case` objects; a bad one raises ReportError naming the case and field."""
    out = []
    for i, c in enumerate(cases):
        if isinstance(c, Case):
            out.append(c)
            continue
        try:
            out.append(Case.model_validate(c))
        except ValidationError as err:
            e = err.errors()[0]
            where = ".".join(str(x) for x in e["loc"]) or "<root>"
            name = c.get("entity", "?") if isinstance(c, Mapping) else "?"
            raise ReportError(f"case {i} (entity {name!r}): {where}: {e['msg']} (got {e.get('input')!r})") from None
    return out


def items_from_judgements(judgements: Mapping[str, Any]) -> list[dict]:
    """Case items from lib.judge.Judgement objects (or dicts) keyed by rubric item key."""
    items = []
    for key, j in judgements.items():
        d = dataclasses.asdict(j) if dataclasses.is_dataclass(j) else dict(j)
        items.append({"key": d.get("key", key), "question": d["question"], "p_yes": d.get("p_yes"), "verdict": d.get("verdict")})
    return items


def case_entry(
    completion: str,
    format_score: float | None = None,
    think_judgements: Mapping[str, Any] | None = None,
    answer_judgements: Mapping[str, Any] | None = None,
    think_score: float | None = None,
    answer_score: float | None = None,
) -> dict:
    """One model's entry of a case dict, from a completion and its Judgements."""
    return {
        "completion": completion,
        "format": format_score,
        "think_score": think_score,
        "answer_score": answer_score,
        "think_items": items_from_judgements(think_judgements or {}),
        "answer_items": items_from_judgements(answer_judgements or {}),
    }


# ----------------------------------------------------------------------------------------------
# Case-study pages
# ----------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI","Noto Sans CJK SC","PingFang SC",sans-serif;margin:0 auto;max-width:1200px;padding:1em 2em;color:#222;line-height:1.5}
h1{border-bottom:2px solid #ddd;padding-bottom:.3em} h2{border-bottom:1px solid #eee;margin-top:2em;padding-bottom:.2em}
table{border-collapse:collapse;margin:.5em 0;font-size:.92em} th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#f4f4f4} pre{background:#f7f7f7;border:1px solid #e3e3e3;padding:.6em;overflow-x:auto;white-space:pre-wrap;word-break:break-word}
code{background:#f3f3f3;padding:0 .2em} img{max-width:100%;height:auto;border:1px solid #eee} figure{margin:1em 0}
figcaption{font-size:.85em;color:#666} .notrun{color:#999;font-style:italic} .meta td:first-child{font-weight:600}
.cs-grid{display:grid;gap:1em} .cs-col{border:1px solid #ddd;border-radius:6px;padding:.6em .9em;min-width:0;background:#fff}
.cs-col h3,.cs-col h4{margin:.2em 0 .5em} .cs-text{white-space:pre-wrap;word-break:break-word;background:#fafafa;border-left:3px solid #bbb;padding:.4em .6em;margin:.3em 0 .8em}
.cs-answer{border-left-color:#4a8} .cs-yes{color:#176e3a;font-weight:600} .cs-no{color:#a12;font-weight:600} .cs-flag{color:#999}
.cs-scores td{text-align:right} .cs-prompt{font-size:.9em;color:#555}
"""


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None else f"{x:.{digits}f}"


def _verdict(v: bool | None) -> str:
    return {True: "yes", False: "no", None: "—"}[v]


def _items_html(items: list[CaseItem], caption: str) -> str:
    if not items:
        return f'<p class="notrun">{html.escape(caption)}: not judged</p>'
    rows = []
    for it in items:
        cls = "cs-flag" if it.verdict is None else ("cs-yes" if it.verdict else "cs-no")
        rows.append(
            f"<tr><td>{html.escape(it.key)}</td><td>{html.escape(it.question)}</td>"
            f'<td>{_num(it.p_yes, 2)}</td><td class="{cls}">{_verdict(it.verdict)}</td></tr>'
        )
    return (
        f"<table><caption>{html.escape(caption)}</caption><tr><th>key</th><th>question</th><th>P(yes)</th>"
        f"<th>verdict</th></tr>{''.join(rows)}</table>"
    )


def _case_body(cases: list[Case]) -> str:
    parts = []
    for case in cases:
        n = max(1, len(case.models))
        parts.append(f'<section class="cs-case"><h2>{html.escape(case.entity)}</h2>')
        if case.prompt:
            parts.append(f'<details class="cs-prompt"><summary>prompt</summary><pre>{html.escape(case.prompt)}</pre></details>')
        parts.append(f'<div class="cs-grid" style="grid-template-columns:repeat({n},minmax(0,1fr))">')
        for label, m in case.models.items():
            think, answer = m.parts()
            parts.append(
                f'<div class="cs-col"><h3>{html.escape(label)}</h3>'
                f'<table class="cs-scores"><tr><th>format</th><th>think</th><th>answer</th></tr>'
                f"<tr><td>{_num(m.format)}</td><td>{_num(m.think_score)}</td><td>{_num(m.answer_score)}</td></tr></table>"
                f'<b>think</b><div class="cs-text">{html.escape(think) or "<i>(none)</i>"}</div>'
                f'<b>answer</b><div class="cs-text cs-answer">{html.escape(answer) or "<i>(none)</i>"}</div>'
                f"{_items_html(m.think_items, 'think checklist')}{_items_html(m.answer_items, 'answer checklist')}"
                f'<details><summary>raw completion</summary><pre>{html.escape(m.completion)}</pre></details></div>'
            )
        parts.append("</div></section>")
    return "\n".join(parts)


def _page(title: str, body: str) -> str:
    return (
        '<!DOCTYPE html>\n<html lang="zh"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


def case_study_html(cases: Iterable[Mapping | Case], title: str = "Case studies") -> str:
    """A self-contained HTML page: per case, one column per model (before/after side by side)
    with the think and answer parts, the scores and each checklist question's P(yes) and verdict."""
    cs = validate_cases(cases)
    return _page(title, f"<h1>{html.escape(title)}</h1>\n{_case_body(cs)}")


def _fence(text: str) -> str:
    """A code fence longer than any backtick run in `text`, so model text cannot close it."""
    longest = max((len(m) for m in re.findall(r"`+", text)), default=0)
    return "`" * max(3, longest + 1)


def _md_cell(x: Any) -> str:
    return str(x).replace("|", r"\|").replace("\n", " ")


def case_study_markdown(cases: Iterable[Mapping | Case]) -> str:
    """The same case studies as Markdown: one section per case and model, model text in fences."""
    out = []
    for case in validate_cases(cases):
        out.append(f"## {case.entity}\n")
        for label, m in case.models.items():
            think, answer = m.parts()
            out.append(f"### {label}\n")
            out.append(f"format {_num(m.format)} · think {_num(m.think_score)} · answer {_num(m.answer_score)}\n")
            for name, text in (("completion (raw)", m.completion), ("think", think), ("answer", answer)):
                f = _fence(text)
                out.append(f"**{name}**\n\n{f}text\n{text}\n{f}\n")
            for name, items in (("think checklist", m.think_items), ("answer checklist", m.answer_items)):
                if not items:
                    continue
                out.append(f"**{name}**\n\n| key | question | P(yes) | verdict |\n|---|---|---|---|")
                out.extend(
                    f"| {_md_cell(it.key)} | {_md_cell(it.question)} | {_num(it.p_yes, 2)} | {_verdict(it.verdict)} |" for it in items
                )
                out.append("")
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# Markdown -> HTML (small: headings, pipe tables, fenced code, lists, paragraphs)
# ----------------------------------------------------------------------------------------------

def _inline(text: str) -> str:
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)


def _split_row(line: str) -> list[str]:
    s = line.strip()
    s = s[1:] if s.startswith("|") else s
    s = s[:-1] if s.endswith("|") and not s.endswith("\\|") else s
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", s)]


_LIST_ITEM = re.compile(r"^[-*]\s+")


def markdown_to_html(text: str, heading_offset: int = 2) -> str:
    """Markdown to HTML. The `markdown` package is not a dependency, so this renders the subset
    our stages write: headings (shifted down by `heading_offset`), GitHub pipe tables, fenced
    code, `-`/`*` lists, paragraphs, `code` and **bold**. Everything else is escaped text."""
    lines = text.splitlines()
    out: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            out.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        s = line.strip()
        fence = re.match(r"^(`{3,}|~{3,})", s)
        if fence:
            flush()
            mark, body = fence.group(1), []
            i += 1
            while i < len(lines) and not lines[i].strip().startswith(mark):
                body.append(lines[i])
                i += 1
            code = "\n".join(body)
            out.append(f"<pre>{html.escape(code)}</pre>")
            i += 1
            continue
        head = re.match(r"^(#{1,6})\s+(.*)$", s)
        if head:
            flush()
            level = min(6, len(head.group(1)) + heading_offset)
            out.append(f"<h{level}>{_inline(head.group(2))}</h{level}>")
        elif s.startswith("|") and i + 1 < len(lines) and re.match(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?$", lines[i + 1].strip()):
            flush()
            header = _split_row(s)
            rows = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_split_row(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c)}</th>" for c in header)
            trs = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows)
            out.append(f"<table><tr>{th}</tr>{trs}</table>")
            continue
        elif _LIST_ITEM.match(s):
            flush()
            items = []
            while i < len(lines) and _LIST_ITEM.match(lines[i].strip()):
                item = _LIST_ITEM.sub("", lines[i].strip())
                items.append(f"<li>{_inline(item)}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        elif not s:
            flush()
        else:
            para.append(s)
        i += 1
    flush()
    return "\n".join(out)


# ----------------------------------------------------------------------------------------------
# The run report
# ----------------------------------------------------------------------------------------------

NOT_RUN = '<p class="notrun">stage not run</p>'
# (stage folder = results key prefix, section title)
REPORT_SECTIONS = (
    ("data", "Data summary"),
    ("rubric", "Rubric"),
    ("calibration", "Judge calibration"),
    ("train", "Training curves"),
    ("eval", "Evaluation"),
    ("cases", "Case studies"),
)


def read_json_object(path: Path) -> dict:
    """A run's JSON file as a dict ({} when missing); a ReportError naming the file when it is not a JSON object."""
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise ReportError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _lookup(results: dict, dotted: str) -> Any:
    """A results value by flat dotted key (how RunContext.record stores it) or nested dicts."""
    if dotted in results:
        return results[dotted]
    cur: Any = results
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def png_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figure(path: Path) -> str:
    return (
        f'<figure><img src="{png_data_uri(path)}" alt="{html.escape(path.name)}">'
        f"<figcaption>{html.escape(path.name)}</figcaption></figure>"
    )


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (dict, list)):
        return f"<code>{html.escape(json.dumps(v, ensure_ascii=False))}</code>"
    return html.escape(str(v))


def _results_table(results: dict, prefix: str) -> str:
    rows = [(k, v) for k, v in results.items() if k.startswith(prefix + ".")]
    if not rows:
        return ""
    trs = "".join(f"<tr><td>{html.escape(k)}</td><td>{_value(v)}</td></tr>" for k, v in rows)
    return f"<table class=\"meta\"><tr><th>result</th><th>value</th></tr>{trs}</table>"


def _embedded_case_page(path: Path) -> str:
    """The body of a case-study page (its <style> kept) to sit inside the report."""
    page = path.read_text(encoding="utf-8")
    # the report already carries the same stylesheet; keep only a different one
    styles = "".join(st for st in re.findall(r"<style>.*?</style>", page, flags=re.S) if st != f"<style>{_CSS}</style>")
    m = re.search(r"<body[^>]*>(.*)</body>", page, flags=re.S)
    body = m.group(1) if m else page
    body = re.sub(r"<h1>.*?</h1>", "", body, count=1, flags=re.S)  # the report's section heading replaces it
    for level in (5, 4, 3, 2):  # one level down, under the report's <h2>
        body = re.sub(rf"<(/?)h{level}>", rf"<\1h{level + 1}>", body)
    return styles + body


def _stage_section(run_dir: Path, stage: str, results: dict) -> str:
    d = run_dir / stage
    parts = []
    table = _results_table(results, stage)
    if table:
        parts.append(table)
    if d.is_dir():
        for md in sorted(d.glob("*.md")):
            if stage == "cases" and (d / "case_studies.html").exists() and md.name == "case_studies.md":
                continue
            if stage == "cases" and md.name == "case_studies.md":
                parts.append(f"<h3>{html.escape(md.name)}</h3><pre>{html.escape(md.read_text(encoding='utf-8'))}</pre>")
                continue
            parts.append(f"<h3>{html.escape(md.stem)}</h3>" + markdown_to_html(md.read_text(encoding="utf-8"), heading_offset=2))
        for png in sorted(d.glob("*.png")):
            parts.append(_figure(png))
        if stage == "cases" and (d / "case_studies.html").exists():
            parts.append(_embedded_case_page(d / "case_studies.html"))
    return "\n".join(parts) if parts else NOT_RUN


def build_run_report(run_dir: str | Path) -> Path:
    """Collect whatever the run directory holds into ONE self-contained `run_dir/report.html`.

    Header: profile name, git SHA (manifest.json `git_sha`), rubric hash (results.json
    `rubric.hash`), run and report dates. Sections: data, rubric, calibration, training, evaluation
    (each: its `<stage>.*` results, `<stage>/*.md` tables, `<stage>/*.png` figures), case studies
    (`cases/case_studies.html` embedded, else its Markdown) and the resolved profile. A section
    with nothing says "stage not run". Returns the report's path.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ReportError(f"run directory not found: {run_dir}")
    manifest = read_json_object(run_dir / "manifest.json")
    results = read_json_object(run_dir / "results.json")
    profile_file = run_dir / "profile.yaml"
    profile_text = profile_file.read_text(encoding="utf-8") if profile_file.exists() else ""
    try:
        profile_name = (yaml.safe_load(profile_text) or {}).get("name") if profile_text else None
    except yaml.YAMLError:
        profile_name = None
    profile_name = profile_name or manifest.get("profile") or "unknown"
    sha = manifest.get("git_sha") or "unknown"
    rubric_hash = _lookup(results, "rubric.hash") or "unknown"
    started = next((manifest[k] for k in ("started_at", "started", "created_at", "created", "date") if manifest.get(k)), None)
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")

    meta = [("run", run_dir.name), ("profile", profile_name), ("git SHA", sha), ("rubric hash", rubric_hash)]
    if started:
        meta.append(("run started", started))
    if manifest.get("status"):
        meta.append(("status", manifest["status"]))
    meta.append(("report built", built))
    notebooks = sorted(p.name for p in (run_dir / "notebooks").glob("*.ipynb")) if (run_dir / "notebooks").is_dir() else []
    if notebooks:
        meta.append(("executed notebooks", ", ".join(notebooks)))
    header = "<table class=\"meta\">" + "".join(
        f"<tr><td>{html.escape(k)}</td><td><code>{html.escape(str(v))}</code></td></tr>" for k, v in meta
    ) + "</table>"
    if manifest:
        header += f"<details><summary>manifest.json</summary><pre>{html.escape(json.dumps(manifest, ensure_ascii=False, indent=2))}</pre></details>"

    sections = [(stage, title, _stage_section(run_dir, stage, results)) for stage, title in REPORT_SECTIONS]
    sections.append(("profile", "Resolved profile", f"<pre>{html.escape(profile_text)}</pre>" if profile_text else NOT_RUN))
    toc = "<ol>" + "".join(f'<li><a href="#{sid}">{html.escape(t)}</a></li>' for sid, t, _ in sections) + "</ol>"
    body = [f"<h1>Run report: {html.escape(str(profile_name))}</h1>", header, toc]
    body += [f'<section id="{sid}"><h2>{html.escape(t)}</h2>\n{content}</section>' for sid, t, content in sections]
    out = run_dir / "report.html"
    out.write_text(_page(f"Run report {run_dir.name}", "\n".join(body)), encoding="utf-8")
    return out
