"""Deterministic stand-ins for unit tests only (never used by lib)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence, Union

from lib.judge import Judgement
from lib.rubric import RubricSection

Rule = Union[float, str, None, Callable[[str, str], Union[float, None]]]
HIT, MISS = 0.9, 0.1  # P(yes) of a keyword rule that matches / does not


@dataclass
class KeywordJudge:
    """A `SectionJudge` whose P(yes) per item follows simple rules.

    `rules[key]`: a float (constant P(yes)), a string (HIT if it occurs in the text, else MISS), None
    (flagged: neither yes nor no seen) or a callable (entity, text) -> P(yes) | None. Items without a rule:
    HIT/MISS by whether the entity occurs in the text when the question mentions {entity}, else `default`.
    Seed mode mimics the original: plausible items are not asked once a must-have item failed.
    Every call is kept in `calls` as (section name, entities, texts).
    """

    rules: dict[str, Rule] = field(default_factory=dict)
    default: float = 0.8
    mode: str = "soft"
    threshold: float = 0.5
    calls: list[tuple[str, list[str], list[str]]] = field(default_factory=list)
    batches: list[list[str]] = field(default_factory=list)  # section names of each `judge_sections` call

    def _p_yes(self, item, entity: str, text: str) -> float | None:
        if item.key in self.rules:
            rule = self.rules[item.key]
            if rule is None or isinstance(rule, (int, float)):
                return rule
            if isinstance(rule, str):
                return HIT if rule in text else MISS
            return rule(entity, text)
        if "{entity}" in item.question:
            return HIT if entity and entity in text else MISS
        return self.default

    def _judge(self, section: RubricSection, item, entity: str, text: str) -> Judgement:
        p = self._p_yes(item, entity, text)
        prompt = section.render(entity, text, item)
        return Judgement(
            key=item.key,
            question=section.question(entity, item),
            p_yes=p,
            verdict=p is not None and p >= self.threshold,
            flagged=p is None,
            prompt_tokens=len(prompt),
        )

    def judge_section(self, section: RubricSection, entities: Sequence[str], texts: Sequence[str]) -> list[dict[str, Judgement]]:
        self.calls.append((section.name, list(entities), list(texts)))
        out = []
        for entity, text in zip(entities, texts):
            res = {it.key: self._judge(section, it, entity, text) for it in section.must_have}
            if self.mode != "seed" or all(j.verdict for j in res.values()):
                res.update({it.key: self._judge(section, it, entity, text) for it in section.plausible})
            out.append(res)
        return out

    def judge_sections(self, jobs) -> list[list[dict[str, Judgement]]]:
        """Several (section, entities, texts) in one call, like `JudgeEngine.judge_sections`."""
        self.batches.append([section.name for section, _, _ in jobs])
        return [self.judge_section(*job) for job in jobs]


def quiet_keyword_judge() -> KeywordJudge:
    """A KeywordJudge that keeps no calls (a long-running server's test double: `calls` would grow without end)."""

    class Quiet(KeywordJudge):
        @property
        def calls(self):
            return []

        @calls.setter
        def calls(self, value):
            pass

    return Quiet()


def stage_notebook(path, body: str, title: bool = True):
    """A notebook like ours for pipeline tests: (a title,) a `parameters` cell of RUN_DIR and PROFILE, then `body`."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('RUN_DIR: str = ""  # run dir\nPROFILE: str = "smoke"  # profile')
    params.metadata["tags"] = ["parameters"]
    nb.cells = ([nbformat.v4.new_markdown_cell(f"# {path.stem}")] if title else []) + [params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, path)
    return path
