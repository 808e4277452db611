"""Comparison of runs (a sweep's, or any): one table, overlaid training curves and a self-contained HTML page.

    table = compare_table(run_dirs)              # one row per run and evaluated model
    overlay_curves(run_dirs, out_dir)            # one panel per metric, one line per run
    build_compare_report(run_dirs, out_dir)      # table + curves + what differs -> out_dir/compare.html

What a row holds, and where it is read from (every value is what the run itself wrote):
    train_<reward>_last      mean of `rewards/<reward>/mean` over the last `train.first_last_k` logged steps (train/log.jsonl)
    train_length_first/last  `completions/mean_length` (tokens) over the first / last k steps
    train_cut_first/last     `completions/clipped_ratio`: the share of completions cut at max_completion_length
    format, think, answer    evaluation under the training judge with 95% intervals (eval/scores_train.csv)
    heldout_think/answer     the same under the held-out judge (eval/scores_heldout.csv)
    length_chars, think_chars, answer_chars   mean characters of the evaluation completions and of their parts as
                             the judge sees them (lib.rewards.extract_*: the original's extraction; without a
                             </think> tag the think part is the whole completion)
    distinct_1/2, missing_tag_share           eval/diagnostics.csv
    hacking                  the evaluation's hacking test: metrics whose gain under the training judge is not
                             confirmed by the held-out judge (eval/judge_comparison.csv `likely_reward_hacking`)
Training columns sit on the rows of the run's trained models (adapter: run); a missing file leaves its cells empty.
"""
from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from lib import paths


class CompareError(ValueError):
    """Runs that cannot be compared as asked; one line naming the run or file."""


CURVE_METRICS = (  # (title, metric of train/log.jsonl, y label); each reward's mean is added before these
    ("total reward", "reward", "reward"),
    ("completion length (mean)", "completions/mean_length", "tokens"),
    ("completions cut at max length", "completions/clipped_ratio", "share"),
    ("KL to the reference", "kl", "KL"),
)
COMPARE_HTML = "compare.html"


MAIN_COLUMNS = ("format", "think", "answer", "heldout_think", "heldout_answer", "length_chars", "think_chars",
                "distinct_2", "hacking", "train_format_last", "train_length_last", "train_cut_last")


def main_columns(table: pd.DataFrame) -> list[str]:
    """The columns of the short table (the CLI prints it; notebook 06 shows it first), with their intervals."""
    cols = [c for c in MAIN_COLUMNS if c in table.columns]
    return cols + [f"{c}_{s}" for c in cols for s in ("lo", "hi") if f"{c}_{s}" in table.columns]


def run_status(rd: Path) -> str | None:
    return _json(Path(rd) / "manifest.json").get("status")


def chosen_sweep(sweep: str = "", runs: Sequence[str] = (), run_dir: str = "") -> str | None:
    """The sweep notebook 06 compares: SWEEP, else (RUNS and RUN_DIR empty) the newest sweep, else None."""
    if sweep:
        return sweep
    if runs or run_dir:
        return None
    from lib.sweep import sweeps_dir

    found = sorted((p for p in sweeps_dir().glob("*/sweep.json")), key=lambda p: p.stat().st_mtime)
    return str(found[-1].parent) if found else None


def select_runs(sweep: str = "", runs: Sequence[str] = (), run_dir: str = "") -> list[tuple[str, Path]]:
    """Notebook 06's parameters -> (label, run directory): a sweep, the runs named, the newest sweep, or RUN_DIR."""
    chosen = chosen_sweep(sweep, runs, run_dir)
    if chosen:
        return resolve_runs(sweep=chosen)
    if runs:
        return resolve_runs(list(runs))
    if run_dir:
        return resolve_runs([run_dir])
    from lib.sweep import sweeps_dir

    raise CompareError(f"nothing to compare: no sweep in {sweeps_dir()}; set SWEEP or RUNS")


def resolve_runs(runs: Sequence[str | Path] = (), sweep: str | Path | None = None) -> list[tuple[str, Path]]:
    """(label, run directory) of run ids / directories, or of a sweep's variants (label: the variant)."""
    if sweep:
        from lib.sweep import sweep_runs

        found = sweep_runs(sweep)
        if not found:
            raise CompareError(f"sweep {sweep}: none of its runs exists yet")
        return found
    out = []
    for r in runs:
        p = Path(r)
        rd = p if p.is_dir() else paths.RUNS_DIR / str(r)
        if not rd.is_dir():
            raise CompareError(f"unknown run {str(r)!r}: neither a directory nor a run in {paths.RUNS_DIR}")
        out.append((rd.name, rd))
    if not out:
        raise CompareError("nothing to compare: name runs or a sweep")
    return out


def _json(p: Path) -> dict:
    from lib.eval.report import ReportError, read_json_object

    try:
        return read_json_object(p)
    except ReportError as exc:
        raise CompareError(str(exc)) from None


def _csv(p: Path) -> pd.DataFrame | None:
    return pd.read_csv(p) if p.exists() else None


def _profile(rd: Path) -> dict:
    import yaml

    p = rd / "profile.yaml"
    return (yaml.safe_load(p.read_text(encoding="utf-8")) or {}) if p.exists() else {}


def train_log(rd: Path) -> pd.DataFrame:
    from lib.train.logs import read_log

    p = rd / "train" / "log.jsonl"
    return read_log(p) if p.exists() else pd.DataFrame({"step": pd.Series(dtype=int)})


def _ends(df: pd.DataFrame, metric: str, k: int) -> tuple[float, float]:
    if metric not in df.columns or df[metric].notna().sum() == 0:
        return math.nan, math.nan
    v = df[metric].dropna()
    return float(v.head(k).mean()), float(v.tail(k).mean())


def training_columns(rd: Path, k: int) -> dict:
    """The run's end-of-training numbers (see the module docstring)."""
    from lib.train.logs import reward_metrics

    df = train_log(rd)
    row: dict = {"train_steps": int(df["step"].max()) if len(df) else 0}
    for name in reward_metrics(df):
        row[f"train_{name.removesuffix('_quality_reward').removesuffix('_reward')}_last"] = _ends(df, f"rewards/{name}/mean", k)[1]
    row["train_length_first"], row["train_length_last"] = _ends(df, "completions/mean_length", k)
    row["train_cut_first"], row["train_cut_last"] = _ends(df, "completions/clipped_ratio", k)
    if "step_seconds" in df.columns and len(df):
        row["train_step_seconds"] = float(df["step_seconds"].mean())
    return row


def _part_lengths(rd: Path) -> pd.DataFrame:
    """Mean characters of the evaluation completions, think and answer parts, per model (eval/item_scores.jsonl)."""
    from lib.data import read_jsonl
    from lib.rewards import extract_answer, extract_think

    p = rd / "eval" / "item_scores.jsonl"
    if not p.exists():
        return pd.DataFrame(columns=["length_chars", "think_chars", "answer_chars"])
    rows = [r for r in read_jsonl(p, skip_bad_lines=True) if r.get("judge", "train") == "train"]
    frame = pd.DataFrame([{"model": r["model"], "length_chars": len(r.get("completion") or ""),
                           "think_chars": len(extract_think(r.get("completion") or "") or ""),
                           "answer_chars": len(extract_answer(r.get("completion") or "") or "")} for r in rows])
    return frame.groupby("model").mean() if len(frame) else pd.DataFrame(columns=["length_chars", "think_chars", "answer_chars"])


def _hacking(rd: Path) -> dict[str, str]:
    jc = _csv(rd / "eval" / "judge_comparison.csv")
    if jc is None or "likely_reward_hacking" not in jc.columns:
        return {}
    out: dict[str, list[str]] = {}
    for r in jc.itertuples(index=False):
        out.setdefault(str(r.model), [])
        if str(r.likely_reward_hacking).lower() in ("true", "yes", "1"):
            out[str(r.model)].append(str(r.metric))
    return {m: (", ".join(v) if v else "none") for m, v in out.items()}


def run_rows(label: str, rd: Path) -> list[dict]:
    """The rows of one run: one per evaluated model (one row of training columns alone when nothing was evaluated)."""
    prof = _profile(rd)
    k = int((prof.get("train") or {}).get("first_last_k", 5))
    manifest = _json(rd / "manifest.json")
    trained = {m.get("label") for m in (prof.get("eval") or {}).get("models", []) if m.get("adapter") == "run"}
    train = training_columns(rd, k)
    base = {"run": label, "run_id": rd.name, "status": manifest.get("status")}
    scores = _csv(rd / "eval" / "scores_train.csv")
    if scores is None:
        return [{**base, "model": None, **train}]
    heldout = _csv(rd / "eval" / "scores_heldout.csv")
    diag = _csv(rd / "eval" / "diagnostics.csv")
    lengths, hacking = _part_lengths(rd), _hacking(rd)
    rows = []
    for s in scores.to_dict("records"):
        model = str(s["model"])
        row = {**base, "model": model, "n": s.get("n")}
        for m in ("format", "think", "answer"):
            for suffix in ("", "_lo", "_hi"):
                row[f"{m}{suffix}"] = s.get(f"{m}{suffix}", math.nan)
        h = heldout[heldout["model"].astype(str) == model].to_dict("records") if heldout is not None else []
        for m in ("think", "answer"):
            for suffix in ("", "_lo", "_hi"):
                row[f"heldout_{m}{suffix}"] = h[0].get(f"{m}{suffix}", math.nan) if h else math.nan
        if model in lengths.index:
            row.update(lengths.loc[model].to_dict())
        d = diag[diag["model"].astype(str) == model].to_dict("records") if diag is not None else []
        for c in ("distinct_1", "distinct_2", "missing_tag_share"):
            row[c] = d[0].get(c, math.nan) if d else math.nan
        row["hacking"] = hacking.get(model, "—" if model in trained else "(base)")
        if model in trained:
            row.update(train)
        rows.append(row)
    return rows


def compare_table(runs: Iterable[tuple[str, Path]]) -> pd.DataFrame:
    """One row per run and evaluated model, indexed "label/model"; `lib.eval.tables.display_table` shows the intervals."""
    rows = [r for label, rd in runs for r in run_rows(label, rd)]
    table = pd.DataFrame(rows)
    table.index = [f"{r['run']}/{r['model']}" if r["model"] is not None else r["run"] for r in rows]
    table.index.name = "run/model"
    return table


def profile_differences(runs: Sequence[tuple[str, Path]]) -> pd.DataFrame:
    """The profile fields whose values differ between the runs (dotted keys x runs)."""
    def flat(d, prefix=""):
        out = {}
        for k, v in (d or {}).items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out

    flats = {label: flat(_profile(rd)) for label, rd in runs}
    keys = sorted(set().union(*[f.keys() for f in flats.values()])) if flats else []
    diff = [k for k in keys if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats.values()}) > 1]
    return pd.DataFrame({label: [json.dumps(f.get(k), ensure_ascii=False, default=str) for k in diff]
                         for label, f in flats.items()}, index=pd.Index(diff, name="profile field"))


def overlay_curves(runs: Sequence[tuple[str, Path]], out_dir: str | Path) -> list[Path]:
    """One panel per metric (each reward's mean, total reward, completion length, cut share, KL), one line per run:
    `curves_overlay.png` (all panels) first, then `overlay_<metric>.png` per panel. Empty when no run has a log."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from lib.train.logs import reward_metrics

    logs = {label: train_log(rd) for label, rd in runs}
    names: list[str] = []
    for df in logs.values():
        names += [n for n in reward_metrics(df) if n not in names]
    specs = [(n, f"rewards/{n}/mean", "reward") for n in names] + [(t, m, y) for t, m, y in CURVE_METRICS]
    specs = [s for s in specs if any(s[1] in df.columns and df[s[1]].notna().any() for df in logs.values())]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not specs:
        return []

    def draw(ax, title, metric, ylabel):
        for label, df in logs.items():
            if metric in df.columns and df[metric].notna().any():
                d = df[["step", metric]].dropna()
                ax.plot(d["step"], d[metric], marker="o" if len(d) < 30 else None, lw=1.5, label=label)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)

    ncols = min(3, len(specs))
    nrows = math.ceil(len(specs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.3 * nrows), squeeze=False)
    for ax, spec in zip(axes.flat, specs):
        draw(ax, *spec)
    for ax in list(axes.flat)[len(specs):]:
        ax.set_visible(False)
    fig.tight_layout()
    written = [out / "curves_overlay.png"]
    fig.savefig(written[0], dpi=110)
    plt.close(fig)
    for title, metric, ylabel in specs:
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        draw(ax, title, metric, ylabel)
        fig.tight_layout()
        written.append(out / f"overlay_{metric.replace('/', '_')}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def build_compare_report(runs: Sequence[tuple[str, Path]], out_dir: str | Path, title: str = "Run comparison") -> Path:
    """The table (csv/md/html), the overlaid curves and ONE self-contained `compare.html` (images inline) in `out_dir`."""
    from lib.eval.tables import display_table, save_table
    from lib.eval.report import _page, png_data_uri

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = compare_table(runs)
    save_table(table, out / "compare_table")
    diffs = profile_differences(runs)
    diffs.to_csv(out / "profile_differences.csv")
    figures = overlay_curves(runs, out)
    shown = display_table(table.drop(columns=["run_id"]))
    meta = "".join(
        f"<tr><td>{html.escape(label)}</td><td><code>{html.escape(rd.name)}</code></td>"
        f"<td>{html.escape(str(_json(rd / 'manifest.json').get('status')))}</td>"
        f"<td><code>{html.escape(' '.join(_json(rd / 'manifest.json').get('overrides') or []))}</code></td>"
        f"<td>{html.escape(', '.join(f'{s[:2]} from {r}' for s, r in (_json(rd / 'manifest.json').get('shared') or {}).items()))}</td></tr>"
        for label, rd in runs)
    body = [f"<h1>{html.escape(title)}</h1>",
            f"<p>built {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}; columns: see lib/compare.py</p>",
            '<table class="meta"><tr><th>run</th><th>run id</th><th>status</th><th>overrides</th><th>shared stages</th></tr>'
            f"{meta}</table>",
            "<h2>Results</h2>", shown.to_html(escape=True, border=0),
            "<h2>What differs between the profiles</h2>",
            diffs.to_html(escape=True, border=0) if len(diffs) else "<p>nothing: the profiles are equal</p>",
            "<h2>Training curves</h2>"]
    body += [f'<figure><img src="{png_data_uri(p)}" alt="{html.escape(p.name)}"><figcaption>{html.escape(p.name)}</figcaption></figure>'
             for p in figures[:1]]
    if not figures:
        body.append("<p>no training log in these runs</p>")
    page = out / COMPARE_HTML
    page.write_text(_page(title, "\n".join(body)), encoding="utf-8")
    (out / "compare.json").write_text(json.dumps({"runs": [[label, str(rd)] for label, rd in runs],
                                                  "table": json.loads(table.to_json(orient="index"))},
                                                 ensure_ascii=False, indent=2), encoding="utf-8")
    return page


def default_out_dir(sweep: str | Path | None) -> Path:
    if sweep:
        from lib.sweep import resolve_sweep_dir

        return resolve_sweep_dir(sweep) / "compare"
    return paths.RUNS_DIR.parent / "compare" / datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")


def compare_cli(runs: Sequence[str], sweep: str | None, out: str | None) -> Path:
    """What `lib.cli compare` does: resolve, build the report, print the table; returns compare.html's path."""
    from lib.eval.tables import display_table, markdown_table

    found = resolve_runs(runs, sweep)
    page = build_compare_report(found, Path(out) if out else default_out_dir(sweep),
                                title=f"Sweep {Path(str(sweep)).name}" if sweep else "Run comparison")
    table = compare_table(found)
    print(markdown_table(display_table(table[main_columns(table)])))
    return page
