"""Every judge backend scores the same prompt the same way: the real vLLM (CPU build) and transformers backends on
the smoke judge (Gemma 3 270M, float32, restricted to 是/否), the same calibration texts, P(yes) compared.

Measured (avx512_bf16 class CPU, float32, 8 answer + 6 think texts of the calibration set = 132 questions): max
|vLLM - transformers| P(yes) 1.3e-6 (mean 3.4e-7) with the default, unpadded prompts; with `judge.prefix_pad: true`
(filler spaces after the text, the prompt tokenized in pieces) vLLM's P(yes) moved by up to 0.049 (mean 0.0070), so
padding is opt-in.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lib.judge import calibration as cal
from lib.judge.engine import JudgeEngine
from lib.profiles import JudgeConfig, load_profile
from lib.rubric import load_rubric

TOLERANCE = 1e-4  # float32 P(yes), vLLM's CPU kernels against transformers' eager forward; measured 1.3e-6
N_TEXTS = {"answer": 2, "think": 1}  # 26 questions: the transformers backend's eager forward is the slow part


@pytest.fixture(scope="module")
def judged(smoke_judge_backend):
    from lib.judge.backends import TransformersBackend
    from lib.models import resolve_model

    rubric = load_rubric()
    df = cal.load_calibration_set(rubric_keys=cal.rubric_keys(rubric))
    df = pd.concat([df[df["section"] == name].head(n) for name, n in N_TEXTS.items()], ignore_index=True)
    cfg = JudgeConfig(model="gemma3-270m", answer_scoring="restricted", dtype="float32", max_model_len=1024)
    # the vLLM engine is the session's (tests/conftest.py): the smoke profile's judge, started with these settings
    # (its seed, the profile's, plays no part in greedy next-token log-probabilities)
    assert load_profile("smoke").judge == cfg
    out = {}
    hf = TransformersBackend(resolve_model(cfg.model), cfg)
    out["transformers"] = cal.judge_calibration_set(JudgeEngine(hf, cfg), rubric, df)
    hf.close()
    vllm = smoke_judge_backend
    out["vllm"] = cal.judge_calibration_set(JudgeEngine(vllm, cfg), rubric, df)
    out["vllm_padded"] = cal.judge_calibration_set(JudgeEngine(vllm, cfg.model_copy(update={"prefix_pad": True})), rubric, df)
    return out


def _p(frame):
    return frame.set_index(["id", "key"])["p_yes"].sort_index()


def test_vllm_and_transformers_give_the_same_p_yes(judged):
    a, b = _p(judged["vllm"]), _p(judged["transformers"])
    assert list(a.index) == list(b.index) and len(a) >= 4 * 6
    assert not a.isna().any() and not b.isna().any()
    diff = (a - b).abs()
    print(f"max |vLLM - transformers| P(yes) = {diff.max():.2e} (mean {diff.mean():.2e}) over {len(diff)} questions")
    print(pd.DataFrame({"vllm": a, "transformers": b, "diff": diff}).sort_values("diff").tail(8).to_string())
    assert diff.max() <= TOLERANCE


def test_prefix_padding_moves_p_yes_so_it_is_opt_in(judged):
    # what the default leaves out: padding is not within the tolerance (if it ever is, it could be on by default)
    diff = (_p(judged["vllm_padded"]) - _p(judged["vllm"])).abs()
    print(f"prefix padding: max |dP(yes)| = {diff.max():.3f}, mean {diff.mean():.4f}")
    assert diff.max() > TOLERANCE and np.isfinite(diff).all()
