"""Stage 2, reward modelling: a LoRA adapter plus a scalar `score` head, trained on preferences.

Loss. Pairs use the Bradley–Terry loss -log σ(r_better - r_worse - margin). A K-way ranking is ONE
training element, as in InstructGPT: its K answers are scored in one forward pass (sharing their
conversation, see alignment.reward.encoding) and its loss is the mean over all its K-choose-2
(better, worse) pairs, so a ranking is not seen K-choose-2 times per epoch; a batch's loss is the
mean over its comparisons. Ties form no pair (see alignment.preferences).

Why a RewardTrainer subclass: TRL's RewardTrainer gives the Trainer loop, checkpoints, QLoRA
handling and metric logging, but its collator and loss only know chosen/rejected halves of a batch
(no K-way rankings, no shared prefix) and its data preparation drops over-long rows instead of
keeping their end; so batches, scoring and loss here are ours.

Output, <run_dir>/rm: a reward adapter directory (see alignment.reward.loading) with
metrics.jsonl, summary.json and a model card.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import (
    PeftConfig,
    PeftModel,
    TaskType,
    get_peft_model,
    get_peft_model_state_dict,
    set_peft_model_state_dict,
)
from safetensors.torch import load_file
from torch import nn
from transformers import set_seed
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from alignment import cpu, trainers
from alignment.config import LoraConfig, Recipe
from alignment.errors import RecipeError, RunStateError
from alignment.guarded_trainer import GuardedTrainer
from alignment.models import base_model_id, load_model, peft_config
from alignment.preferences import with_off_topic_answers
from alignment.reward.encoding import (
    ComparisonCollator,
    encode_comparison,
    length_balanced,
    length_explained,
)
from alignment.reward.loading import STATS_FILE
from alignment.reward.metrics import preference_report
from alignment.reward.scoring import batch_scores, comparison_scores, reward_stats
from alignment.runs import end_stage, stage_dir

log = logging.getLogger(__name__)


def comparison_loss(
    scores: torch.Tensor,
    better: torch.Tensor,
    worse: torch.Tensor,
    margin: torch.Tensor,
    pair_weight: torch.Tensor,
) -> torch.Tensor:
    """Bradley–Terry over a batch: mean over comparisons of the mean over each one's pairs."""
    device = scores.device
    differences = scores[better.to(device)] - scores[worse.to(device)] - margin.to(device)
    return -(pair_weight.to(device) * F.logsigmoid(differences)).sum()


class ComparisonTrainer(GuardedTrainer, RewardTrainer):
    """RewardTrainer over ComparisonCollator batches (see the module docstring for why), with
    complete checkpoints, exact resume and a divergence guard (GuardedTrainer)."""

    def _prepare_dataset(self, dataset: Dataset, *args: Any, **kwargs: Any) -> Dataset:
        return dataset  # already tokenized and truncated by encode_comparison

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, torch.Tensor],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mode = "train" if self.model.training else "eval"
        scores = batch_scores(model, inputs)
        loss = comparison_loss(
            scores, inputs["better"], inputs["worse"], inputs["margin"], inputs["pair_weight"]
        )
        with torch.no_grad():
            differences = scores[inputs["better"]] - scores[inputs["worse"]]
            self._metrics[mode]["accuracy"].append((differences > 0).float().mean().item())
            self._metrics[mode]["margin"].append(differences.mean().item())
            self._metrics[mode]["mean_reward"].append(scores.mean().item())
        if mode == "train":
            self._total_train_tokens += int(inputs["num_tokens"])
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
        return (loss, {"scores": scores}) if return_outputs else loss


def _load_sft_weights(model: PeftModel, sft_dir: Path, lora: LoraConfig) -> None:
    """Start the reward adapter from the SFT adapter's LoRA weights (the head stays fresh)."""
    weights = sft_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise RunStateError(
            f"rm.init is 'sft' but {sft_dir} holds no SFT adapter; run `align sft` with this "
            "recipe first, or set rm.init=base"
        )
    saved = PeftConfig.from_pretrained(str(sft_dir))
    if (saved.r, saved.lora_alpha) != (lora.r, lora.alpha):
        raise RunStateError(
            f"{sft_dir}: the SFT adapter has r={saved.r}, alpha={saved.lora_alpha} but the recipe's "
            f"lora has r={lora.r}, alpha={lora.alpha}; the reward adapter starts from the SFT "
            "weights, so the shapes must match (or set rm.init=base)"
        )
    state = load_file(weights)
    # PEFT also expects the score head (a module to save) in the state dict: keep the fresh one.
    state |= {k: v for k, v in get_peft_model_state_dict(model).items() if "lora_" not in k}
    try:
        result = set_peft_model_state_dict(model, state)
    except RuntimeError as err:  # size mismatch: another base model
        raise RunStateError(f"{sft_dir}: SFT adapter does not fit this base model: {err}") from None
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise RunStateError(
            f"{sft_dir}: SFT adapter modules differ from the recipe's lora.target_modules "
            f"(unexpected {result.unexpected_keys[:3]}, missing {missing[:3]}); set rm.init=base "
            "or use the same target_modules"
        )


@dataclass
class RMOutcome:
    out_dir: Path  # the saved adapter, head, tokenizer, stats, metrics and card
    model: PeftModel  # the trained model, in eval mode
    summary: dict[str, Any]


def run_rm(recipe: Recipe, resume: bool = False) -> RMOutcome:
    """Train the reward adapter and head and save them into <run_dir>/rm."""
    cfg = recipe.rm
    if cfg.share_prefix and recipe.model.attn_implementation == "flash_attention_2":
        raise RecipeError(
            "rm.share_prefix needs an attention kernel that takes a 4D mask; set "
            "model.attn_implementation=sdpa or rm.share_prefix=false"
        )
    set_seed(recipe.seed)
    cpu.tune_process()
    # Read and check all data before the (slow) model load, so bad rows fail fast.
    train_data, eval_data, train, held = trainers.read_preference_splits(recipe, cfg)
    sft_dir = stage_dir(recipe, "sft")
    if cfg.init == "sft" and not (sft_dir / "adapter_config.json").is_file():
        raise RunStateError(
            f"rm.init is 'sft' but there is no SFT adapter at {sft_dir}; run `align sft` with this "
            "recipe first, or set rm.init=base"
        )

    start = trainers.start(recipe, "rm", resume)
    tokenizer = start.tokenizer
    train_rows = [encode_comparison(tokenizer, c, cfg.max_length) for c in train]
    # What trains: the rankings, each with another prompt's best answer if asked, debiased for
    # length if asked. The reward statistics PPO normalises with come from the rankings alone.
    training, training_rows = train, train_rows
    if cfg.off_topic_answers:
        training = with_off_topic_answers(train, recipe.seed)
        training_rows = [encode_comparison(tokenizer, c, cfg.max_length) for c in training]
    if cfg.length_debias == "reweight":
        training_rows = length_balanced(training_rows)
    elif cfg.length_debias == "explain":
        training_rows = length_explained(training_rows)
    eval_rows = [encode_comparison(tokenizer, c, cfg.max_length) for c in held]
    with suppress_seqcls_warning():  # the fresh score head and the unused LM head are expected
        base = load_model(recipe.model, head="score", source=start.source)
    if base.config.pad_token_id is None:  # the classifier's own forward (run under DDP) needs it
        base.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(base, peft_config(recipe.lora, TaskType.SEQ_CLS, ["score"]))
    if cfg.init == "sft":
        _load_sft_weights(model, sft_dir, recipe.lora)

    args = trainers.trl_config(
        RewardConfig,
        recipe,
        cfg,
        start,
        evaluate=bool(eval_rows),
        max_length=None,  # encode_comparison truncates, keeping each conversation's end
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        remove_unused_columns=False,  # the collator needs every column
        prediction_loss_only=True,  # eval figures come from compute_loss
    )
    trainer = ComparisonTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([asdict(row) for row in training_rows]),
        eval_dataset=Dataset.from_list([asdict(row) for row in eval_rows]) if eval_rows else None,
        processing_class=tokenizer,
        data_collator=ComparisonCollator(tokenizer.pad_token_id, cfg.share_prefix),
        **trainers.guarded(recipe, start),
    )
    result = trainers.train(trainer, start)
    model = trainer.model
    model.eval()

    stats_rows = train_rows
    if 0 < cfg.stats_examples < len(train_rows):
        stats_rows = random.Random(recipe.seed).sample(train_rows, cfg.stats_examples)
    stats = reward_stats(model, stats_rows, tokenizer.pad_token_id, cfg.batch_size)
    train_pairs = sum(len(c.pairs) for c in train)
    summary: dict[str, Any] = {
        "train_loss": trainer.mean_loss(),
        "steps": result.global_step,
        "train_seconds": result.metrics.get("train_runtime"),
        "train_comparisons": len(train),
        "train_pairs": train_pairs,
        "off_topic_pairs": sum(len(c.pairs) for c in training) - train_pairs,
        "reward_mean": stats["mean"],
        "reward_std": stats["std"],
    }
    if held:
        scores = comparison_scores(
            model, eval_rows, tokenizer.pad_token_id, cfg.batch_size, cfg.share_prefix
        )
        report = preference_report(held, eval_rows, scores)
        summary |= {
            "eval_comparisons": len(held),
            "eval_accuracy": report["accuracy"],
            "eval_mean_margin": report["mean_margin"],
        }
        if report["kendall_tau"] is not None:
            summary["eval_kendall_tau"] = report["kendall_tau"]
    card_metrics = dict(summary)
    summary["data"] = train_data.report()
    if eval_data is not None:
        summary["eval_data"] = eval_data.report()

    stats_file = {
        **stats,
        "max_length": cfg.max_length,
        "base_model": base_model_id(recipe.model),
        "model": recipe.model.model_dump(mode="json"),
    }
    note = (
        "\n## Scoring\n\nRewards are read at the last real token, as `alignment.reward.score` "
        "does; `alignment.reward.load_reward_model(<this directory>)` also restores the base's "
        f"quantization and dtype of training. `{STATS_FILE}` holds the mean and std of the "
        "rewards on the training answers (PPO normalises with them).\n"
    )
    trainers.save(
        trainer,
        start,
        recipe,
        "rm",
        summary,
        card_metrics,
        extra_json={STATS_FILE: stats_file},
        card_note=note,
    )
    log.info("reward adapter saved to %s: %s", start.out, card_metrics)
    end_stage()
    return RMOutcome(start.out, model, summary)
