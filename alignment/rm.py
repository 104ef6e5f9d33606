"""Stage 2, reward modelling: a LoRA adapter plus a scalar `score` head, trained on preferences.

Scoring. A conversation's reward is the score head applied to the final hidden state of its LAST
REAL token. The index comes from the attention mask (or, for packed rows, from where each answer
ends), never from `pad_token_id`: with pad == eos, as in SmolLM2, looking for the first pad token
would stop at the end of the first turn. Position ids are computed from the mask too, so left- and
right-padded batches score exactly like each sequence alone. Too long conversations lose their
START (the answer being judged is kept).

Loss. Pairs use the Bradley–Terry loss -log σ(r_better - r_worse - margin). A K-way ranking is ONE
training element, as in InstructGPT: its K answers are scored in one forward pass and its loss is
the mean over all its K-choose-2 (better, worse) pairs, so a ranking is not seen K-choose-2 times
per epoch; a batch's loss is the mean over its comparisons. Ties form no pair (see
alignment.preferences).

Shared prefix. The answers of one comparison share their conversation up to where they differ.
With `rm.share_prefix` a comparison is one row: the shared tokens once, then each answer's tokens,
with an attention mask that lets each answer see the shared part and itself only, and position
ids that restart after the shared part for each answer. Every answer's score is the one it would
get alone, at ~1.6x fewer tokens on HH-RLHF (answers are short, dialogues long).

Why a RewardTrainer subclass: TRL's RewardTrainer gives the Trainer loop, checkpoints, QLoRA
handling and metric logging, but its collator and loss only know chosen/rejected halves of a batch
(no K-way rankings, no shared prefix) and its data preparation drops over-long rows instead of
keeping their end; so batches, scoring and loss here are ours.

Output, <run_dir>/rm: a PEFT adapter directory (task SEQ_CLS, the head saved through
`modules_to_save`), the tokenizer, `reward_stats.json` (reward mean/std on training answers, which
PPO normalises with, plus the model settings needed to reload it), metrics.jsonl, summary.json,
and a model card. `load_reward_model` and `score` are the API later stages use.
"""

from __future__ import annotations

import json
import logging
import random
from collections import defaultdict
from dataclasses import dataclass
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
from transformers import PreTrainedModel, PreTrainedTokenizerBase, set_seed
from trl import RewardConfig, RewardTrainer
from trl.trainer.reward_trainer import suppress_seqcls_warning

from alignment.config import LoraConfig, ModelConfig, Recipe
from alignment.errors import ModelSourceError, RecipeError, RunStateError
from alignment.models import (
    base_model_id,
    compute_dtype,
    load_model,
    load_tokenizer,
    peft_config,
    resolve_model,
    trainer_precision,
)
from alignment.preferences import Comparison, Conversation, PreferenceData, read_preferences
from alignment.runs import (
    metric_callbacks,
    stage_dir,
    start_stage,
    write_model_card,
    write_summary,
)
from alignment.sft import checkpoint_to_resume, keep_trainable_params_in

log = logging.getLogger(__name__)

STATS_FILE = "reward_stats.json"


# --- tokens ---------------------------------------------------------------------------------


def conversation_ids(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> list[int]:
    """Token ids of a chat conversation (through the chat template) or of plain text plus EOS."""
    if isinstance(conversation, str):
        # As TRL does for plain text: the EOS marks where the answer ends.
        if not conversation.endswith(tokenizer.eos_token):
            conversation += tokenizer.eos_token
        return tokenizer(conversation)["input_ids"]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_comparison(
    tokenizer: PreTrainedTokenizerBase, comparison: Comparison, max_length: int
) -> dict[str, Any]:
    """A comparison as token ids: the shared start (`prefix`) and each answer's rest (`tails`).

    Candidate k is prefix + tails[k]. All candidates are cut at the same place, from the start,
    until the longest fits in max_length; if an answer's own tokens exceed it, each candidate
    keeps its last max_length tokens and nothing is shared.
    """
    sequences = [
        conversation_ids(tokenizer, comparison.conversation(k))
        for k in range(len(comparison.answers))
    ]
    # Shared tokens, leaving every candidate at least one token of its own to be scored at.
    limit = min(len(s) for s in sequences) - 1
    shared = 0
    while shared < limit and all(s[shared] == sequences[0][shared] for s in sequences):
        shared += 1
    tails = [s[shared:] for s in sequences]
    room = max_length - max(len(t) for t in tails)
    if room <= 0:
        prefix, tails = [], [s[-max_length:] for s in sequences]
    else:
        prefix = sequences[0][max(0, shared - room) : shared]
    return {
        "prefix": prefix,
        "tails": tails,
        "better": [b for b, _ in comparison.pairs],
        "worse": [w for _, w in comparison.pairs],
        "margin": comparison.margin,
        "length": len(prefix) + sum(len(t) for t in tails),
    }


@dataclass
class ComparisonCollator:
    """Batches encoded comparisons for one forward pass over all their candidates.

    Returns input_ids, attention_mask (a boolean (rows, 1, T, T) mask when answers share their
    prefix in one row, else the usual (rows, T) padding mask), position_ids, where each candidate
    ends (score_rows, score_cols), and for every pair: better/worse candidate indices, margin,
    and weight = 1 / (pairs of its comparison x comparisons in the batch).
    """

    pad_token_id: int
    share_prefix: bool = True

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        sequences: list[list[int]] = []
        positions: list[list[int]] = []
        segments: list[list[int]] = []  # 0: shared prefix; k + 1: answer k of that row
        score_rows: list[int] = []
        score_cols: list[int] = []
        better: list[int] = []
        worse: list[int] = []
        margin: list[float] = []
        weight: list[float] = []
        for row in rows:
            first = len(score_rows)
            prefix, tails = row["prefix"], row["tails"]
            if self.share_prefix:
                ids, pos, seg = list(prefix), list(range(len(prefix))), [0] * len(prefix)
                for k, tail in enumerate(tails):
                    ids += tail
                    pos += range(len(prefix), len(prefix) + len(tail))
                    seg += [k + 1] * len(tail)
                    score_rows.append(len(sequences))
                    score_cols.append(len(ids) - 1)
                sequences.append(ids)
                positions.append(pos)
                segments.append(seg)
            else:
                for tail in tails:
                    score_rows.append(len(sequences))
                    score_cols.append(len(prefix) + len(tail) - 1)
                    sequences.append(prefix + tail)
                    positions.append(list(range(len(prefix) + len(tail))))
                    segments.append([0] * (len(prefix) + len(tail)))
            pairs = len(row["better"])
            better += [first + b for b in row["better"]]
            worse += [first + w for w in row["worse"]]
            margin += [float(row["margin"])] * pairs
            weight += [1.0 / (pairs * len(rows))] * pairs

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        segment = torch.full((len(sequences), width), -1, dtype=torch.long)
        for i, (ids, pos, seg) in enumerate(zip(sequences, positions, segments, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            position_ids[i, : len(pos)] = torch.tensor(pos)
            segment[i, : len(seg)] = torch.tensor(seg)
        if self.share_prefix:
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            key, query = segment[:, None, :], segment[:, :, None]
            # Each token sees the shared prefix and its own answer; padding sees itself, so no
            # row of the mask is empty (an empty row gives NaN in attention).
            attention_mask = (causal & ((key == 0) | (key == query)))[:, None]
        else:
            attention_mask = (segment >= 0).long()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "score_rows": torch.tensor(score_rows),
            "score_cols": torch.tensor(score_cols),
            "better": torch.tensor(better, dtype=torch.long),
            "worse": torch.tensor(worse, dtype=torch.long),
            "margin": torch.tensor(margin),
            "pair_weight": torch.tensor(weight),
            "num_tokens": (segment >= 0).sum(),
        }


# --- scores and loss --------------------------------------------------------------------------


def _backbone_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    backbone = getattr(base, getattr(base, "base_model_prefix", ""), None)
    head = getattr(base, "score", None)
    if backbone is None or head is None:
        raise ModelSourceError(
            f"{type(base).__name__} is not a reward model: expected a transformer with a "
            "`score` head (AutoModelForSequenceClassification, num_labels=1)"
        )
    return backbone, head


def scores_at(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
) -> torch.Tensor:
    """Rewards read at the given (row, column) tokens: one backbone pass, the head on B vectors."""
    backbone, head = _backbone_and_head(model)
    dtype = backbone.get_input_embeddings().weight.dtype
    if attention_mask.dim() == 4:  # additive form, which both sdpa and eager attention accept
        blocked = torch.finfo(dtype).min
        attention_mask = torch.zeros(attention_mask.shape, dtype=dtype).masked_fill(
            ~attention_mask.bool(), blocked
        )
    device = backbone.get_input_embeddings().weight.device
    hidden = backbone(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        position_ids=position_ids.to(device),
        use_cache=False,
    ).last_hidden_state
    picked = hidden[rows.to(device), cols.to(device)]
    return head(picked.to(head.weight.dtype)).squeeze(-1).float()


def sequence_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Rewards of a padded batch (left or right padding), each at its last real token."""
    mask = attention_mask.long()
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    last = mask.shape[1] - 1 - mask.flip(-1).argmax(-1)
    rows = torch.arange(mask.shape[0])
    return scores_at(model, input_ids, mask, position_ids, rows, last)


def batch_scores(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Rewards of every candidate in a ComparisonCollator batch, in candidate order."""
    return scores_at(
        model,
        batch["input_ids"],
        batch["attention_mask"],
        batch["position_ids"],
        batch["score_rows"],
        batch["score_cols"],
    )


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


@torch.no_grad()
def score(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Conversation],
    max_length: int | None = None,
    batch_size: int = 8,
) -> torch.Tensor:
    """Reward of each conversation (chat messages or plain text), in the order given.

    Conversations longer than max_length keep their last max_length tokens. Batches are padded
    on the tokenizer's padding side; the result does not depend on it. Dropout follows the
    model's mode (load_reward_model returns it in eval mode).
    """
    encoded = scoring_ids(tokenizer, conversations, max_length)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))  # less padding
    rewards = torch.empty(len(encoded))
    left = tokenizer.padding_side == "left"
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, mask = padded([encoded[i] for i in chunk], tokenizer.pad_token_id, left)
        rewards[chunk] = sequence_scores(model, input_ids, mask).cpu()
    return rewards


def scoring_ids(
    tokenizer: PreTrainedTokenizerBase,
    conversations: list[Conversation],
    max_length: int | None = None,
) -> list[list[int]]:
    """Token ids of conversations as a reward model reads them: through the chat template, as in
    training (every answer closed by the template's end of turn), keeping the last max_length."""
    encoded = [conversation_ids(tokenizer, c) for c in conversations]
    if max_length is not None:
        encoded = [ids[-max_length:] for ids in encoded]
    return encoded


def padded(
    sequences: list[list[int]], pad_id: int, left: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask) of sequences padded to the longest, on the left or right."""
    width = max(len(ids) for ids in sequences)
    input_ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, ids in enumerate(sequences):
        span = slice(width - len(ids), width) if left else slice(0, len(ids))
        input_ids[row, span] = torch.tensor(ids, dtype=torch.long)
        mask[row, span] = 1
    return input_ids, mask


@torch.no_grad()
def comparison_scores(
    model: nn.Module,
    rows: list[dict[str, Any]],
    pad_token_id: int,
    batch_size: int = 8,
    share_prefix: bool = True,
) -> list[torch.Tensor]:
    """Rewards of each encoded comparison's candidates, one tensor per comparison, in order."""
    collator = ComparisonCollator(pad_token_id, share_prefix)
    order = sorted(range(len(rows)), key=lambda i: rows[i]["length"])
    result: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        scores = batch_scores(model, collator([rows[i] for i in chunk])).cpu()
        for i, part in zip(
            chunk, scores.split([len(rows[i]["tails"]) for i in chunk]), strict=True
        ):
            result[i] = part
    return result


# --- training ---------------------------------------------------------------------------------


class ComparisonTrainer(RewardTrainer):
    """RewardTrainer over ComparisonCollator batches (see the module docstring for why)."""

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


def _hold_out(
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


def reward_stats(
    model: nn.Module, rows: list[dict[str, Any]], pad_token_id: int, batch_size: int
) -> dict[str, float]:
    """Mean and std of the rewards of every candidate in `rows`."""
    scores = torch.cat(comparison_scores(model, rows, pad_token_id, batch_size))
    return {
        "mean": scores.mean().item(),
        "std": scores.std().item() if len(scores) > 1 else 0.0,
        "count": len(scores),
    }


@dataclass
class RMOutcome:
    out_dir: Path  # the saved adapter, head, tokenizer, stats, metrics and card
    model: PeftModel  # the trained model, in eval mode
    summary: dict[str, Any]


def run_rm(recipe: Recipe, resume: bool = False) -> RMOutcome:
    """Train the reward adapter and head and save them into <run_dir>/rm."""
    from alignment.rm_eval import preference_report

    cfg = recipe.rm
    if cfg.share_prefix and recipe.model.attn_implementation == "flash_attention_2":
        raise RecipeError(
            "rm.share_prefix needs an attention kernel that takes a 4D mask; set "
            "model.attn_implementation=sdpa or rm.share_prefix=false"
        )
    set_seed(recipe.seed)
    # Read and check all data before the (slow) model load, so bad rows fail fast.
    train_data = read_preferences(cfg.data, cfg.data_split, cfg.format)
    eval_data: PreferenceData | None = None
    train = train_data.comparisons
    if cfg.eval_data:
        eval_data = read_preferences(cfg.eval_data, cfg.eval_split, cfg.format)
        held = eval_data.comparisons
    elif cfg.eval_fraction > 0 and len(train) >= 2:
        train, held = _hold_out(train, cfg.eval_fraction, recipe.seed)
    else:
        held = []
    sft_dir = stage_dir(recipe, "sft")
    if cfg.init == "sft" and not (sft_dir / "adapter_config.json").is_file():
        raise RunStateError(
            f"rm.init is 'sft' but there is no SFT adapter at {sft_dir}; run `align sft` with this "
            "recipe first, or set rm.init=base"
        )

    out = start_stage(recipe, "rm")
    checkpoints = out / "checkpoints"
    last_checkpoint = checkpoint_to_resume(checkpoints, resume)
    source = resolve_model(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    train_rows = [encode_comparison(tokenizer, c, cfg.max_length) for c in train]
    eval_rows = [encode_comparison(tokenizer, c, cfg.max_length) for c in held]
    with suppress_seqcls_warning():  # the fresh score head and the unused LM head are expected
        base = load_model(recipe.model, head="score", source=source)
    model = get_peft_model(base, peft_config(recipe.lora, TaskType.SEQ_CLS, ["score"]))
    if cfg.init == "sft":
        _load_sft_weights(model, sft_dir, recipe.lora)

    dtype = compute_dtype(recipe.model)
    args = RewardConfig(
        output_dir=str(checkpoints),
        seed=recipe.seed,
        max_length=None,  # encode_comparison truncates, keeping each conversation's end
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.batch_size,
        per_device_eval_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        train_sampling_strategy="group_by_length" if cfg.group_by_length else "random",
        gradient_checkpointing=cfg.gradient_checkpointing,
        **trainer_precision(recipe.model),
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if eval_rows else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        remove_unused_columns=False,  # the collator needs every column
        prediction_loss_only=True,  # eval figures come from compute_loss
        dataloader_pin_memory=torch.cuda.is_available(),
        report_to=[],
    )
    trainer = ComparisonTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=Dataset.from_list(eval_rows) if eval_rows else None,
        processing_class=tokenizer,
        data_collator=ComparisonCollator(tokenizer.pad_token_id, cfg.share_prefix),
        callbacks=metric_callbacks(out),
    )
    # TRL casts a quantized model's trainables (the head too) to bf16; with float32 compute on
    # CPU the hidden states then meet a bf16 head ("expected m1 and m2 to have the same dtype").
    keep_trainable_params_in(trainer.model, dtype)
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    model = trainer.model
    model.eval()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)

    stats_rows = train_rows
    if 0 < cfg.stats_examples < len(train_rows):
        stats_rows = random.Random(recipe.seed).sample(train_rows, cfg.stats_examples)
    stats = reward_stats(model, stats_rows, tokenizer.pad_token_id, cfg.batch_size)
    summary: dict[str, Any] = {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "train_seconds": result.metrics.get("train_runtime"),
        "train_comparisons": len(train),
        "train_pairs": sum(len(c.pairs) for c in train),
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

    (out / STATS_FILE).write_text(
        json.dumps(
            {
                **stats,
                "max_length": cfg.max_length,
                "base_model": base_model_id(recipe.model),
                "model": recipe.model.model_dump(mode="json"),
            },
            indent=2,
        )
        + "\n"
    )
    write_summary(out, summary)
    write_model_card(out, recipe, "rm", base_model_id(recipe.model), card_metrics)
    with (out / "README.md").open("a") as card:
        card.write(
            "\n## Scoring\n\nA reward model: load the base with "
            "`AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)` before "
            "`PeftModel.from_pretrained`, or use `alignment.rm.load_reward_model(<this directory>)` "
            "and `alignment.rm.score`. Rewards are read at the last real token; "
            f"`{STATS_FILE}` holds their mean and std on the training answers.\n"
        )
    log.info("reward adapter saved to %s: %s", out, card_metrics)
    return RMOutcome(out, model, summary)


# --- loading ----------------------------------------------------------------------------------


def load_reward_model(
    path: str | Path, quantization: str | None = None, dtype: str | None = None
) -> tuple[PeftModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """(model in eval mode, tokenizer, stats) of a reward adapter directory.

    Reads the base model settings from reward_stats.json; a directory without one (e.g. from
    `trl reward`) uses adapter_config.json's base model with default settings. `quantization`
    overrides the recorded quantization, `dtype` the recorded compute dtype.
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise RunStateError(
            f"{path}: not a reward adapter directory (no adapter_config.json); train one with "
            "`align rm RECIPE`"
        )
    adapter = PeftConfig.from_pretrained(str(path))
    saves_head = adapter.task_type == TaskType.SEQ_CLS or "score" in (adapter.modules_to_save or [])
    if not saves_head:
        raise RunStateError(
            f"{path}: this adapter has no trained score head (task {adapter.task_type}); it is "
            "not a reward model"
        )
    stats_path = path / STATS_FILE
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    if "model" in stats:
        model_cfg = ModelConfig.model_validate(stats["model"])
    else:
        model_cfg = ModelConfig(name=adapter.base_model_name_or_path)
    overrides = {"quantization": quantization, "dtype": dtype}
    model_cfg = model_cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model_cfg, str(path) if has_tokenizer else None)
    with suppress_seqcls_warning():
        base: PreTrainedModel = load_model(model_cfg, head="score")
    # By default PEFT upcasts bf16/fp16 adapters to float32 on load; training ran them in the
    # compute dtype, and scores only reproduce exactly in it (bf16 scores moved by ~0.02 otherwise).
    model = PeftModel.from_pretrained(base, str(path), autocast_adapter_dtype=False)
    model.eval()
    return model, tokenizer, stats
