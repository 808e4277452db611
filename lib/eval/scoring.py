"""Scoring completions with the judges for evaluation (notebook 04) and case studies (notebook 05).

    per_item, details = score_completions({"base": texts_a, "grpo": texts_b}, entities, judge, rubric)
    per_item            # one row per completion: model, entity, format, think, answer, judge
    details[0]          # the same completion with every checklist item's question, P(yes) and verdict

The scores are the training rewards themselves (lib.rewards: format_reward and a JudgeRewards' think_quality_reward,
answer_quality_reward), so evaluation measures exactly what training optimized; the held-out judge
(`heldout_judge`) asks the reworded checklists (lib/assets/rubrics/heldout.yaml) to see whether gains transfer.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

import pandas as pd

from lib.data import read_jsonl
from lib.judge.types import SectionJudge
from lib.rewards import JudgeRewards, format_reward
from lib.rubric import Rubric

if TYPE_CHECKING:  # pragma: no cover
    from lib.profiles import EvalModel, Profile

PER_ITEM_COLUMNS = ("model", "entity", "format", "think", "answer", "judge")
# Judge settings that belong to the engine (backend) rather than to how its answers are read.
_BACKEND_FIELDS = ("model", "backend", "max_model_len", "answer_scoring", "top_logprobs", "base_url",
                   "enforce_eager", "gpu_memory_utilization", "batch_size")


class ScoringError(ValueError):
    """Scoring input that cannot be used; one line naming the model, file or value."""


def _items(rubric: Rubric, section: str, entity: str, detail: dict) -> list[dict]:
    sec = rubric[section]
    out = []
    for key, d in detail["items"].items():
        out.append({"key": key, "question": sec.question(entity, sec.item(key)), "p_yes": d["p_yes"],
                    "verdict": d["verdict"], "flagged": d["flagged"]}
                   | ({"p_calibrated": d["p_calibrated"]} if "p_calibrated" in d else {}))
    return out


def score_completions(
    completions: Mapping[str, Sequence[str]],
    entities: Sequence[str],
    judge: SectionJudge,
    rubric: Rubric,
    judge_name: str = "train",
    extra: Mapping[str, Sequence] | None = None,
    calibration=None,
) -> tuple[pd.DataFrame, list[dict]]:
    """Format, think and answer scores of every model's completions (all models judged in one batch).

    `completions`: label -> completions aligned with `entities`. `extra`: more columns aligned with `entities`
    (e.g. `decoding` and `sample` of `lib.eval.generation.eval_rows`), added to per_item and to each detail.
    Returns (per_item, details): per_item has the columns `PER_ITEM_COLUMNS` (then `extra`'s); details holds, per
    completion, the model, entity, judge, completion, scores, shortcut reasons and the checklist items
    ({key, question, p_yes, verdict, flagged}, and p_calibrated with a calibration). `calibration`: the run's per-item
    calibration of this judge (`lib.judge.calibration.per_item.for_run(ctx)`; None: raw P(yes)), as in training.
    """
    extra = {k: list(v) for k, v in (extra or {}).items()}
    for k, v in extra.items():
        if len(v) != len(entities):
            raise ScoringError(f"extra column {k!r}: {len(v)} values for {len(entities)} entities")
    labels, ents, texts = [], [], []
    for label, comps in completions.items():
        if len(comps) != len(entities):
            raise ScoringError(f"model {label!r}: {len(comps)} completions for {len(entities)} entities")
        labels += [label] * len(comps)
        ents += list(entities)
        texts += list(comps)
    fmt = format_reward(texts)
    jr = JudgeRewards(judge, rubric, calibration=calibration)
    think = jr.think_quality_reward(texts, entity=ents)
    think_details = list(jr.details["think"])
    answer = jr.answer_quality_reward(texts, entity=ents)
    answer_details = list(jr.details["answer"])
    n_models = len(completions)
    per_item = pd.DataFrame({"model": labels, "entity": ents, "format": fmt, "think": think, "answer": answer,
                             "judge": judge_name}, columns=list(PER_ITEM_COLUMNS))
    for k, v in extra.items():
        per_item[k] = v * n_models
    details = [
        {"model": m, "entity": e, "judge": judge_name, "completion": c, "format": f,
         "think_score": t, "answer_score": a, "think_shortcut": td["shortcut"], "answer_shortcut": ad["shortcut"],
         "think_items": _items(rubric, "think", e, td), "answer_items": _items(rubric, "answer", e, ad)}
        for m, e, c, f, t, a, td, ad in zip(labels, ents, texts, fmt, think, answer, think_details, answer_details)
    ]
    for k, v in extra.items():
        for d, x in zip(details, v * n_models):
            d[k] = x.item() if hasattr(x, "item") else x  # numpy scalars: JSON-safe
    return per_item, details


def save_details(details: Sequence[dict], path: str | Path) -> Path:
    """Write `score_completions` details as JSONL (one completion a line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in details), encoding="utf-8")
    return path


def load_details(path: str | Path) -> list[dict]:
    """Read what `save_details` wrote; [] when the file does not exist (a bad line: `lib.data.DataError`)."""
    return read_jsonl(path)


def find_detail(details: Sequence[dict], entity: str, completion: str, judge: str = "train") -> dict | None:
    """The scored detail of this exact completion for this entity by `judge`, or None."""
    for d in details:
        if d["judge"] == judge and d["entity"] == entity and d["completion"] == completion:
            return d
    return None


# ----------------------------------------------------------------------------------------------
# Judges and model pairs
# ----------------------------------------------------------------------------------------------

def heldout_judge(profile: "Profile", train_judge) -> tuple[SectionJudge, bool]:
    """The held-out judge and whether it shares the training judge's engine.

    `profile.eval.heldout_judge` when set, else the training judge's model in soft mode. When its engine
    settings equal the training judge's, the training engine is reused (only the rubric differs, no second
    start); otherwise the training judge is closed first, so two engines are never alive at once.
    """
    from lib.judge.engine import JudgeEngine, build_judge

    train_cfg = profile.judge
    cfg = profile.eval.heldout_judge
    mode = "soft" if cfg is None else cfg.mode
    cfg = cfg or train_cfg
    if all(getattr(cfg, f) == getattr(train_cfg, f) for f in _BACKEND_FIELDS):
        return JudgeEngine(train_judge.backend, cfg, mode=mode), True
    train_judge.close()
    return build_judge(cfg, mode=mode, seed=profile.seed), False


def judge_independence(profile: "Profile") -> dict[str, dict]:
    """Which judge of the evaluation is independent of the training judge, from the models' families.

    {"train": {...}, "heldout": {...}}, each {judge (model), family, independent (bool), why}. The training judge
    is never independent (its scores are what was optimised). The held-out judge is independent when its family
    (`family` in its profile section, else lib.models.model_family) is known and differs from the training judge's;
    the same model (the default: only the checklist wording differs) or the same family is not, and an unknown
    family is not claimed to be. `why` also says when the held-out judge shares the policy's family (it then scores
    its own family's outputs: self-preference).
    """
    from lib.models import model_family

    def family(cfg) -> str | None:
        return cfg.family or model_family(cfg.model)

    tj, hj = profile.judge, profile.eval.heldout_judge
    tf = family(tj)
    out = {"train": {"judge": tj.model, "family": tf, "independent": False,
                     "why": "the training judge: its scores are the rewards that were optimised"}}
    if hj is None or hj.model == tj.model:
        out["heldout"] = {"judge": tj.model, "family": tf, "independent": False,
                          "why": "the training judge's own model, asking reworded checklists: a bias of that model "
                                 "fools both, so a gain here is no independent evidence"
                                 + ("; it is also the policy's base model" if profile.policy_model == tj.model else "")}
        return out
    hf = family(hj)
    if hf is None or tf is None:
        ind, why = False, (f"family of {hj.model if hf is None else tj.model!r} unknown: set its `family` in the profile "
                           "to say whether the judges are independent")
    elif hf == tf:
        ind, why = False, f"same family ({hf}) as the training judge: it likely shares that judge's biases"
    else:
        ind, why = True, f"another family ({hf}) than the training judge ({tf})"
    pf = model_family(profile.policy_model)
    if pf is not None and pf == hf:
        why += f"; it shares the policy's family ({pf}) and so scores its own family's outputs (self-preference)"
    out["heldout"] = {"judge": hj.model, "family": hf, "independent": ind, "why": why}
    return out


def with_judge(table: pd.DataFrame, info: Mapping[str, object], prefix: str = "") -> pd.DataFrame:
    """`table` with columns `<prefix>judge` (the judge's model) and `<prefix>independent` ("yes"/"no", and why:
    one entry of `judge_independence`), so every saved table says which judge scored it and whether that judge is
    independent of the training judge."""
    mark = ("yes: " if info["independent"] else "no: ") + str(info["why"])
    return table.assign(**{f"{prefix}judge": str(info["judge"]), f"{prefix}independent": mark})


def base_pairs(models: Sequence["EvalModel"]) -> dict[str, str]:
    """{trained label: base label} for each model with an adapter: the first adapter-free model of the same
    base model, else the first adapter-free model; trained models without any base are left out."""
    plain = [m for m in models if m.adapter is None]
    out = {}
    for m in models:
        if m.adapter is None:
            continue
        same = [p for p in plain if p.model == m.model]
        base = (same or plain or [None])[0]
        if base is not None:
            out[m.label] = base.label
    return out


def before_after(models: Sequence["EvalModel"]) -> dict[str, "EvalModel"]:
    """The case studies' columns: {"before RL": first model without adapter, "after RL": first with one}
    (a missing side is left out)."""
    out = {}
    before = next((m for m in models if m.adapter is None), None)
    after = next((m for m in models if m.adapter is not None), None)
    if before is not None:
        out[f"before RL ({before.label})"] = before
    if after is not None:
        out[f"after RL ({after.label})"] = after
    if not out:
        raise ScoringError("eval.models is empty: the case studies compare its models")
    return out


def side_by_side(tables: Mapping[str, pd.DataFrame], metrics: Sequence[str] = ("think", "answer"),
                 judges: Mapping[str, Mapping] | None = None) -> pd.DataFrame:
    """Score tables of several judges in one (columns `<judge> <metric>` with `_lo`/`_hi`), one row per model; the
    `n` and `k` columns of the first table that has them; with `judges` (`judge_independence`) also
    `<judge> independent` for each."""
    parts = []
    first = next(iter(tables.values()))
    keep = [c for c in ("n", "k") if c in first.columns]
    if keep:
        parts.append(first[keep])
    for name, t in tables.items():
        cols = {f"{m}{s}": f"{name} {m}{s}" for m in metrics for s in ("", "_lo", "_hi") if f"{m}{s}" in t.columns}
        part = t[list(cols)].rename(columns=cols)
        if judges is not None and name in judges:
            part = with_judge(part, judges[name], prefix=f"{name} ").drop(columns=f"{name} judge")
        parts.append(part)
    return pd.concat(parts, axis=1)


def headline(table: pd.DataFrame, prefix: str = "") -> dict[str, float]:
    """{`<model>.<prefix><metric>`: mean} for the metrics of a score_table (for `ctx.record`)."""
    metrics = [c for c in table.columns if f"{c}_lo" in table.columns]
    return {f"{label}.{prefix}{m}": float(row[m]) for label, row in table.iterrows() for m in metrics}


# ----------------------------------------------------------------------------------------------
# Notebook 04's tables and results
# ----------------------------------------------------------------------------------------------

# The metrics each judge scores: the held-out judge asks the checklists only (format is the training's rule reward).
JUDGE_METRICS = {"train": ("format", "think", "answer"), "heldout": ("think", "answer")}


def sampled_completions(completions: Mapping[str, Sequence[str]], sampled: Sequence[bool]) -> dict[str, list[str]]:
    """Each model's completions of the sampled rows only (`sampled`: one flag per row, aligned with every column)."""
    return {label: [c for c, s in zip(comps, sampled) if s] for label, comps in completions.items()}


def greedy_tables(items: Mapping[str, pd.DataFrame], n_resamples: int, seed: int) -> dict[str, pd.DataFrame]:
    """Per judge (`items`: its per-item scores by judge name, "train" / "heldout"), the score table of the greedy
    completions over `JUDGE_METRICS[name]`, clustered by prompt; {} when no row is greedy (`eval.greedy` off)."""
    from lib.eval.generation import GREEDY
    from lib.eval.tables import score_table

    return {name: score_table(its[its["decoding"] == GREEDY], metrics=JUDGE_METRICS[name], n_resamples=n_resamples,
                              seed=seed, cluster="entity")
            for name, its in items.items() if (its["decoding"] == GREEDY).any()}


def hacking_flags(gains: pd.DataFrame) -> list[str]:
    """`<model>:<metric>` for each row of a judge comparison (`tables.compare_judges`, indexed by model) flagged as
    likely reward hacking."""
    return [f"{m}:{r.metric}" for m, r in gains.iterrows() if r.likely_reward_hacking]


def eval_results(train_table: pd.DataFrame, heldout_table: pd.DataFrame, greedy: Mapping[str, pd.DataFrame],
                 gains: pd.DataFrame, format_gains: pd.DataFrame, judges: Mapping[str, Mapping], *, n_prompts: int,
                 samples_per_prompt: int, generation_seconds: float) -> dict[str, object]:
    """Notebook 04's key results for `ctx.record`, {"eval.<key>": value}: the headline means of each table (greedy
    ones prefixed `greedy_`, `greedy_heldout_`), the hacking flags, each model's effect gap and format gain as
    [value, lo, hi], the sizes, which judge is independent, the generation time."""
    heads = {**headline(train_table), **headline(heldout_table, "heldout_")}
    for name, t in greedy.items():
        heads.update(headline(t, "greedy_" if name == "train" else "greedy_heldout_"))
    out: dict[str, object] = {f"eval.{k}": v for k, v in heads.items()}
    out["eval.hacking_flags"] = hacking_flags(gains)
    for m, r in gains.iterrows():
        out[f"eval.{m}.{r.metric}_effect_gap"] = [float(r.effect_gap), float(r.effect_gap_lo), float(r.effect_gap_hi)]
    for r in format_gains.itertuples():
        out[f"eval.{r.model}.format_gain"] = [r.gain, r.gain_lo, r.gain_hi]
    out["eval.n_prompts"] = n_prompts
    out["eval.samples_per_prompt"] = samples_per_prompt
    out["eval.judges"] = {name: {"judge": j["judge"], "independent": j["independent"]} for name, j in judges.items()}
    out["eval.generation_seconds"] = round(generation_seconds, 1)
    return out


# ----------------------------------------------------------------------------------------------
# Case studies
# ----------------------------------------------------------------------------------------------

def score_with_reuse(
    completions: Mapping[str, Sequence[str]],
    entities: Sequence[str],
    known: Sequence[dict],
    make_judge: Callable[[], SectionJudge],
    rubric: Rubric,
    calibration=None,
) -> tuple[dict[str, list[dict]], int]:
    """Details (see `score_completions`) per label, aligned with `entities`.

    A completion already scored by the training judge in `known` (notebook 04's `eval/item_scores.jsonl`)
    is reused; the rest are judged by `make_judge()`, which is called (and its engine closed) only when
    something is left to judge; `calibration` as in `score_completions` (the one notebook 04 scored with). Returns
    (details by label, number of completions judged here).
    """
    out: dict[str, list[dict | None]] = {}
    todo_idx: dict[str, list[int]] = {}
    for label, comps in completions.items():
        if len(comps) != len(entities):
            raise ScoringError(f"column {label!r}: {len(comps)} completions for {len(entities)} entities")
        out[label] = [find_detail(known, e, c) for e, c in zip(entities, comps)]
        todo_idx[label] = [i for i, d in enumerate(out[label]) if d is None]
    n_new = sum(len(v) for v in todo_idx.values())
    if n_new:
        judge = make_judge()
        try:
            for label, idx in todo_idx.items():
                if idx:
                    texts = [completions[label][i] for i in idx]
                    _, new = score_completions({label: texts}, [entities[i] for i in idx], judge, rubric,
                                               calibration=calibration)
                    for i, d in zip(idx, new):
                        out[label][i] = d
        finally:
            judge.close()
    return out, n_new  # type: ignore[return-value]


def case_entry_from_detail(detail: dict) -> dict:
    """A lib.eval.report case entry (one model's column) from one `score_completions` detail."""
    return {"completion": detail["completion"], "format": detail["format"], "think_score": detail["think_score"],
            "answer_score": detail["answer_score"], "think_items": detail["think_items"],
            "answer_items": detail["answer_items"]}


def case_prompts(test: pd.DataFrame, entities: Sequence[str] = (), n: int = 3) -> pd.DataFrame:
    """The case studies' rows (`entity`, `prompt`): the named entities (their test prompt when they are in the
    test split, else a fresh one from lib.data.make_prompt), or the first `n` test rows when none is named."""
    from lib.data import make_prompt

    if not entities:
        return test.head(n)[["entity", "prompt"]].reset_index(drop=True)
    by_entity = dict(zip(test["entity"], test["prompt"]))
    return pd.DataFrame({"entity": list(entities), "prompt": [by_entity.get(e) or make_prompt(e) for e in entities]})


def format_learned_entities(per_item: pd.DataFrame, before: str, after: str, order: Sequence[str], n: int) -> list[str]:
    """Up to `n` entities (in `order`) whose format score was 0 for the `before` model and above 0 for `after`, under
    the training judge (`per_item`: notebook 04's per_item.csv; of its samples, sample 0, the completion the case
    studies show): the cases where the format was learned."""
    rows = per_item[per_item["judge"] == "train"] if "judge" in per_item.columns else per_item
    if "decoding" in rows.columns:  # k samples per prompt: the case studies show sample 0 (generate_for_models' default)
        rows = rows[(rows["decoding"] == "sample") & (rows["sample"] == 0)]
    fmt = rows.pivot_table(index="entity", columns="model", values="format", aggfunc="mean")
    if before not in fmt.columns or after not in fmt.columns:
        return []
    flipped = set(fmt.index[(fmt[before] == 0) & (fmt[after] > 0)])
    return [e for e in order if e in flipped][:n]


def case_scores(details_by_column: Mapping[str, Sequence[dict]]) -> pd.DataFrame:
    """One row per (entity, column): format, think and answer scores."""
    return pd.DataFrame([{"entity": d["entity"], "model": label, "format": d["format"], "think": d["think_score"],
                          "answer": d["answer_score"]} for label, ds in details_by_column.items() for d in ds])


def inline_case_view(page: str) -> str:
    """A case-study page for showing inside a notebook: its body, and of its stylesheet only the rules on
    `.cs-*` classes (the page's rules on body, h1, table ... would restyle the whole notebook)."""
    import re

    css = "".join(re.findall(r"<style>(.*?)</style>", page, flags=re.S))
    rules = [f"{sel.strip()}{{{body}}}" for sel, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css)
             if all(x.strip().startswith(".cs-") for x in sel.split(","))]
    m = re.search(r"<body[^>]*>(.*)</body>", page, flags=re.S)
    return f"<style>{''.join(rules)}</style>" + (m.group(1) if m else page)


def build_cases(entities: Sequence[str], prompts: Sequence[str] | None, details_by_column: Mapping[str, Sequence[dict]]) -> list[dict]:
    """Case dicts for lib.eval.report: per entity, one column per label (details aligned with `entities`);
    `prompts`: the user prompt shown above each case (None: none)."""
    cases = []
    for i, e in enumerate(entities):
        case = {"entity": e, "models": {label: case_entry_from_detail(ds[i]) for label, ds in details_by_column.items()}}
        if prompts is not None:
            case["prompt"] = prompts[i]
        cases.append(case)
    return cases
