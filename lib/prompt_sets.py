"""Prompt sets in the original project's published format: load them, and check that their prompts are ours.

Sources: parquet files, a `datasets` directory or a hub id; `load_external` adds a `split` column and
`summarize_prompts` compares the system prompt and user template with ours.

Columns `prompt`, `completion`, `entity`; prompts and completions come back as lists of `{"role", "content"}` dicts.
Bad input raises `lib.data.DataError` with one line naming the file, row or column.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from lib.data import SYSTEM_PROMPT, USER_TEMPLATE, DataError, as_messages, first_line

EXTERNAL_COLUMNS = ("prompt", "completion", "entity")  # the original's published format



def load_external(source: str | Path) -> pd.DataFrame:
    """Load a prompt set in the original project's format into one DataFrame with a `split` column.

    `source` may be a parquet file (split: the file's stem), a directory of `*.parquet` files such as
    `train.parquet`/`test.parquet` (split: each stem), a `datasets` `save_to_disk` directory (split: the
    DatasetDict's keys, or "train" for a single Dataset) or a hub id like `owner/name` (via
    `datasets.load_dataset`). Required columns: `prompt`, `completion`, `entity`; prompts and completions
    come back as lists of `{"role", "content"}` dicts.
    """
    src = str(source)
    p = Path(src).expanduser()
    if p.is_file():
        if p.suffix != ".parquet":
            raise DataError(f"{p}: not a parquet file")
        parts = {p.stem: (_read_parquet(p), str(p))}
    elif p.is_dir():
        parts = _read_dir(p)
    elif _looks_like_path(src):
        raise DataError(f"{p}: prompt set not found")
    else:
        parts = _read_hub(src)
    frames = [_check_external(df, where).assign(split=split) for split, (df, where) in parts.items()]
    return pd.concat(frames, ignore_index=True)


def _looks_like_path(src: str) -> bool:
    return (
        src.startswith(("/", ".", "~"))
        or src.endswith(".parquet")
        or "\\" in src
        or src.count("/") != 1
    )


def _read_parquet(p: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(p)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{p}: unreadable parquet: {first_line(exc)}") from None


def _read_dir(d: Path) -> dict[str, tuple[pd.DataFrame, str]]:
    if (d / "dataset_dict.json").is_file() or (d / "state.json").is_file():
        import datasets

        try:
            ds = datasets.load_from_disk(str(d))
        except Exception as exc:
            raise DataError(f"{d}: unreadable datasets directory: {first_line(exc)}") from None
        if isinstance(ds, datasets.DatasetDict):
            return {k: (v.to_pandas(), f"{d} [{k}]") for k, v in ds.items()}
        return {"train": (ds.to_pandas(), str(d))}
    files = sorted(d.glob("*.parquet"))
    if not files:
        raise DataError(f"{d}: no *.parquet files and not a datasets save_to_disk directory")
    return {f.stem: (_read_parquet(f), str(f)) for f in files}


def _read_hub(repo_id: str) -> dict[str, tuple[pd.DataFrame, str]]:
    import datasets

    try:
        ds = datasets.load_dataset(repo_id)
    except Exception as exc:  # offline, unknown id, no access: all mean "cannot use this id here"
        raise DataError(f"hub dataset {repo_id!r} could not be loaded: {first_line(exc)}") from None
    if isinstance(ds, datasets.DatasetDict):
        return {k: (v.to_pandas(), f"{repo_id} [{k}]") for k, v in ds.items()}
    return {"train": (ds.to_pandas(), repo_id)}


def _check_external(df: pd.DataFrame, where: str) -> pd.DataFrame:
    for col in EXTERNAL_COLUMNS:
        if col not in df.columns:
            raise DataError(f"{where}: missing column {col!r} (columns: {', '.join(map(str, df.columns))})")
    df = df.copy()
    df["prompt"] = [as_messages(x) for x in df["prompt"]]
    df["completion"] = [as_messages(x) for x in df["completion"]]
    for i, msgs in enumerate(df["prompt"]):
        if not (
            isinstance(msgs, list)
            and msgs
            and all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in msgs)
        ):
            raise DataError(f"{where}: row {i}: 'prompt' is not a list of {{role, content}} messages")
    return df


def summarize_prompts(df: pd.DataFrame) -> pd.DataFrame:
    """Per split: prompts, distinct entities, share whose system turn is `SYSTEM_PROMPT` and whose user
    turn is `USER_TEMPLATE` filled with the row's entity."""
    def turn(msgs: list[dict], role: str) -> str | None:
        return next((m["content"] for m in msgs if m.get("role") == role), None)

    work = df.assign(
        system_ok=[turn(m, "system") == SYSTEM_PROMPT for m in df["prompt"]],
        user_ok=[turn(m, "user") == USER_TEMPLATE.format(entity=e) for m, e in zip(df["prompt"], df["entity"])],
    )
    by = work.groupby("split", sort=False) if "split" in work.columns else work.groupby(lambda _: "all")
    return by.agg(
        n_prompts=("entity", "size"),
        n_entities=("entity", "nunique"),
        system_prompt_match=("system_ok", "mean"),
        user_template_match=("user_ok", "mean"),
    )
