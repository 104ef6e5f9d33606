"""Batched sampling from a causal LM (optionally wrapped in a PEFT adapter).

Used by `align sample` to make the K candidates annotators rank, and meant for PPO rollouts too:
prompts in, completions with their token ids out. Our own decoding loop rather than
`model.generate`, for one reason: every sequence draws from its own seeded generator, so a
candidate is reproducible from its stored seed whatever batch it happened to be sampled in.

The loop: left-pad the prompts of a batch (so every row's last prompt token is in the last
column), run the prompt once, then feed one token per step against the KV cache, with position
ids counted over real tokens only. A row stops at an end-of-sequence token or at max_new_tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from alignment.config import SampleConfig
from alignment.cpu import decoding
from alignment.tokens import Messages, encode_prompt, padded, position_ids


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample. temperature 0 is greedy decoding; top_k 0 and top_p 1 turn those off."""

    max_new_tokens: int = 256
    temperature: float = 0.8
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 8

    @classmethod
    def from_config(cls, config: SampleConfig) -> GenerationSettings:
        return cls(
            max_new_tokens=config.max_new_tokens,
            temperature=config.temperature,
            top_p=config.top_p,
            top_k=config.top_k,
            batch_size=config.batch_size,
        )

    def sampling(self) -> dict[str, Any]:
        """The settings that shape a completion (batch size does not), for storing beside it."""
        settings = asdict(self)
        settings.pop("batch_size")
        return settings


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: list[int]  # generated tokens, the stop token excluded
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]
    stop_token: int | None = None  # the end-of-sequence token sampled, when finish_reason is stop

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """End-of-sequence ids from the tokenizer and the model's generation config (often several,
    e.g. <|im_end|> and <|endoftext|>)."""
    ids: set[int] = set()
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (tokenizer.eos_token_id, config_eos):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer and model define no end-of-sequence token to stop at")
    return ids


def filter_logits(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float
) -> torch.Tensor:
    """Scale by temperature, then mask (to -inf) tokens outside top-k and the top-p nucleus."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, sorted_index = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        # Drop a token when the tokens before it already reach top_p; the best token always stays.
        drop = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, sorted_index, drop), float("-inf"))
    return logits


def _pick(
    logits: torch.Tensor, settings: GenerationSettings, generators: Sequence[torch.Generator]
) -> torch.Tensor:
    if settings.temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(
        logits.float(), settings.temperature, settings.top_k, settings.top_p
    ).softmax(dim=-1)
    # Inverse-CDF sampling, one uniform draw per row from the row's own generator (they live on
    # the CPU). torch.multinomial draws an exponential per vocabulary entry instead: 0.9 ms per
    # row and step for SmolLM2's 49k tokens, a tenth of PPO's generation time.
    cumulative = probs.cpu().cumsum(dim=-1)
    uniforms = torch.cat([torch.rand(1, generator=generator) for generator in generators])
    # right=True: the first token whose cumulative mass exceeds the draw, never a masked one.
    picks = torch.searchsorted(cumulative, uniforms[:, None] * cumulative[:, -1:], right=True)
    return picks.squeeze(-1).clamp(max=probs.shape[-1] - 1).to(logits.device)


@torch.inference_mode()
def _generate_batch(
    model: PreTrainedModel,
    prompts: list[list[int]],
    seeds: list[int],
    settings: GenerationSettings,
    pad_id: int,
    stops: set[int],
) -> list[tuple[list[int], int | None]]:
    device = next(model.parameters()).device
    input_ids, mask = (t.to(device) for t in padded(prompts, pad_id, left=True))
    width = input_ids.shape[1]
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    positions = position_ids(mask)
    # Only the last prompt position's logits are read; projecting every prompt position onto the
    # vocabulary would add about a fifth to the prefill of a small model (SmolLM2: 28M of 135M).
    # Kept by index, not `logits_to_keep=1`: that slice is a strided view, on which the LM head
    # falls back to a batched matmul copying its weight once per row (0.6 s for 8 rows here).
    out = model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        use_cache=True,
        logits_to_keep=torch.tensor([width - 1], device=device),
    )
    cache, logits = out.cache, out.logits[:, -1, :]
    positions = positions[:, -1:]
    tokens: list[list[int]] = [[] for _ in prompts]
    finished: list[int | None] = [None] * len(prompts)  # the stop token each row ended with
    stop_tensor = torch.tensor(sorted(stops), device=device)
    # One token per row per step: the few-row case where the packed 4-bit CPU kernel wins.
    with decoding(model):
        for step in range(settings.max_new_tokens):
            picked = _pick(logits, settings, generators)
            for row, token in enumerate(picked.tolist()):
                if finished[row] is not None:
                    continue
                if token in stops:
                    finished[row] = token
                else:
                    tokens[row].append(token)
            if all(f is not None for f in finished) or step == settings.max_new_tokens - 1:
                break
            # Finished rows keep feeding a stop token; their output is already final.
            done = torch.tensor([f is not None for f in finished], device=device)
            picked = torch.where(done, stop_tensor[0], picked)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            positions = positions + 1
            out = model(
                input_ids=picked[:, None],
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
            )
            cache, logits = out.cache, out.logits[:, -1, :]
    return list(zip(tokens, finished, strict=True))


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Messages | list[int]],
    settings: GenerationSettings,
    seeds: Sequence[int] | None = None,
    progress_label: str | None = "generating",
) -> list[Completion]:
    """One completion per prompt (chat messages, or token ids already encoded), in input order.

    `seeds` gives each sequence its own random stream (default: its index). Prompts are batched
    by length to waste little compute on padding. A progress bar labelled `progress_label`
    counts the finished sequences (None: no bar, for callers that show their own).
    """
    if seeds is not None and len(seeds) != len(prompts):
        raise ValueError(f"{len(seeds)} seeds for {len(prompts)} prompts")
    seeds = list(seeds) if seeds is not None else list(range(len(prompts)))
    encoded = [p if p and isinstance(p[0], int) else encode_prompt(tokenizer, p) for p in prompts]  # type: ignore[arg-type]
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(stops)
    was_training = model.training
    model.eval()
    results: list[Completion | None] = [None] * len(prompts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    bar = tqdm(total=len(prompts), desc=progress_label, unit="seq", disable=progress_label is None)
    try:
        for start in range(0, len(order), settings.batch_size):
            batch = order[start : start + settings.batch_size]
            outputs = _generate_batch(
                model,
                [encoded[i] for i in batch],
                [seeds[i] for i in batch],
                settings,
                pad_id,
                stops,
            )
            for index, (token_ids, stop_token) in zip(batch, outputs, strict=True):
                results[index] = Completion(
                    text=tokenizer.decode(token_ids, skip_special_tokens=True),
                    token_ids=token_ids,
                    prompt_tokens=len(encoded[index]),
                    finish_reason="length" if stop_token is None else "stop",
                    stop_token=stop_token,
                )
            bar.update(len(batch))
    finally:
        bar.close()
        model.train(was_training)
    return results  # type: ignore[return-value]
