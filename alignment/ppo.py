"""Stage 3, PPO: raise the reward model's score while a KL penalty keeps the policy near the SFT model.

Our own loop (TRL removed its PPOTrainer in 1.13). One update:

    generate   the policy samples an answer per prompt (KV cache, per-sequence seeds)
    score      one no-grad pass per role: policy and reference log-probs, values, reward score
               (the first training micro-batch's forward supplies its rows' policy log-probs)
    train      GAE advantages, then `ppo_epochs` passes of clipped policy and value losses
               over shuffled minibatches

All four roles are adapters on one base model (see roles.py). Sampling decodes with the packed
4-bit CPU kernel (cpu_4bit.py); every log-prob, value and reward is computed in the trainable
layout, as training computes it. Several processes under `accelerate launch` each roll out their
own prompts and average gradients.
"""

from __future__ import annotations

import json
import logging
import math
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase, set_seed

from alignment import cpu
from alignment.adapters import input_adapter
from alignment.config import Recipe
from alignment.data import read_prompts
from alignment.errors import AlignmentError, DataError, RunStateError
from alignment.generation import GenerationSettings, generate
from alignment.master_weights import MasterWeights
from alignment.models import base_model_id, load_model, load_tokenizer, resolve_model
from alignment.ppo_math import (
    KLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    logprobs_of,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from alignment.reward import STATS_FILE, scoring_ids
from alignment.roles import RoleModel
from alignment.runs import append_jsonl, read_jsonl, start_stage, write_model_card, write_summary
from alignment.tokens import Messages, encode_prompt, padded

log = logging.getLogger(__name__)


class TrainingDiverged(AlignmentError):
    """NaN or inf in rewards or losses; the last good checkpoint is kept."""


@dataclass
class Rollouts:
    """One update's answers and everything computed about them without gradients."""

    input_ids: torch.Tensor  # (B, P + R): left-padded prompt, answer, right padding
    attention_mask: torch.Tensor
    mask: torch.Tensor  # (B, R): 1 on answer tokens
    old_logprobs: torch.Tensor
    entropy: torch.Tensor  # (B, R) the policy's, per answer token
    ref_logprobs: torch.Tensor
    old_values: torch.Tensor
    raw_scores: torch.Tensor  # reward model output
    scores: torch.Tensor  # normalised, clipped, penalised: what PPO maximises
    finished: torch.Tensor
    prompts: list[str]
    answers: list[str]
    advantages: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    returns: torch.Tensor = field(default_factory=lambda: torch.empty(0))

    @property
    def answer_width(self) -> int:
        return self.mask.shape[1]


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


def pack(
    prompts: list[list[int]], answers: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, ...]:
    """Left-pad prompts and right-pad answers so every answer starts in the same column."""
    prompt_width = max(len(p) for p in prompts)
    answer_width = max(1, max(len(a) for a in answers))
    rows, masks, answer_masks = [], [], []
    for prompt, answer in zip(prompts, answers, strict=True):
        left, right = prompt_width - len(prompt), answer_width - len(answer)
        rows.append([pad_id] * left + prompt + answer + [pad_id] * right)
        masks.append([0] * left + [1] * (len(prompt) + len(answer)) + [0] * right)
        answer_masks.append([1] * len(answer) + [0] * right)
    return torch.tensor(rows), torch.tensor(masks), torch.tensor(answer_masks, dtype=torch.float)


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
    only real answer positions. Rollout and training share this code path (same padding, dtype
    and head), so a row's log-probs are the same whichever pass computes them: the first
    minibatch's ratio is exactly 1."""
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
    # The value of emitting answer token t is read at the position before it.
    return model.values(input_ids, attention_mask)[:, -width - 1 : -1]


class PPORun:
    """Everything one PPO stage holds: model, optimizer, KL controller, data order and step."""

    def __init__(self, recipe: Recipe, accelerator: Accelerator) -> None:
        self.recipe, self.cfg, self.accelerator = recipe, recipe.ppo, accelerator
        cfg = self.cfg
        self.out = recipe.output_dir / "ppo"
        # Adapters named in the recipe may be Hub ids; the run's own stages are local directories.
        self.sft_dir = input_adapter(recipe, cfg.sft_adapter, "ppo.sft_adapter", "sft")
        self.rm_dir = input_adapter(recipe, cfg.reward_adapter, "ppo.reward_adapter", "rm")
        source = resolve_model(recipe.model)
        self.tokenizer = load_tokenizer(recipe.model, source)
        self.prompts = self._encode_prompts(source)
        self.model = RoleModel(
            load_model(recipe.model, source=source), self.sft_dir, self.rm_dir, source
        )
        self._check_tokenizers()
        self.model.to(accelerator.device)
        self.reward_mean, self.reward_std, self.reward_max_length = self._reward_stats()
        self.masters = MasterWeights(self.model.named_trainable())
        self.optimizer = torch.optim.AdamW(self.masters.parameters(), lr=cfg.learning_rate)
        steps_per_update = cfg.ppo_epochs * math.ceil(cfg.rollout_batch_size / cfg.minibatch_size)
        total_steps = cfg.updates * steps_per_update
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            (lambda step: max(0.0, 1 - step / total_steps))
            if cfg.lr_scheduler == "linear"
            else (lambda step: 1.0),
        )
        self.kl = KLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
        self.update = 0
        self.settings = GenerationSettings(
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=0,
            batch_size=cfg.rollout_batch_size,
        )

    # --- checks before any rollout -------------------------------------------------------------

    def _encode_prompts(self, source: str) -> list[tuple[Messages, list[int]]]:
        from transformers import AutoConfig

        context = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None)
        encoded = []
        for origin, messages in read_prompts(self.cfg.prompts):
            ids = encode_prompt(self.tokenizer, messages)
            if len(ids) > self.cfg.max_prompt_length:
                raise DataError(
                    f"{origin}: prompt is {len(ids)} tokens, longer than ppo.max_prompt_length="
                    f"{self.cfg.max_prompt_length}"
                )
            if context and len(ids) + self.cfg.max_new_tokens > context:
                raise DataError(
                    f"{origin}: prompt ({len(ids)} tokens) plus ppo.max_new_tokens="
                    f"{self.cfg.max_new_tokens} exceeds the model's context of {context}"
                )
            encoded.append((messages, ids))
        return encoded

    def _check_tokenizers(self) -> None:
        for directory in (self.sft_dir, self.rm_dir):
            if (directory / "tokenizer_config.json").is_file():
                theirs = load_tokenizer(self.recipe.model, str(directory))
                if theirs.get_vocab() != self.tokenizer.get_vocab():
                    raise RunStateError(
                        f"{directory}: its tokenizer differs from the base model's "
                        f"({len(theirs)} vs {len(self.tokenizer)} tokens); train every stage on one base"
                    )

    def _reward_stats(self) -> tuple[float, float, int | None]:
        """(mean, std) that rewards are normalised with, and the max_length the RM trained at."""
        path = self.rm_dir / STATS_FILE
        stats = json.loads(path.read_text()) if path.is_file() else {}
        max_length = stats.get("max_length")
        if not self.cfg.normalize_rewards:
            return 0.0, 1.0, max_length
        if not stats:
            raise RunStateError(
                f"{path}: missing; it holds the reward statistics that ppo.normalize_rewards uses"
            )
        return float(stats["mean"]), max(float(stats["std"]), 1e-6), max_length

    # --- one update ----------------------------------------------------------------------------

    def prompt_batch(self) -> list[tuple[Messages, list[int]]]:
        """This process's prompts for the current update: a seeded shuffle per pass over the data."""
        cfg, world = self.cfg, self.accelerator.num_processes
        per_update = cfg.rollout_batch_size * world
        start = self.update * per_update
        orders: dict[int, list[int]] = {}
        batch = []
        for position in range(start, start + per_update):
            epoch, index = divmod(position, len(self.prompts))
            if epoch not in orders:
                orders[epoch] = random.Random(self.recipe.seed + epoch).sample(
                    range(len(self.prompts)), len(self.prompts)
                )
            batch.append(self.prompts[orders[epoch][index]])
        rank = self.accelerator.process_index
        return batch[rank * cfg.rollout_batch_size : (rank + 1) * cfg.rollout_batch_size]

    @torch.no_grad()
    def rollout(self, train_first: torch.Tensor | None = None) -> tuple[Rollouts, dict[str, float]]:
        """Generate and score one batch. The policy log-probs (and entropy) of the rows in
        `train_first` are left as NaN: training's first forward computes them (see `train`)."""
        cfg, model, device = self.cfg, self.model, self.accelerator.device
        timings = {}
        started = time.perf_counter()
        batch = self.prompt_batch()
        seeds = [
            self.recipe.seed * 1_000_003
            + self.update * 10_007
            + self.accelerator.process_index * 1009
            + i
            for i in range(len(batch))
        ]
        with model.role("policy"):
            completions = generate(
                model.peft, self.tokenizer, [ids for _, ids in batch], self.settings, seeds
            )
        cpu.release_memory()
        answers, finished = [], []
        eos = self.tokenizer.eos_token_id
        for completion in completions:
            tokens, stopped = truncate_at_stop(
                self.tokenizer, completion.token_ids, cfg.stop_strings
            )
            if completion.finish_reason == "stop" and not stopped:
                tokens = [*tokens, eos]  # the policy sampled EOS: it must learn that choice too
            answers.append(tokens)
            finished.append(stopped or completion.finish_reason == "stop")
        input_ids, attention_mask, mask = pack(
            [ids for _, ids in batch], answers, self.tokenizer.pad_token_id
        )
        input_ids, attention_mask, mask = (
            input_ids.to(device),
            attention_mask.to(device),
            mask.to(device),
        )
        timings["seconds_generate"] = time.perf_counter() - started

        started = time.perf_counter()
        width = mask.shape[1]
        old_logprobs = torch.full(mask.shape, float("nan"), device=device)
        entropy = torch.full(mask.shape, float("nan"), device=device)
        rows = torch.ones(len(mask), dtype=torch.bool, device=device)
        if train_first is not None:
            rows[train_first.to(device)] = False
        if rows.any():
            with model.role("policy"):
                old_logprobs[rows], logits = answer_logprobs(
                    model, input_ids[rows], attention_mask[rows], mask[rows], cfg.temperature
                )
                entropy[rows] = unpack(entropy_from_logits(logits), mask[rows])
        with model.role("reference"):
            ref_logprobs, _ = answer_logprobs(
                model, input_ids, attention_mask, mask, cfg.temperature
            )
        old_values = answer_values(model, input_ids, attention_mask, width)
        texts = [self.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
        # The reward model reads each rollout as it read its training answers (the chat template's
        # rendering, closed by its end of turn), not as the raw sampled tokens.
        reward_ids, reward_mask = padded(
            scoring_ids(
                self.tokenizer,
                [
                    [*messages, {"role": "assistant", "content": text}]
                    for (messages, _), text in zip(batch, texts, strict=True)
                ],
                self.reward_max_length,
            ),
            self.tokenizer.pad_token_id,
        )
        raw_scores = model.rewards(reward_ids.to(device), reward_mask.to(device))
        scores = (raw_scores - self.reward_mean) / self.reward_std
        if cfg.reward_clip is not None:
            scores = scores.clamp(-cfg.reward_clip, cfg.reward_clip)
        finished_t = torch.tensor(finished, device=device)
        scores = torch.where(finished_t, scores, scores + cfg.unfinished_penalty)
        timings["seconds_score"] = time.perf_counter() - started
        if not torch.isfinite(raw_scores).all():
            raise TrainingDiverged(
                f"update {self.update + 1}: the reward model returned NaN or inf scores"
            )
        rollouts = Rollouts(
            input_ids, attention_mask, mask, old_logprobs, entropy, ref_logprobs, old_values,
            raw_scores, scores, finished_t, [self.tokenizer.decode(ids) for _, ids in batch], texts,
        )  # fmt: skip
        return rollouts, timings

    def advantages(self, r: Rollouts) -> dict[str, float]:
        cfg = self.cfg
        kl = kl_per_token(r.old_logprobs, r.ref_logprobs, cfg.kl_estimator) * r.mask
        rewards = token_rewards(r.scores, kl, r.mask, self.kl.coef)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, r.mask, shift_mean=False)
        r.advantages, r.returns = gae(rewards, r.old_values, r.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            r.advantages = masked_whiten(r.advantages, r.mask)
        kl_per_answer = kl.sum(1)
        return {
            "kl": kl_per_answer.mean().item(),
            "kl_coef": self.kl.coef,
            "non_score_reward": (-self.kl.coef * kl_per_answer).mean().item(),
            "explained_variance": explained_variance(r.old_values, r.returns, r.mask).item(),
        }

    def epoch_orders(self) -> list[torch.Tensor]:
        """The shuffled row order of each PPO epoch of the current update."""
        generator = torch.Generator().manual_seed(self.recipe.seed + self.update)
        size = self.cfg.rollout_batch_size
        return [torch.randperm(size, generator=generator) for _ in range(self.cfg.ppo_epochs)]

    @property
    def micro_batch_size(self) -> int:
        return max(1, self.cfg.minibatch_size // self.cfg.grad_accum)

    def first_micro_batch(self, orders: list[torch.Tensor]) -> torch.Tensor:
        """The rows training starts with; its forward also supplies their rollout log-probs."""
        return orders[0][: self.micro_batch_size]

    def train(self, r: Rollouts, orders: list[torch.Tensor]) -> dict[str, float]:
        cfg, model = self.cfg, self.model
        micro = self.micro_batch_size
        # Before the first optimizer step the policy is still the rollout's, so one forward gives
        # both the rollout log-probs of the first micro-batch's rows (which `rollout` skipped) and
        # that micro-batch's training log-probs: a scoring pass over those rows saved.
        first = self.first_micro_batch(orders).to(r.mask.device)
        with model.role("policy"):
            first_logprobs, logits = answer_logprobs(
                model, r.input_ids[first], r.attention_mask[first], r.mask[first], cfg.temperature
            )
        r.old_logprobs[first] = first_logprobs.detach()
        r.entropy[first] = unpack(entropy_from_logits(logits.detach()), r.mask[first])
        del logits
        metrics = self.advantages(r) | {"entropy": masked_mean(r.entropy, r.mask).item()}
        totals: dict[str, list[float]] = {}
        size = len(r.scores)
        for order in orders:
            for start in range(0, size, cfg.minibatch_size):
                minibatch = order[start : start + cfg.minibatch_size]
                for micro_start in range(0, len(minibatch), micro):
                    rows = minibatch[micro_start : micro_start + micro].to(r.mask.device)
                    weight = len(rows) / len(minibatch)
                    stats = self._train_rows(r, rows, weight, first_logprobs)
                    first_logprobs = None
                    for key, value in stats.items():
                        totals.setdefault(key, []).append(value)
                grad_norm = self._step()
                totals.setdefault("grad_norm", []).append(grad_norm)
        return metrics | {key: sum(values) / len(values) for key, values in totals.items()}

    def _train_rows(
        self, r: Rollouts, rows: torch.Tensor, weight: float, logprobs: torch.Tensor | None
    ) -> dict[str, float]:
        """One micro-batch's policy and value losses, backpropagated; `logprobs`, if given, are
        the policy's log-probs of these rows, already computed with gradients."""
        cfg, model = self.cfg, self.model
        ids, attention, mask = r.input_ids[rows], r.attention_mask[rows], r.mask[rows]
        if logprobs is None:
            with model.role("policy"):
                logprobs, _ = answer_logprobs(model, ids, attention, mask, cfg.temperature)
        pg_loss, stats = policy_loss(
            logprobs, r.old_logprobs[rows], r.advantages[rows], mask, cfg.clip_range
        )
        self._backward(pg_loss * weight, "policy loss")
        values = answer_values(model, ids, attention, r.answer_width)
        vf_loss, value_stats = value_loss(
            values, r.old_values[rows], r.returns[rows], mask, cfg.value_clip_range
        )
        # Policy and value use different adapters, so each gets its own forward and backward.
        self._backward(cfg.value_coef * vf_loss * weight, "value loss")
        return {
            "policy_loss": pg_loss.item(),
            "value_loss": vf_loss.item(),
            **{key: value.item() for key, value in {**stats, **value_stats}.items()},
        }

    def _backward(self, loss: torch.Tensor, what: str) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"update {self.update + 1}: {what} is {loss.item()}")
        loss.backward()
        self.masters.collect_grads()

    def _step(self) -> float:
        params = self.masters.parameters()
        if self.accelerator.num_processes > 1:
            # A hand-written all-reduce rather than DDP: DDP cannot follow the adapter switches
            # between the policy and value passes of one step.
            for param in params:
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.max_grad_norm).item()
        self.optimizer.step()
        self.masters.copy_to_model()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def step(self) -> tuple[dict[str, float], Rollouts]:
        orders = self.epoch_orders()
        rollouts, metrics = self.rollout(train_first=self.first_micro_batch(orders))
        cpu.release_memory()  # each phase frees what the next would otherwise pile on top of
        started = time.perf_counter()
        metrics |= self.train(rollouts, orders)
        cpu.release_memory()
        metrics["seconds_train"] = time.perf_counter() - started
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        lengths = rollouts.mask.sum(1)
        metrics |= {
            "reward_raw": rollouts.raw_scores.mean().item(),
            "reward": rollouts.scores.mean().item(),
            "answer_length": lengths.mean().item(),
            "finished_fraction": rollouts.finished.float().mean().item(),
        }
        metrics = {k: self._mean_over_processes(v) for k, v in metrics.items()}
        self.kl.update(metrics["kl"], len(rollouts.scores) * self.accelerator.num_processes)
        self.update += 1
        return metrics, rollouts

    def _mean_over_processes(self, value: float) -> float:
        if self.accelerator.num_processes == 1:
            return value
        tensor = torch.tensor(value, device=self.accelerator.device, dtype=torch.float64)
        return self.accelerator.reduce(tensor, reduction="mean").item()

    # --- checkpoints ---------------------------------------------------------------------------

    def save_checkpoint(self) -> None:
        """Adapters, value head, optimizer, KL controller, RNG states and step, written atomically."""
        checkpoints = self.out / "checkpoints"
        rank = self.accelerator.process_index
        final = checkpoints / f"update-{self.update}"
        staging = checkpoints / f".update-{self.update}.partial"
        if self.accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in self.masters.masters.items()},
                staging / "trainable.safetensors",
            )
            torch.save(self.optimizer.state_dict(), staging / "optimizer.pt")
            torch.save(self.scheduler.state_dict(), staging / "scheduler.pt")
            (staging / "state.json").write_text(
                json.dumps({"update": self.update, "kl_coef": self.kl.coef})
            )
        self.accelerator.wait_for_everyone()
        rng = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
        }
        torch.save(rng, staging / f"rng-{rank}.pt")
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            staging.rename(final)
            for old in sorted(checkpoints.glob("update-*"), key=_update_number)[:-2]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self, checkpoint: Path) -> None:
        masters = self.masters.masters
        for name, tensor in load_file(checkpoint / "trainable.safetensors").items():
            with torch.no_grad():
                masters[name].copy_(tensor)
        self.masters.copy_to_model()
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
        self.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
        state = json.loads((checkpoint / "state.json").read_text())
        self.update, self.kl.coef = state["update"], state["kl_coef"]
        rng = torch.load(
            checkpoint / f"rng-{self.accelerator.process_index}.pt", weights_only=False
        )
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])

    def save_policy(self, summary: dict[str, Any]) -> None:
        """The policy alone as a standard PEFT adapter: PeftModel.from_pretrained(base, dir) loads it."""
        config = self.model.peft.peft_config["policy"]
        with self.masters.swapped_in():  # the float32 weights the optimizer holds
            weights = get_peft_model_state_dict(self.model.peft, adapter_name="policy")
            save_file(
                {k: v.detach().contiguous().cpu() for k, v in weights.items()},
                self.out / "adapter_model.safetensors",
            )
        config.inference_mode = True
        config.save_pretrained(self.out)
        config.inference_mode = False
        self.tokenizer.save_pretrained(self.out)
        write_summary(self.out, summary)
        write_model_card(self.out, self.recipe, "ppo", base_model_id(self.recipe.model), summary)


def _update_number(path: Path) -> int:
    return int(path.name.split("-")[1])


def last_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("update-*"), key=_update_number)
    return found[-1] if found else None


def _log_samples(path: Path, update: int, r: Rollouts, count: int = 3) -> None:
    """Append a few of this update's answers to samples.jsonl and show them as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"PPO update {update}: sample answers", show_lines=True)
    for column in ("prompt", "answer", "reward"):
        table.add_column(column)
    for prompt, answer, score in zip(r.prompts, r.answers, r.raw_scores.tolist(), strict=True):
        if table.row_count == count:
            break
        append_jsonl(path, {"update": update, "prompt": prompt, "answer": answer, "score": score})
        table.add_row(prompt[-200:], answer[:300], f"{score:.3f}")
    Console(stderr=True).print(table)


def _truncate_log(path: Path, last_update: int) -> None:
    """Drop records logged after the checkpoint being resumed: those updates are redone."""
    kept = [r for r in read_jsonl(path) if r["update"] <= last_update] if path.exists() else []
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


@dataclass
class PPOOutcome:
    out_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]


def run_ppo(recipe: Recipe, resume: bool = False) -> PPOOutcome:
    """Run (or resume) the PPO stage; returns where the policy adapter was saved and the metrics."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    cpu.tune_process()
    set_seed(recipe.seed)
    out = recipe.output_dir / "ppo"
    checkpoint = last_checkpoint(out)
    if checkpoint is not None and not resume:
        raise RunStateError(
            f"{out} already holds a run ({checkpoint.name}); pass --resume to continue it, or set run_dir=<new dir>"
        )
    if accelerator.is_main_process:
        start_stage(recipe, "ppo")
    run = PPORun(recipe, accelerator)
    metrics_path, samples_path = out / "metrics.jsonl", out / "samples.jsonl"
    if checkpoint is not None:
        run.load_checkpoint(checkpoint)
        log.info("resuming PPO from %s", checkpoint)
    if accelerator.is_main_process:
        for path in (metrics_path, samples_path):
            _truncate_log(path, run.update)

    cfg = recipe.ppo
    bar = tqdm(
        total=cfg.updates, initial=run.update, desc="PPO", disable=not accelerator.is_main_process
    )
    while run.update < cfg.updates:
        metrics, rollouts = run.step()
        record = {"update": run.update, "time": time.time(), **metrics}
        if accelerator.is_main_process:
            append_jsonl(metrics_path, record)
            if run.update % cfg.sample_every == 0 or run.update == 1:
                _log_samples(samples_path, run.update, rollouts)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
        if run.update % cfg.save_every == 0 or run.update == cfg.updates:
            run.save_checkpoint()
        if not all(math.isfinite(v) for v in metrics.values()):
            raise TrainingDiverged(f"update {run.update}: non-finite metrics {metrics}")
    bar.close()

    history = read_jsonl(metrics_path) if metrics_path.exists() else []
    first, last = (history[0], history[-1]) if history else ({}, {})
    summary = {
        "updates": run.update,
        "processes": accelerator.num_processes,
        "reward_first": first.get("reward"),
        "reward_last": last.get("reward"),
        "kl_last": last.get("kl"),
        "answer_length_last": last.get("answer_length"),
    }
    if accelerator.is_main_process:
        run.save_policy(summary)
    accelerator.wait_for_everyone()
    return PPOOutcome(out, summary, history)
