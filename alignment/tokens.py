"""Tokens: chat encoding, padding, position ids and last-token indices, shared by every stage.

Rows are padded on either side, and a padded batch must compute what each row would alone. So
position ids count real tokens only, and a row's last token is found from its attention mask,
never from `pad_token_id` (with pad == eos, as in SmolLM2, the first pad would be the end of the
first turn).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

Messages = list[dict[str, str]]
Conversation = Messages | str  # chat turns, or plain text for data that is not chat


def encode_prompt(tokenizer: PreTrainedTokenizerBase, messages: Messages) -> list[int]:
    """Token ids of a chat prompt followed by the assistant header the model continues from."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template already writes any BOS it wants; adding special tokens again would double it.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def conversation_ids(tokenizer: PreTrainedTokenizerBase, conversation: Conversation) -> list[int]:
    """Token ids of a chat conversation (through the chat template) or of plain text plus EOS."""
    if isinstance(conversation, str):
        # As TRL does for plain text: the EOS marks where the answer ends.
        if not conversation.endswith(tokenizer.eos_token):
            conversation += tokenizer.eos_token
        return tokenizer(conversation)["input_ids"]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


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


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so a padded row sees the positions it would alone."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Column of each row's last real token, from the mask alone (left or right padding)."""
    return attention_mask.shape[-1] - 1 - attention_mask.long().flip(-1).argmax(-1)
