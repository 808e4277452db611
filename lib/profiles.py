"""Profiles: one YAML file holds every parameter of a pipeline run, validated on load.

`load_profile("smoke")` finds `lib/assets/profiles/smoke.yaml`; a path to any YAML file works too.
An unknown key or a wrong type raises `ProfileError` naming the file and the field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from lib import paths
from lib.reward_names import REWARD_NAMES, unknown_reward
from lib.yamlio import read_yaml


class ProfileError(ValueError):
    """A profile that cannot be used; the message is one line naming the file and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class DataConfig(_Strict):
    test_size: int = Field(50, ge=1)  # entities in the held-out test split (stratified by domain)
    max_train: int | None = Field(None, ge=1)  # cap on train prompts; None keeps all
    near_dup_threshold: float = Field(0.8, ge=0, le=1)  # char-bigram Jaccard above which two entities are one
    expand_with_model: bool = False  # ask the policy model for more entities (slow on CPU)
    expand_per_domain: int = Field(5, ge=0)  # new entities asked per domain when expanding
    external: str | None = None  # a prompt set in the original's format (parquet, datasets dir, hub id)
    sample_max_new_tokens: int = Field(48, ge=1)  # notebook 00's sample completion (transformers on CPU: ~12 tokens/s)


class RubricConfig(_Strict):
    path: str | None = None  # None: lib/assets/rubrics/default.yaml (the original's checklists)
    heldout_path: str | None = None  # rubric of the held-out judge; None: lib/assets/rubrics/heldout.yaml


class JudgeConfig(_Strict):
    model: str = "gemma3-270m"  # registry name, hub id or local path
    backend: Literal["vllm", "transformers", "openai"] = "vllm"
    mode: Literal["soft", "hard", "seed"] = "soft"  # soft: P(yes); hard: P(yes)>=threshold; seed: the original
    threshold: float = Field(0.5, ge=0, le=1)
    top_logprobs: int = Field(20, ge=1)  # how many next-token logprobs to look for 是/否 in
    # topk: 是/否 must appear among the top logprobs, else the item is flagged;
    # restricted: the next token is restricted to 是/否 variants (same ratio, never flagged; for base models)
    answer_scoring: Literal["topk", "restricted"] = "topk"
    max_model_len: int = Field(2048, ge=64)
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)  # GPU: leaves room for the policy's engine
    enforce_eager: bool = True  # CPU: compiling the model adds about 2 min to an engine's start
    base_url: str | None = None  # openai backend: a `vllm serve` endpoint, e.g. http://127.0.0.1:8000/v1
    batch_size: int = Field(256, ge=1)  # transformers backend batch size
    log_items: bool = True  # keep every judged (question, P(yes), verdict)
    # other words counted as no where one token spells them (the original counts 否 only). Measured: 不是 moved the
    # calibration AUROC 0.434 -> 0.444 for Qwen2.5-Coder-0.5B, 0.617 -> 0.466 for Gemma 3 270M base (restricted)
    also_no: list[str] = []
    # auto: bfloat16 where the device computes it natively (CUDA with bf16, a CPU with AVX-512 BF16 or AMX), else
    # float32 (lib.hardware); this engine also writes the `vllm_lora` rollouts. Explicit float32 / bfloat16 win.
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # the model's family for the evaluation tables' independence mark (a held-out judge of another family than the
    # training judge is independent of it); None: the registry's (lib.models.model_family), unknown for other models
    family: str | None = None
    # vllm backend, soft/hard mode: pad each text's shared prefix to a KV-block boundary with filler spaces so every
    # question after the first computes only its own part (faster), at the cost of other tokens than the plain prompt:
    # it moves P(yes) (lib.judge.engine.PAD_TEXT says by how much). Off: every backend scores the same token ids.
    prefix_pad: bool = False


class SubstanceConfig(_Strict):
    """The substance guard's minimum lengths (reward `substance`, lib.rewards guards): non-space characters."""

    think_min_chars: int = Field(60, ge=1)  # the think part earns its half in full from here (the shortcut cuts at 20)
    answer_min_chars: int = Field(20, ge=1)
    ramp: bool = True  # min(chars / minimum, 1); false: a step at the minimum (think_min_chars 20: the shortcut's rule)


class RelativeConfig(_Strict):
    """Relative judging (rewards `relative`: group round-robin, `relative_base`: against the base model's answer)."""

    opponents: int = Field(1, ge=1)  # group: each completion against the next N members of its group (2N prompts each)
    base_max_tokens: int | None = Field(None, ge=1)  # relative_base: the base answer's length; None: max_completion_length


class TrainConfig(_Strict):
    model_config = ConfigDict(extra="forbid", protected_namespaces=(), validate_assignment=True)  # assignments are checked too

    backend: Literal["trl", "unsloth"] = "trl"  # trl: PEFT LoRA + HF generation (CPU); unsloth: GPU + vLLM rollouts
    max_steps: int = -1  # -1: run num_train_epochs
    num_train_epochs: float = 2
    learning_rate: float = 1e-6
    beta: float = 0.01  # KL coefficient
    temperature: float = 0.98
    top_p: float = 1.0
    num_generations: int = Field(8, ge=2)  # group size; more gives better advantages, costs rollouts
    max_prompt_length: int = 512
    max_completion_length: int = 512
    per_device_train_batch_size: int = 1
    gradient_accumulation_steps: int = 8
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.1
    loss_type: str = "grpo"  # grpo | dapo | dr_grpo | bnpo ... (TRL)
    scale_rewards: str = "group"  # group | batch | none (TRL)
    # TRL's mask_truncated_completions (DAPO): completions cut at max_completion_length are left out of the loss
    mask_truncated_completions: bool = False
    # false: train every weight of the policy (the original's full fine-tune, at its rate 1e-6) instead of a LoRA
    # adapter; needs train.backend trl and a rollout engine other than vllm_lora (both serve LoRA adapters only); the
    # trained model is saved to train/model/ and evaluated as the eval rows with `adapter: run`
    peft: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    lora_target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    reward_weights: dict[str, float] = {"format": 1.0, "think": 1.0, "answer": 1.0}
    logging_steps: int = 1
    save_steps: int = 10  # LoRA checkpoint every N steps
    save_total_limit: int = 3
    log_completions: int = Field(4, ge=0)  # completions per logged step written to samples.jsonl
    report_to: list[str] = []  # add "tensorboard" or "wandb"
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1)  # policy's vLLM engine: unsloth: share of the FREE memory; vllm_colocate: of the card
    # trl backend: HF generate, TRL's colocated vLLM, `trl vllm-serve`, or vllm_lora: the judge's vLLM engine with the
    # current LoRA adapter each step (lib.train.rollouts; needs judge.backend vllm and judge.model == policy_model)
    rollout_engine: Literal["hf", "vllm_colocate", "vllm_server", "vllm_lora"] = "hf"
    vllm_server_base_url: str | None = None  # rollout_engine vllm_server: e.g. http://127.0.0.1:8000
    unsloth_standby: bool = False  # Unsloth's standby raises its memory share; off keeps room for the judge
    merge_final: bool = False  # also save a merged model (needed to serve the policy with vLLM)
    # the policy's base weights (LoRA weights and optimizer state stay float32); on CUDA bfloat16 also turns on TRL's
    # bf16 mixed precision. auto: bfloat16 where the device computes it natively, else float32 (lib.hardware).
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # trl backend: each micro-batch computes a prompt once for all its completions (lib.train.shared_prompt); pays off
    # when a micro-batch holds several completions of a prompt (per_device_train_batch_size >= num_generations / 2)
    shared_prompt: bool = False
    resume: bool = True  # continue from the run's last checkpoint; false refuses a run that already has checkpoints
    # rollouts from vLLM (vllm_lora, TRL's vLLM, Unsloth): TRL's correction for the rollout engine's log-probs differing
    # from the trainer's (`vllm_importance_sampling_mode`): token_truncate clips each token's ratio at 3 (TRL's
    # sequence_mask default drops a whole completion whose summed difference exceeds log 3); off: no correction
    importance_sampling: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "off"] = "token_truncate"
    first_last_k: int = Field(5, ge=1)  # logged steps averaged at each end to ask whether the format reward rose
    # Reward designs (docs/reward-designs.md). TRL's multi_objective_aggregation: sum_then_normalize (TRL's default:
    # weighted sum, then scale_rewards) or normalize_then_sum (GDPO: each reward normalized within its group first, so
    # a saturated format reward does not drown the judge rewards)
    reward_aggregation: Literal["sum_then_normalize", "normalize_then_sum"] = "sum_then_normalize"
    format_gate: bool = False  # judge rewards (think, answer, relative, relative_base) count only for a valid format
    substance: SubstanceConfig = SubstanceConfig()
    overlong_buffer: int = Field(64, ge=1)  # reward `overlong` (DAPO): the penalty ramps over the last N tokens
    relative: RelativeConfig = RelativeConfig()

    @field_validator("reward_weights")
    @classmethod
    def _known_rewards(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = unknown_reward(weights)
        if unknown:
            raise ValueError(f"unknown reward {unknown!r}; known: {', '.join(REWARD_NAMES)}")
        if not weights:
            raise ValueError("name at least one reward, e.g. {format: 1.0}")
        return weights

    @model_validator(mode="after")
    def _overlong_buffer_fits(self) -> "TrainConfig":
        if "overlong" in self.reward_weights and self.overlong_buffer > self.max_completion_length:
            raise ValueError(f"train.overlong_buffer {self.overlong_buffer} exceeds train.max_completion_length "
                             f"{self.max_completion_length}")
        return self


class EvalModel(_Strict):
    label: str  # table row name
    model: str  # registry name, hub id or path
    adapter: str | None = None  # None, "run" (this run's final adapter) or a path


class EvalConfig(_Strict):
    models: list[EvalModel] = []
    n_prompts: int = Field(50, ge=1)
    # The protocol (docs/evaluation.md): `samples_per_prompt` sampled completions per prompt at the training's sampling,
    # plus one greedy completion (`greedy`); the tables average a prompt's samples and bootstrap over prompts.
    samples_per_prompt: int = Field(4, ge=1)
    greedy: bool = True
    # None (the default): the training's own (train.max_completion_length, train.temperature, train.top_p), so the
    # evaluation samples the policy as it was trained; set them to evaluate otherwise
    max_new_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0)
    top_p: float | None = Field(None, gt=0, le=1)
    seed: int = 42
    n_bootstrap: int = Field(1000, ge=10)
    heldout_judge: JudgeConfig | None = None  # None: the training judge's model with the held-out rubric
    # generation of notebooks 04 and 05: vllm (in-process engine, fast) or transformers (machines without vLLM)
    generation_backend: Literal["vllm", "transformers"] = "vllm"
    gpu_memory_utilization: float = Field(0.8, gt=0, le=1)  # GPU share of the generation engine (no judge is alive then)
    # the generation engines' dtype (one for every row of the table). auto: on CPU float32 when a row has a LoRA adapter
    # (merged into bf16 weights a small delta rounds away); on a GPU bf16 with the adapter unmerged (lib.hardware.eval_precision)
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    # a row with a LoRA adapter is refused when its merged model's log-probs (as served, in the engine's dtype) differ
    # from the PEFT model's (base + adapter, float32) by more than this, per token, on fixed texts (lib.eval.generation)
    merge_tolerance: float = Field(1e-3, gt=0)
    # notebook 04's pairwise win rate of each trained row against its base (lib.eval.winrate): the training judge's
    # `relative` question, both orders, 2 judge prompts per (prompt, sample) pair; skipped without a `relative` template
    winrate: bool = True


class CaseStudyConfig(_Strict):
    entities: list[str] = []  # empty: chosen by `select` among the test entities
    n: int = Field(3, ge=1)
    # first: the first `n` test entities; format_learned: first those whose format score went from 0 (before RL)
    # to above 0 (after) in notebook 04, then the first test entities
    select: Literal["first", "format_learned"] = "first"


class SizingConfig(_Strict):
    # `make run` prints its estimate first (lib.estimate); when the full sizing's estimate on this machine exceeds the
    # budget, the run takes `reduced` (overrides merged into this profile, as `--set` would) and says so.
    budget_minutes: float | None = Field(None, gt=0)  # None: always the full sizing
    reduced: dict = {}  # e.g. {train: {max_steps: 12}}: a smaller job for slower machines (same keys as the profile)


class PerItemCalibrationConfig(_Strict):
    """Per-item calibration of the judge's P(yes) (lib.judge.calibration.per_item), fitted by notebook 02."""

    # none: the rubric's formula on raw P(yes); platt: logistic on logit P(yes) per item; isotonic: monotone steps per
    # item. Not none: the judge rewards and the training judge's evaluation scores read the calibration notebook 02
    # saved in the run (calibration/per_item_calibration.json); notebook 02 fits platt for its table when this is none
    method: Literal["none", "platt", "isotonic"] = "none"
    min_auroc: float = Field(0.6, ge=0, le=1)  # an item whose cross-validated AUROC is below this is weak
    # weak items: drop (left out of the score), downweight (weight (auroc - 0.5) / (min_auroc - 0.5)), keep
    weak_items: Literal["drop", "downweight", "keep"] = "drop"
    folds: int = Field(5, ge=2)  # cross-validation folds over the calibration texts (GroupKFold by text id)


class CalibrationConfig(_Strict):
    per_item: PerItemCalibrationConfig = PerItemCalibrationConfig()
    # human preferences (lib.judge.preferences): JSON lines {prompt, chosen, rejected[, entity]}; None: the project's
    # own lib/assets/preferences.jsonl. Notebook 02 measures how often the pairwise judge prefers `chosen`
    preferences_path: str | None = None
    preferences_max_pairs: int | None = Field(None, ge=1)  # cap on pairs judged (the first ones); None: all


class Profile(_Strict):
    name: str
    description: str = ""
    seed: int = 42
    device: Literal["cpu", "cuda"] = "cpu"
    policy_model: str = "gemma3-270m"
    data: DataConfig = DataConfig()
    rubric: RubricConfig = RubricConfig()
    judge: JudgeConfig = JudgeConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    case_studies: CaseStudyConfig = CaseStudyConfig()
    sizing: SizingConfig = SizingConfig()
    calibration_max_texts: int | None = None  # cap on calibration texts (smoke); None: all
    calibration_probe_texts: int | None = Field(None, ge=1)  # cap on answers in notebook 02's length/relevance probes; None: all
    # notebook 02's adversarial probes (lib.judge.adversarial): a probe that passes a must-have item for more than this share
    # of the probed entities is flagged
    calibration_adversarial_max_pass: float = Field(0.2, ge=0, le=1)
    calibration_adversarial_entities: int = Field(4, ge=1)  # test entities each adversarial probe is asked about
    calibration_pad_levels: list[int] = [0, 1, 2, 4, 8]  # filler sentences appended to each good answer in 02's length probe
    calibration: CalibrationConfig = CalibrationConfig()  # per-item calibration and the preference yardstick (notebook 02)

    @field_validator("calibration_pad_levels")
    @classmethod
    def _pad_levels(cls, levels: list[int]) -> list[int]:
        if len(set(levels)) < 2 or min(levels) < 0 or len(set(levels)) != len(levels):
            raise ValueError("needs two or more distinct non-negative numbers of filler sentences, e.g. [0, 8]")
        return levels

    @model_validator(mode="after")
    def _reduced_sizing_is_a_profile(self) -> "Profile":
        if self.sizing.reduced:
            try:
                Profile.model_validate(deep_merge(self.model_dump(exclude={"sizing"}), self.sizing.reduced))
            except ValidationError as err:
                e = err.errors()[0]
                where = ".".join(str(x) for x in e["loc"])
                raise ValueError(f"sizing.reduced: {where}: {e['msg']}") from None
        return self

    @model_validator(mode="after")
    def _base_reference_is_the_judge_model(self) -> "Profile":
        # relative_base writes the base answers with the judge's engine: they are the policy's only when it is one model
        if "relative_base" in self.train.reward_weights and self.judge.model != self.policy_model:
            raise ValueError(f"train.reward_weights.relative_base writes base answers with the judge model "
                             f"{self.judge.model!r}, not the policy {self.policy_model!r}: use one model for both, or reward relative")
        return self

    @model_validator(mode="after")
    def _full_fine_tune_needs_trl(self) -> "Profile":
        t = self.train
        if not t.peft and (t.backend != "trl" or t.rollout_engine == "vllm_lora"):
            raise ValueError(f"train.peft: false (a full fine-tune) needs train.backend 'trl' and a rollout_engine other "
                             f"than 'vllm_lora', both of which train/serve LoRA adapters only (got backend {t.backend!r}, "
                             f"rollout_engine {t.rollout_engine!r}): e.g. --set train.backend=trl "
                             f"--set train.rollout_engine=vllm_colocate")
        return self

    @model_validator(mode="after")
    def _eval_samples_as_trained(self) -> "Profile":
        # eval.max_new_tokens / temperature / top_p left out: the training's, so the policy is evaluated as trained
        e, t = self.eval, self.train
        if e.max_new_tokens is None:
            e.max_new_tokens = t.max_completion_length
        if e.temperature is None:
            e.temperature = t.temperature
        if e.top_p is None:
            e.top_p = t.top_p
        return self

    @model_validator(mode="after")
    def _shared_prompt_without_checkpointing(self) -> "Profile":
        # the trl backend checkpoints on CUDA (lib.train.config), and checkpointed layers drop the shared prompt's cache
        if self.train.shared_prompt and self.train.backend == "trl" and self.device == "cuda":
            raise ValueError("train.shared_prompt: true needs gradient checkpointing off, which train.backend 'trl' turns "
                             "on for device: cuda; set train.shared_prompt: false")
        return self

    @model_validator(mode="after")
    def _standby_leaves_no_room_for_the_judge(self) -> "Profile":
        # Unsloth's standby sizes its engine to ~0.88 of the free memory: an in-process judge on the same GPU
        # (started first) would then starve it, or (started later) find nothing left.
        if self.train.backend == "unsloth" and self.train.unsloth_standby and self.judge.backend != "openai":
            raise ValueError(f"train.unsloth_standby: true takes ~0.88 of the free GPU memory, none left for the in-process "
                             f"judge (judge.backend {self.judge.backend!r}): set it false, or use judge.backend: openai")
        return self


def available_profiles() -> list[str]:
    return sorted(p.stem for p in paths.PROFILES_DIR.glob("*.yaml"))


def profile_path(name_or_path: str | Path) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ProfileError(f"profile file not found: {p}")
        return p
    candidate = paths.PROFILES_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        raise ProfileError(f"unknown profile {str(name_or_path)!r}; available: {', '.join(available_profiles())}")
    return candidate


def _first_error(path: Path, err: ValidationError) -> str:
    e = err.errors()[0]
    where = ".".join(str(x) for x in e["loc"]) or "<root>"
    if e["type"] == "extra_forbidden":
        return f"{path}: unknown parameter {where!r}"
    # a rule across fields (of the profile, or of one section: its message names the section's fields)
    if e["type"] == "value_error" and (not e["loc"] or (isinstance(e.get("input"), dict) and f"{where}." in str(e["ctx"]["error"]))):
        return f"{path}: {e['ctx']['error']}"
    return f"{path}: {where}: {e['msg']} (got {e.get('input')!r})"


def load_profile(name_or_path: str | Path, overrides: dict | None = None) -> Profile:
    """Load and validate a profile; `overrides` is a nested dict merged on top (e.g. from the CLI)."""
    path = profile_path(name_or_path)
    raw = read_yaml(path, ProfileError)
    if not isinstance(raw, dict):
        raise ProfileError(f"{path}: a profile must be a mapping of parameters, got {type(raw).__name__}")
    raw.setdefault("name", path.stem)
    if overrides:
        raw = deep_merge(raw, overrides)
    try:
        return Profile.model_validate(raw)
    except ValidationError as err:
        raise ProfileError(_first_error(path, err)) from None


def deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> dict:
    """`train.max_steps=5` -> {"train": {"max_steps": 5}} (value parsed as YAML)."""
    if "=" not in text:
        raise ProfileError(f"override {text!r} must look like key.sub=value")
    key, value = text.split("=", 1)
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur = cur.setdefault(p, {})
    cur[parts[-1]] = yaml.safe_load(value)
    return node


def parse_overrides(texts: Iterable[str]) -> dict | None:
    """Several `parse_override` texts merged in order (a later one wins), or None when there are none."""
    merged: dict = {}
    for text in texts:
        merged = deep_merge(merged, parse_override(text))
    return merged or None


def dump_profile(profile: Profile) -> str:
    return yaml.safe_dump(profile.model_dump(mode="json"), allow_unicode=True, sort_keys=False)
