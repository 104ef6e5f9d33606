"""Attention kernel on CPU: the model's eager attention for small score matrices, sdpa otherwise.

PyTorch's CPU flash attention (what sdpa picks) has a slow bfloat16 backward at the short lengths
PPO's passes live at, where eager is several times faster. Eager keeps the whole score matrix for
the backward, though (about 6 bytes per score and layer), which at reward-model batch sizes adds
up to a GB. So eager runs while a layer's scores (batch x heads x queries x keys) stay within
EAGER_MAX_SCORES, which bounds its extra memory at about 6 MiB per layer; larger batches and
decoding (one query against the cache) use sdpa. Figures: bench/RESULTS.md, from
`python bench/cpu_dtype.py`.

`model.attn_implementation: auto` loads CPU models with this dispatch, registered with
transformers' attention and mask interfaces under ATTENTION_NAME when first asked for.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

ATTENTION_NAME = "alignment_cpu"
EAGER_MAX_SCORES = 2**20  # PPO's passes fit: 8 rows x 9 heads x 110^2 tokens for SmolLM2


def short_eager_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Eager attention (the model's own, from its modeling file) for several queries and at most
    EAGER_MAX_SCORES scores; sdpa otherwise. Both take the additive float mask that eager_mask builds."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    batch, heads, queries, _ = query.shape
    if (
        eager is not None
        and queries > 1
        and batch * heads * queries * key.shape[2] <= EAGER_MAX_SCORES
    ):
        return eager(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def attention_implementation(configured: str) -> str:
    """The `attn_implementation` to load a model with: `auto` is this dispatch on CPU, sdpa on GPU."""
    if configured != "auto":
        return configured
    if torch.cuda.is_available():
        return "sdpa"
    AttentionInterface.register(ATTENTION_NAME, short_eager_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTENTION_NAME, eager_mask)
    return ATTENTION_NAME
