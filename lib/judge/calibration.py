"""Judge calibration: the hand-labelled calibration set, agreement and calibration metrics, bias probes.

Pure logic, no LLM: the judge is passed in (any `lib.judge.SectionJudge`). The calibration set
(`lib/data/calibration.jsonl`, see `lib/data/CALIBRATION.md`) holds answer texts and think sections,
each with a human yes/no label for every question of its rubric section.

How notebook 02 (judge calibration) calls this module, in order::

    from lib.judge import calibration as cal

    full = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))          # one row per text
    calib = cal.select_calibration_texts(full, max_texts, seed=seed)              # stratified by kind
    labels = cal.long_labels(calib)                                               # one row per (text, question)
    judged = cal.judge_calibration_set(judge, rubric, calib)                      # p_yes, verdict, flagged per (id, key)
    long = labels.merge(judged, on=["id", "section", "key"])

    # 1 agreement and calibration, per question and overall
    table = cal.metrics_table(long["label"], long["p_yes"], threshold=t, by=long["section"] + "/" + long["key"])
    save_table(table, out / "metrics")                        # lib.eval.metrics: metrics.csv, .md, .html
    cal.reliability_diagram(long["label"], long["p_yes"], out / "reliability.png")
    sweep = cal.threshold_sweep(long["label"], long["p_yes"]); cal.plot_threshold_sweep(sweep, out / "threshold_sweep.png")

    # 2 judge modes: hard verdicts are the soft judgements' `verdict` (P(yes) >= threshold); seed mode (the
    #   original's) asks again on the same backend: JudgeEngine(judge.backend, cfg, mode="seed")
    frame = cal.mode_frame(labels, soft=judged, hard=judged, seed=cal.judge_calibration_set(seed_judge, rubric, calib))
    agreement = cal.mode_agreement(frame, threshold=t)

    # 3 bias probes: good answers padded with filler, and the same copy asked about another entity
    length = cal.run_length_probe(judge, rubric["answer"], good, cal.load_probes()["filler_sentences"], pad_levels)
    length_summary = cal.summarize_probe(length, "p_yes", "pad_level")
    relevance = cal.run_relevance_probe(judge, rubric["answer"], cal.relevance_probe_pairs(relevant, pool=answers))
    relevance_summary = cal.summarize_relevance(relevance)

    # 4 in words
    summary = cal.calibration_summary(long, agreement, length, relevance, threshold=t)
    cal.save_summary(summary, cal.describe_calibration(summary), out)
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import yaml
from matplotlib.figure import Figure
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from lib import paths
from lib.rubric import SECTION_NAMES
from lib.stats import (
    ECE_BINS,
    as_labels,
    as_probs,
    bootstrap_ci,
    calibration_bins,
    cohen_kappa,
    expected_calibration_error,
    kappa_ci,
    threshold_sweep,
)

if TYPE_CHECKING:  # pragma: no cover
    from lib.judge.types import SectionJudge
    from lib.rubric import Rubric, RubricSection

PROBES_FILE = paths.DATA_DIR / "probes.yaml"  # filler sentences for the length probe
REQUIRED_FIELDS = ("id", "section", "entity", "text", "labels")
OPTIONAL_FIELDS = ("kind", "note", "domain")
LOG_LOSS_EPS = 1e-6  # P(yes) is clipped to [eps, 1 - eps]: one confident miss costs at most ~13.8 nats
MODES = ("soft", "hard", "seed")
OVERALL = "overall"


class CalibrationError(ValueError):
    """Bad calibration data or arguments; one line naming the file, line and field (or the argument)."""


# ----------------------------------------------------------------------------------------------
# The calibration set
# ----------------------------------------------------------------------------------------------

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
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{p}:{lineno}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"{where}: bad JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise CalibrationError(f"{where}: expected a JSON object, got {type(obj).__name__}")
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
                           f"rubric item needs a true/false label on every {section!r} line of this file (lib/data/CALIBRATION.md)")
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


# ----------------------------------------------------------------------------------------------
# Metrics
# ----------------------------------------------------------------------------------------------

def _metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    keep = ~np.isnan(p)
    out: dict[str, float] = {"n": int(keep.sum()), "n_missing": int((~keep).sum()), "yes_rate": float(y.mean()) if y.size else np.nan}
    y, p = y[keep], p[keep]
    nan = float("nan")
    if y.size == 0:
        out.update(pred_yes_rate=nan, accuracy=nan, kappa=nan, brier=nan, ece=nan, log_loss=nan, auroc=nan)
        return out
    pred = p >= threshold  # the same rule as a hard-mode Judgement.verdict
    yi = y.astype(int)
    out.update(
        pred_yes_rate=float(pred.mean()),
        accuracy=float((pred == y).mean()),
        kappa=cohen_kappa(y, pred),
        brier=float(brier_score_loss(yi, p, labels=[0, 1])),
        ece=expected_calibration_error(y, p),
        log_loss=float(log_loss(yi, np.clip(p, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS), labels=[0, 1])),
        auroc=float(roc_auc_score(yi, p)) if np.unique(y).size == 2 else nan,
    )
    return out


def metrics_table(y_true: Any, p_yes: Any, threshold: float = 0.5, by: Any = None) -> pd.DataFrame:
    """Agreement and calibration of P(yes) against human labels, per group and overall.

    `y_true`: bools (or 0/1); `p_yes`: the judge's P(yes), NaN where it saw neither yes nor no
    (those pairs are left out and counted in `n_missing`); `by`: optional group labels aligned with
    them (e.g. "answer/humor"). Rows: each group in order of first appearance, then "overall".
    Columns: n, n_missing, yes_rate (labels), pred_yes_rate (p >= threshold), accuracy, kappa
    (NaN when one class only, see `cohen_kappa`), brier, ece (10 equal-width bins), log_loss
    (P clipped to [1e-6, 1 - 1e-6]), auroc (NaN unless both classes are present).
    """
    y = as_labels(y_true)
    p = as_probs(p_yes, y.size)
    rows: dict[str, dict[str, float]] = {}
    if by is not None:
        groups = pd.Series(by).reset_index(drop=True)
        if groups.shape[0] != y.size:
            raise CalibrationError(f"by has {groups.shape[0]} values, y_true has {y.size}")
        if (groups.astype(str) == OVERALL).any():
            raise CalibrationError(f"by: the group name {OVERALL!r} is reserved for the overall row")
        for g in pd.unique(groups):
            m = (groups == g).to_numpy()
            rows[str(g)] = _metrics(y[m], p[m], threshold)
    rows[OVERALL] = _metrics(y, p, threshold)
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "group"
    return table


def mode_frame(labels: pd.DataFrame, **judged: pd.DataFrame) -> pd.DataFrame:
    """The labels and each mode's answers side by side, for `mode_agreement`.

    `labels`: `long_labels` output; `judged`: `judge_calibration_set` outputs keyed by mode
    (`soft=`, `hard=`, `seed=`). Column `soft` holds P(yes); `hard` and `seed` hold the verdict
    (a seed-mode item that was not asked counts as "no", as in the section score).
    Returns id, section, key, label and one column per mode given.
    """
    unknown = [m for m in judged if m not in MODES]
    if unknown:
        raise CalibrationError(f"mode_frame: unknown mode(s) {unknown}; known: {', '.join(MODES)}")
    frame = labels[["id", "section", "key", "label"]]
    for mode, j in judged.items():
        col = j[["id", "section", "key", "p_yes" if mode == "soft" else "verdict"]].rename(
            columns={"p_yes": mode, "verdict": mode})
        frame = frame.merge(col, on=["id", "section", "key"], how="left", validate="one_to_one")
        if frame[mode].isna().all():
            raise CalibrationError(f"mode_frame: the {mode!r} judgements share no (id, key) with the labels")
    return frame


def mode_agreement(frame: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """How the judge modes agree with the labels and with each other.

    `frame` has a `label` column (bool) and any of the mode columns `soft` (P(yes), turned into a
    verdict by `p >= threshold`), `hard` (bool) and `seed` (bool). Rows with a missing value are
    left out pair by pair. Returns one row per pair (a, b): first each mode against `label` (its
    agreement is the accuracy), then each pair of modes; columns a, b, n, agreement, kappa.
    """
    if "label" not in frame.columns:
        raise CalibrationError(f"mode_agreement: frame needs a 'label' column; has {list(frame.columns)}")
    modes = [m for m in MODES if m in frame.columns]
    if not modes:
        raise CalibrationError(f"mode_agreement: frame needs at least one of the columns {list(MODES)}; has {list(frame.columns)}")
    cols: dict[str, pd.Series] = {"label": pd.Series(as_labels(frame["label"], "label"), dtype="boolean")}
    for m in modes:
        v = frame[m].reset_index(drop=True)
        if m == "soft":
            p = as_probs(v, len(frame))
            cols[m] = pd.Series(np.where(np.isnan(p), None, p >= threshold), dtype="boolean")
        else:
            cols[m] = v.astype("boolean")
    pairs = [("label", m) for m in modes] + [(a, b) for i, a in enumerate(modes) for b in modes[i + 1:]]
    rows = []
    for a, b in pairs:
        both = cols[a].notna() & cols[b].notna()
        va, vb = cols[a][both].to_numpy(dtype=bool), cols[b][both].to_numpy(dtype=bool)
        rows.append({
            "a": a, "b": b, "n": int(both.sum()),
            "agreement": float((va == vb).mean()) if va.size else np.nan,
            "kappa": cohen_kappa(va, vb),
        })
    return pd.DataFrame(rows, columns=["a", "b", "n", "agreement", "kappa"])


# ----------------------------------------------------------------------------------------------
# Figures (matplotlib Figure objects, no pyplot state: safe headless; display() them in a notebook)
# ----------------------------------------------------------------------------------------------

def _save(fig: Figure, path: str | Path | None) -> Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def reliability_diagram(
    y_true: Any, p_yes: Any, path: str | Path | None, n_bins: int = ECE_BINS, title: str = "Judge reliability"
) -> Figure:
    """Fraction of yes labels per P(yes) bin against the diagonal, a histogram of P(yes) under it.

    Saves a PNG at `path` (parents created; None: not saved) and returns the Figure.
    """
    bins = calibration_bins(y_true, p_yes, n_bins)
    ece = expected_calibration_error(y_true, p_yes, n_bins)
    fig = Figure(figsize=(5.5, 6.5))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    width = 1.0 / n_bins
    full = bins[bins["n"] > 0]
    top.bar(full["lo"], full["frac_yes"], width=width, align="edge", alpha=0.6, edgecolor="black", label="fraction labelled yes")
    top.plot(full["mean_p"], full["frac_yes"], "o", color="C3", label="bin mean P(yes)")
    top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    top.set_ylim(0, 1)
    top.set_ylabel("fraction labelled yes")
    top.set_title(f"{title} (ECE {ece:.3f}, n={int(bins['n'].sum())})")
    top.legend(loc="upper left", fontsize=8)
    bottom.bar(bins["lo"], bins["n"], width=width, align="edge", color="C0", edgecolor="black")
    bottom.set_xlim(0, 1)
    bottom.set_xlabel("judge P(yes)")
    bottom.set_ylabel("count")
    fig.tight_layout()
    return _save(fig, path)


def plot_threshold_sweep(
    df: pd.DataFrame, path: str | Path | None, title: str = "Hard-verdict threshold", label_yes_rate: float | None = None
) -> Figure:
    """Accuracy, kappa and predicted yes-rate against the threshold (`threshold_sweep` output).

    Marks the threshold of best accuracy; `label_yes_rate` draws the labels' yes-rate for reference.
    """
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for col in ("accuracy", "kappa", "yes_rate"):
        ax.plot(df["threshold"], df[col], marker="o", markersize=3, label=col)
    if label_yes_rate is not None:
        ax.axhline(float(label_yes_rate), linestyle=":", color="C2", label="label yes-rate")
    if df["accuracy"].notna().any():
        best = df.loc[df["accuracy"].idxmax(), "threshold"]
        ax.axvline(best, linestyle="--", color="grey", label=f"best accuracy at {best:.2f}")
    ax.set_xlabel("threshold on P(yes)")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Bias probes
# ----------------------------------------------------------------------------------------------

def load_probes(path: str | Path | None = None) -> dict[str, Any]:
    """Read `lib/data/probes.yaml`: at least `filler_sentences`, a non-empty list of strings."""
    p = Path(path) if path is not None else PROBES_FILE
    if not p.exists():
        raise CalibrationError(f"{p}: probe file not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CalibrationError(f"{p}: malformed YAML ({str(exc).splitlines()[0]})") from None
    fillers = data.get("filler_sentences") if isinstance(data, dict) else None
    if not isinstance(fillers, list) or not fillers or not all(isinstance(s, str) and s.strip() for s in fillers):
        raise CalibrationError(f"{p}: field 'filler_sentences': expected a non-empty list of non-empty strings")
    return data


def length_probe_texts(
    good_texts: Mapping[str, str] | Sequence[str],
    filler_sentences: Sequence[str],
    pad_levels: Sequence[int] = (0, 1, 2, 4, 8),
    seed: int = 0,
) -> pd.DataFrame:
    """Good answers padded with k bland filler sentences for each k in `pad_levels`.

    Does the judge reward length rather than content? Each text draws one random order of the filler
    sentences (`numpy.random.default_rng(seed)`), and level k appends the first k of them, so a
    higher level only adds sentences (beyond the pool size the order repeats). `good_texts`: {id:
    text}, or a sequence (ids "0", "1", ...). Returns columns id, pad_level, text, n_chars.
    """
    items = list(good_texts.items()) if isinstance(good_texts, Mapping) else [(str(i), t) for i, t in enumerate(good_texts)]
    fillers = [s.strip() for s in filler_sentences]
    if not fillers or not all(fillers):
        raise CalibrationError("length_probe_texts: filler_sentences must be a non-empty list of non-empty strings")
    levels = [int(k) for k in pad_levels]
    if not levels or min(levels) < 0:
        raise CalibrationError(f"length_probe_texts: pad_levels must be non-negative integers, got {list(pad_levels)}")
    rng = np.random.default_rng(seed)
    top = max(levels)
    rows = []
    for tid, text in items:
        if not isinstance(text, str) or not text.strip():
            raise CalibrationError(f"length_probe_texts: text {tid!r} is empty")
        n_perm = max(1, -(-top // len(fillers)))
        order = np.concatenate([rng.permutation(len(fillers)) for _ in range(n_perm)])[:top]
        for k in levels:
            padded = text.strip() + "".join(fillers[i] for i in order[:k])
            rows.append({"id": str(tid), "pad_level": k, "text": padded, "n_chars": len(padded)})
    return pd.DataFrame(rows, columns=["id", "pad_level", "text", "n_chars"])


def relevance_probe_pairs(df_answers: pd.DataFrame, seed: int = 0, pool: pd.DataFrame | None = None) -> pd.DataFrame:
    """Each answer paired with an unrelated entity, to check that `relevancy` drops when it should.

    `df_answers`: columns id, text, entity (and optionally domain). The swapped entity is drawn
    (`numpy.random.default_rng(seed)`) from `pool` (columns entity[, domain]; default: the answers
    themselves) among entities other than the answer's own and, when both have a domain, from
    another domain. Returns id, text, true_entity, swapped_entity (and true_domain, swapped_domain).
    """
    missing = [c for c in ("id", "text", "entity") if c not in df_answers.columns]
    if missing:
        raise CalibrationError(f"relevance_probe_pairs: missing column(s) {missing}; has {list(df_answers.columns)}")
    pool = df_answers if pool is None else pool
    if "entity" not in pool.columns:
        raise CalibrationError(f"relevance_probe_pairs: pool needs an 'entity' column; has {list(pool.columns)}")
    use_domain = "domain" in df_answers.columns and "domain" in pool.columns
    cand = pool[["entity", "domain"]] if use_domain else pool[["entity"]].assign(domain="")
    cand = cand.drop_duplicates("entity").sort_values("entity").reset_index(drop=True)  # sorted: pool order does not matter
    rng = np.random.default_rng(seed)
    rows = []
    for r in df_answers.itertuples(index=False):
        dom = getattr(r, "domain", "") if use_domain else ""
        ok = cand[(cand["entity"] != r.entity) & ((cand["domain"] != dom) | (not use_domain) | (dom == ""))]
        if ok.empty:
            raise CalibrationError(f"relevance_probe_pairs: no unrelated entity for {r.id!r} ({r.entity!r}, domain {dom!r})")
        pick = ok.iloc[int(rng.integers(len(ok)))]
        row = {"id": r.id, "text": r.text, "true_entity": r.entity, "swapped_entity": pick["entity"]}
        if use_domain:
            row.update(true_domain=dom, swapped_domain=pick["domain"])
        rows.append(row)
    return pd.DataFrame(rows)


def summarize_probe(
    df: pd.DataFrame,
    value_col: str,
    group_col: str,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    stat: Callable[..., float] = np.mean,
) -> pd.DataFrame:
    """Mean (or `stat`) of `value_col` per group with a bootstrap interval (`lib.stats.bootstrap_ci`).

    Returns columns <group_col>, n, mean, low, high; groups sorted. NaN values are left out.
    """
    for c in (value_col, group_col):
        if c not in df.columns:
            raise CalibrationError(f"summarize_probe: missing column {c!r}; has {list(df.columns)}")
    rows = []
    for g, sub in df.groupby(group_col, sort=True):
        vals = pd.to_numeric(sub[value_col], errors="raise").to_numpy(dtype=float)
        point, low, high = bootstrap_ci(vals, stat=stat, n_resamples=n_resamples, seed=seed, confidence=confidence)
        rows.append({group_col: g, "n": int((~np.isnan(vals)).sum()), "mean": point, "low": low, "high": high})
    return pd.DataFrame(rows, columns=[group_col, "n", "mean", "low", "high"])


def plot_probe(
    summary: pd.DataFrame,
    group_col: str,
    path: str | Path | None,
    title: str = "Probe",
    ylabel: str = "mean judge score",
    xlabel: str | None = None,
) -> Figure:
    """The `summarize_probe` table as points with interval bars (a line when groups are numeric)."""
    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    numeric = pd.api.types.is_numeric_dtype(summary[group_col])
    x = summary[group_col].to_numpy(dtype=float) if numeric else np.arange(len(summary))
    yerr = np.vstack([summary["mean"] - summary["low"], summary["high"] - summary["mean"]])
    ax.errorbar(x, summary["mean"], yerr=yerr, marker="o", capsize=4, linestyle="-" if numeric else "none")
    if not numeric:
        ax.set_xticks(x, [str(v) for v in summary[group_col]])
    ax.set_xlabel(xlabel or group_col)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------
# Notebook 02 helpers: subset, probe runs, summary in words
# ----------------------------------------------------------------------------------------------

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


def one_item_section(section: "RubricSection", key: str) -> "RubricSection":
    """The section with only item `key` (same template): ask one question without the others."""
    return replace(section, items=(section.item(key),))


def _probe_rubric(section: "RubricSection") -> dict[str, "RubricSection"]:
    return {section.name: section}  # judge_calibration_set only indexes the rubric by section name


def run_length_probe(
    judge: "SectionJudge", section: "RubricSection", good: pd.DataFrame, filler_sentences: Sequence[str],
    pad_levels: Sequence[int] = (0, 1, 2, 4, 8), seed: int = 0,
) -> pd.DataFrame:
    """Judge good texts padded with 0..k bland sentences (`length_probe_texts`) on every item of `section`.

    `good`: columns id, entity, text. Returns one row per (id, pad_level): id, pad_level, n_chars,
    p_yes (mean P(yes) over the items the judge answered), score (`section_score` of the soft
    indicators, flagged items counting 0.5 as in training), flagged (items without an answer).
    """
    from lib.judge.types import soft_indicator
    from lib.rubric import section_score

    pads = length_probe_texts(dict(zip(good["id"], good["text"])), filler_sentences, pad_levels, seed=seed)
    entity = dict(zip(good["id"].astype(str), good["entity"]))
    probe = pads.assign(pid=pads["id"] + "@" + pads["pad_level"].astype(str), section=section.name,
                        entity=pads["id"].map(entity))
    judged = judge_calibration_set(judge, _probe_rubric(section), probe.rename(columns={"id": "text_id", "pid": "id"}))
    rows = []
    for r in probe.itertuples(index=False):
        sub = judged[judged["id"] == r.pid]
        ind = {k: soft_indicator(p) for k, p in zip(sub["key"], sub["p_yes"])}
        rows.append({"id": r.id, "pad_level": r.pad_level, "n_chars": r.n_chars, "p_yes": float(sub["p_yes"].mean()),
                     "score": section_score(section, ind), "flagged": int(sub["flagged"].sum())})
    return pd.DataFrame(rows, columns=["id", "pad_level", "n_chars", "p_yes", "score", "flagged"])


def run_relevance_probe(
    judge: "SectionJudge", section: "RubricSection", pairs: pd.DataFrame, key: str = "relevancy"
) -> pd.DataFrame:
    """Ask item `key` about each text twice: with its own entity and with the swapped one.

    `pairs`: `relevance_probe_pairs` output. Returns id, true_entity, swapped_entity, p_true, p_swapped,
    drop (p_true - p_swapped; positive when the judge notices the copy is about something else).
    """
    sec = one_item_section(section, key)
    both = pd.concat([
        pairs.assign(pid=pairs["id"].astype(str) + "@true", entity=pairs["true_entity"]),
        pairs.assign(pid=pairs["id"].astype(str) + "@swapped", entity=pairs["swapped_entity"]),
    ])
    probe = both.assign(section=section.name).rename(columns={"id": "text_id", "pid": "id"})
    p = judge_calibration_set(judge, _probe_rubric(sec), probe).set_index("id")["p_yes"]
    out = pairs[["id", "true_entity", "swapped_entity"]].copy()
    out["p_true"] = [p[f"{i}@true"] for i in pairs["id"].astype(str)]
    out["p_swapped"] = [p[f"{i}@swapped"] for i in pairs["id"].astype(str)]
    out["drop"] = out["p_true"] - out["p_swapped"]
    return out.reset_index(drop=True)


def summarize_relevance(relevance: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Mean relevancy P(yes) with the text's own entity and with the swapped one (`summarize_probe` columns).

    Rows "own entity", "swapped entity" (in that order); `relevance`: `run_relevance_probe` output.
    """
    long = pd.concat([
        pd.DataFrame({"entity": "own entity", "p_yes": relevance["p_true"]}),
        pd.DataFrame({"entity": "swapped entity", "p_yes": relevance["p_swapped"]}),
    ])
    return summarize_probe(long, "p_yes", "entity", n_resamples=n_resamples, seed=seed)


def save_summary(summary: Mapping[str, Any], words: str, folder: str | Path) -> dict[str, Path]:
    """Write `summary.json` (NaN as null) and `summary.md` (the words) into `folder`; returns both paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clean = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in summary.items()}
    out = {"json": folder / "summary.json", "md": folder / "summary.md"}
    out["json"].write_text(json.dumps(clean, ensure_ascii=False, indent=2), encoding="utf-8")
    out["md"].write_text(words + "\n", encoding="utf-8")
    return out


def calibration_summary(
    long: pd.DataFrame,
    agreement: pd.DataFrame,
    length: pd.DataFrame,
    relevance: pd.DataFrame,
    threshold: float = 0.5,
    n_resamples: int = 1000,
    seed: int = 0,
    judgements_per_s: float = float("nan"),
    judge_model: str = "",
) -> dict[str, Any]:
    """The numbers notebook 02 records and `describe_calibration` puts into words.

    `long`: labels merged with the soft judgements (label, p_yes, flagged); `agreement`:
    `mode_agreement` output; `length`: `run_length_probe` output; `relevance`: `run_relevance_probe`
    output. Intervals are bootstrap percentile intervals (`lib.stats.bootstrap_ci`, `kappa_ci`).
    """
    y = as_labels(long["label"], "label")
    p = as_probs(long["p_yes"], y.size)
    seen = ~np.isnan(p)
    correct = (p[seen] >= threshold) == y[seen]
    acc = bootstrap_ci(correct.astype(float), n_resamples=n_resamples, seed=seed)
    kap = kappa_ci(y[seen], p[seen] >= threshold, n_resamples=n_resamples, seed=seed)

    def agree(b: str, col: str) -> float:
        row = agreement[(agreement["a"] == "label") & (agreement["b"] == b)]
        return float(row[col].iloc[0]) if len(row) else float("nan")

    levels = sorted(length["pad_level"].unique())
    lo_lvl, hi_lvl = levels[0], levels[-1]
    wide = length.pivot(index="id", columns="pad_level", values="p_yes")
    diff = bootstrap_ci((wide[hi_lvl] - wide[lo_lvl]).to_numpy(dtype=float), n_resamples=n_resamples, seed=seed)
    ok = length.dropna(subset=["p_yes"])
    slope = float(np.polyfit(ok["pad_level"].astype(float), ok["p_yes"], 1)[0]) if ok["pad_level"].nunique() > 1 else float("nan")
    drop = bootstrap_ci(relevance["drop"].to_numpy(dtype=float), n_resamples=n_resamples, seed=seed)
    overall = _metrics(y, p, threshold)
    sweep = threshold_sweep(y, p)
    best = sweep.loc[sweep["kappa"].idxmax()] if sweep["kappa"].notna().any() else None
    return {
        "judge_model": judge_model, "threshold": float(threshold),
        "n_labels": int(y.size), "n_missing": int((~seen).sum()),
        "flagged_share": float(pd.Series(long["flagged"]).astype(bool).mean()) if len(long) else float("nan"),
        "accuracy": acc[0], "accuracy_ci": [acc[1], acc[2]],
        "kappa": kap[0], "kappa_ci": [kap[1], kap[2]],
        "ece": overall["ece"], "auroc": overall["auroc"],
        "best_threshold": float(best["threshold"]) if best is not None else float("nan"),
        "best_threshold_kappa": float(best["kappa"]) if best is not None else float("nan"),
        "label_yes_rate": float(y.mean()) if y.size else float("nan"),
        "pred_yes_rate": float((p[seen] >= threshold).mean()) if seen.any() else float("nan"),
        "hard_accuracy": agree("hard", "agreement"), "seed_accuracy": agree("seed", "agreement"),
        "seed_kappa": agree("seed", "kappa"),
        "length_pad_levels": [int(lo_lvl), int(hi_lvl)], "length_probe_diff": diff[0],
        "length_probe_diff_ci": [diff[1], diff[2]], "length_probe_slope": slope,
        "relevance_drop": drop[0], "relevance_drop_ci": [drop[1], drop[2]],
        "judgements_per_s": float(judgements_per_s),
    }


def _ci(x: Any) -> str:
    """'[low, high]', or '' when no interval was computed."""
    if not isinstance(x, (list, tuple, np.ndarray)) or len(x) != 2:
        return ""
    return f"[{x[0]:.2f}, {x[1]:.2f}]"


def kappa_words(kappa: float, ci: Sequence[float] | None = None) -> str:
    """What a kappa says, after Landis & Koch's bands; an interval reaching 0 is 'not distinguishable from chance'.

    >>> kappa_words(0.03, [0.01, 0.06])
    'the judge is barely better than chance'
    >>> kappa_words(0.7, [0.6, 0.8])
    'substantial agreement with the labels'
    """
    if kappa is None or np.isnan(kappa):
        return "kappa is undefined: the judge (and the labels) gave a single answer throughout"
    if isinstance(ci, (list, tuple, np.ndarray)) and len(ci) == 2 and ci[0] <= 0 <= ci[1]:
        return "the judge is not distinguishable from chance"
    if kappa < 0:
        return "the judge agrees with the labels less often than chance"
    for upper, words in ((0.2, "the judge is barely better than chance"), (0.4, "fair agreement with the labels"),
                         (0.6, "moderate agreement with the labels"), (0.8, "substantial agreement with the labels")):
        if kappa < upper:
            return words
    return "almost perfect agreement with the labels"


def describe_calibration(summary: Mapping[str, Any]) -> str:
    """`calibration_summary`'s numbers in plain sentences, one per line (no judgement is hard-coded).

    >>> s = {"n_labels": 240, "accuracy": 0.55, "accuracy_ci": [0.49, 0.61], "kappa": 0.03, "kappa_ci": [-0.05, 0.1],
    ...      "ece": 0.21, "flagged_share": 0.0, "label_yes_rate": 0.55, "pred_yes_rate": 0.9}
    >>> describe_calibration(s).splitlines()[0]
    'Overall kappa 0.03 [-0.05, 0.10] on 240 labels (accuracy 0.55 [0.49, 0.61]): the judge is not distinguishable from chance.'
    """
    def g(key: str) -> Any:
        return summary.get(key, float("nan"))  # a missing number reads as NaN

    lines = []
    model = f" ({summary['judge_model']})" if summary.get("judge_model") else ""
    yes, pred = g("label_yes_rate"), g("pred_yes_rate")
    words = kappa_words(g("kappa"), g("kappa_ci"))
    if pred in (0.0, 1.0):
        words = f"the judge says {'yes' if pred else 'no'} to every question, so its verdicts carry no information"
    lines.append(f"Overall kappa {g('kappa'):.2f} {_ci(g('kappa_ci'))} on {int(g('n_labels'))} labels "
                 f"(accuracy {g('accuracy'):.2f} {_ci(g('accuracy_ci'))}): {words}.")
    if not np.isnan(pred):
        lean = "says yes more often than" if pred > yes + 0.1 else "says no more often than" if pred < yes - 0.1 else "says yes about as often as"
        lines.append(f"At threshold {g('threshold'):.2f} the judge{model} says yes to {pred:.0%} of the questions; "
                     f"the labels say yes to {yes:.0%}: it {lean} a strict reviewer.")
    ece = g("ece")
    if not np.isnan(ece):
        quality = "well calibrated" if ece < 0.05 else "roughly calibrated" if ece < 0.1 else "poorly calibrated"
        lines.append(f"ECE {ece:.3f}: its P(yes) is {quality} as a probability of the label being yes.")
    auroc = g("auroc")
    if not np.isnan(auroc):
        ranks = ("ranks yes-labelled questions above no-labelled ones better than chance" if auroc >= 0.6 else
                 "hardly ranks yes-labelled questions above no-labelled ones" if auroc >= 0.4 else
                 "ranks no-labelled questions above yes-labelled ones")
        lines.append(f"AUROC {auroc:.2f} (0.5 is chance): its P(yes) {ranks}; the threshold with the best kappa on these "
                     f"labels is {g('best_threshold'):.2f} (kappa {g('best_threshold_kappa'):.2f}; chosen on the same labels, so optimistic).")
    flagged = g("flagged_share")
    if not np.isnan(flagged):
        lines.append(f"{flagged:.1%} of the judgements saw neither 是 nor 否 among the top tokens"
                     + (" (they count 0.5 in soft mode)." if flagged > 0 else "."))
    seed_acc = g("seed_accuracy")
    if not np.isnan(seed_acc):
        better = "better than" if seed_acc > g("accuracy") + 0.02 else "worse than" if seed_acc < g("accuracy") - 0.02 else "about as well as"
        lines.append(f"The original's seed mode (greedy 3 tokens, no 否 = yes) matches the labels on {seed_acc:.0%} "
                     f"of the questions (kappa {g('seed_kappa'):.2f}), {better} the soft judge at the threshold.")
    d, dci = g("length_probe_diff"), g("length_probe_diff_ci")
    if not np.isnan(d):
        lo, hi = summary.get("length_pad_levels", [0, "k"])
        verdict = ("the judge rewards length" if dci[0] > 0 else "the judge penalizes padding" if dci[1] < 0
                   else "no clear length bias at this sample size")
        lines.append(f"Padding good answers with {hi} bland sentences instead of {lo} changes mean P(yes) by {d:+.3f} "
                     f"{_ci(dci)} (slope {g('length_probe_slope'):+.4f} per sentence): {verdict}.")
    r, rci = g("relevance_drop"), g("relevance_drop_ci")
    if not np.isnan(r):
        verdict = ("it notices copy about another product" if rci[0] > 0 else
                   "it rates copy about another product as more relevant" if rci[1] < 0 else
                   "it does not reliably notice copy about another product")
        lines.append(f"Swapping in an unrelated entity changes relevancy P(yes) by {-r:+.3f} {_ci([-rci[1], -rci[0]])}: {verdict}.")
    jps = g("judgements_per_s")
    if not np.isnan(jps):
        lines.append(f"Speed: {jps:.1f} judgements per second in soft mode.")
    return "\n".join(lines)
