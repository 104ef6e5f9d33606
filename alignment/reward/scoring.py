"""Reward scores: what training, PPO's reward role, judges and evaluation all read.

A conversation's reward is the score head applied to the final hidden state of its LAST REAL
token, found from the attention mask (see alignment.tokens), with position ids from the mask too:
left- and right-padded batches, and the shared-prefix rows of alignment.reward.encoding, score
exactly like each sequence alone.
"""

from __future__ import annotations

import torch
from peft import PeftModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from alignment.errors import ModelSourceError
from alignment.reward.encoding import ComparisonCollator, EncodedComparison
from alignment.tokens import (
    Conversation,
    conversation_ids,
    last_token_index,
    padded,
    position_ids,
)


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
    wrapper = model if isinstance(model, DistributedDataParallel) else None
    backbone, head = _backbone_and_head(model.module if wrapper is not None else model)
    dtype = backbone.get_input_embeddings().weight.dtype
    if attention_mask.dim() == 4:  # additive form, which both sdpa and eager attention accept
        blocked = torch.finfo(dtype).min
        attention_mask = torch.zeros(attention_mask.shape, dtype=dtype).masked_fill(
            ~attention_mask.bool(), blocked
        )
    device = backbone.get_input_embeddings().weight.device
    inputs = {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": position_ids.to(device),
        "use_cache": False,
    }
    if wrapper is not None:
        # DDP averages the gradients of a forward through its wrapper only: the whole model runs
        # and its last hidden states (normed, as the backbone's output) are read.
        hidden = wrapper(**inputs, output_hidden_states=True).hidden_states[-1]
    else:
        hidden = backbone(**inputs).last_hidden_state
    picked = hidden[rows.to(device), cols.to(device)]
    return head(picked.to(head.weight.dtype)).squeeze(-1).float()


def sequence_scores(
    model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor
) -> torch.Tensor:
    """Rewards of a padded batch (left or right padding), each at its last real token."""
    rows = torch.arange(attention_mask.shape[0])
    return scores_at(
        model,
        input_ids,
        attention_mask,
        position_ids(attention_mask),
        rows,
        last_token_index(attention_mask),
    )


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


@torch.no_grad()
def comparison_scores(
    model: nn.Module,
    rows: list[EncodedComparison],
    pad_token_id: int,
    batch_size: int = 8,
    share_prefix: bool = True,
    progress_label: str = "scoring comparisons",
) -> list[torch.Tensor]:
    """Rewards of each encoded comparison's candidates, one tensor per comparison, in order,
    with a progress bar labelled `progress_label`."""
    collator = ComparisonCollator(pad_token_id, share_prefix)
    order = sorted(range(len(rows)), key=lambda i: rows[i].length)
    result: list[torch.Tensor] = [torch.empty(0)] * len(rows)
    with tqdm(total=len(rows), desc=progress_label, unit="comparison") as bar:
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            scores = batch_scores(model, collator([rows[i] for i in chunk])).cpu()
            parts = scores.split([len(rows[i].tails) for i in chunk])
            for i, part in zip(chunk, parts, strict=True):
                result[i] = part
            bar.update(len(chunk))
    return result


def reward_stats(
    model: nn.Module, rows: list[EncodedComparison], pad_token_id: int, batch_size: int
) -> dict[str, float]:
    """Mean and std of the rewards of every candidate in `rows`."""
    scores = torch.cat(
        comparison_scores(model, rows, pad_token_id, batch_size, progress_label="reward statistics")
    )
    return {
        "mean": scores.mean().item(),
        "std": scores.std().item() if len(scores) > 1 else 0.0,
        "count": len(scores),
    }
