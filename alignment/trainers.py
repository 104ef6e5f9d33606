"""What the Trainer-based stages (sft, rm, dpo) share: TRL arguments, held-out data, resume rules.

Each of those stages reads its data, `start`s (run directory, resume rule, tokenizer), loads the
base, builds one TRL trainer from `arguments(...)` plus its own few options, trains, and `save`s a
PEFT adapter directory. Stages call these qualified: `trainers.start(recipe, "sft", resume)`.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, TrainingArguments
from transformers.trainer_utils import TrainOutput

from alignment.config import PreferenceSection, Recipe, TrainerSection
from alignment.errors import RecipeError, RunStateError
from alignment.guarded_trainer import GuardedTrainer, checkpoint_to_resume
from alignment.models import (
    base_model_id,
    compute_dtype,
    load_tokenizer,
    name_base_in,
    resolve_model,
    trainer_precision,
)
from alignment.preferences import Comparison, PreferenceData, read_preferences
from alignment.runs import (
    METRICS_FILE,
    MetricsLogger,
    fsync_tree,
    start_stage,
    write_json,
    write_model_card,
    write_summary,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageStart:
    """Where a Trainer stage writes, the checkpoint it resumes from, and its base model."""

    out: Path  # <run_dir>/<stage>
    checkpoints: Path
    resume_from: str | None
    source: str  # the base model's local directory or Hub id
    tokenizer: PreTrainedTokenizerBase


def start(recipe: Recipe, stage: str, resume: bool) -> StageStart:
    """Create the stage directory, apply the resume rules, and load the base's tokenizer."""
    out = start_stage(recipe, stage)
    if (out / "adapter_config.json").is_file():
        raise RunStateError(
            f"{out} already holds a finished {stage} adapter, so there is nothing to --resume; "
            f"`align run --from {stage}` redoes it (moving this one aside), or set "
            "run_dir=<new dir> to start another run"
        )
    checkpoints = out / "checkpoints"
    resume_from = checkpoint_to_resume(checkpoints, resume, out / METRICS_FILE)
    if resume_from is None and not resume and (out / METRICS_FILE).is_file():
        raise RunStateError(
            f"{out} holds an earlier attempt's {METRICS_FILE} but no checkpoint to resume; "
            f"`align run --from {stage}` redoes the stage (moving this one aside), or set "
            "run_dir=<new dir> to start another run"
        )
    source = resolve_model(recipe.model)
    return StageStart(out, checkpoints, resume_from, source, load_tokenizer(recipe.model, source))


def guarded(recipe: Recipe, start: StageStart) -> dict[str, Any]:
    """The keyword arguments a GuardedTrainer of a stage takes besides TRL's own."""
    return {
        "callbacks": [MetricsLogger(start.out / METRICS_FILE)],
        "compute_dtype": compute_dtype(recipe.model),
        "metrics_file": start.out / METRICS_FILE,
    }


def train(trainer: GuardedTrainer, start: StageStart) -> TrainOutput:
    """Train from the start or the checkpoint `start` names; StageInterrupted after a Ctrl-C."""
    return trainer.train_from(start.resume_from)


def save(
    trainer: GuardedTrainer,
    start: StageStart,
    recipe: Recipe,
    stage: str,
    summary: dict[str, Any],
    card_metrics: dict[str, Any] | None = None,
    adapters: list[str] | None = None,
    extra_json: dict[str, dict[str, Any]] | None = None,
    card_note: str = "",
) -> None:
    """Save the trained adapter(s), tokenizer, model card and `extra_json` files into the stage
    directory, then summary.json, which marks the stage finished. Everything is written to a
    staging folder first and synced, so a kill leaves either the old state or the whole output."""
    if trainer.accelerator.is_main_process:
        staging = start.out / ".final.partial"
        shutil.rmtree(staging, ignore_errors=True)
        for adapter in trainer.model.peft_config.values():
            name_base_in(adapter, recipe.model)
        # We never resize the vocabulary; "auto" would look the base up on the Hub to check.
        trainer.model.save_pretrained(
            staging, selected_adapters=adapters, save_embedding_layers=False
        )
        start.tokenizer.save_pretrained(staging)
        metrics = summary if card_metrics is None else card_metrics
        write_model_card(staging, recipe, stage, base_model_id(recipe.model), metrics, card_note)
        for name, data in (extra_json or {}).items():
            write_json(staging / name, data)
        fsync_tree(staging)
        for path in staging.iterdir():
            os.replace(path, start.out / path.name)
        staging.rmdir()
        write_summary(start.out, summary)
    trainer.accelerator.wait_for_everyone()


def arguments(
    recipe: Recipe, cfg: TrainerSection, start: StageStart, evaluate: bool
) -> dict[str, Any]:
    """Keyword arguments every TRL config (SFTConfig, RewardConfig, DPOConfig) takes alike."""
    return {
        "output_dir": str(start.checkpoints),
        "seed": recipe.seed,
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "per_device_eval_batch_size": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "learning_rate": cfg.learning_rate,
        "lr_scheduler_type": cfg.lr_scheduler,
        # transformers 5 reads a warmup_steps value below 1 as a share of the steps.
        "warmup_steps": cfg.warmup_ratio,
        "weight_decay": cfg.weight_decay,
        "activation_checkpointing": cfg.gradient_checkpointing,
        **trainer_precision(recipe.model),
        "logging_steps": cfg.logging_steps,
        "eval_strategy": "steps" if evaluate else "no",
        "eval_steps": cfg.eval_steps,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": cfg.save_total_limit,
        # Trackers get metrics.jsonl's names from our MetricsLogger, as PPO's do (runs.py).
        "report_to": [],
        "dataloader_pin_memory": torch.cuda.is_available(),
    }


def trl_config(
    config_class: type[TrainingArguments],
    recipe: Recipe,
    cfg: TrainerSection,
    start: StageStart,
    evaluate: bool,
    **stage_options: Any,
) -> TrainingArguments:
    """The stage's TRL config: `arguments`, the stage's own options, and the recipe's
    `trainer_args`, which may add any option TRL takes but not change one that align sets."""
    stage = start.out.name
    settings = {**arguments(recipe, cfg, start, evaluate), **stage_options}
    if taken := sorted(cfg.trainer_args.keys() & settings.keys()):
        raise RecipeError(
            f"{stage}.trainer_args: align sets {', '.join(taken)} itself, from the recipe's "
            f"{stage} keys or the run directory; set those there (`align config` lists the keys)"
        )
    try:
        return config_class(**settings, **cfg.trainer_args)
    except (ValueError, TypeError) as err:
        if not cfg.trainer_args:
            raise
        raise RecipeError(
            f"{stage}.trainer_args: TRL's {config_class.__name__} refused them: {err}"
        ) from None


def hold_out(
    comparisons: list[Comparison], fraction: float, seed: int
) -> tuple[list[Comparison], list[Comparison]]:
    """Split off about `fraction` of the comparisons, whole prompts at a time, so no prompt
    (e.g. ranked by several annotators) is in both train and eval."""
    by_prompt: dict[str, list[Comparison]] = defaultdict(list)
    for comparison in comparisons:
        by_prompt[json.dumps(comparison.prompt, sort_keys=True)].append(comparison)
    groups = list(by_prompt.values())
    random.Random(seed).shuffle(groups)
    wanted = max(1, round(len(comparisons) * fraction))
    held: list[Comparison] = []
    train: list[Comparison] = []
    for group in groups:
        (held if len(held) < wanted else train).extend(group)
    return train, held


def read_preference_splits(
    recipe: Recipe, cfg: PreferenceSection
) -> tuple[PreferenceData, PreferenceData | None, list[Comparison], list[Comparison]]:
    """(training data, held-out data if read from its own source, train, held-out comparisons).

    Held out are `cfg.eval_data` when given, else `cfg.eval_fraction` of the training data split
    off by prompt (so RM and DPO are evaluated on the same prompts).
    """
    data = read_preferences(cfg.data, cfg.data_split, cfg.format)
    if cfg.eval_data:
        held_data = read_preferences(cfg.eval_data, cfg.eval_split, cfg.format)
        return data, held_data, data.comparisons, held_data.comparisons
    if cfg.eval_fraction > 0 and len(data.comparisons) >= 2:
        train, held = hold_out(data.comparisons, cfg.eval_fraction, recipe.seed)
        if train:
            return data, None, train, held
    return data, None, data.comparisons, []
