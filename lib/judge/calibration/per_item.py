"""Per-item calibration of the judge: one calibrator per checklist item, fitted on the labelled set, applied in the score.

A small judge can rank texts well within one item yet say yes to almost every question, whatever the item's base rate;
pooled over items its P(yes) then looks useless. Each item therefore gets its own map from the judge's P(yes) to the
probability that a strict reviewer says yes (RocketEval's idea):

- `platt` (default): logistic regression on the standardized logit of P(yes) (scikit-learn `LogisticRegression`,
  its default L2 penalty C=1 on the standardized feature, which keeps the fit finite when a small set is separable);
- `isotonic`: scikit-learn `IsotonicRegression` on P(yes) (monotone, step-wise; needs more labels than Platt);
- both are increasing in P(yes): a Platt fit whose slope is not positive (the judge says yes more often to texts the
  labels reject) falls back to the constant base rate, so the item carries no signal and counts as weak; a reward never
  pays for the inverse of the judge's verdict;
- `none`: no calibration; the score is the rubric's seed formula on raw P(yes) (`lib.rubric.section_score`).

Everything is cross-validated by text: `GroupKFold` over the text ids, one fold assignment per section shared by its
items, so no reported number comes from a calibrator fitted on that text (the calibrator the score applies is then
fitted on all of the item's labels). Per item it reports n, base rate, AUROC of the raw P(yes), cross-validated AUROC of
the calibrated P(yes), ECE and Brier before (raw) and after (out-of-fold calibrated).

Weak items (cross-validated AUROC below `min_auroc`, or undefined) are handled by `weak_items`:
`drop` leaves them out of the score; `downweight` gives them the weight w = clip((auroc - 0.5) / (min_auroc - 0.5), 0, 1)
(a plausible item's weight in the mean is multiplied by w; a must-have item's factor in the product becomes p ** w,
so w = 0 is a drop and w = 1 the full gate); `keep` keeps them at full weight. The score is the rubric's own formula
(must-have product, plausible mean, the 0.05 floor) over the kept items with calibrated probabilities; a section whose
plausible items are all dropped scores its gates alone, as the rubric does for a section without plausible items, and
one with every item dropped scores 1 (the product and the factor of nothing): it then carries no signal.

Degenerate cases, one rule each:
- an item whose labels have one class: it cannot be ranked (AUROC undefined); its calibrator is the constant smoothed
  base rate (yes + 1) / (n + 2), and it counts as weak;
- a training fold whose labels have one class: that fold's calibrator is the constant smoothed base rate of the fold;
- fewer than 2 texts with a P(yes) for an item: no cross-validation (AUROC undefined, so weak); fewer texts than
  `folds`: as many folds as texts (leave-one-text-out).
- a flagged judgement (no P(yes)) is left out of fitting and, when scoring, is calibrated as P(yes) = 0.5 (the soft
  judge's value for it, `lib.judge.types.soft_indicator`).

Notebook 02 fits and saves it (`fit_per_item` -> `PerItemCalibration.save`) into the run's `calibration/` stage; the
judge rewards (`lib.rewards.JudgeRewards(calibration=...)`) and evaluation scores (`lib.eval.scoring.score_completions`)
read it with `for_run(ctx)` when the profile's `calibration.per_item.method` is not `none`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.model_selection import GroupKFold

from lib.judge.calibration.dataset import CalibrationError
from lib.judge.types import soft_indicator
from lib.rubric import RubricSection, section_score
from lib.stats import expected_calibration_error

if TYPE_CHECKING:  # pragma: no cover
    from lib.rubric import Rubric
    from lib.run import RunContext

METHODS = ("none", "platt", "isotonic")
WEAK_ITEMS = ("drop", "downweight", "keep")
FILE_NAME = "per_item_calibration.json"  # in the run's calibration/ stage folder (notebook 02 writes it)
FORMAT_VERSION = 1
LOGIT_EPS = 1e-6  # P(yes) is clipped to [eps, 1 - eps] before the logit

Calibrator = Callable[[np.ndarray], np.ndarray]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=float), LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(p / (1 - p))


def _smoothed_rate(y: np.ndarray) -> float:
    """(yes + 1) / (n + 2): the constant calibrator of labels with one class (never exactly 0 or 1)."""
    return float((np.sum(y) + 1.0) / (len(y) + 2.0))


def fit_params(y: Any, p: Any, method: str) -> dict[str, Any]:
    """The fitted parameters of one calibrator (JSON-safe): {"kind": "platt"|"isotonic"|"constant", ...}.

    `y`: labels (bool), `p`: the judge's P(yes) (no NaN). Labels of one class give the constant smoothed base rate.
    """
    y = np.asarray(y, dtype=bool)
    p = np.asarray(p, dtype=float)
    if method not in ("platt", "isotonic"):
        raise CalibrationError(f"fit_params: method must be platt or isotonic, got {method!r}")
    if y.size == 0 or np.unique(y).size < 2:
        return {"kind": "constant", "value": _smoothed_rate(y)}
    if method == "platt":
        x = _logit(p)
        center = float(x.mean())
        scale = float(x.std()) or 1.0  # all P(yes) equal: the feature is constant, the fit gives the base rate
        model = LogisticRegression().fit(((x - center) / scale).reshape(-1, 1), y)
        if model.coef_[0, 0] <= 0:  # the judge's yes goes with the labels' no: never reward the inverse of a verdict
            return {"kind": "constant", "value": _smoothed_rate(y)}
        return {"kind": "platt", "center": center, "scale": scale, "coef": float(model.coef_[0, 0]),
                "intercept": float(model.intercept_[0])}
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(p, y.astype(float))
    return {"kind": "isotonic", "x": [float(v) for v in iso.X_thresholds_], "y": [float(v) for v in iso.y_thresholds_]}


def apply_params(params: Mapping[str, Any], p: Any) -> np.ndarray:
    """Calibrated P(yes) of `fit_params`' calibrator for raw P(yes) `p` (an array; NaN stays NaN)."""
    p = np.asarray(p, dtype=float)
    kind = params["kind"]
    if kind == "constant":
        out = np.full(p.shape, float(params["value"]))
    elif kind == "platt":
        z = params["coef"] * (_logit(p) - params["center"]) / params["scale"] + params["intercept"]
        out = 1.0 / (1.0 + np.exp(-z))
    elif kind == "isotonic":  # IsotonicRegression.predict is this linear interpolation, clipped at the ends
        out = np.interp(p, np.asarray(params["x"]), np.asarray(params["y"]))
    elif kind == "identity":
        out = p.copy()
    else:
        raise CalibrationError(f"unknown calibrator kind {kind!r}")
    return np.where(np.isnan(p), np.nan, out)


def text_folds(ids: Sequence[str], folds: int, seed: int = 0) -> dict[str, int]:
    """{text id: fold} by `GroupKFold` over the distinct ids (shuffled with `seed`); fewer texts than folds:
    one text per fold. Fewer than 2 texts: every text in fold 0 (no cross-validation possible)."""
    uniq = list(dict.fromkeys(ids))
    if len(uniq) < 2:
        return {i: 0 for i in uniq}
    k = min(int(folds), len(uniq))
    splitter = GroupKFold(n_splits=k, shuffle=True, random_state=seed)
    out: dict[str, int] = {}
    for f, (_, test) in enumerate(splitter.split(np.zeros(len(uniq)), groups=uniq)):
        for t in test:
            out[uniq[t]] = f
    return out


def cross_validated(y: Any, p: Any, fold: Any, method: str,
                    fit: Callable[[np.ndarray, np.ndarray, str], Calibrator] | None = None) -> np.ndarray:
    """Out-of-fold calibrated P(yes): each row predicted by a calibrator fitted on the other folds' rows only.

    `fold`: each row's fold (rows of one text share it). `fit(y, p, method)` returns a calibrator (default:
    `fit_params` then `apply_params`). A single fold: all NaN (nothing to fit on without the text itself).
    """
    y, p, fold = np.asarray(y, dtype=bool), np.asarray(p, dtype=float), np.asarray(fold)
    if fit is None:
        def fit(yy, pp, m):
            params = fit_params(yy, pp, m)
            return lambda q: apply_params(params, q)
    out = np.full(p.shape, np.nan)
    folds = np.unique(fold)
    if folds.size < 2:
        return out
    for f in folds:
        test = fold == f
        calibrate = fit(y[~test], p[~test], method)
        out[test] = calibrate(p[test])
    return out


def item_weight(auroc: float, min_auroc: float, weak_items: str) -> float:
    """The item's weight in the score: 1 when its cross-validated AUROC reaches `min_auroc`; else by `weak_items`.

    >>> item_weight(0.8, 0.6, "drop"), item_weight(0.5, 0.6, "drop"), item_weight(float("nan"), 0.6, "keep")
    (1.0, 0.0, 1.0)
    >>> round(item_weight(0.55, 0.6, "downweight"), 6), item_weight(0.45, 0.6, "downweight")
    (0.5, 0.0)
    """
    if weak_items not in WEAK_ITEMS:
        raise CalibrationError(f"weak_items must be one of {', '.join(WEAK_ITEMS)}, got {weak_items!r}")
    strong = not math.isnan(auroc) and auroc >= min_auroc
    if strong or weak_items == "keep":
        return 1.0
    if weak_items == "drop" or math.isnan(auroc) or min_auroc <= 0.5:
        return 0.0
    return float(np.clip((auroc - 0.5) / (min_auroc - 0.5), 0.0, 1.0))


@dataclass
class ItemCalibration:
    """One item's calibrator and what cross-validation said about it."""

    section: str
    key: str
    type: str  # must-have | plausible
    n: int  # labels with a P(yes)
    base_rate: float  # share of yes labels
    auroc_raw: float  # AUROC of the raw P(yes) (NaN: one class)
    auroc_cv: float  # AUROC of the out-of-fold calibrated P(yes) (NaN: one class, or no cross-validation)
    ece_before: float
    ece_after: float
    brier_before: float
    brier_after: float
    params: dict  # fit_params on all of the item's labels: what scoring applies
    weight: float = 1.0  # item_weight: 0 dropped, 1 full
    rule: str = "fitted"  # fitted | one class | too few texts

    @property
    def kept(self) -> bool:
        return self.weight > 0


@dataclass
class PerItemCalibration:
    """Calibrators of every item of a rubric, and the rule that keeps or drops them (see the module docstring)."""

    method: str
    min_auroc: float
    weak_items: str
    folds: int
    items: dict[tuple[str, str], ItemCalibration] = field(default_factory=dict)
    judge_model: str = ""
    rubric_hash: str = ""
    n_texts: dict[str, int] = field(default_factory=dict)  # per section

    # ------------------------------------------------------------------ applying it

    def calibrate(self, section: str, key: str, p_yes: float | None) -> float:
        """The calibrated P(yes) of one judgement (a flagged one, None or NaN, is calibrated as 0.5).
        An item without a calibrator (not in the fitted rubric) is an error."""
        item = self.items.get((section, key))
        if item is None:
            raise CalibrationError(f"per-item calibration has no item {section}/{key}: refit it for this rubric (notebook 02)")
        return float(apply_params(item.params, np.array([soft_indicator(p_yes)]))[0])

    def section_parts(self, section: RubricSection) -> tuple[RubricSection, dict[str, float]]:
        """The section as scored: kept items only, plausible weights times the item weight; and the must-have
        exponents (the item weight) for items kept at a weight below 1."""
        kept, powers = [], {}
        for it in section.items:
            cal = self.items.get((section.name, it.key))
            if cal is None:
                raise CalibrationError(f"per-item calibration has no item {section.name}/{it.key}: refit it for this "
                                       f"rubric (notebook 02)")
            if cal.weight <= 0:
                continue
            if it.type == "plausible":
                kept.append(replace(it, weight=it.weight * cal.weight))
            else:
                kept.append(it)
                powers[it.key] = cal.weight
        return replace(section, items=tuple(kept)), powers

    def indicators(self, section: RubricSection, p_yes: Mapping[str, float | None]) -> dict[str, float]:
        """Calibrated P(yes) of the kept items (must-have ones raised to their weight); missing items count 0."""
        scored, powers = self.section_parts(section)
        out = {}
        for it in scored.items:
            if it.key not in p_yes:
                continue  # a missing judgement counts 0 in the formula, as in lib.rubric.section_score
            q = self.calibrate(section.name, it.key, p_yes[it.key])
            out[it.key] = q ** powers[it.key] if it.key in powers else q
        return out

    def score(self, section: RubricSection, p_yes: Mapping[str, float | None]) -> float:
        """The rubric's section score (`lib.rubric.section_score`) on calibrated P(yes) over the kept items."""
        scored, _ = self.section_parts(section)
        return section_score(scored, self.indicators(section, p_yes))

    def with_rule(self, min_auroc: float, weak_items: str) -> "PerItemCalibration":
        """The same calibrators, kept or dropped again from their stored cross-validated AUROC."""
        items = {k: replace(v, weight=item_weight(v.auroc_cv, min_auroc, weak_items)) for k, v in self.items.items()}
        return replace(self, min_auroc=float(min_auroc), weak_items=weak_items, items=items)

    # ------------------------------------------------------------------ showing and saving it

    def table(self) -> pd.DataFrame:
        """One row per item: section, key, type, n, base_rate, auroc_raw, auroc_cv, ece/brier before and after,
        weight, kept, rule, calibrator."""
        rows = []
        for it in self.items.values():
            d = {k: v for k, v in asdict(it).items() if k != "params"}
            d["kept"] = it.kept
            d["calibrator"] = it.params["kind"]
            rows.append(d)
        cols = ["section", "key", "type", "n", "base_rate", "auroc_raw", "auroc_cv", "ece_before", "ece_after",
                "brier_before", "brier_after", "weight", "kept", "rule", "calibrator"]
        return pd.DataFrame(rows, columns=cols)

    def to_json(self) -> dict[str, Any]:
        def clean(x):
            return None if isinstance(x, float) and math.isnan(x) else x

        return {
            "version": FORMAT_VERSION, "method": self.method, "min_auroc": self.min_auroc, "weak_items": self.weak_items,
            "folds": self.folds, "judge_model": self.judge_model, "rubric_hash": self.rubric_hash, "n_texts": self.n_texts,
            "items": [{k: clean(v) for k, v in asdict(it).items()} | {"kept": it.kept} for it in self.items.values()],
        }

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), ensure_ascii=False, indent=2), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "PerItemCalibration":
        path = Path(path)
        if not path.exists():
            raise CalibrationError(f"{path}: no per-item calibration (notebooks/02_judge_calibration.ipynb writes it)")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != FORMAT_VERSION:
                raise CalibrationError(f"{path}: format version {raw.get('version')!r}, expected {FORMAT_VERSION}: "
                                       f"rerun notebooks/02_judge_calibration.ipynb")
            nan = float("nan")
            items = {}
            for d in raw["items"]:
                d = {k: (nan if v is None and k not in ("params",) else v) for k, v in d.items() if k != "kept"}
                it = ItemCalibration(**d)
                items[(it.section, it.key)] = it
            return cls(method=raw["method"], min_auroc=float(raw["min_auroc"]), weak_items=raw["weak_items"],
                       folds=int(raw["folds"]), items=items, judge_model=raw.get("judge_model", ""),
                       rubric_hash=raw.get("rubric_hash", ""), n_texts=dict(raw.get("n_texts", {})))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, CalibrationError):
                raise
            raise CalibrationError(f"{path}: not a per-item calibration file ({type(exc).__name__}: {exc})") from None


def fit_per_item(
    long: pd.DataFrame,
    rubric: "Rubric",
    method: str = "platt",
    min_auroc: float = 0.6,
    weak_items: str = "drop",
    folds: int = 5,
    seed: int = 0,
    judge_model: str = "",
) -> tuple[PerItemCalibration, pd.DataFrame]:
    """Fit one calibrator per rubric item on the labelled judgements, cross-validated by text.

    `long`: one row per (text, item) with columns id, section, key, label (bool) and p_yes (NaN: flagged), e.g. the
    labels merged with `judge_calibration_set`'s answers (notebook 02's `long`). Returns the calibration and the
    out-of-fold frame (id, section, key, label, p_yes, fold, p_cv: the calibrated P(yes) of a calibrator that never
    saw the text), for the before/after reliability diagram.
    """
    if method not in ("platt", "isotonic"):
        raise CalibrationError(f"fit_per_item: method must be platt or isotonic (none fits nothing), got {method!r}")
    if weak_items not in WEAK_ITEMS:
        raise CalibrationError(f"fit_per_item: weak_items must be one of {', '.join(WEAK_ITEMS)}, got {weak_items!r}")
    if folds < 2:
        raise CalibrationError(f"fit_per_item: folds must be >= 2, got {folds}")
    missing = [c for c in ("id", "section", "key", "label", "p_yes") if c not in long.columns]
    if missing:
        raise CalibrationError(f"fit_per_item: long lacks column(s) {missing}")
    result = PerItemCalibration(method=method, min_auroc=float(min_auroc), weak_items=weak_items, folds=int(folds),
                                judge_model=judge_model, rubric_hash=rubric.content_hash)
    oof_parts = []
    nan = float("nan")
    for name, section in rubric.sections.items():
        sec = long[long["section"] == name]
        fold_of = text_folds(list(sec["id"]), folds, seed=seed)
        result.n_texts[name] = len(fold_of)
        for it in section.items:
            rows = sec[(sec["key"] == it.key)]
            rows = rows[rows["p_yes"].notna()]
            y = rows["label"].to_numpy(dtype=bool)
            p = rows["p_yes"].to_numpy(dtype=float)
            fold = np.array([fold_of[i] for i in rows["id"]], dtype=int)
            both = np.unique(y).size == 2
            p_cv = cross_validated(y, p, fold, method)
            cv_ok = ~np.isnan(p_cv)
            rule = "fitted" if both else "one class"
            if both and np.unique(fold).size < 2:
                rule = "too few texts"
            yi = y.astype(int)
            item = ItemCalibration(
                section=name, key=it.key, type=it.type, n=int(y.size), base_rate=float(y.mean()) if y.size else nan,
                auroc_raw=float(roc_auc_score(yi, p)) if both else nan,
                auroc_cv=(float(roc_auc_score(yi[cv_ok], p_cv[cv_ok]))
                          if both and cv_ok.any() and np.unique(y[cv_ok]).size == 2 else nan),
                ece_before=expected_calibration_error(y, p) if y.size else nan,
                ece_after=expected_calibration_error(y[cv_ok], p_cv[cv_ok]) if cv_ok.any() else nan,
                brier_before=float(brier_score_loss(yi, p, labels=[0, 1])) if y.size else nan,
                brier_after=float(brier_score_loss(yi[cv_ok], p_cv[cv_ok], labels=[0, 1])) if cv_ok.any() else nan,
                params=fit_params(y, p, method), rule=rule,
            )
            item.weight = item_weight(item.auroc_cv, min_auroc, weak_items)
            result.items[(name, it.key)] = item
            oof_parts.append(pd.DataFrame({"id": rows["id"].to_numpy(), "section": name, "key": it.key,
                                           "label": y, "p_yes": p, "fold": fold, "p_cv": p_cv}))
    oof = pd.concat(oof_parts, ignore_index=True) if oof_parts else pd.DataFrame(
        columns=["id", "section", "key", "label", "p_yes", "fold", "p_cv"])
    return result, oof


def calibration_path(ctx: "RunContext") -> Path:
    """Where notebook 02 saves the run's per-item calibration: `<run>/calibration/per_item_calibration.json`."""
    return ctx.dir / "calibration" / FILE_NAME


def for_run(ctx: "RunContext") -> PerItemCalibration | None:
    """The run's per-item calibration when its profile asks for one (`calibration.per_item.method` not `none`), else None.

    Reads `<run>/calibration/per_item_calibration.json` (written by notebook 02, the calibration stage); keeps or drops
    items again with the profile's `min_auroc` and `weak_items` (from their stored cross-validated AUROC). A missing
    file, or one fitted with another method, judge model or rubric, is a one-line error saying what to run.
    """
    cfg = ctx.profile.calibration.per_item
    if cfg.method == "none":
        return None
    if ctx.profile.judge.mode != "soft":
        raise CalibrationError(f"calibration.per_item.method {cfg.method!r} maps the judge's P(yes): it needs judge.mode "
                               f"soft, not {ctx.profile.judge.mode!r}")
    path = calibration_path(ctx)
    if not path.exists():
        raise CalibrationError(f"calibration.per_item.method is {cfg.method!r} but {path} does not exist: run the calibration "
                               f"stage first (notebooks/02_judge_calibration.ipynb, `python -m lib.cli stage {ctx.dir.name} 02`), "
                               f"or --set calibration.per_item.method=none")
    calib = PerItemCalibration.load(path)
    from lib.rubric import load_rubric

    rubric_hash = load_rubric(ctx.profile.rubric.path).content_hash
    for what, have, want in (("method", calib.method, cfg.method), ("judge model", calib.judge_model, ctx.profile.judge.model),
                             ("rubric", calib.rubric_hash, rubric_hash)):
        if have != want:
            raise CalibrationError(f"{path}: fitted for {what} {have!r}, the profile has {want!r}: rerun the calibration "
                                   f"stage (notebooks/02_judge_calibration.ipynb) with this profile")
    return calib.with_rule(cfg.min_auroc, cfg.weak_items)


def reliability_before_after(oof: pd.DataFrame, path: str | Path | None, title: str = "Judge reliability"):
    """Two reliability diagrams side by side: raw P(yes) and the out-of-fold calibrated P(yes) (each with its ECE).

    Saves a PNG at `path` (None: not saved) and returns the Figure."""
    from matplotlib.figure import Figure

    from lib.stats import ECE_BINS, calibration_bins

    fig = Figure(figsize=(10, 6))
    axes = fig.subplots(2, 2, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ok = oof[oof["p_cv"].notna()]
    width = 1.0 / ECE_BINS
    for j, (col, name) in enumerate((("p_yes", "raw P(yes)"), ("p_cv", "calibrated P(yes), out of fold"))):
        top, bottom = axes[0, j], axes[1, j]
        bins = calibration_bins(ok["label"], ok[col], ECE_BINS)
        full = bins[bins["n"] > 0]
        ece = expected_calibration_error(ok["label"], ok[col]) if len(ok) else float("nan")
        top.bar(full["lo"], full["frac_yes"], width=width, align="edge", alpha=0.6, edgecolor="black",
                label="fraction labelled yes")
        top.plot(full["mean_p"], full["frac_yes"], "o", color="C3", label="bin mean P(yes)")
        top.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
        top.set_ylim(0, 1)
        top.set_title(f"{name}: ECE {ece:.3f}, n={len(ok)}")
        bottom.bar(bins["lo"], bins["n"], width=width, align="edge", color="C0", edgecolor="black")
        bottom.set_xlim(0, 1)
        bottom.set_xlabel(name)
    axes[0, 0].set_ylabel("fraction labelled yes")
    axes[1, 0].set_ylabel("count")
    axes[0, 0].legend(loc="upper left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120, bbox_inches="tight")
    return fig


def per_item_summary(calib: PerItemCalibration, oof: pd.DataFrame) -> dict[str, Any]:
    """The numbers notebook 02 records: items kept/dropped, pooled ECE and AUROC of raw vs out-of-fold calibrated P(yes)."""
    ok = oof[oof["p_cv"].notna()]
    y = ok["label"].to_numpy(dtype=bool)
    both = np.unique(y).size == 2
    table = calib.table()
    return {
        "method": calib.method, "min_auroc": calib.min_auroc, "weak_items": calib.weak_items,
        "n_items": int(len(table)), "n_kept": int(table["kept"].sum()),
        "kept": [f"{r.section}/{r.key}" for r in table.itertuples() if r.kept],
        "dropped": [f"{r.section}/{r.key}" for r in table.itertuples() if not r.kept],
        "pooled_ece_before": expected_calibration_error(y, ok["p_yes"]) if len(ok) else float("nan"),
        "pooled_ece_after": expected_calibration_error(y, ok["p_cv"]) if len(ok) else float("nan"),
        "pooled_auroc_before": float(roc_auc_score(y, ok["p_yes"])) if both else float("nan"),
        "pooled_auroc_after": float(roc_auc_score(y, ok["p_cv"])) if both else float("nan"),
    }
