"""Training logs: a Trainer callback that writes every logged step and sampled completions; curves; totals.

Files in the run's `train/` folder (appended; a resumed run skips the steps already written):

    log.jsonl / log.csv   one row per logged step: TRL's metrics as TRL names them (`rewards/<func>/mean`
                          and `/std`, `reward`, `reward_std`, `frac_reward_zero_std`, `kl`, `entropy`,
                          `completions/mean_length`, `completions/clipped_ratio`, `loss`, `learning_rate`,
                          `grad_norm`) plus `step_seconds`, `judge_seconds` and `judge_share` (judge time / step time),
                          and, when the rollouts are timed (LoRARollouts, or lib.train.rollouts.GenerationTimer on
                          TRL's own generation), `rollout_seconds`, `rollout_share` and `gradient_seconds`;
                          with rollouts from vLLM and TRL's importance-sampling correction on, TRL's
                          `sampling/sampling_logp_difference/mean` and `/max` (|rollout - trainer| log-prob per
                          completion token, nats) and `sampling/importance_sampling_ratio/min|mean|max`
    samples.jsonl         a few completions of every logged step with each reward, each judge question's
                          P(yes) and the section scores

    recorder = RewardRecorder()
    funcs = [recorder.wrap(name, f) for name, f in ...]          # same __name__: TRL's metric names stay
    trainer.add_callback(TrainingLogger(out_dir, recorder, judge))
    plot_training(out_dir / "log.jsonl", out_dir)                # PNG per panel + curves.png
    training_summary(out_dir / "log.jsonl")                      # steps, seconds, judge share

Whether a metric rises over the run (first vs last steps) is lib.train.trend.

This module does not import transformers (Unsloth must be imported before it): `TrainingLogger` answers
every `on_*` event of transformers' callback protocol, acting on `on_train_begin` and `on_log` only.
"""
from __future__ import annotations

import csv
import functools
import json
import math
import time
from collections import deque
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from lib import rewards as rewards_mod
from lib.data import read_jsonl

LOG_JSONL = "log.jsonl"
LOG_CSV = "log.csv"
SAMPLES_JSONL = "samples.jsonl"
SUMMARY_JSON = "train_summary.json"
RECENT_STEPS = 3  # the time left is estimated from this many recent steps (the first ones are slower: longer completions)
CURVES_PNG = "curves.png"
FIRST_COLUMNS = ("step", "epoch", "wall_time", "step_seconds", "judge_seconds", "judge_share")


class TrainLogError(ValueError):
    """A training log that cannot be read or used as asked; one line naming the file or metric."""


# ------------------------------------------------------------------------------------ reading and writing


def _repair_jsonl(path: Path) -> None:
    """Cut a partial last line (a process killed mid-write) so the next append starts on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    cut = data.rfind(b"\n") + 1
    with path.open("r+b") as f:
        f.truncate(cut)


def last_step(path: str | Path) -> int:
    """The largest `step` in a JSONL log (0 when the file is missing or empty)."""
    steps = [int(r["step"]) for r in read_jsonl(path, skip_bad_lines=True) if isinstance(r.get("step"), (int, float))]
    return max(steps, default=0)


def read_log(log: str | Path | pd.DataFrame | Sequence[Mapping]) -> pd.DataFrame:
    """A training log as a DataFrame sorted by step: a path to log.jsonl / log.csv, records, or a frame."""
    if isinstance(log, pd.DataFrame):
        df = log.copy()
    elif isinstance(log, (str, Path)):
        p = Path(log)
        if not p.exists():
            raise TrainLogError(f"{p}: training log not found")
        df = pd.read_csv(p) if p.suffix == ".csv" else pd.DataFrame(read_jsonl(p, skip_bad_lines=True))
    else:
        df = pd.DataFrame(list(log))
    if df.empty:
        return pd.DataFrame({"step": pd.Series(dtype=int)})
    if "step" not in df.columns:
        raise TrainLogError("training log has no 'step' column")
    return df.sort_values("step").drop_duplicates("step", keep="first").reset_index(drop=True)


def _number(v: Any) -> float | int | None:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return None if isinstance(v, float) and math.isnan(v) else v
    if hasattr(v, "item"):  # numpy / torch scalars
        return _number(v.item())
    return None


def _column_order(keys: Iterable[str]) -> list[str]:
    keys = list(dict.fromkeys(keys))
    first = [k for k in FIRST_COLUMNS if k in keys]
    return first + sorted(k for k in keys if k not in first)


# ------------------------------------------------------------------------------------ reward recorder


class RewardRecorder:
    """Wraps reward functions to keep the completions, rewards and judge details of recent calls.

    TRL calls every reward function once per generation batch, in order; the calls for one batch are
    grouped into one record. The judge rewards' per-item details come from `judge_rewards.details` (the
    trainer's `lib.rewards.JudgeRewards`), and their wall time is summed in `judge_seconds` (used when the
    judge has no `.stats`).
    """

    def __init__(self, judge_rewards: Any = None, keep: int = 8):
        self.batches: deque[dict] = deque(maxlen=keep)
        self.judge_seconds = 0.0
        self.details = judge_rewards.details if judge_rewards is not None else {}

    def wrap(self, name: str, func: Callable[..., list[float]]) -> Callable[..., list[float]]:
        """`func` with recording; `__name__` is kept so TRL logs `rewards/<func name>/mean` as before."""

        @functools.wraps(func)
        def recorded(completions, **kwargs):
            t0 = time.perf_counter()
            out = func(completions, **kwargs)
            dt = time.perf_counter() - t0
            if name in self.details:
                self.judge_seconds += dt
            self._record(name, completions, kwargs, list(out))
            return out

        return recorded

    def _record(self, name: str, completions: Sequence[Any], kwargs: dict, values: list[float]) -> None:
        n = len(completions)
        batch = self.batches[-1] if self.batches else None
        if batch is None or name in batch["rewards"] or batch["n"] != n:
            prompts = kwargs.get("prompts")
            entity = kwargs.get("entity")
            batch = {
                "n": n,
                "completions": [rewards_mod.completion_text(c) for c in completions],
                "prompts": [_user_text(p) for p in prompts] if prompts is not None and len(prompts) == n else [""] * n,
                "entities": [str(e) for e in entity] if entity is not None and not isinstance(entity, str) else [entity or ""] * n,
                "rewards": {},
                "details": {},
            }
            self.batches.append(batch)
        batch["rewards"][name] = values
        if name in self.details and len(self.details[name]) == n:
            batch["details"][name] = [dict(d) for d in self.details[name]]

    def drain(self) -> list[dict]:
        """The recorded batches since the last drain (oldest first), forgetting them."""
        out = list(self.batches)
        self.batches.clear()
        return out


def _user_text(prompt: Any) -> str:
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, (list, tuple)):
        users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        return str(users[-1]) if users else ""
    return str(prompt)


def sample_rows(batch: dict, step: int, n: int) -> list[dict]:
    """The first `n` completions of a recorded batch as samples.jsonl rows (TRL keeps a group together)."""
    rows = []
    for i in range(min(n, batch["n"])):
        row = {
            "step": step,
            "entity": batch["entities"][i],
            "prompt": batch["prompts"][i],
            "completion": batch["completions"][i],
            "rewards": {k: v[i] for k, v in batch["rewards"].items()},
        }
        for section, details in batch["details"].items():
            d = details[i]
            row[section] = {
                "score": d.get("score"),
                "shortcut": d.get("shortcut"),
                "p_yes": {k: it.get("p_yes") for k, it in d.get("items", {}).items()},
                "n_flagged": d.get("n_flagged", 0),
            }
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------ the callback


def _noop(*args, **kwargs):
    return None


class TrainingLogger:
    """transformers Trainer callback writing log.jsonl, log.csv and samples.jsonl into `out_dir`.

    On a resumed run, records whose step is <= the last step already in a file are skipped, so the
    files never hold a step twice. `judge` (optional) is read for `.stats.seconds` / `.stats.requests`;
    without it the recorder's timing of the judge rewards is used.
    """

    def __init__(self, out_dir: str | Path, recorder: RewardRecorder | None = None, judge: Any = None, n_samples: int = 4,
                 rollouts: Any = None):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out_dir / LOG_JSONL
        self.csv_path = self.out_dir / LOG_CSV
        self.samples_path = self.out_dir / SAMPLES_JSONL
        self.recorder = recorder
        self.judge = judge
        self.rollouts = rollouts  # read for `.seconds` (rollout wall time) when the rollouts are timed apart
        self.n_samples = n_samples
        self._recent: deque[float] = deque(maxlen=RECENT_STEPS)
        for p in (self.log_path, self.samples_path):
            _repair_jsonl(p)
        self.last_logged = last_step(self.log_path)
        self.last_sampled = last_step(self.samples_path)
        self._csv_columns: list[str] | None = None
        self._t = time.monotonic()
        self._step = 0
        self._judge = self._judge_totals()
        self._rollout = self._rollout_seconds()

    # every other event of the callback protocol does nothing
    def __getattr__(self, name: str):
        if name.startswith("on_"):
            return _noop
        raise AttributeError(name)

    def _judge_totals(self) -> tuple[float, int]:
        stats = getattr(self.judge, "stats", None)
        if stats is not None:
            return float(stats.seconds), int(getattr(stats, "requests", 0))
        return (self.recorder.judge_seconds if self.recorder else 0.0), 0

    def _rollout_seconds(self) -> float | None:
        return float(self.rollouts.seconds) if self.rollouts is not None else None

    def on_train_begin(self, args, state, control, **kwargs):
        self._recent.clear()
        self._t = time.monotonic()
        self._step = int(state.global_step)
        self._judge = self._judge_totals()
        self._rollout = self._rollout_seconds()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not getattr(state, "is_world_process_zero", True):
            return  # one writer under DDP/ZeRO
        logs = dict(logs or {})
        step = int(state.global_step)
        if "train_runtime" in logs:  # the end-of-training summary, not a step
            (self.out_dir / SUMMARY_JSON).write_text(json.dumps({"step": step, **logs}, indent=1, default=str), encoding="utf-8")
            return
        now = time.monotonic()
        judge_now = self._judge_totals()
        dt = now - self._t
        d_steps = max(step - self._step, 1)
        judge_s = judge_now[0] - self._judge[0]
        record = {
            "step": step,
            "epoch": _number(state.epoch),
            "wall_time": round(time.time(), 3),
            "step_seconds": dt / d_steps,
            "judge_seconds": judge_s / d_steps,
            "judge_share": judge_s / dt if dt > 0 else None,
            "judge_requests": (judge_now[1] - self._judge[1]) / d_steps,
        }
        rollout_now = self._rollout_seconds()
        if rollout_now is not None:  # the step's time split: rollout / judge / the rest (log-probs, gradient, optimizer)
            rollout_s = rollout_now - self._rollout
            record.update(rollout_seconds=rollout_s / d_steps, rollout_share=rollout_s / dt if dt > 0 else None,
                          gradient_seconds=max(dt - rollout_s - judge_s, 0.0) / d_steps)
            self._rollout = rollout_now
        record.update({k: _number(v) for k, v in logs.items() if k not in record and _number(v) is not None})
        self._t, self._step, self._judge = now, step, judge_now
        batches = self.recorder.drain() if self.recorder else []
        if step > self.last_logged:
            self.write_record(record)
            self._recent.append(record["step_seconds"])
            max_steps = getattr(state, "max_steps", None)
            left = steps_left_seconds(list(self._recent), step, max_steps)
            print(progress_line(record, max_steps, left), flush=True)
        if step > self.last_sampled and batches and self.n_samples > 0:
            self.write_samples(sample_rows(batches[-1], step, self.n_samples))

    # -- files
    def write_record(self, record: dict) -> None:
        with self.log_path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.last_logged = int(record["step"])
        self._append_csv(record)

    def _append_csv(self, record: dict) -> None:
        if self._csv_columns is None and self.csv_path.exists():
            with self.csv_path.open(encoding="utf-8") as f:
                self._csv_columns = next(csv.reader(f), None)
        if self._csv_columns is None or not set(record) <= set(self._csv_columns):
            # a new metric appeared (or no CSV yet): rewrite the CSV from the JSONL, the source of truth
            df = read_log(self.log_path)
            self._csv_columns = _column_order(df.columns)
            df[self._csv_columns].to_csv(self.csv_path, index=False)
            return
        with self.csv_path.open("a", encoding="utf-8", newline="") as f:
            csv.DictWriter(f, fieldnames=self._csv_columns).writerow(record)

    def write_samples(self, rows: list[dict]) -> None:
        if not rows:
            return
        with self.samples_path.open("a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        self.last_sampled = int(rows[-1]["step"])


# ------------------------------------------------------------------------------------ curves

REWARD_ORDER = ("think_quality_reward", "format_reward", "answer_quality_reward")
# (file stem, title, metric, band metric or None, y label)
PANELS: tuple[tuple[str, str, str, str | None, str], ...] = (
    ("reward", "total reward (weighted sum)", "reward", "reward_std", "reward"),
    ("reward_std", "reward std", "reward_std", None, "std"),
    ("loss", "loss", "loss", None, "loss"),
    ("learning_rate", "learning rate", "learning_rate", None, "lr"),
    ("kl", "KL to the reference", "kl", None, "KL"),
    ("entropy", "token entropy", "entropy", None, "nats"),
    ("grad_norm", "gradient norm", "grad_norm", None, "norm"),
    ("completion_length", "completion length (mean)", "completions/mean_length", None, "tokens"),
    ("clipped_ratio", "completions cut at max length", "completions/clipped_ratio", None, "share"),
    ("zero_std_share", "groups with zero reward spread", "frac_reward_zero_std", None, "share"),
    ("judge_share", "judge share of step time", "judge_share", None, "share"),
    ("rollout_logp_delta", "rollout vs trainer |Δ log p| (mean per token)", "sampling/sampling_logp_difference/mean",
     None, "nats"),
)


def steps_left_seconds(recent: Sequence[float], step: int, max_steps: int | None) -> float | None:
    """Seconds the remaining steps take at the mean of the recent steps' times (None without a step budget).

    >>> steps_left_seconds([50.0, 40.0], 4, 10)
    270.0
    """
    if not max_steps or max_steps <= 0 or not recent:
        return None
    return max(max_steps - step, 0) * sum(recent) / len(recent)


def progress_line(record: Mapping, max_steps: int | None = None, left_seconds: float | None = None) -> str:
    """One compact line per logged step (the notebook shows it; `lib.cli run` echoes it to the terminal).

    >>> progress_line({"step": 3, "reward": 0.8125, "rewards/format_reward/mean": 0.75, "step_seconds": 48.21,
    ...                "rollout_seconds": 10.1, "judge_seconds": 7.0}, 14, 530.0)
    '[progress] train step 3/14: reward 0.812 (format 0.750), 48.2 s (rollout 10.1 s, judge 7.0 s), training left ~8.8 min'
    """
    from lib.run import PROGRESS_PREFIX

    of = f"/{max_steps}" if max_steps and max_steps > 0 else ""
    parts = [f"{PROGRESS_PREFIX}train step {record['step']}{of}:"]
    if record.get("reward") is not None:
        per = [f"{k.split('/')[1].removesuffix('_quality_reward').removesuffix('_reward')} {v:.3f}"
               for k, v in record.items() if k.startswith("rewards/") and k.endswith("/mean") and v is not None]
        parts.append(f"reward {record['reward']:.3f}" + (f" ({', '.join(per)})" if per else "") + ",")
    split = [f"{name} {record[f'{name}_seconds']:.1f} s" for name in ("rollout", "judge")
             if record.get(f"{name}_seconds") is not None]
    parts.append(f"{record.get('step_seconds') or 0:.1f} s" + (f" ({', '.join(split)})" if split else "")
                 + (f", training left ~{left_seconds / 60:.1f} min" if left_seconds is not None else ""))
    return " ".join(parts)


def reward_metrics(df: pd.DataFrame) -> list[str]:
    """Reward function names with a `rewards/<name>/mean` column: think, format, answer first."""
    names = [c[len("rewards/"):-len("/mean")] for c in df.columns if c.startswith("rewards/") and c.endswith("/mean")]
    return sorted(names, key=lambda n: (REWARD_ORDER.index(n) if n in REWARD_ORDER else len(REWARD_ORDER), n))


def _panel_specs(df: pd.DataFrame) -> list[tuple[str, str, str, str | None, str]]:
    specs = [(f"reward_{n}", f"{n} (mean ± std)", f"rewards/{n}/mean", f"rewards/{n}/std", "reward")
             for n in reward_metrics(df)]
    specs += list(PANELS)
    return [s for s in specs if s[2] in df.columns and df[s[2]].notna().any()]


def _draw(ax, df: pd.DataFrame, title: str, metric: str, band: str | None, ylabel: str) -> None:
    d = df[["step", metric] + ([band] if band and band in df.columns else [])].dropna(subset=[metric])
    ax.plot(d["step"], d[metric], marker="o" if len(d) < 30 else None, lw=1.5)
    if band and band in d.columns:
        lo, hi = d[metric] - d[band].fillna(0), d[metric] + d[band].fillna(0)
        ax.fill_between(d["step"], lo, hi, alpha=0.2)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def plot_training(log_path: str | Path | pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """PNG curves of a training log: one file per panel (`curve_<name>.png`) and `curves.png` with all.

    Panels: each reward's mean with a ±std band (think, format, answer first), total reward, reward std,
    loss, learning rate, KL, entropy, grad norm, completion length, clipped share, zero-spread share and
    judge time share. Metrics missing from the log are skipped. Returns the paths, `curves.png` first
    (empty list when the log has no metric to draw).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    df = read_log(log_path)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specs = _panel_specs(df)
    if not specs:
        return []
    written: list[Path] = []
    ncols = 3
    nrows = math.ceil(len(specs) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, spec in zip(axes.flat, specs):
        _draw(ax, df, *spec[1:])
    for ax in list(axes.flat)[len(specs):]:
        ax.set_visible(False)
    fig.tight_layout()
    written.append(out / CURVES_PNG)
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    for spec in specs:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        _draw(ax, df, *spec[1:])
        fig.tight_layout()
        written.append(out / f"curve_{spec[0]}.png")
        fig.savefig(written[-1], dpi=110)
        plt.close(fig)
    return written


def training_summary(log: str | Path | pd.DataFrame) -> dict:
    """Totals over the logged steps of a run (all sessions): steps, seconds, judge seconds, judge share.

    Seconds are `step_seconds` times the steps each record covers; a missing log gives zeros and a
    judge share of None (JSON-safe).
    """
    df = pd.DataFrame() if isinstance(log, (str, Path)) and not Path(log).exists() else read_log(log)
    if df.empty or "step" not in df.columns or not len(df):
        return {"steps": 0, "seconds": 0.0, "judge_seconds": 0.0, "judge_share": None}
    d_steps = df["step"].diff().fillna(df["step"].iloc[0]).clip(lower=1)
    zero = pd.Series(0.0, index=df.index)
    seconds = float((df.get("step_seconds", zero).fillna(0) * d_steps).sum())
    judge = float((df.get("judge_seconds", zero).fillna(0) * d_steps).sum())
    return {"steps": int(df["step"].max()), "seconds": seconds, "judge_seconds": judge,
            "judge_share": judge / seconds if seconds > 0 else None}
