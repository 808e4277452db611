"""Relative judging as a reward: each completion's answer against references, P(better) from a pairwise judge.

Two references (`reference`):
- "group": the other members of its GRPO group (completions of the same prompt), round-robin: each against the
  next `opponents` members (lib.judge.pairwise.ring_pairs), both orders: 2 * opponents judge prompts per completion,
  linear in the group, no extra generation. The reward is the mean win probability over its pairs: a group-relative
  score in [0, 1] (GRPO's advantage then compares members on what the judge prefers, not on fixed yes/no items).
- "base": the base model's (greedy) answer for the same prompt, generated once per prompt and cached; the reward is
  P(completion better than the base answer), bounded in [0, 1] and reference-relative like PAR's sigmoid(r - r_ref)
  (Fu et al. 2025), without a separate reward model. 2 judge prompts per completion plus one generation per new prompt.

What is compared is the answer part (`lib.rewards.extract_answer`); an empty answer loses without a judge call.
"""
from __future__ import annotations

from collections import Counter
from typing import Any, Callable, Sequence

from lib.judge.pairwise import PairResult, ring_pairs
from lib.rewards.rules import RewardError, completion_text, extract_answer

REFERENCES = ("group", "base")


def group_keys(prompts: Sequence[Any] | None, n: int) -> list[str]:
    """A group key per completion: its prompt (TRL passes `prompts`), else one group for the whole call."""
    if prompts is None:
        return [""] * n
    if len(prompts) != n:
        raise RewardError(f"relative_reward: {len(prompts)} prompts for {n} completions; they must be aligned")
    return [repr(p) for p in prompts]


class RelativeReward:
    """A reward with TRL's signature: `RelativeReward(comparer, ...)(completions, entity=[...], prompts=[...])`.

    `comparer.compare(entities, xs, ys) -> list[PairResult]` (lib.judge.pairwise.RelativeJudge).
    `reference_fn(prompts) -> list[str]` (reference "base"): the base model's completions for prompts not yet cached.
    `details` holds, per completion of the last call, win, pairs and the mean position bias; `stats` running totals.
    """

    def __init__(self, comparer, reference: str = "group", opponents: int = 1,
                 reference_fn: Callable[[list[Any]], list[str]] | None = None, name: str | None = None):
        if reference not in REFERENCES:
            raise RewardError(f"relative_reward: unknown reference {reference!r}; known: {', '.join(REFERENCES)}")
        if opponents < 1:
            raise RewardError(f"relative_reward: opponents must be >= 1, got {opponents}")
        if reference == "base" and reference_fn is None:
            raise RewardError("relative_reward: reference 'base' needs a reference_fn that writes the base answers")
        self.comparer, self.reference, self.opponents, self.reference_fn = comparer, reference, opponents, reference_fn
        self.references: dict[str, str] = {}  # base answers by prompt key (reference "base")
        self.details: list[dict] = []
        self.stats: Counter = Counter()
        self.__name__ = name or ("relative_reward" if reference == "group" else "relative_base_reward")

    def __call__(self, completions: Sequence[Any], entity: Any = None, prompts: Sequence[Any] | None = None,
                 **kwargs) -> list[float]:
        n = len(completions)
        if entity is None:
            raise RewardError(f"{self.__name__}: no 'entity' given; the dataset needs an 'entity' column")
        ents = [entity] * n if isinstance(entity, str) else [str(e) for e in entity]
        if len(ents) != n:
            raise RewardError(f"{self.__name__}: {len(ents)} entities for {n} completions; they must be aligned")
        answers = [extract_answer(completion_text(c)) for c in completions]
        keys = group_keys(prompts, n)
        if self.reference == "group":
            pairs = self._group_pairs(keys)
            results = self.comparer.compare([ents[i] for i, _ in pairs], [answers[i] for i, _ in pairs],
                                            [answers[j] for _, j in pairs])
            wins: list[list[tuple[float, PairResult]]] = [[] for _ in range(n)]
            for (i, j), r in zip(pairs, results):
                wins[i].append((r.win, r))
                wins[j].append((1.0 - r.win, r))
        else:
            if prompts is None:
                raise RewardError(f"{self.__name__}: reference 'base' needs the prompts (TRL passes them)")
            refs = self._base_answers(prompts, keys)
            results = self.comparer.compare(ents, answers, refs)
            wins = [[(r.win, r)] for r in results]
        scores, details = [], []
        for i in range(n):
            # a completion alone in its group has no opponent: 0.5, it neither wins nor loses
            score = sum(w for w, _ in wins[i]) / len(wins[i]) if wins[i] else 0.5
            biases = [r.position_bias for _, r in wins[i] if r.position_bias is not None]
            scores.append(score)
            details.append({"entity": ents[i], "score": score, "pairs": len(wins[i]),
                            "position_bias": sum(biases) / len(biases) if biases else None})
        self.stats["completions"] += n
        self.stats["pairs"] += len(results)
        self.stats["judged_pairs"] += sum(r.judged for r in results)
        self.details = details
        return scores

    def _group_pairs(self, keys: list[str]) -> list[tuple[int, int]]:
        members: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            members.setdefault(k, []).append(i)
        return [(idx[a], idx[b]) for idx in members.values() for a, b in ring_pairs(len(idx), self.opponents)]

    def _base_answers(self, prompts: Sequence[Any], keys: list[str]) -> list[str]:
        new = {}
        for p, k in zip(prompts, keys):
            if k not in self.references:
                new.setdefault(k, p)
        if new:
            texts = self.reference_fn(list(new.values()))
            if len(texts) != len(new):
                raise RewardError(f"{self.__name__}: reference_fn wrote {len(texts)} answers for {len(new)} prompts")
            self.references.update(zip(new, texts))
            self.stats["references_generated"] += len(new)
        return [extract_answer(self.references[k]) for k in keys]


def engine_reference_fn(engine, max_tokens: int) -> Callable[[list[Any]], list[str]]:
    """Base answers from the judge engine's own model (greedy, no LoRA): right when the judge model is the policy's
    base model (the `cpu` profile: one engine judges and writes the rollouts). Prompts are TRL's: a list of chat
    messages (rendered with the judge tokenizer's chat template) or a string."""
    def generate(prompts: list[Any]) -> list[str]:
        tok = engine.backend.tokenizer
        texts = [p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                 for p in prompts]
        return [text for text, _, _ in engine.backend.generate(texts, max_tokens)]

    return generate


def relative_reward(judge_rewards, name: str = "relative", opponents: int = 1,
                    base_max_tokens: int | None = None) -> Callable[..., list[float]]:
    """The relative judging reward `name` ("relative": group round-robin; "relative_base": against the base answer)
    on a `JudgeRewards`' judge and rubric (its `relative:` spec); details and stats go to
    `judge_rewards.details[name]` / `.stats[name]`. `base_max_tokens`: the base answers' length (None: 256).
    `JudgeRewards.func(name)` builds it with the object's `relative_options`."""
    from lib.judge.pairwise import RelativeJudge

    rubric = judge_rewards.rubric
    if rubric.relative is None:
        raise RewardError(f"reward {name!r}: rubric {rubric.source} has no 'relative:' template and question "
                          f"(lib/assets/rubrics/default.yaml has one)")
    engine = judge_rewards.judge
    if not hasattr(engine, "backend"):
        raise RewardError(f"reward {name!r} reads P(A)/P(B) from a judge engine's backend (lib.judge.engine.JudgeEngine); "
                          f"{type(engine).__name__} has none")
    reference = "group" if name == "relative" else "base"
    fn = engine_reference_fn(engine, base_max_tokens or 256) if reference == "base" else None
    reward = RelativeReward(RelativeJudge(engine, rubric.relative), reference=reference, opponents=opponents,
                            reference_fn=fn)
    judge_rewards.stats[name] = reward.stats
    judge_rewards.details[name] = []

    def relative(completions, **kwargs):
        out = reward(completions, **kwargs)
        judge_rewards.details[name] = reward.details
        return out

    relative.__name__ = relative.__qualname__ = reward.__name__
    relative.__doc__ = RelativeReward.__doc__
    relative.reward = reward  # the object (its cache of base answers, its comparer's call count)
    return relative
