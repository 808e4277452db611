"""Tests for lib.data (catalogue, normalization, dedupe, prompts, split, save/load) and lib.prompt_sets (external sets)."""
from __future__ import annotations

import pandas as pd
import pytest

from lib import data, paths, prompt_sets
from lib.data import DataError

REFERENCE_SYSTEM_PROMPT_START = "你是一位创意广告设计师，负责为用户量身定制独特的广告文案。"

# The original project's published prompt set, beside the checkout where a developer machine has it (never copied in).
REFERENCE_SEED_DIR = paths.PROJ_ROOT.parent / "shared" / "reference" / "creative_ad_seed"


@pytest.fixture(scope="module")
def catalogue() -> pd.DataFrame:
    return data.load_catalogue()


def _frame(entities, domains=None) -> pd.DataFrame:
    return pd.DataFrame({"entity": entities, "domain": domains or ["d"] * len(entities)})


# --- catalogue --------------------------------------------------------------------------------------


def test_catalogue_size_and_domains(catalogue):
    assert list(catalogue.columns) == ["entity", "domain"]
    assert catalogue["entity"].nunique() >= 1000
    per_domain = catalogue.groupby("domain")["entity"].nunique()
    assert len(per_domain) >= 15
    assert per_domain.min() >= 40, per_domain[per_domain < 40].to_dict()


def test_catalogue_is_clean(catalogue):
    kept, dropped = data.dedupe(catalogue, 0.8)
    assert len(kept) >= 1000
    assert len(dropped) <= 10, dropped.head(10).to_dict("records")
    # Written already normalized: cleaning changes no entity.
    assert (catalogue["entity"].map(data.normalize_entity) == catalogue["entity"]).all()
    assert catalogue["entity"].str.len().max() <= 20


def test_catalogue_shares_no_entity_with_reference(catalogue):
    if not REFERENCE_SEED_DIR.is_dir():
        pytest.skip(f"reference prompt set not present at {REFERENCE_SEED_DIR}")
    ref = prompt_sets.load_external(REFERENCE_SEED_DIR)
    assert not set(catalogue["entity"]) & set(ref["entity"])


def test_load_catalogue_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv") as exc:
        data.load_catalogue(missing)
    assert "\n" not in str(exc.value)


def test_load_catalogue_missing_column(tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("entity,category\n无糖气泡水,食品饮料\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"cat\.csv: missing column 'domain'") as exc:
        data.load_catalogue(p)
    assert "\n" not in str(exc.value)


def test_load_catalogue_empty_value_names_row(tmp_path):
    p = tmp_path / "cat.csv"
    p.write_text("entity,domain\n无糖气泡水,食品饮料\n  ,食品饮料\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"cat\.csv: row 3: empty 'entity'"):
        data.load_catalogue(p)


# --- normalization ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("ＡＩ学习机", "AI学习机"),  # full-width letters
        ("６１８年中大促", "618年中大促"),  # full-width digits
        ("无糖\u3000气泡水", "无糖 气泡水"),  # ideographic space
        ("无糖\t\t气泡水\n", "无糖 气泡水"),  # tabs, newline
        ("  山野露营灯  ", "山野露营灯"),
        ("“西湖龙井春茶节”", "西湖龙井春茶节"),
        ("「社区垃圾分类倡议」。", "社区垃圾分类倡议"),
        ("无糖气泡水！", "无糖气泡水"),
        ("（新款）", "新款"),
        ("立白(Liby)洗衣液", "立白(Liby)洗衣液"),  # inner brackets stay
        ("品牌(新款)", "品牌(新款)"),  # a closing bracket that closes an inner one stays
        ("《三体》", "《三体》"),  # title marks are part of the name
        ("!!!", ""),
    ],
)
def test_normalize_entity(raw, expected):
    assert data.normalize_entity(raw) == expected


def test_normalize_entity_is_idempotent(catalogue):
    once = [data.normalize_entity(f"  “{e}”。 ") for e in catalogue["entity"].head(200)]
    assert once == catalogue["entity"].head(200).tolist()
    assert [data.normalize_entity(e) for e in once] == once


def test_normalize_entity_rejects_non_text():
    with pytest.raises(DataError, match="must be text"):
        data.normalize_entity(None)  # type: ignore[arg-type]


# --- dedupe -------------------------------------------------------------------------------------------


def test_dedupe_exact_after_normalization():
    df = _frame(["无糖气泡水", "无糖气泡水！", "ＩＰＨＯＮＥ壳", "iphone壳", " 无糖 气泡水 ", "山野露营灯"])
    kept, dropped = data.dedupe(df, 0.99)
    assert kept["entity"].tolist() == ["无糖气泡水", "IPHONE壳", "山野露营灯"]
    assert dropped["reason"].tolist() == ["exact", "exact", "exact"]
    assert dropped["duplicate_of"].tolist() == ["无糖气泡水", "IPHONE壳", "无糖气泡水"]


def test_dedupe_near_duplicates_keep_first():
    # {无糖,糖气,气泡,泡水} vs the same plus {水瓶}: Jaccard 4/5 = 0.8
    df = _frame(["无糖气泡水", "山野露营灯", "无糖气泡水瓶", "西湖龙井春茶节"])
    kept, dropped = data.dedupe(df, 0.8)
    assert kept["entity"].tolist() == ["无糖气泡水", "山野露营灯", "西湖龙井春茶节"]
    assert dropped[["entity", "reason", "duplicate_of"]].values.tolist() == [["无糖气泡水瓶", "near", "无糖气泡水"]]
    assert dropped["similarity"].iloc[0] == pytest.approx(0.8)
    # Just above the pair's similarity nothing is near.
    kept, dropped = data.dedupe(df, 0.81)
    assert len(kept) == 4 and dropped.empty


def test_dedupe_chain_compares_with_kept_rows_only():
    # b is near a, c is near b but not near a: a kept, b dropped, c kept (b no longer counts).
    df = _frame(["abcdef", "abcdefg", "bcdefgh"])
    kept, dropped = data.dedupe(df, 0.8)
    assert kept["entity"].tolist() == ["abcdef", "bcdefgh"]
    assert dropped["entity"].tolist() == ["abcdefg"]


def test_dedupe_drops_empty_and_keeps_other_columns():
    df = pd.DataFrame({"entity": ["“”", "猫爬架"], "domain": ["宠物用品", "宠物用品"], "note": [1, 2]})
    kept, dropped = data.dedupe(df)
    assert kept.to_dict("records") == [{"entity": "猫爬架", "domain": "宠物用品", "note": 2}]
    assert dropped["reason"].tolist() == ["empty"]


def test_dedupe_is_fast_on_two_thousand_rows(catalogue):
    import time

    big = pd.concat([catalogue, catalogue.assign(entity=catalogue["entity"] + "礼盒")], ignore_index=True)
    t0 = time.perf_counter()
    kept, dropped = data.dedupe(big, 0.8)
    assert time.perf_counter() - t0 < 5
    assert len(kept) + len(dropped) == len(big)


def test_dedupe_bad_threshold():
    with pytest.raises(DataError, match="threshold"):
        data.dedupe(_frame(["a"]), 1.5)


# --- prompts ------------------------------------------------------------------------------------------


def test_system_prompt_verbatim():
    assert data.SYSTEM_PROMPT.startswith(REFERENCE_SYSTEM_PROMPT_START)
    assert "\n\n1. **思考过程**：" in data.SYSTEM_PROMPT
    assert "记录在 `<think>` 标签内\n\n2. **最终答案**" in data.SYSTEM_PROMPT
    assert data.SYSTEM_PROMPT.endswith("输出格式：\n<think>这里写下你的思考过程</think><answer>这里写下你的广告文案</answer>")
    assert data.USER_TEMPLATE == "请为{entity}设计一段创意广告文案"


def test_build_prompts_format():
    out = data.build_prompts(_frame(["无糖气泡水", "西湖龙井春茶节"], ["食品饮料", "节日活动"]))
    assert list(out.columns) == ["prompt", "entity", "domain"]
    first = out["prompt"].iloc[0]
    assert first == [
        {"role": "system", "content": data.SYSTEM_PROMPT},
        {"role": "user", "content": "请为无糖气泡水设计一段创意广告文案"},
    ]
    assert out["domain"].tolist() == ["食品饮料", "节日活动"]


def test_build_prompts_requires_entity():
    with pytest.raises(DataError, match="'entity'"):
        data.build_prompts(pd.DataFrame({"name": ["x"]}))


# --- split --------------------------------------------------------------------------------------------


def test_split_sizes_stratification_and_determinism(catalogue):
    prompts = data.build_prompts(catalogue)
    train, test = data.split_train_test(prompts, 50, seed=7)
    assert len(test) == 50 and len(train) == len(prompts) - 50
    assert not set(train["entity"]) & set(test["entity"])
    counts = prompts["domain"].value_counts()
    expected = counts * 50 / len(prompts)
    got = test["domain"].value_counts().reindex(counts.index, fill_value=0)
    assert ((got - expected).abs() <= 1).all()
    again = data.split_train_test(prompts, 50, seed=7)
    assert again[1]["entity"].tolist() == test["entity"].tolist()
    assert again[0]["entity"].tolist() == train["entity"].tolist()
    other = data.split_train_test(prompts, 50, seed=8)[1]
    assert other["entity"].tolist() != test["entity"].tolist()


def test_split_fewer_test_rows_than_domains(catalogue):
    n_domains = catalogue["domain"].nunique()
    train, test = data.split_train_test(catalogue, 5, seed=1)
    assert len(test) == 5 and len(train) == len(catalogue) - 5
    assert test["domain"].nunique() == 5  # largest remainder: five different domains, one each
    assert n_domains > 5
    assert data.split_train_test(catalogue, 5, seed=1)[1].equals(test)


def test_split_uneven_domains_largest_remainder():
    df = _frame([f"e{i}" for i in range(10)], ["a"] * 6 + ["b"] * 3 + ["c"])
    train, test = data.split_train_test(df, 3, seed=0)
    assert sorted(test["domain"].value_counts().to_dict().items()) in (
        [("a", 2), ("b", 1)],
        [("a", 2), ("c", 1)],
    )


def test_split_fraction_and_max_train(catalogue):
    train, test = data.split_train_test(catalogue, 0.1, seed=3, max_train=100)
    assert len(test) == round(0.1 * len(catalogue))
    assert len(train) == 100
    assert train["domain"].nunique() == catalogue["domain"].nunique()


@pytest.mark.parametrize("size", [0, 10])
def test_split_bad_size(size):
    with pytest.raises(DataError, match="test_size"):
        data.split_train_test(_frame([f"e{i}" for i in range(10)]), size, seed=0)


# --- save / load --------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, catalogue):
    import datasets

    train, test = data.split_train_test(data.build_prompts(catalogue.head(120)), 20, seed=0)
    written = data.save_split(train, test, tmp_path / "data")
    assert {p.name for p in (tmp_path / "data").iterdir()} == {"train.parquet", "test.parquet", "hf"}
    train2, test2 = data.load_split(tmp_path / "data")
    pd.testing.assert_frame_equal(train2, train)
    pd.testing.assert_frame_equal(test2, test)
    dd = datasets.load_from_disk(str(written["hf"]))
    assert dd["test"].num_rows == 20
    assert dd["train"][0]["prompt"] == train["prompt"].iloc[0]


def test_load_split_missing(tmp_path):
    with pytest.raises(DataError, match="train.parquet"):
        data.load_split(tmp_path)


# --- external prompt sets -----------------------------------------------------------------------------


def _original_format(entities) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt": [data.make_prompt(e) for e in entities],
            "completion": [[{"role": "assistant", "content": "(skip)"}] for _ in entities],
            "entity": list(entities),
        }
    )


def test_load_external_parquet_file(tmp_path):
    p = tmp_path / "train.parquet"
    _original_format(["无糖气泡水", "山野露营灯"]).to_parquet(p)
    df = prompt_sets.load_external(p)
    assert df["split"].tolist() == ["train", "train"]
    assert df["prompt"].iloc[1][1]["content"] == "请为山野露营灯设计一段创意广告文案"
    assert isinstance(df["prompt"].iloc[0], list)
    summary = prompt_sets.summarize_prompts(df)
    assert summary.loc["train", "n_prompts"] == 2
    assert summary.loc["train", "system_prompt_match"] == 1.0


def test_load_external_directory_and_datasets_dir(tmp_path):
    _original_format(["a1", "a2", "a3"]).to_parquet(tmp_path / "train.parquet")
    _original_format(["b1"]).to_parquet(tmp_path / "test.parquet")
    df = prompt_sets.load_external(str(tmp_path))
    assert df.groupby("split").size().to_dict() == {"test": 1, "train": 3}

    import datasets

    hf_dir = tmp_path / "hf"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_pandas(_original_format(["c1", "c2"]), preserve_index=False)}
    ).save_to_disk(str(hf_dir))
    df = prompt_sets.load_external(hf_dir)
    assert df["entity"].tolist() == ["c1", "c2"] and set(df["split"]) == {"train"}


def test_load_external_missing_column_names_file_and_column(tmp_path):
    p = tmp_path / "prompts.parquet"
    _original_format(["无糖气泡水"]).drop(columns=["completion"]).to_parquet(p)
    with pytest.raises(DataError, match=r"prompts\.parquet: missing column 'completion'") as exc:
        prompt_sets.load_external(p)
    assert "\n" not in str(exc.value)


def test_load_external_bad_prompt_cell(tmp_path):
    p = tmp_path / "prompts.parquet"
    df = _original_format(["x", "y"])
    df["prompt"] = ["请为x设计", "请为y设计"]
    df.to_parquet(p)
    with pytest.raises(DataError, match=r"prompts\.parquet: row 0: 'prompt'"):
        prompt_sets.load_external(p)


def test_load_external_missing_path(tmp_path):
    with pytest.raises(DataError, match="missing.parquet") as exc:
        prompt_sets.load_external(tmp_path / "missing.parquet")
    assert "\n" not in str(exc.value)


def test_load_external_hub_failure_is_one_line(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub\nmore details")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match=r"'someone/ad-prompts'") as exc:
        prompt_sets.load_external("someone/ad-prompts")
    assert "\n" not in str(exc.value)


def test_reference_seed_set_loads():
    if not REFERENCE_SEED_DIR.is_dir():
        pytest.skip(f"reference prompt set not present at {REFERENCE_SEED_DIR}")
    df = prompt_sets.load_external(REFERENCE_SEED_DIR)
    summary = prompt_sets.summarize_prompts(df)
    assert set(summary.index) == {"train", "test"}
    assert (summary["n_prompts"] > 0).all()
    # Our prompts are the original's: same system prompt, same user template.
    assert (summary["system_prompt_match"] == 1.0).all()
    assert (summary["user_template_match"] == 1.0).all()


# --- expansion and figure -----------------------------------------------------------------------------


def test_parse_entity_lines():
    text = "好的，以下是建议：\n1. 山野露营灯\n2、“无糖气泡水”\n- 社区垃圾分类倡议\n\n(4) 西湖龙井春茶节\n希望对你有帮助！"
    assert data.parse_entity_lines(text) == ["山野露营灯", "无糖气泡水", "社区垃圾分类倡议", "西湖龙井春茶节"]


def test_expand_catalogue_with_fake_generator(catalogue):
    seen: list[list[str]] = []

    def fake_generate(prompts: list[str]) -> list[str]:
        seen.append(prompts)
        return ["1. 桂花乌龙冷泡茶\n2. 无糖气泡水\n3. 桂花乌龙冷泡茶！\n4. 椰香燕麦奶\n5. 抹茶生椰拿铁", "- 月光露营灯笼"]

    out = data.expand_catalogue(fake_generate, ["食品饮料", "运动户外"], per_domain=2, seed=0, existing=catalogue)
    # 无糖气泡水 is in the catalogue, the repeat is an exact duplicate, the 5th line is over per_domain.
    assert out[["entity", "domain"]].values.tolist() == [
        ["桂花乌龙冷泡茶", "食品饮料"],
        ["椰香燕麦奶", "食品饮料"],
        ["月光露营灯笼", "运动户外"],
    ]
    assert set(out["source"]) == {"model"}
    assert len(seen[0]) == 2 and "食品饮料" in seen[0][0]
    again: list[list[str]] = []
    data.expand_catalogue(lambda p: again.append(p) or ["", ""], ["食品饮料", "运动户外"], 2, 0, catalogue)
    assert again[0] == seen[0]  # same seed, same example entities in the prompts


def test_expand_catalogue_wrong_answer_count():
    with pytest.raises(DataError, match="1 answers for 2 prompts"):
        data.expand_catalogue(lambda p: ["x"], ["a", "b"], 2, 0)


def test_domain_histogram(tmp_path, catalogue):
    out = tmp_path / "fig" / "domains.png"
    fig = data.domain_histogram(catalogue, out)
    assert out.is_file() and out.stat().st_size > 1000
    ax = fig.axes[0]
    assert len(ax.patches) == catalogue["domain"].nunique()
    labels = {t.get_text() for t in ax.get_yticklabels()}
    if data.cjk_font() is None:
        assert labels <= set(data.DOMAIN_NAMES_EN.values())
    else:
        assert labels == set(catalogue["domain"])
    assert set(catalogue["domain"]) <= set(data.DOMAIN_NAMES_EN)
