"""Stage 1, supervised fine-tuning: a LoRA adapter trained on demonstrations with TRL's SFTTrainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import PeftModel
from transformers import set_seed
from trl import SFTConfig, SFTTrainer

from alignment import cpu, trainers
from alignment.config import Recipe
from alignment.data import sft_examples
from alignment.guarded_trainer import GuardedTrainer
from alignment.models import load_model, peft_config
from alignment.runs import end_stage

log = logging.getLogger(__name__)


class GuardedSFTTrainer(GuardedTrainer, SFTTrainer):
    """TRL's SFTTrainer with complete checkpoints, exact resume and a divergence guard."""


@dataclass
class SFTOutcome:
    out_dir: Path  # the saved adapter, tokenizer, metrics and card
    model: PeftModel  # the trained model, still in memory
    summary: dict[str, Any]


def run_sft(recipe: Recipe, resume: bool = False) -> SFTOutcome:
    """Train the SFT adapter and save it into the run directory."""
    cfg = recipe.sft
    set_seed(recipe.seed)
    cpu.tune_process()
    # Read and validate all data before the (slow) model load, so bad rows fail fast.
    train_rows = sft_examples(cfg.data, cfg.data_split, cfg.assistant_only_loss)
    train = Dataset.from_list(train_rows)
    if cfg.eval_data:
        evaluation = Dataset.from_list(
            sft_examples(cfg.eval_data, cfg.eval_split, cfg.assistant_only_loss)
        )
    elif cfg.eval_fraction > 0 and len(train) >= 2:
        split = train.train_test_split(test_size=cfg.eval_fraction, seed=recipe.seed)
        train, evaluation = split["train"], split["test"]
    else:
        evaluation = None

    start = trainers.start(recipe, "sft", resume)
    model = load_model(recipe.model, source=start.source)

    args = trainers.trl_config(
        SFTConfig,
        recipe,
        cfg,
        start,
        evaluate=evaluation is not None,
        max_length=cfg.max_length,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        padding_free=cfg.padding_free,
    )
    trainer = GuardedSFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=start.tokenizer,
        peft_config=peft_config(recipe.lora),
        **trainers.guarded(recipe, start),
    )
    result = trainers.train(trainer, start)

    summary = {
        "train_loss": trainer.mean_loss(),
        "steps": result.global_step,
        "train_examples": len(train),
        "train_seconds": result.metrics.get("train_runtime"),
    }
    if evaluation is not None:
        summary["eval_examples"] = len(evaluation)
        summary["eval_loss"] = trainer.evaluate()["eval_loss"]
    trainers.save(trainer, start, recipe, "sft", summary)
    log.info("SFT adapter saved to %s: %s", start.out, summary)
    end_stage()
    return SFTOutcome(start.out, trainer.model, summary)
