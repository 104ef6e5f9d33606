"""The rollout: the policy samples an answer per prompt, the frozen roles score it.

A `Rollout` is complete when it is returned and never changes after: the token layout, the
reference log-probs, the value estimates and the reward model's scores. What the policy itself
makes of its answers (behaviour log-probs, entropy) is the learner's business (learner.py).

Sampling decodes with the CPU's packed 4-bit kernel where one applies (inside `generate`); every
log-prob, value and reward after it is computed in the trainable layout, as training computes
it. Layout of one batch: prompts left-padded and answers right-padded, so every answer starts in
the same column and the answer tokens are the last `answer_width` columns.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from alignment import cpu
from alignment.config import PPOConfig
from alignment.errors import RunStateError, TrainingDiverged
from alignment.generation import Completion, GenerationSettings, generate
from alignment.reward import STATS_FILE, scoring_ids
from alignment.reward.loading import read_stats
from alignment.rlhf.ppo_math import logprobs_of
from alignment.rlhf.roles import RoleModel
from alignment.tokens import Messages, padded

Prompt = tuple[Messages, list[int]]  # chat turns and their encoded ids


@dataclass(frozen=True)
class Rollout:
    """One update's answers and everything the frozen roles compute about them, without gradients."""

    input_ids: torch.Tensor  # (B, P + R): left-padded prompt, answer, right padding
    attention_mask: torch.Tensor
    mask: torch.Tensor  # (B, R) float: 1 on answer tokens
    ref_logprobs: torch.Tensor  # (B, R) the reference's log-probs of the answer tokens
    values: torch.Tensor  # (B, R) the value role's estimate before each answer token
    raw_scores: torch.Tensor  # (B,) reward model output
    scores: torch.Tensor  # (B,) normalised, clipped, penalised: what PPO maximises
    finished: torch.Tensor  # (B,) bool: the answer ended (end token or stop string)
    prompts: tuple[str, ...]
    answers: tuple[str, ...]

    @property
    def answer_width(self) -> int:
        return self.mask.shape[1]

    def stats(self) -> dict[str, float]:
        return {
            "reward_raw": self.raw_scores.mean().item(),
            "reward": self.scores.mean().item(),
            "answer_length": self.mask.sum(1).mean().item(),
            "finished_fraction": self.finished.float().mean().item(),
        }


@dataclass(frozen=True)
class RewardScale:
    """How raw reward-model scores become PPO's scores, from the reward adapter's statistics."""

    mean: float
    std: float
    max_length: int | None  # the length the reward model trained at: it scores at that length

    @classmethod
    def read(cls, rm_dir: Path, normalize: bool) -> RewardScale:
        stats = read_stats(rm_dir)
        max_length = stats.get("max_length")
        if not normalize:
            return cls(0.0, 1.0, max_length)
        if not stats:
            raise RunStateError(
                f"{rm_dir / STATS_FILE}: missing; it holds the reward statistics that "
                "ppo.normalize_rewards uses"
            )
        return cls(float(stats["mean"]), max(float(stats["std"]), 1e-6), max_length)


def prompt_indices(
    count: int, seed: int, update: int, batch_size: int, world: int = 1, rank: int = 0
) -> list[int]:
    """Which of `count` prompts process `rank` rolls out at `update`: each pass over the data is a
    seeded shuffle, and each update takes the next `batch_size * world` of it."""
    per_update = batch_size * world
    start = update * per_update
    orders: dict[int, list[int]] = {}
    chosen = []
    for position in range(start, start + per_update):
        epoch, index = divmod(position, count)
        if epoch not in orders:
            orders[epoch] = random.Random(seed + epoch).sample(range(count), count)
        chosen.append(orders[epoch][index])
    return chosen[rank * batch_size : (rank + 1) * batch_size]


def truncate_at_stop(
    tokenizer: PreTrainedTokenizerBase, token_ids: list[int], stops: list[str]
) -> tuple[list[int], bool]:
    """Cut an answer right after the first stop string; returns (tokens kept, whether it stopped)."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    hits = [text.find(s) + len(s) for s in stops if s in text]
    if not hits:
        return token_ids, False
    end = min(hits)
    for count in range(1, len(token_ids) + 1):  # fewest tokens whose text reaches past the stop
        if len(tokenizer.decode(token_ids[:count], skip_special_tokens=True)) >= end:
            return token_ids[:count], True
    return token_ids, True


def answer_tokens(
    tokenizer: PreTrainedTokenizerBase, completion: Completion, stops: list[str]
) -> tuple[list[int], bool]:
    """The tokens PPO trains on for one completion, and whether the answer ended."""
    tokens, stopped = truncate_at_stop(tokenizer, completion.token_ids, stops)
    if stopped or completion.stop_token is None:
        return tokens, stopped
    # The policy chose to end here, and must learn that choice too: with the end token it
    # sampled, which need not be the tokenizer's eos (Qwen2.5 ends at <|im_end|> or
    # <|endoftext|>, Llama 3 at any of three).
    return [*tokens, completion.stop_token], True


def pack(
    prompts: list[list[int]], answers: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask, answer mask): prompts left-padded and answers right-padded, so
    every answer starts in the same column."""
    prompt_ids, prompt_mask = padded(prompts, pad_id, left=True)
    answer_ids, answer_mask = padded(answers, pad_id)
    return (
        torch.cat([prompt_ids, answer_ids], dim=1),
        torch.cat([prompt_mask, answer_mask], dim=1),
        answer_mask.float(),
    )


def unpack(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One value per real answer token, laid out as (rows, answer width) with 0 on padding."""
    return torch.zeros(mask.shape, device=mask.device).masked_scatter(mask.bool(), values)


def answer_logprobs(
    model: RoleModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs of the answer tokens under the active role, 0 where `mask` is (answer padding),
    and the logits of the answer tokens alone (answer tokens x vocabulary): the LM head projects
    only real answer positions. Every pass over a rollout, with or without gradients, goes
    through here (same padding, dtype and head), so a row's log-probs are the same whichever
    pass computes them."""
    width = mask.shape[1]
    real = mask.bool()
    # Answer token t is predicted at the position before it; the last position predicts nothing.
    select = torch.nn.functional.pad(real, (0, 1))
    logits = model.logits(input_ids, attention_mask, keep_last=width + 1, select=select)
    logprobs = logprobs_of(logits, input_ids[:, -width:][real], temperature)
    return unpack(logprobs, mask), logits


def answer_values(
    model: RoleModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, width: int
) -> torch.Tensor:
    """The value role's estimate before each answer token, (rows, answer width)."""
    # The value of emitting answer token t is read at the position before it.
    return model.values(input_ids, attention_mask)[:, -width - 1 : -1]


class Sampler:
    """Makes one update's Rollout: the policy samples, the reference, value and reward roles score."""

    def __init__(
        self,
        model: RoleModel,
        tokenizer: PreTrainedTokenizerBase,
        cfg: PPOConfig,
        reward_scale: RewardScale,
        seed: int,
        rank: int = 0,
    ) -> None:
        self.model, self.tokenizer, self.cfg = model, tokenizer, cfg
        self.reward_scale, self.seed, self.rank = reward_scale, seed, rank
        self.settings = GenerationSettings(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            batch_size=cfg.rollout_batch_size,
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def seeds(self, update: int, count: int) -> list[int]:
        """One sampling seed per row, distinct across updates, processes and rows."""
        first = self.seed * 1_000_003 + update * 10_007 + self.rank * 1009
        return [first + i for i in range(count)]

    @torch.no_grad()
    def rollout(self, batch: list[Prompt], update: int) -> tuple[Rollout, dict[str, float]]:
        """Sample and score one batch; also returns the seconds each phase took."""
        cfg, model, tokenizer = self.cfg, self.model, self.tokenizer
        device = self.device
        started = time.perf_counter()
        with model.role("policy"):
            completions = generate(
                model.peft,
                tokenizer,
                [ids for _, ids in batch],
                self.settings,
                self.seeds(update, len(batch)),
                progress_label=None,  # one rollout of many: the PPO bar counts updates
            )
        cpu.release_memory()
        answers, finished = zip(
            *(answer_tokens(tokenizer, c, cfg.stop_strings) for c in completions), strict=True
        )
        input_ids, attention_mask, mask = (
            t.to(device)
            for t in pack([ids for _, ids in batch], list(answers), tokenizer.pad_token_id)
        )
        generated = time.perf_counter()

        with model.role("reference"):
            ref_logprobs, _ = answer_logprobs(
                model, input_ids, attention_mask, mask, cfg.temperature
            )
        values = answer_values(model, input_ids, attention_mask, mask.shape[1])
        texts = tuple(tokenizer.decode(a, skip_special_tokens=True) for a in answers)
        raw_scores = self.reward(batch, texts)
        if not torch.isfinite(raw_scores).all():
            raise TrainingDiverged(
                f"update {update + 1}: the reward model returned NaN or inf scores"
            )
        finished_t = torch.tensor(finished, device=device)
        rollout = Rollout(
            input_ids=input_ids,
            attention_mask=attention_mask,
            mask=mask,
            ref_logprobs=ref_logprobs,
            values=values,
            raw_scores=raw_scores,
            scores=self.shaped(raw_scores, finished_t, mask.sum(1)),
            finished=finished_t,
            prompts=tuple(tokenizer.decode(ids) for _, ids in batch),
            answers=texts,
        )
        timings = {
            "seconds_generate": generated - started,
            "seconds_score": time.perf_counter() - generated,
        }
        return rollout, timings

    def reward(self, batch: list[Prompt], answers: tuple[str, ...]) -> torch.Tensor:
        """The reward model's raw score of each answer to its prompt."""
        # The reward model reads each rollout as it read its training answers (the chat template's
        # rendering, closed by its end of turn), not as the raw sampled tokens.
        conversations = [
            [*messages, {"role": "assistant", "content": text}]
            for (messages, _), text in zip(batch, answers, strict=True)
        ]
        ids, mask = padded(
            scoring_ids(self.tokenizer, conversations, self.reward_scale.max_length),
            self.tokenizer.pad_token_id,
        )
        return self.model.rewards(ids.to(self.device), mask.to(self.device))

    def shaped(
        self, raw_scores: torch.Tensor, finished: torch.Tensor, lengths: torch.Tensor
    ) -> torch.Tensor:
        """Normalised with the reward model's statistics, clipped, penalised if unfinished and
        for straying from the length target (`lengths`: answer tokens per row)."""
        cfg, scale = self.cfg, self.reward_scale
        scores = (raw_scores - scale.mean) / scale.std
        if cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        if cfg.length_penalty:
            target = float(cfg.length_target)
            scores = scores - cfg.length_penalty * (lengths - target).abs() / target
        return torch.where(finished, scores, scores + cfg.unfinished_penalty)
