"""Prompt data: the entity catalogue, cleaning, chat prompts in TRL's format, the train/test split.

The catalogue (`lib/assets/entities.csv`, columns `entity,domain`) lists Chinese ad subjects written for
this project. Each entity becomes one conversational prompt, the original project's system prompt plus
`USER_TEMPLATE` filled with the entity:

    >>> build_prompts(pd.DataFrame({"entity": ["无糖气泡水"], "domain": ["食品饮料"]})).prompt[0][1]
    {'role': 'user', 'content': '请为无糖气泡水设计一段创意广告文案'}

Prompt sets in the original's published format (columns `prompt`, `completion`, `entity`) load with
`lib.prompt_sets.load_external`. Bad input raises `DataError` with a one-line message naming the file, row or column.
"""
from __future__ import annotations

import functools
import json
import re
import unicodedata
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Sequence

import numpy as np
import pandas as pd

from lib import paths

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

SYSTEM_PROMPT = (
    "你是一位创意广告设计师，负责为用户量身定制独特的广告文案。在开始创作之前，请先深入思考整个创意过程，"
    "并将你的思考逻辑清晰地呈现出来。具体步骤如下：\n\n"
    "1. **思考过程**：首先，分析用户的需求、品牌定位、目标受众以及广告的核心信息。考虑如何通过创意表达将这些元素"
    "有机结合，形成具有吸引力的广告文案。将这一思考过程详细记录在 `<think>` 标签内\n\n"
    "2. **最终答案**：在完成思考后，根据你的分析结果，撰写最终的创意广告文案。将文案内容放置在 `<answer>` 标签内\n\n"
    "输出格式：\n"
    "<think>这里写下你的思考过程</think><answer>这里写下你的广告文案</answer>"
)
USER_TEMPLATE = "请为{entity}设计一段创意广告文案"

CATALOGUE_COLUMNS = ("entity", "domain")

# English labels for figures when no CJK font is installed (keys: the catalogue's domains).
DOMAIN_NAMES_EN: dict[str, str] = {
    "食品饮料": "Food & drink",
    "美妆个护": "Beauty & care",
    "数码电子": "Digital electronics",
    "家居家电": "Home & appliances",
    "服饰鞋包": "Fashion & bags",
    "母婴用品": "Mother & baby",
    "运动户外": "Sports & outdoor",
    "汽车出行": "Cars & mobility",
    "旅游景点": "Travel sights",
    "餐饮服务": "Restaurants",
    "教育培训": "Education",
    "金融保险": "Finance & insurance",
    "医疗健康": "Health & medical",
    "文化娱乐": "Culture & entertainment",
    "公益倡导": "Public causes",
    "节日活动": "Festivals & events",
    "宠物用品": "Pet supplies",
    "图书文具": "Books & stationery",
    "本地生活服务": "Local services",
    "农产品": "Farm produce",
}


class DataError(ValueError):
    """Prompt data that cannot be used; the message is one line naming the file, row or column."""


def read_jsonl(path: str | Path, skip_bad_lines: bool = False) -> list[dict]:
    """The records of a JSONL file, one per non-empty line; [] when the file does not exist.

    A line that is not valid JSON raises `DataError` naming the file and line, or is skipped with
    `skip_bad_lines` (a log whose writer was killed mid-line).
    """
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if not skip_bad_lines:
                raise DataError(f"{path}: line {n} is not valid JSON ({exc.msg})") from None
    return out


# ---------------------------------------------------------------------------------------------------
# Catalogue and normalization


def load_catalogue(path: str | Path | None = None) -> pd.DataFrame:
    """Read the entity catalogue (`entity,domain` CSV, UTF-8); default `paths.ENTITY_CATALOGUE`.

    Values are returned as written (see `normalize_entity`/`dedupe` for cleaning). Rows are numbered as
    lines of the file, the header being line 1.
    """
    path = Path(path) if path is not None else paths.ENTITY_CATALOGUE
    if not path.is_file():
        raise DataError(f"{path}: catalogue file not found")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"{path}: unreadable CSV: {first_line(exc)}") from None
    for col in CATALOGUE_COLUMNS:
        if col not in df.columns:
            raise DataError(f"{path}: missing column {col!r} (columns: {', '.join(map(str, df.columns))})")
    for col in CATALOGUE_COLUMNS:
        blank = df[col].str.strip() == ""
        if blank.any():
            i = int(np.flatnonzero(blank.to_numpy())[0])
            raise DataError(f"{path}: row {i + 2}: empty {col!r}")
    return df[list(CATALOGUE_COLUMNS)].reset_index(drop=True)


# Pairs that wrap a whole entity by accident (quotes, brackets); 《》 marks a title and is kept.
_WRAPPERS = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』", "【": "】", "(": ")", "[": "]"}
# Stray punctuation at either end (after NFKC: full-width ，！？：；（） are ASCII already).
_EDGE_PUNCT = ",.;:!?、。，．；：！？·•…~-—_*#|/\\ \"'“”‘’「」『』【】"
_SPACE_RE = re.compile(r"\s+")


def normalize_entity(text: str) -> str:
    """Canonical form of an entity: NFKC (full-width to half-width), one space for any whitespace run,
    no surrounding whitespace, quotes, wrapping brackets or stray punctuation.

    >>> normalize_entity("  “ＡＩ　学习机 ”。")
    'AI 学习机'
    """
    if not isinstance(text, str):
        raise DataError(f"entity must be text, got {type(text).__name__}: {text!r}")
    s = _SPACE_RE.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    while True:
        before = s
        if len(s) >= 2 and _WRAPPERS.get(s[0]) == s[-1] and s[0] not in s[1:-1] and s[-1] not in s[1:-1]:
            s = s[1:-1].strip()
        # A closing bracket at the end belongs to the entity when it closes one inside it, e.g. 立白(Liby).
        s = s.lstrip(_EDGE_PUNCT + ")]）】").rstrip(_EDGE_PUNCT)
        if s.endswith(("(", "[")):
            s = s[:-1].rstrip()
        if s == before:
            return s


def _dup_key(entity: str) -> str:
    # Comparison key: case and spaces do not make two entities different.
    return entity.casefold().replace(" ", "")


def _shingles(key: str) -> list[str]:
    # Character bigrams; a one-character entity is its own shingle so it can still match itself.
    return [key[i : i + 2] for i in range(len(key) - 1)] or ([key] if key else [])


def dedupe(df: pd.DataFrame, threshold: float = 0.8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Normalize `entity` and drop empty entities, exact duplicates, then near-duplicates.

    Two entities are near-duplicates when the Jaccard similarity of their character-bigram sets is
    >= `threshold` (case and spaces ignored); the earlier row is kept. Returns `(kept, dropped)`:
    `kept` has the input's columns with `entity` normalized; `dropped` adds `reason` ("empty", "exact",
    "near"), `duplicate_of` (the kept entity it matched) and `similarity`.

    >>> kept, dropped = dedupe(pd.DataFrame({"entity": ["无糖气泡水", "无糖气泡水！", "无糖气泡水a"]}))
    >>> kept.entity.tolist(), dropped.reason.tolist()
    (['无糖气泡水'], ['exact', 'near'])
    """
    if "entity" not in df.columns:
        raise DataError(f"dedupe: missing column 'entity' (columns: {', '.join(map(str, df.columns))})")
    if not 0.0 <= threshold <= 1.0:
        raise DataError(f"dedupe: threshold must be in [0, 1], got {threshold!r}")
    work = df.reset_index(drop=True).copy()
    work["entity"] = [normalize_entity(e) for e in work["entity"]]
    keys = [_dup_key(e) for e in work["entity"]]
    n = len(work)
    reason: list[str | None] = [None] * n
    dup_of: list[str | None] = [None] * n
    sim = np.full(n, np.nan)

    first_of: dict[str, int] = {}
    for i, k in enumerate(keys):
        if not k:
            reason[i] = "empty"
        elif k in first_of:
            reason[i], dup_of[i], sim[i] = "exact", work.at[first_of[k], "entity"], 1.0
        else:
            first_of[k] = i

    # Near-duplicates among the survivors: sparse bigram incidence, intersections in one product.
    cand = np.array(sorted(first_of.values()), dtype=int)
    if len(cand) > 1:
        for i, j, s in _similar_pairs([keys[c] for c in cand], threshold):
            a, b = cand[i], cand[j]  # a < b: rows are in file order
            if reason[a] is None and reason[b] is None:
                reason[b], dup_of[b], sim[b] = "near", work.at[a, "entity"], s

    dropped_mask = np.array([r is not None for r in reason], dtype=bool)
    kept = work[~dropped_mask].reset_index(drop=True)
    dropped = work[dropped_mask].copy()
    dropped["reason"] = [reason[i] for i in np.flatnonzero(dropped_mask)]
    dropped["duplicate_of"] = [dup_of[i] for i in np.flatnonzero(dropped_mask)]
    dropped["similarity"] = sim[dropped_mask]
    return kept, dropped.reset_index(drop=True)


def _similar_pairs(keys: Sequence[str], threshold: float) -> Iterable[tuple[int, int, float]]:
    """(i, j, jaccard) for i < j with bigram Jaccard >= threshold, ordered by i then j."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    rows, cols = [], []
    for r, key in enumerate(keys):
        for g in set(_shingles(key)):
            rows.append(r)
            cols.append(vocab.setdefault(g, len(vocab)))
    m = sparse.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, cols)), shape=(len(keys), len(vocab)))
    sizes = np.asarray(m.sum(axis=1)).ravel()
    if threshold <= 0:  # every pair qualifies, including ones that share no bigram
        for i in range(len(keys)):
            for j in range(i + 1, len(keys)):
                yield i, j, 0.0
        return
    inter = sparse.triu(m @ m.T, k=1).tocoo()
    jac = inter.data / (sizes[inter.row] + sizes[inter.col] - inter.data)
    hit = jac >= threshold - 1e-12
    order = np.lexsort((inter.col[hit], inter.row[hit]))
    for i, j, s in zip(inter.row[hit][order], inter.col[hit][order], jac[hit][order]):
        yield int(i), int(j), float(s)


# ---------------------------------------------------------------------------------------------------
# Prompts and splits


def make_prompt(entity: str) -> list[dict[str, str]]:
    """The conversational prompt for one entity: system prompt, then the user's request."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(entity=entity)},
    ]


def build_prompts(df: pd.DataFrame) -> pd.DataFrame:
    """Columns `prompt` (TRL conversational format), `entity`, `domain` (empty when `df` has none)."""
    if "entity" not in df.columns:
        raise DataError(f"build_prompts: missing column 'entity' (columns: {', '.join(map(str, df.columns))})")
    domain = df["domain"].astype(str).tolist() if "domain" in df.columns else [""] * len(df)
    return pd.DataFrame(
        {"prompt": [make_prompt(e) for e in df["entity"]], "entity": df["entity"].tolist(), "domain": domain}
    )


def _allocate(counts: pd.Series, n: int, rng: np.random.Generator) -> pd.Series:
    """Largest-remainder proportional allocation of `n` over groups; ties broken at random (seeded)."""
    quota = counts.to_numpy(dtype=float) * n / counts.sum()
    alloc = np.floor(quota).astype(int)
    rest = quota - alloc
    order = np.lexsort((rng.permutation(len(rest)), -rest))  # largest remainder first, random tie-break
    alloc[order[: n - alloc.sum()]] += 1
    return pd.Series(np.minimum(alloc, counts.to_numpy()), index=counts.index)


def stratified_sample(df: pd.DataFrame, n: int, seed: int, by: str = "domain") -> pd.DataFrame:
    """`n` rows of `df` with each group of `by` represented in proportion (largest remainder)."""
    if n >= len(df):
        return df.copy()
    rng = np.random.default_rng(seed)
    counts = df[by].value_counts(sort=False).sort_index()
    alloc = _allocate(counts, n, rng)
    picked = [
        rng.choice(np.flatnonzero((df[by] == g).to_numpy()), size=int(k), replace=False)
        for g, k in alloc.items()
        if k > 0
    ]
    idx = np.sort(np.concatenate(picked)) if picked else np.array([], dtype=int)
    return df.iloc[idx]


def split_train_test(
    df: pd.DataFrame, test_size: int | float, seed: int, max_train: int | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split stratified by `domain`: `test_size` rows (an int) or that fraction (a float in (0, 1)).

    scikit-learn's stratified `train_test_split` is used when every domain can appear on both sides;
    otherwise (fewer test rows than domains, or a domain with one row) the test rows are allocated
    per domain by largest remainder. `max_train` then caps the train side, again stratified.
    The same `seed` gives the same split.
    """
    from sklearn.model_selection import train_test_split

    if "domain" not in df.columns:
        raise DataError("split_train_test: missing column 'domain'")
    n = len(df)
    n_test = int(round(test_size * n)) if isinstance(test_size, float) and 0 < test_size < 1 else int(test_size)
    if not 1 <= n_test < n:
        raise DataError(f"split_train_test: test_size={test_size!r} leaves no train or no test rows of {n}")
    df = df.reset_index(drop=True)
    counts = df["domain"].value_counts()
    n_dom = len(counts)
    if n_test >= n_dom and n - n_test >= n_dom and counts.min() >= 2:
        train, test = train_test_split(df, test_size=n_test, stratify=df["domain"], random_state=seed)
    else:
        test = stratified_sample(df, n_test, seed)
        train = df.drop(index=test.index).sample(frac=1.0, random_state=seed)
    if max_train is not None and len(train) > max_train:
        train = stratified_sample(train, max_train, seed)
    return train.reset_index(drop=True), test.reset_index(drop=True)


def as_messages(x: object) -> object:
    """A chat cell as a list of dicts (Parquet/Arrow give back numpy arrays of dicts); anything else unchanged."""
    if isinstance(x, np.ndarray):
        x = x.tolist()
    if isinstance(x, list):
        return [dict(m) if isinstance(m, dict) else m for m in x]
    return x


def save_split(train: pd.DataFrame, test: pd.DataFrame, out_dir: str | Path) -> dict[str, Path]:
    """Write `train.parquet`, `test.parquet` and a `datasets.DatasetDict` under `out_dir/hf`."""
    import datasets

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, part in (("train", train), ("test", test)):
        written[name] = out / f"{name}.parquet"
        part.reset_index(drop=True).to_parquet(written[name], index=False)
    dd = datasets.DatasetDict(
        {name: datasets.Dataset.from_pandas(part.reset_index(drop=True), preserve_index=False)
         for name, part in (("train", train), ("test", test))}
    )
    written["hf"] = out / "hf"
    was_disabled = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()  # two tiny shards: the bars would only clutter notebook output
    try:
        dd.save_to_disk(str(written["hf"]))
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()
    return written


def load_split(out_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read back what `save_split` wrote: `(train, test)` with prompts as lists of dicts."""
    out = Path(out_dir)
    parts = []
    for name in ("train", "test"):
        p = out / f"{name}.parquet"
        if not p.is_file():
            raise DataError(f"{p}: split file not found")
        part = pd.read_parquet(p)
        for col in ("prompt", "completion"):
            if col in part.columns:
                part[col] = [as_messages(x) for x in part[col]]
        parts.append(part)
    return parts[0], parts[1]


# ---------------------------------------------------------------------------------------------------
# Optional model-based expansion

EXPAND_TEMPLATE = (
    "请列出{n}个属于“{domain}”领域、适合做广告的主题（产品、品牌、服务、地点或活动），例如：{examples}。"
    "每行写一个名称，不要编号，不要解释。"
)
_SENTENCE_END = ("。", "！", "？", "!", "?", "：", ":", "…")
_LIST_MARKER_RE = re.compile(r"^\s*(?:[-*•·]+|\d+\s*[.、)）:：]|[（(]\d+[)）])\s*")


def parse_entity_lines(text: str, max_len: int = 24) -> list[str]:
    """Entities in a model's answer, one per line: list markers removed, normalized, chatter dropped.

    >>> parse_entity_lines("1. 山野露营灯\\n2、无糖气泡水\\n以上是一些建议，希望对你有帮助！")
    ['山野露营灯', '无糖气泡水']
    """
    out = []
    for line in text.splitlines():
        raw = _LIST_MARKER_RE.sub("", line).strip()
        e = normalize_entity(raw)
        # Sentences (too long, ending like a sentence, or with clause punctuation) are commentary.
        if e and len(e) <= max_len and not raw.endswith(_SENTENCE_END) and not re.search(r"[，。,:：！!？?]", e):
            out.append(e)
    return out


def expand_catalogue(
    generate_fn: Callable[[list[str]], list[str]],
    domains: Sequence[str],
    per_domain: int,
    seed: int,
    existing: pd.DataFrame | None = None,
    threshold: float = 0.8,
) -> pd.DataFrame:
    """Ask a model for `per_domain` new entities in each domain; returns new rows `entity, domain, source`.

    `generate_fn(prompts) -> answers` is injected (the caller wraps a real model). With `existing` (the
    catalogue), each prompt shows three of its entities of that domain (chosen with `seed`) and answers
    that duplicate or nearly duplicate a catalogue entity (Jaccard >= `threshold`) are dropped.
    """
    if per_domain <= 0 or not domains:
        return pd.DataFrame({"entity": [], "domain": [], "source": []}, dtype=str)
    rng = np.random.default_rng(seed)
    prompts = []
    for d in domains:
        pool = existing.loc[existing["domain"] == d, "entity"].tolist() if existing is not None else []
        examples = rng.choice(pool, size=min(3, len(pool)), replace=False).tolist() if pool else []
        prompts.append(EXPAND_TEMPLATE.format(n=per_domain, domain=d, examples="、".join(examples) or "无"))
    answers = generate_fn(prompts)
    if len(answers) != len(prompts):
        raise DataError(f"expand_catalogue: generate_fn returned {len(answers)} answers for {len(prompts)} prompts")
    rows = [(e, d) for d, a in zip(domains, answers) for e in parse_entity_lines(a)]
    new = pd.DataFrame(rows, columns=["entity", "domain"], dtype=str).assign(source="model")
    if existing is not None:
        new = pd.concat([existing[["entity", "domain"]].assign(source="catalogue"), new], ignore_index=True)
    kept, _ = dedupe(new, threshold)
    kept = kept[kept["source"] == "model"]
    # The cap counts entities that survived cleaning, so a repetitive answer still yields up to per_domain.
    return kept.groupby("domain", sort=False).head(per_domain).reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------
# Figure


@functools.lru_cache(maxsize=1)
def cjk_font() -> str | None:
    """Name of an installed font that renders Chinese, or None (then figures use English labels)."""
    from matplotlib import font_manager, ft2font

    hint = re.compile(r"CJK|Han|Hei|Song|Kai|Ming|WenQuanYi|Noto Sans SC|Noto Serif SC|Fallback|PingFang|YaHei|SimSun|Fang")
    for f in font_manager.fontManager.ttflist:
        if hint.search(f.name):
            try:
                if ord("广") in ft2font.FT2Font(f.fname).get_charmap():
                    return f.name
            except (OSError, RuntimeError):
                continue
    return None


def domain_label(domain: str) -> str:
    """The label a figure shows for a domain: itself with a CJK font, else its English name."""
    if cjk_font() is not None or domain.isascii():
        return domain
    return DOMAIN_NAMES_EN.get(domain, f"domain {zlib.crc32(domain.encode()) % 1000:03d}")  # stable across runs


def domain_histogram(df: pd.DataFrame, path: str | Path | None = None) -> "Figure":
    """Horizontal bar chart of rows per domain (saved as PNG at `path` when given); returns the Figure.

    With no CJK font installed the bars carry the English names of `DOMAIN_NAMES_EN`.
    """
    from matplotlib.figure import Figure

    counts = df["domain"].value_counts().sort_values()
    font = cjk_font()
    fig = Figure(figsize=(7, 0.32 * len(counts) + 1.2), layout="constrained")
    ax = fig.add_subplot()
    labels = [domain_label(d) for d in counts.index]
    bars = ax.barh(labels, counts.to_numpy(), color="#4C72B0")
    ax.bar_label(bars, padding=2, fontsize=8)
    if font:
        for t in ax.get_yticklabels():
            t.set_fontfamily(font)
    ax.set_xlabel("entities")
    ax.set_title(f"Entities per domain (n={len(df)}, {len(counts)} domains)")
    ax.margins(x=0.08)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=120)
    return fig


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for one-line errors."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
