"""Judge rewards as an object: `JudgeRewards(judge, rubric)`, whose methods are TRL reward functions.

It holds the judge, the rubric, the per-step cache and the details and statistics of its calls; its bound methods are the reward functions TRL calls.

- `think_quality_reward`, `answer_quality_reward`: the judge answers a rubric section's yes/no checklist
  (lib.rubric) about the think / answer part; the section score is the reward. TRL passes the dataset's `entity`
  column as a list aligned with the completions.
- `details[section]`: per completion of the last call (score, shortcut, entity, items {key: p_yes/verdict/flagged});
  `stats[section]`: running totals since construction or `reset_stats()` (completions, judged, shortcut, flagged,
  truncated).

One batch per step: with `sections=("think", "answer")` (e.g. the keys of `train.reward_weights`) the first judge
reward of a call judges both sections of the same completions in one `judge_sections` batch; the other section's
judgements wait, keyed by the completions and entities, until its reward function asks for them. A section not
named is never judged ahead. Each caller (trainer, evaluation, server, test) holds its own object.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from lib.judge.types import Judgement, SectionJudge
from lib.reward_names import RELATIVE_REWARDS
from lib.rewards.rules import RewardError, completion_text, entities, extract_answer, extract_think
from lib.rubric import Rubric, load_rubric, section_score, think_shortcut

JUDGED_SECTIONS = ("think", "answer")


def _answer_shortcut(answer: str) -> str | None:
    return "empty" if not answer.strip() else None


EXTRACT: dict[str, Callable[[str], str]] = {"think": extract_think, "answer": extract_answer}
SHORTCUT: dict[str, Callable[[str], str | None]] = {"think": think_shortcut, "answer": _answer_shortcut}


def _shortcut_or_score(reason: str | None, section, indicators: dict[str, float]) -> float:
    return 0.0 if reason else section_score(section, indicators)


def section_text_score(section, text: str, indicators: dict[str, float]) -> dict:
    """What the section's reward gives `text` (a think or an answer part) when the judge says `indicators`.

    A shortcut (a think under 20 characters or still holding the placeholder, an empty answer) scores 0
    without asking the judge, as in training; else `lib.rubric.section_score`. Returns {"shortcut", "score"}.

    >>> from lib.rubric import load_rubric
    >>> think = load_rubric()["think"]
    >>> section_text_score(think, "短", {it.key: 1.0 for it in think.items})
    {'shortcut': 'too_short', 'score': 0.0}
    >>> section_text_score(think, "我" * 20, {it.key: 1.0 for it in think.items})
    {'shortcut': None, 'score': 1.0}
    """
    reason = SHORTCUT[section.name](text)
    return {"shortcut": reason, "score": _shortcut_or_score(reason, section, indicators)}


def _judge_sections(judge: SectionJudge, jobs: list[tuple]) -> list[list[dict[str, Judgement]]]:
    """One `judge_sections` batch when the judge has it, else one `judge_section` call per job."""
    if hasattr(judge, "judge_sections"):
        return judge.judge_sections(jobs)
    return [judge.judge_section(*job) for job in jobs]


class JudgeRewards:
    """The judge rewards of one caller: `think_quality_reward` and `answer_quality_reward` with TRL's signature.

    `rubric` None: `lib.rubric.load_rubric()`. `sections`: the reward names the caller computes for the same
    completions (names other than think/answer are ignored); when both are named, the first of the two called
    judges both sections in one batch. `calibration`: a per-item calibration (lib.judge.calibration.per_item, e.g.
    `per_item.for_run(ctx)`): the section score is then the rubric's formula on calibrated P(yes) over its kept items
    (soft mode only); None: the formula on the judge's own indicators.
    """

    def __init__(self, judge: SectionJudge, rubric: Rubric | None = None, sections: Sequence[str] = (),
                 relative: dict[str, Any] | None = None, calibration: Any = None):
        if judge is None:
            raise RewardError("JudgeRewards: no judge; build one with lib.judge.engine.build_judge(profile.judge)")
        if calibration is not None and judge.mode != "soft":
            raise RewardError(f"JudgeRewards: per-item calibration maps P(yes), so it needs judge.mode soft, not {judge.mode!r}")
        self.calibration = calibration
        self.judge = judge
        self.rubric = rubric if rubric is not None else load_rubric()
        self.together = tuple(n for n in JUDGED_SECTIONS if n in set(sections))
        # Judged ahead, per section: (key of the call: completions, entities; {completion index: judgements}).
        self._ahead: dict[str, tuple[tuple, dict[int, dict[str, Judgement]]]] = {}
        self.details: dict[str, list[dict]] = {}
        self.stats: dict[str, Counter] = {}
        # relative judging (lib.rewards.relative.relative_reward's options: opponents, base_max_tokens), built on demand
        self.relative_options = dict(relative or {})
        self._relative: dict[str, Callable[..., list[float]]] = {}
        self.reset_stats()

    def reset_stats(self) -> None:
        """Forget the last call's details, the running totals and anything judged ahead."""
        for name in JUDGED_SECTIONS:
            self.details[name] = []
            self.stats[name] = Counter()
        self._ahead.clear()

    def think_quality_reward(self, completions: Sequence[Any], entity: Any = None, **kwargs) -> list[float]:
        """Score of the think part (text before `</think>`) on the rubric's `think` checklist.

        A think that still holds the prompt's placeholder or has fewer than 20 characters scores 0 without
        a judge call (`lib.rubric.think_shortcut`).
        """
        return self._reward("think", completions, entity)

    def answer_quality_reward(self, completions: Sequence[Any], entity: Any = None, **kwargs) -> list[float]:
        """Score of the answer part (text after the last `<answer>`) on the rubric's `answer` checklist.

        An empty (or all-whitespace) answer scores 0 without a judge call.
        """
        return self._reward("answer", completions, entity)

    def func(self, section: str) -> Callable[..., list[float]]:
        """The bound reward method of a judged section ("think" or "answer"), or this object's relative judging
        reward ("relative", "relative_base"; details and stats under the same name)."""
        if section in RELATIVE_REWARDS:
            if section not in self._relative:
                from lib.rewards.relative import relative_reward

                self._relative[section] = relative_reward(self, section, **self.relative_options)
            return self._relative[section]
        if section not in JUDGED_SECTIONS:
            raise RewardError(f"JudgeRewards: no judged section {section!r}; known: {', '.join(JUDGED_SECTIONS)}")
        return getattr(self, f"{section}_quality_reward")

    # ------------------------------------------------------------------------------------------- internals

    def _reward(self, section_name: str, completions: Sequence[Any], entity: Any) -> list[float]:
        fn = f"{section_name}_quality_reward"
        ents = entities(entity, len(completions), fn)
        texts = [completion_text(c) for c in completions]
        key = (tuple(texts), tuple(ents))
        ahead = self._ahead.pop(section_name, None)
        if ahead is not None and ahead[0] == key:  # judged with the other section's reward of this call
            reasons = [SHORTCUT[section_name](EXTRACT[section_name](t)) for t in texts]
            judged = ahead[1]
        else:
            others = [n for n in self.together if n != section_name] if section_name in self.together else []
            found = self._judge_parts([section_name, *others], texts, ents)
            for name in others:
                self._ahead[name] = (key, found[name][1])
            reasons, judged = found[section_name]
        return self._score(section_name, ents, reasons, judged)

    def _judge_parts(self, names: list[str], texts: list[str],
                     ents: list[str]) -> dict[str, tuple[list[str | None], dict[int, dict[str, Judgement]]]]:
        """Per section name: the shortcut reason of each completion, and the judgements of those without one.

        Every named section's questions go to the judge in one batch."""
        plans = {}
        for name in names:
            parts = [EXTRACT[name](t) for t in texts]
            reasons = [SHORTCUT[name](p) for p in parts]
            plans[name] = (parts, reasons, [i for i, r in enumerate(reasons) if r is None])
        jobs = [(self.rubric[name], [ents[i] for i in todo], [parts[i] for i in todo])
                for name, (parts, _, todo) in plans.items() if todo]
        outs = iter(_judge_sections(self.judge, jobs) if jobs else [])
        found = {}
        for name, (_, reasons, todo) in plans.items():
            out = next(outs) if todo else []
            if len(out) != len(todo):
                raise RewardError(f"{name}_quality_reward: the judge returned {len(out)} results for {len(todo)} texts")
            found[name] = (reasons, dict(zip(todo, out)))
        return found

    def _score(self, section_name: str, ents: list[str], reasons: list[str | None],
               judged: dict[int, dict[str, Judgement]]) -> list[float]:
        """Section scores of one call (0 for a shortcut), and its details and stats."""
        section, mode = self.rubric[section_name], self.judge.mode
        scores: list[float] = []
        details: list[dict] = []
        stats = self.stats[section_name]
        for i in range(len(reasons)):
            js = judged.get(i, {})
            if self.calibration is not None and reasons[i] is None:
                score = self.calibration.score(section, {k: j.p_yes for k, j in js.items()})
            else:
                score = _shortcut_or_score(reasons[i], section, {k: j.indicator(mode) for k, j in js.items()})
            n_flagged = sum(j.flagged for j in js.values())
            scores.append(score)
            details.append({
                "entity": ents[i],
                "score": score,
                "shortcut": reasons[i],
                "n_flagged": n_flagged,
                "items": {k: {"p_yes": j.p_yes, "verdict": j.verdict, "flagged": j.flagged}
                          | ({"p_calibrated": self.calibration.calibrate(section_name, k, j.p_yes)} if self.calibration else {})
                          for k, j in js.items()},
            })
            stats["completions"] += 1
            stats["judged" if reasons[i] is None else "shortcut"] += 1
            stats["flagged"] += n_flagged
            stats["truncated"] += sum(j.truncated for j in js.values())
        self.details[section_name] = details
        return scores
