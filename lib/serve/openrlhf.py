"""OpenRLHF's remote reward model protocol: what its client sends, and how we read the completion out of it.

Matched against OpenRLHF's source (OpenRLHF/OpenRLHF, read 2026-11-27):
- client: `openrlhf/utils/agent.py`, `SingleTurnAgentExecutor._fetch_rewards_via_http` (v0.11.0; the flag is
  `--reward.remote_url URL[,URL...]`, `--remote_rm_url` up to v0.10.1; `openrlhf/utils/remote_rm_utils.py` up to
  v0.9.0 sent whole batches with the same body). It POSTs `{"query": [...], "prompts": [...], "labels": [...]}`
  with a 180 s timeout and 5 tries, one sample per request from concurrent async rollouts, and reads `rewards`,
  `scores` (falling back to `rewards`) and `extra_logs` (a dict) from the JSON answer.
- reference server: `openrlhf/cli/serve_rm.py`, `POST /get_reward` -> `{"rewards": r, "scores": r, "extra_logs": {...}}`.

`query` is `tokenizer.decode(prompt_ids + response_ids, skip_special_tokens=False)`: the chat-templated prompt
followed by the response, special tokens kept. `labels` is the dataset column named by `--data.label_key`; for
this project that is the `entity` column (`--data.label_key entity`).
"""
from __future__ import annotations

# Where the assistant's turn starts in common chat templates; the completion is what follows the last one.
ASSISTANT_MARKERS = (
    "<|im_start|>assistant\n",  # ChatML: Qwen2.5, SmolLM2
    "<start_of_turn>model\n",  # Gemma
    "<|start_header_id|>assistant<|end_header_id|>\n\n",  # Llama 3
    "<｜Assistant｜>",  # DeepSeek-R1 distills
    "<|assistant|>\n",  # Phi-3, Zephyr
)
# Special tokens a decoded response may end with (end of turn, end of text, padding).
END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<end_of_turn>", "<eos>", "</s>", "<|eot_id|>", "<|end_of_text|>",
              "<｜end▁of▁sentence｜>", "<|end|>", "<pad>", "<|pad|>")


class QueryError(ValueError):
    """A query whose completion cannot be found; one line."""


def strip_end_tokens(text: str) -> str:
    """Remove trailing end-of-turn / end-of-text / padding tokens (and the whitespace between them).

    >>> strip_end_tokens("<answer>好</answer><|im_end|>\\n<|endoftext|><|endoftext|>")
    '<answer>好</answer>'
    >>> strip_end_tokens("<answer>好</answer>\\n")
    '<answer>好</answer>\\n'
    """
    while True:
        stripped = text.rstrip()
        for tok in END_TOKENS:
            if stripped.endswith(tok):
                text = stripped[: -len(tok)]
                break
        else:
            return text


def completion_from_query(query: str, prompt: str | None = None) -> str:
    """The response part of an OpenRLHF `query` (prompt + response as decoded, special tokens kept).

    When the query starts with `prompt` (OpenRLHF sends both), the rest is the response; otherwise it is what
    follows the last assistant marker of a known chat template (`ASSISTANT_MARKERS`). Trailing end tokens go.

    >>> completion_from_query("<|im_start|>user\\n写<|im_end|>\\n<|im_start|>assistant\\n<think>想</think><|im_end|>")
    '<think>想</think>'
    >>> completion_from_query("<bos><start_of_turn>user\\n写<end_of_turn>\\n<start_of_turn>model\\n<answer>好</answer><end_of_turn>")
    '<answer>好</answer>'
    >>> completion_from_query("PROMPT<answer>好</answer></s>", prompt="PROMPT")
    '<answer>好</answer>'
    """
    if prompt and query.startswith(prompt):
        return strip_end_tokens(query[len(prompt):])
    cut = max((query.rfind(m) + len(m) for m in ASSISTANT_MARKERS if m in query), default=-1)
    if cut < 0:
        raise QueryError("the query does not start with its prompt and holds no known assistant marker "
                         f"({', '.join(repr(m) for m in ASSISTANT_MARKERS)})")
    return strip_end_tokens(query[cut:])
