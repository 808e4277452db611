"""A tiny random policy and a run directory for training tests (seconds on 2 cores, no hub, no GGUF).

    model_dir = build_tiny_policy(tmp / "tiny")           # LlamaForCausalLM, 2 layers of width 32 + BPE tokenizer
    run_dir = make_training_run(tmp / "run", model_dir)   # profile.yaml + data/ stage with a few prompts

Run as a script, it trains that run with the fake judge (the subprocesses of the resume test):
    python -m tests.train_helpers RUN_DIR RESULT_JSON [--judge-delay SECONDS] [--kill-at-step N] [--rerun RESULT_JSON]
(`--kill-at-step N`: the process SIGKILLs itself at the end of optimizer step N, before that step is logged or saved.
`--rerun RESULT_JSON`: then trains the run again as a new start of the script would, with a fresh run context, judge
and trainer, in the same process (no second interpreter start); its result goes there, with the text of log.jsonl as
that run found it under `log_found`.)
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lib import data
from lib.profiles import dump_profile, load_profile

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<|pad|>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>"]
ENTITIES = ["无糖气泡水", "椰子水", "降噪耳机", "智能手表", "登山鞋", "猫砂", "儿童绘本", "电动牙刷", "老北京布鞋", "火锅底料"]


def build_tiny_policy(out_dir: Path, seed: int = 0) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer trained on the prompts' own text."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    corpus = [data.SYSTEM_PROMPT] + [data.USER_TEMPLATE.format(entity=e) for e in ENTITIES]
    corpus += ["<think>先分析需求，再写文案。</think><answer>喝一口，清爽一夏！</answer>"] * 3
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=700, special_tokens=SPECIAL,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<|pad|>", eos_token="<|end|>", padding_side="left")
    tok.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


def tiny_profile(model_dir: Path, **train_overrides):
    """The smoke profile on the tiny policy: short completions, few prompts, a checkpoint every step."""
    train = dict(rollout_engine="hf",  # the tiny random policy generates itself (the fake judge has no engine)
                 max_steps=4, save_steps=1, save_total_limit=2, max_completion_length=8, max_prompt_length=512,
                 num_generations=2, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                 learning_rate=1e-3, log_completions=2,
                 reward_weights={"format": 1.0, "think": 1.0, "answer": 1.0, "tag_count": 0.5})
    train.update(train_overrides)
    return load_profile("smoke", overrides={"name": "tiny", "policy_model": str(model_dir),
                                            "data": {"max_train": 8}, "train": train})


def make_training_run(run_dir: Path, model_dir: Path, **train_overrides) -> Path:
    """A run directory with profile.yaml and the data stage (train/test parquet) written."""
    import pandas as pd

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    profile = tiny_profile(model_dir, **train_overrides)
    (run_dir / "profile.yaml").write_text(dump_profile(profile), encoding="utf-8")
    prompts = data.build_prompts(pd.DataFrame({"entity": ENTITIES, "domain": ["d"] * len(ENTITIES)}))
    data.save_split(prompts.iloc[:8], prompts.iloc[8:], run_dir / "data")
    return run_dir


class SlowKeywordJudge:
    """tests.fakes.KeywordJudge that takes `delay` seconds per call (keeps a step long enough to kill)."""

    def __init__(self, delay: float = 0.0):
        from tests.fakes import KeywordJudge

        self.inner = KeywordJudge(rules={"fluency": "。"})
        self.delay = delay
        self.mode, self.threshold = self.inner.mode, self.inner.threshold

    def judge_section(self, section, entities, texts):
        time.sleep(self.delay)
        return self.inner.judge_section(section, entities, texts)


def kill_at_step(step: int):
    """A trainer callback that SIGKILLs its own process at the end of optimizer step `step`, before that step is
    logged or checkpointed (a death between checkpoints, at a known step: no race with a watching test)."""
    import os
    import signal

    from transformers import TrainerCallback

    class KillAtStep(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                os.kill(os.getpid(), signal.SIGKILL)
            return control

    return KillAtStep()


def _train(run_dir: str, judge_delay: float, kill_step: int | None = None) -> dict:
    from lib import train
    from lib.run import open_run

    ctx = open_run(run_dir)
    judge = SlowKeywordJudge(judge_delay)
    trainer = train.build_trainer(ctx.profile, ctx, judge)  # its own JudgeRewards (the per-step cache lives there)
    if kill_step is not None:
        trainer.add_callback(kill_at_step(kill_step))
    return train.train(ctx.profile, ctx, judge, trainer=trainer)


def _main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("result_json")
    ap.add_argument("--judge-delay", type=float, default=0.0)
    ap.add_argument("--kill-at-step", type=int, default=None)
    ap.add_argument("--rerun", default=None, metavar="RESULT_JSON")
    a = ap.parse_args()
    result = _train(a.run_dir, a.judge_delay, a.kill_at_step)
    Path(a.result_json).write_text(json.dumps(result, indent=1), encoding="utf-8")
    if a.rerun:
        found = (Path(a.run_dir) / "train" / "log.jsonl").read_text(encoding="utf-8")
        again = _train(a.run_dir, a.judge_delay)
        Path(a.rerun).write_text(json.dumps({**again, "log_found": found}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    _main()
