"""DPO, the alternative final stage: the SFT adapter trained directly on the rankings' preference
pairs with TRL's DPOTrainer; no reward model, no rollouts.

Data: the same rows the reward model reads (alignment.preferences): the ranking UI's pairs or
rankings export, TRL chosen/rejected, HH-RLHF. A K-way ranking trains its K-choose-2 pairs; ties
train nothing. Held-out rows are whole prompts, split as the reward model splits them, so RM and
DPO are evaluated on the same prompts.

Reference. The policy is the SFT adapter, loaded trainable as PEFT's "default" adapter. TRL 1.16
has no `ref_adapter_name`/`model_adapter_name` options any more: given a PeftModel with a
pretrained adapter, DPOTrainer copies it into a second, frozen adapter named "ref" and runs the
reference pass with that one active. So the reference is the SFT adapter exactly, both sit on one
base model in memory, and at step 0 policy and reference log-probs are equal (rewards and
margins start at 0). Only the policy adapter is saved.

Output, <run_dir>/dpo: a PEFT adapter directory like sft's (adapter, tokenizer, model card,
summary.json, metrics.jsonl, tensorboard/, checkpoints/).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import Dataset
from peft import PeftModel
from transformers import set_seed
from trl import DPOConfig, DPOTrainer

from alignment import cpu, trainers
from alignment.adapters import base_names, check_same_base, input_adapter
from alignment.config import Recipe
from alignment.errors import DataError, RunStateError
from alignment.guarded_trainer import GuardedTrainer
from alignment.models import cast_adapter, compute_dtype, load_model
from alignment.preferences import Comparison
from alignment.runs import end_stage

log = logging.getLogger(__name__)
POLICY = "default"  # the adapter name DPOTrainer trains; it adds the frozen "ref" copy itself


class GuardedDPOTrainer(GuardedTrainer, DPOTrainer):
    """TRL's DPOTrainer with complete checkpoints, exact resume and a divergence guard."""


def check_one_kind(comparisons: list[Comparison]) -> None:
    """One dataset holds one kind of row: chat rows go through the chat template, text rows not."""
    chat = next((c for c in comparisons if not isinstance(c.prompt, str)), None)
    text = next((c for c in comparisons if isinstance(c.prompt, str)), None)
    if chat and text:
        raise DataError(
            f"{text.origin} is plain text but {chat.origin} is chat messages; DPO data (train and "
            "held-out) must be all one or the other"
        )


def preference_rows(comparisons: list[Comparison]) -> list[dict[str, Any]]:
    """TRL preference rows (prompt, chosen, rejected), one per (better, worse) pair."""
    rows = []
    for comparison in comparisons:
        if not comparison.prompt:
            raise DataError(
                f"{comparison.origin}: no prompt (chosen and rejected share no start); DPO scores "
                "answers to a prompt, so give `prompt`"
            )
        for better, worse in comparison.pairs:
            rows.append(
                {
                    "prompt": comparison.prompt,
                    "chosen": comparison.answers[better],
                    "rejected": comparison.answers[worse],
                }
            )
    return rows


@dataclass
class DPOOutcome:
    out_dir: Path  # the saved policy adapter, tokenizer, metrics and card
    model: PeftModel  # the trained model, still in memory, with the frozen "ref" adapter
    summary: dict[str, Any]


def run_dpo(recipe: Recipe, resume: bool = False) -> DPOOutcome:
    """Train the SFT adapter with DPO on preference pairs and save it to <run_dir>/dpo."""
    cfg = recipe.dpo
    set_seed(recipe.seed)
    cpu.tune_process()
    # All data is read and checked before the (slow) model load, so bad rows fail fast.
    data, _, train_comparisons, eval_comparisons = trainers.read_preference_splits(recipe, cfg)
    check_one_kind([*train_comparisons, *eval_comparisons])
    train_rows = preference_rows(train_comparisons)
    eval_rows = preference_rows(eval_comparisons)
    if any(c.margin for c in train_comparisons):
        log.warning("%s: DPO has no use for `margin`; it is ignored", cfg.data)
    sft_dir = input_adapter(recipe, cfg.sft_adapter, "dpo.sft_adapter", "sft")

    start = trainers.start(recipe, "dpo", resume)
    check_same_base(sft_dir, base_names(recipe.model, start.source), "SFT")
    model = PeftModel.from_pretrained(
        load_model(recipe.model, source=start.source),
        sft_dir,
        adapter_name=POLICY,
        is_trainable=True,
    )
    dtype = compute_dtype(recipe.model)
    evaluation = Dataset.from_list(eval_rows) if eval_rows else None
    args = trainers.trl_config(
        DPOConfig,
        recipe,
        cfg,
        start,
        evaluate=evaluation is not None,
        beta=cfg.beta,
        loss_type=[cfg.loss_type],
        label_smoothing=cfg.label_smoothing,
        max_length=cfg.max_length,
        precompute_ref_log_probs=cfg.precompute_ref_log_probs,
    )
    trainer = GuardedDPOTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=evaluation,
        processing_class=start.tokenizer,
        **trainers.guarded(recipe, start),
    )
    if "ref" not in trainer.model.peft_config:
        raise RunStateError(f"{sft_dir}: DPOTrainer made no frozen reference copy of this adapter")
    # PEFT loads the reference copy in float32; in the policy's compute dtype (GuardedTrainer keeps
    # the policy there) policy and reference agree exactly at step 0.
    cast_adapter(trainer.model, "ref", dtype)
    dropped = len(train_rows) - len(trainer.train_dataset)
    if dropped:
        log.warning(
            "%s: %d pairs dropped, their prompt alone fills dpo.max_length=%d",
            cfg.data,
            dropped,
            cfg.max_length,
        )
    if len(trainer.train_dataset) == 0:
        raise DataError(f"{cfg.data}: every prompt is longer than dpo.max_length={cfg.max_length}")
    result = trainers.train(trainer, start)

    train_logs = [h for h in trainer.state.log_history if "rewards/margins" in h]
    summary: dict[str, Any] = {
        "train_loss": trainer.mean_loss(),
        "steps": result.global_step,
        "train_pairs": len(trainer.train_dataset),
        "train_comparisons": len(train_comparisons),
        "dropped_too_long": dropped,
        "train_seconds": result.metrics.get("train_runtime"),
    }
    if train_logs:
        summary["train_margin_last"] = train_logs[-1]["rewards/margins"]
        summary["train_accuracy_last"] = train_logs[-1]["rewards/accuracies"]
    if evaluation is not None:
        metrics = trainer.evaluate()
        summary["eval_pairs"] = len(trainer.eval_dataset)
        summary["eval_loss"] = metrics["eval_loss"]
        summary["eval_accuracy"] = metrics["eval_rewards/accuracies"]
        summary["eval_margin"] = metrics["eval_rewards/margins"]
    card_metrics = dict(summary)
    summary["data"] = data.report()

    trainers.save(trainer, start, recipe, "dpo", summary, card_metrics, adapters=[POLICY])
    log.info("DPO adapter saved to %s: %s", start.out, card_metrics)
    end_stage()
    return DPOOutcome(start.out, trainer.model, summary)
