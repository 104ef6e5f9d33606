"""Recipes: YAML files validated into typed config objects, with dotted command-line overrides.

A recipe names the base model once (`model`), the LoRA shape once (`lora`), and gives each
stage its own section. Every field below is documented and defaulted; `align config` prints them.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from alignment.errors import RecipeError


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field(
        "smollm2-135m-instruct",
        description="Base model: a Hub id, a local Hugging Face directory, or an embedded model "
        "name (`align models` lists them).",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    quantization: Literal["none", "4bit", "8bit"] = Field(
        "none", description="Load the frozen base in 4-bit NF4 (QLoRA, double quant) or 8-bit."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="Compute dtype. auto: bfloat16 on a GPU that supports it, float16 on older "
        "GPUs; on CPU bfloat16 where it is native (AVX512-BF16 or AMX: 2-3x faster than float32), "
        "else float32 (emulated bfloat16 is about 2x slower).",
    )
    trust_remote_code: bool = Field(False, description="Run model code shipped with a Hub repo.")
    chat_template: str | None = Field(
        None,
        description="Jinja chat template to use instead of the tokenizer's own. A tokenizer "
        "without one gets the ChatML template (see alignment.models.DEFAULT_CHAT_TEMPLATE).",
    )
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto",
        description="Attention kernel. auto: sdpa on GPU; on CPU eager attention while a layer's "
        "score matrix is small (PPO's short batches), where CPU flash attention's bf16 backward "
        "is slow, and sdpa for larger ones and decoding (see alignment.attention).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Where embedded models are converted to safetensors. Default: "
        "$ALIGNMENT_CACHE_DIR, else $XDG_CACHE_HOME/alignment, else ~/.cache/alignment.",
    )


class LoraConfig(Section):
    r: int = Field(16, gt=0, description="LoRA rank.")
    alpha: int = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] | Literal["all-linear"] = Field(
        "all-linear",
        description="Module names to adapt, or all-linear (every linear but the LM head).",
    )
    peft_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other option of peft's LoraConfig, e.g. {use_dora: true} or "
        "{use_rslora: true}.",
    )

    @field_validator("peft_args")
    @classmethod
    def _known_peft_args(cls, peft_args: dict[str, Any]) -> dict[str, Any]:
        import peft

        # The keys this section (or the stage) sets itself are not passed through twice.
        own = {"r", "lora_alpha", "lora_dropout", "target_modules", "task_type", "modules_to_save"}
        return _known_options(peft_args, peft.LoraConfig, "peft", own)


class DataSource(Section):
    """A `data` (or `prompts`) key given as a mapping; a plain string is the same as `path` alone.
    Everything but `path` is passed to `datasets.load_dataset`."""

    path: str = Field(
        ...,
        description="A local .jsonl/.json/.parquet/.csv file, a local dataset directory, or a Hub "
        "dataset id (or a `datasets` builder such as csv with `data_files`).",
    )
    subset: str | None = Field(None, description="The dataset's configuration (subset) name.")
    split: str | None = Field(
        None,
        description="Split to read, or a slice of one (train[:1000]). Default: the section's "
        "data_split or eval_split; a single local file has only `train`.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    data_files: str | list[str] | dict[str, str | list[str]] | None = Field(
        None, description="Which files of the dataset to read, optionally by split."
    )
    streaming: bool = Field(False, description="Read rows as they download, with no local copy.")

    def __str__(self) -> str:
        return self.path  # what messages, model cards and input checks name the data by


# Tags that pick DataSpec's member, so a bad mapping is reported against DataSource alone;
# hyphenated, they never read as recipe keys (error locations leave them out).
_DATA_TAGS = {"data-path", "data-mapping"}


def _data_kind(value: Any) -> str:
    return "data-mapping" if isinstance(value, dict | DataSource) else "data-path"


DataSpec = Annotated[
    Annotated[str, Tag("data-path")] | Annotated[DataSource, Tag("data-mapping")],
    Discriminator(_data_kind),
]


LRScheduler = Literal["cosine", "linear", "constant", "constant_with_warmup"]


class TrainerSection(Section):
    """Settings every Trainer-based stage (sft, rm, dpo) shares; see alignment.trainers."""

    trl_config: ClassVar[str]  # the TRL config class that validates `trainer_args`

    data_split: str = Field("train", description="Split to read when `data` is a `datasets` name.")
    eval_data: DataSpec | None = Field(
        None, description="Held-out data; if unset, `eval_fraction` of `data` is held out."
    )
    eval_split: str = Field(
        "test", description="Split to read when `eval_data` is a `datasets` name."
    )
    eval_fraction: float = Field(
        0.05,
        ge=0,
        lt=1,
        description="Share of `data` held out for evaluation (preferences: whole prompts at a time).",
    )
    epochs: float = Field(
        1.0, gt=0, description="Passes over the data (ignored when max_steps > 0)."
    )
    max_steps: int = Field(-1, description="Optimizer steps to run; -1 means use `epochs`.")
    batch_size: int = Field(
        8,
        gt=0,
        description="Training elements per device per forward pass: sft examples, rm comparisons "
        "(a pair or a whole K-way ranking), dpo pairs.",
    )
    grad_accum: int = Field(1, gt=0, description="Forward passes per optimizer step.")
    learning_rate: float = Field(
        1e-4, gt=0, description="Peak learning rate of the adapter (and the rm's score head)."
    )
    lr_scheduler: LRScheduler = Field("linear", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for activation memory.")
    logging_steps: int = Field(5, gt=0, description="Log training metrics every N steps.")
    eval_steps: int = Field(50, gt=0, description="Evaluate on the held-out data every N steps.")
    save_steps: int = Field(50, gt=0, description="Write a resumable checkpoint every N steps.")
    save_total_limit: int = Field(2, gt=0, description="Checkpoints kept on disk.")
    trainer_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Any other option of the stage's TRL config (SFTConfig, RewardConfig, "
        "DPOConfig), e.g. {optim: adamw_torch_fused, use_liger_kernel: true}.",
    )

    @field_validator("trainer_args")
    @classmethod
    def _known_trainer_args(cls, trainer_args: dict[str, Any]) -> dict[str, Any]:
        if not trainer_args:
            return trainer_args  # no need to import TRL
        import trl

        return _known_options(trainer_args, getattr(trl, cls.trl_config), "trl", set())


def _known_options(
    options: dict[str, Any], config_class: type, library: str, own: set[str]
) -> dict[str, Any]:
    """`options` if each is a field of the library's dataclass `config_class` that the recipe
    does not set itself; else an error naming each bad key with the closest field."""
    clashing = sorted(own & set(options))
    if clashing:
        raise PydanticCustomError(
            "option_set_by_recipe",
            "{keys}: set by the recipe's own keys, not here",
            {"keys": ", ".join(clashing)},
        )
    known = sorted(f.name for f in dataclasses.fields(config_class) if f.init and f.name not in own)
    unknown = [key for key in options if key not in known]
    if unknown:
        raise PydanticCustomError(
            "unknown_library_option",
            "unknown key of {library}.{config}",
            {"library": library, "config": config_class.__name__, "keys": unknown, "known": known},
        )
    return options


def _default(section: type[BaseModel], name: str, value: Any) -> Any:
    """`section`'s field `name` with another default: its type, bounds and description kept."""
    return FieldInfo.merge_field_infos(section.model_fields[name], default=value)


class SFTConfig(TrainerSection):
    trl_config: ClassVar[str] = "SFTConfig"

    data: DataSpec = Field(
        "data/demos.jsonl",
        description="Demonstrations: a local .jsonl/.json/.parquet/.csv file or a `datasets` name "
        "(or a mapping, see DataSource). Rows hold chat `messages`, ShareGPT `conversations`, "
        "`prompt`+`completion`, Alpaca `instruction`(+`input`)+`output`, or plain `text`.",
    )
    assistant_only_loss: bool = Field(
        True, description="Train on assistant tokens only (every assistant turn, with its context)."
    )
    max_length: int = Field(
        1024, gt=0, description="Longest tokenized example; longer ones are truncated."
    )
    learning_rate: float = _default(TrainerSection, "learning_rate", 2e-4)
    lr_scheduler: LRScheduler = _default(TrainerSection, "lr_scheduler", "cosine")
    group_by_length: bool = Field(
        True,
        description="Batch examples of similar length together, so less compute goes to padding.",
    )
    padding_free: bool = Field(
        False,
        description="Concatenate a batch into one row with position ids (needs flash_attention_2; "
        "other kernels would let examples attend to each other).",
    )


class SampleConfig(Section):
    """Sampling answers to rank (`align sample`); the same settings drive later PPO rollouts."""

    k: int = Field(4, ge=2, le=16, description="Candidates sampled per prompt (`--k` overrides).")
    max_new_tokens: int = Field(256, gt=0, description="Longest answer, in tokens.")
    temperature: float = Field(
        0.8, ge=0, description="Sampling temperature; 0 means greedy (every candidate alike)."
    )
    top_p: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Nucleus sampling: keep the smallest set of tokens with this much probability.",
    )
    top_k: int = Field(0, ge=0, description="Keep only the k likeliest tokens; 0 turns it off.")
    batch_size: int = Field(
        8, gt=0, description="Sequences generated together (left-padded, one KV cache)."
    )
    max_prompt_tokens: int = Field(
        1024, gt=0, description="Longer prompts are refused with their file and line."
    )
    seed: int | None = Field(
        None,
        description="Base seed of the candidates; each candidate's own seed is derived from it, "
        "the prompt and the candidate's number. Default: the recipe's `seed`.",
    )


Format = Literal["auto", "rankings", "pairs", "trl", "hh"]


class PreferenceSection(TrainerSection):
    """A Trainer stage that learns from preferences (rm, dpo)."""

    format: Format = Field(
        "auto", description="Row format; auto detects it per row from the row's keys."
    )


class RMConfig(PreferenceSection):
    """Reward-model stage (`align rm`): a LoRA adapter plus a scalar `score` head."""

    trl_config: ClassVar[str] = "RewardConfig"

    data: DataSpec = Field(
        "data/comparisons.jsonl",
        description="Preferences: a local .jsonl/.json/.parquet/.csv file or a `datasets` name. Rows are the "
        "ranking UI's rankings or pairs export, TRL chosen/rejected (implicit or explicit prompt, "
        "text or chat, optional `margin`), or HH-RLHF text (`\\n\\nHuman: ...`).",
    )
    init: Literal["sft", "base"] = Field(
        "sft",
        description="Start the adapter from the run's SFT adapter (<run_dir>/sft, same LoRA "
        "shape) or from scratch on the base model. The score head always starts fresh.",
    )
    max_length: int = Field(
        512,
        gt=1,
        description="Longest tokenized conversation; longer ones lose their START, so the "
        "answer being judged is kept.",
    )
    share_prefix: bool = Field(
        True,
        description="Run a comparison's shared conversation once and branch its answers off it "
        "(one row, tree-shaped attention mask): same scores, fewer tokens. Needs sdpa or eager.",
    )
    group_by_length: bool = Field(
        True, description="Batch comparisons of similar length together (less padding)."
    )
    length_debias: Literal["none", "reweight", "explain"] = Field(
        "none",
        description="Keep the reward model from learning answer length. reweight: weight training "
        "pairs so that the preferred answer is the longer one in half the weight and the shorter "
        "one in the other half (length alone then predicts nothing). explain: fit a length-only "
        "model of the preferences and add it to the reward difference in the training loss, so "
        "the reward model learns what length does not explain (a product of experts); it scores "
        "without it.",
    )
    off_topic_answers: bool = Field(
        False,
        description="Add to each training ranking the best answer to another prompt, ranked below "
        "this prompt's best: rankings compare answers to one prompt only, so without it a reward "
        "model can score answers without reading the prompt. It made the quickstart's RMs read the "
        "prompt more but did not raise PPO's win rate there (bench/RESULTS.md).",
    )
    stats_examples: int = Field(
        512,
        ge=0,
        description="Training comparisons scored after training for the reward mean/std that PPO "
        "normalises with; 0 means all.",
    )


class PPOConfig(Section):
    prompts: DataSpec = Field(
        "data/prompts.jsonl",
        description="Prompts to roll out: `prompt` text or chat `messages` rows.",
    )
    sft_adapter: Path | None = Field(
        None,
        description="Policy and reference start here: a directory or Hub id. Default: <run_dir>/sft.",
    )
    reward_adapter: Path | None = Field(
        None,
        description="Reward adapter and head (a directory or Hub id); the value role starts here "
        "too. Default: <run_dir>/rm.",
    )
    updates: int = Field(20, gt=0, description="PPO updates (rollout, score, train) to run.")
    rollout_batch_size: int = Field(
        8, gt=0, description="Prompts rolled out per update per process."
    )
    minibatch_size: int = Field(4, gt=0, description="Rollouts per optimizer step.")
    grad_accum: int = Field(1, gt=0, description="Forward passes each minibatch is split into.")
    ppo_epochs: int = Field(2, gt=0, description="Passes over each update's rollouts.")
    learning_rate: float = Field(5e-5, gt=0, description="AdamW learning rate of policy and value.")
    lr_scheduler: Literal["constant", "linear"] = Field(
        "constant", description="constant, or linear decay to 0 over `updates`."
    )
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient-norm clip.")
    max_prompt_length: int = Field(
        256,
        gt=0,
        description="Longest prompt in tokens; a longer one is an error before any rollout.",
    )
    max_new_tokens: int = Field(48, gt=0, description="Longest answer in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature of rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of rollouts (1: off).")
    stop_strings: list[str] = Field(
        default_factory=list, description="An answer ends after the first of these (besides EOS)."
    )
    unfinished_penalty: float = Field(
        -1.0, description="Added to the score of an answer that hit max_new_tokens without ending."
    )
    length_penalty: float = Field(
        0.0,
        ge=0,
        description="Subtracted from the normalised score per unit of relative distance from "
        "length_target (|tokens - target| / target), so PPO cannot win by answer length alone. "
        "0: off.",
    )
    length_target: int | None = Field(
        None, gt=0, description="Answer length in tokens that length_penalty pulls towards."
    )
    kl_coef: float = Field(
        0.05, ge=0, description="Weight of the per-token KL penalty to the SFT model."
    )
    kl_estimator: Literal["k1", "k3"] = Field(
        "k1",
        description="k1: log p/q (unbiased); k3: q/p - 1 - log q/p (unbiased, never negative).",
    )
    target_kl: float | None = Field(
        None, gt=0, description="If set, adapt kl_coef towards this KL per answer (Ziegler et al.)."
    )
    kl_horizon: int = Field(10000, gt=0, description="Adaptive KL: rollouts over which to adapt.")
    gamma: float = Field(1.0, ge=0, le=1, description="Discount of GAE.")
    lam: float = Field(0.95, ge=0, le=1, description="Lambda of GAE.")
    clip_range: float = Field(0.2, gt=0, description="Policy ratio clip.")
    value_clip_range: float = Field(0.2, gt=0, description="Value change clip.")
    value_coef: float = Field(0.1, ge=0, description="Weight of the value loss.")
    normalize_rewards: bool = Field(
        True, description="Standardise scores with the reward model's training statistics."
    )
    reward_clip: float | None = Field(
        None, gt=0, description="Clip scores to [-x, x] after normalising."
    )
    whiten_rewards: bool = Field(False, description="Whiten per-token rewards before GAE.")
    whiten_advantages: bool = Field(True, description="Whiten advantages per update.")
    sample_every: int = Field(5, gt=0, description="Log a table of sample answers every N updates.")
    save_every: int = Field(5, gt=0, description="Write a resumable checkpoint every N updates.")

    @model_validator(mode="after")
    def _length_target_with_penalty(self) -> PPOConfig:
        if self.length_penalty > 0 and self.length_target is None:
            raise ValueError("length_penalty needs length_target (answer tokens to pull towards)")
        return self


DPOLoss = Literal[
    "sigmoid",
    "hinge",
    "ipo",
    "exo_pair",
    "nca_pair",
    "robust",
    "bco_pair",
    "sppo_hard",
    "aot",
    "aot_unpaired",
    "apo_zero",
    "apo_down",
    "discopop",
    "sigmoid_norm",
]  # TRL 1.16's DPOConfig.loss_type values


class DPOConfig(PreferenceSection):
    """DPO stage (`align dpo`): the SFT adapter trained on preference pairs, against itself frozen."""

    trl_config: ClassVar[str] = "DPOConfig"

    data: DataSpec = Field(
        "data/pairs.jsonl",
        description="Preferences: the ranking UI's pairs (or rankings) export, TRL chosen/rejected "
        "or HH-RLHF rows; a local .jsonl/.json/.parquet/.csv file or a `datasets` name. A K-way "
        "ranking trains its K-choose-2 pairs.",
    )
    sft_adapter: str | None = Field(
        None,
        description="Policy and frozen reference both start from this SFT adapter: a directory or "
        "Hub id. Default: <run_dir>/sft.",
    )
    beta: float = Field(
        0.1, gt=0, description="Strength of the pull back to the reference (higher: stay closer)."
    )
    loss_type: DPOLoss = Field(
        "sigmoid", description="TRL's DPO loss: sigmoid is the DPO paper's; ipo, hinge, robust..."
    )
    label_smoothing: float = Field(
        0.0, ge=0, lt=0.5, description="Assumed share of flipped labels (robust, exo_pair losses)."
    )
    max_length: int = Field(
        512,
        gt=1,
        description="Longest prompt plus answer in tokens; answers are cut at the end, and pairs "
        "whose prompt alone is this long are dropped (counted in summary.json).",
    )
    precompute_ref_log_probs: bool = Field(
        False, description="Score the reference once before training instead of every step."
    )
    batch_size: int = _default(TrainerSection, "batch_size", 4)
    learning_rate: float = _default(TrainerSection, "learning_rate", 5e-5)
    warmup_ratio: float = _default(TrainerSection, "warmup_ratio", 0.1)


RUBRIC_CRITERIA = ("length", "complete", "relevance", "no_repetition", "no_banned_phrases")


class RubricConfig(Section):
    """A transparent judge: each criterion scores 0..1, the judge's score is their weighted mean."""

    min_words: int = Field(8, ge=0, description="length: full marks from this many words...")
    max_words: int = Field(60, gt=0, description="...up to this many; linear decay outside.")
    banned_phrases: list[str] = Field(
        default_factory=lambda: ["as an ai", "i'm sorry, but i can't"],
        description="no_banned_phrases: 0 if the answer contains any of these (case-insensitive).",
    )
    weights: dict[str, float] = Field(
        default_factory=lambda: dict.fromkeys(RUBRIC_CRITERIA, 1.0),
        description="Weight per criterion: length, complete (ends a sentence), relevance (shares "
        "the prompt's content words), no_repetition (no repeated word trigrams), no_banned_phrases.",
    )

    @field_validator("weights")
    @classmethod
    def _known_criteria(cls, weights: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(weights) - set(RUBRIC_CRITERIA))
        if unknown:
            raise ValueError(f"unknown criteria {unknown}; allowed: {', '.join(RUBRIC_CRITERIA)}")
        if sum(weights.values()) <= 0 or min(weights.values()) < 0:
            raise ValueError("weights must be non-negative with a positive sum")
        return {name: weights.get(name, 0.0) for name in RUBRIC_CRITERIA}


class JudgeConfig(Section):
    """Who ranks sampled answers in an unattended run (`align run`), writing to the same store."""

    kind: Literal["rubric", "reward-model"] = Field(
        "rubric", description="rubric: the transparent rubric below; reward-model: a gold RM."
    )
    name: str = Field("rubric", description="Rankings are stored under annotator judge:<name>.")
    rubric: RubricConfig = Field(default_factory=RubricConfig, description="The rubric judge.")
    reward_adapter: Path | None = Field(
        None, description="reward-model judge: a reward adapter directory or Hub id."
    )


class EvalConfig(Section):
    """Evaluation of SFT against the final policy on held-out prompts."""

    prompts: DataSpec = Field("data/prompts_heldout.jsonl", description="Held-out prompts.")
    limit: int | None = Field(None, gt=0, description="Evaluate on the first N prompts only.")
    max_new_tokens: int = Field(64, gt=0, description="Longest answer, in tokens.")
    temperature: float = Field(0.0, ge=0, description="0: greedy answers, reproducible.")
    batch_size: int = Field(8, gt=0, description="Prompts generated together.")
    max_kl_to_sft: float | None = Field(
        None,
        gt=0,
        description="The KL to SFT (nats per answer) the final policy should stay under; the "
        "evaluation says whether the upper end of its 95% interval does.",
    )
    gold_reward_adapter: Path | None = Field(
        None,
        description="An independent reward adapter (not the one PPO optimised) to report gold "
        "reward with. Unset: the run's own RM scores the answers, reported as such, not as gold.",
    )


ChainStage = Literal["sft", "sample", "rank", "rm", "ppo", "dpo", "eval", "report"]


class ChainConfig(Section):
    """`align run`: which stages run, in order, each reading the previous one's output."""

    stages: list[ChainStage] = Field(
        default_factory=lambda: ["sft", "sample", "rank", "rm", "ppo", "eval", "report"],
        description="Stages in order; use dpo instead of (or besides) rm and ppo for DPO.",
    )
    sample_prompts: DataSpec = Field(
        "data/prompts.jsonl", description="Prompts whose K sampled answers get ranked."
    )
    sample_limit: int | None = Field(None, gt=0, description="Sample the first N prompts only.")
    rank_with: Literal["judge", "humans"] = Field(
        "judge",
        description="judge: the recipe's judge ranks; humans: stop after `sample` for `align ui`.",
    )
    min_rankings: int = Field(
        8, gt=0, description="The rm stage refuses to start with fewer current rankings."
    )


class Recipe(Section):
    name: str = Field(..., description="Run name; outputs go to `run_dir`.")
    run_dir: Path | None = Field(None, description="Run directory. Default: runs/<name>.")
    seed: int = Field(42, description="Seed for data order, dropout and sampling.")
    report_to: list[Literal["tensorboard", "trackio", "wandb"]] = Field(
        ["tensorboard"],
        description="Experiment trackers every stage logs its metrics.jsonl figures to, under "
        "the same names ([] for none); trackio and wandb need their package installed "
        "(pip install 'alignment[trackio]' or 'alignment[wandb]').",
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="The one base model.")
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="Adapter shape for every stage."
    )
    sft: SFTConfig = Field(default_factory=SFTConfig, description="Supervised fine-tuning stage.")
    sample: SampleConfig = Field(
        default_factory=SampleConfig, description="Sampling answers to rank (`align sample`)."
    )
    rm: RMConfig = Field(default_factory=RMConfig, description="Reward-model stage (`align rm`).")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO stage (`align ppo`).")
    dpo: DPOConfig = Field(
        default_factory=DPOConfig, description="DPO stage (`align dpo`), instead of rm and ppo."
    )
    judge: JudgeConfig = Field(default_factory=JudgeConfig, description="Unattended ranking.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Held-out evaluation.")
    chain: ChainConfig = Field(default_factory=ChainConfig, description="`align run` stages.")

    @property
    def output_dir(self) -> Path:
        return self.run_dir or Path("runs") / self.name


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"override {text!r}: expected dotted key=value, e.g. sft.max_steps=20")
    # YAML scalars give overrides the same types as the file: 20 -> int, true -> bool, [a, b] -> list.
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted `key=value` into the nested recipe dict (before validation)."""
    for text in overrides:
        path, value = _parse_override(text)
        node = data
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(path[: depth + 1])
                raise RecipeError(f"override {text!r}: {where} is a value, not a section")
            node = child
        node[path[-1]] = value
    return data


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The section type a field holds, also inside a union such as DataSpec or `X | None`."""
    if isinstance(annotation, type):
        return annotation if issubclass(annotation, BaseModel) else None
    return next(filter(None, map(_model_in, typing.get_args(annotation))), None)


def _section_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    section: type[BaseModel] | None = Recipe
    for part in loc:
        field = section.model_fields.get(str(part)) if section else None
        section = _model_in(field.annotation) if field else None
    return section


def _describe(error: dict[str, Any]) -> str:
    loc = tuple(
        p for p in error["loc"] if (not isinstance(p, int) or p >= 0) and p not in _DATA_TAGS
    )
    key = ".".join(str(p) for p in loc)
    if error["type"] == "unknown_library_option":
        context = error["ctx"]
        owner = {"trl": "TRL", "peft": "peft"}[context["library"]]
        return "\n  ".join(
            f"{key}.{name}: unknown key of {owner}'s {context['config']}"
            f"{_did_you_mean(name, context['known'])} "
            f"(see `help({context['library']}.{context['config']})`)"
            for name in context["keys"]
        )
    if error["type"] == "extra_forbidden":
        section = _section_at(loc[:-1])
        allowed = sorted(section.model_fields) if section else []
        return f"{key}: unknown key{_did_you_mean(str(loc[-1]), allowed)} Allowed here: {', '.join(allowed)}"
    given = error.get("input")
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{key}: {error['msg']}{shown}"


def _did_you_mean(name: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(name, allowed, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a YAML recipe, apply dotted overrides, validate. Raises RecipeError naming file and keys."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: recipe file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML: {err}") from err
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    apply_overrides(data, overrides or [])
    try:
        return Recipe.model_validate(data)
    except ValidationError as err:
        lines = "\n".join(f"  {_describe(e)}" for e in err.errors())
        source = f"{path} (with overrides {' '.join(overrides)})" if overrides else str(path)
        raise RecipeError(f"{source}: invalid recipe\n{lines}") from None


def save_recipe(recipe: Recipe, path: Path) -> None:
    """Write the fully resolved recipe (every default filled in) so a run can be reproduced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe.model_dump(mode="json"), sort_keys=False))


def describe_fields(
    section: type[BaseModel] = Recipe, prefix: str = ""
) -> list[tuple[str, str, str]]:
    """(dotted key, default, description) for every field, for `align config` and the README."""
    rows = []
    for name, field in section.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_fields(annotation, f"{key}."))
        else:
            default = (
                "required"
                if field.is_required()
                else repr(field.get_default(call_default_factory=True))
            )
            rows.append((key, default, field.description or ""))
    return rows
