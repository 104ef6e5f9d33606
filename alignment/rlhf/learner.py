"""The update: what PPO learns from one Rollout, in three phases.

    behaviour   the policy's log-probs and entropy of the sampled tokens before any step: the
                behaviour policy, which the ratio divides by and the KL penalty reads
    advantages  KL-penalised token rewards and GAE advantages, fixed for the update: `Targets`
    train       `ppo_epochs` passes of clipped policy and value losses over shuffled minibatches,
                each split into micro-batches; gradients reach float32 masters (master_weights.py),
                are averaged across processes, clipped, and stepped by AdamW

One saving crosses the phases, and only here: `reuse_first_forward` (see `Learner.behaviour`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from alignment import cpu
from alignment.config import PPOConfig
from alignment.errors import TrainingDiverged
from alignment.rlhf.master_weights import MasterWeights
from alignment.rlhf.ppo_math import (
    KLController,
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    token_rewards,
    value_loss,
)
from alignment.rlhf.roles import RoleModel
from alignment.rlhf.rollout import Rollout, answer_logprobs, answer_values, unpack


@dataclass(frozen=True)
class Targets:
    """What one update trains towards, fixed before its first optimizer step. (B, R) each."""

    logprobs: torch.Tensor  # the behaviour policy's log-probs: the ratio's denominator
    advantages: torch.Tensor
    returns: torch.Tensor  # what the value role regresses towards


def mean_over_processes(accelerator: Accelerator, value: float) -> float:
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor(value, device=accelerator.device, dtype=torch.float64)
    return accelerator.reduce(tensor, reduction="mean").item()


class Learner:
    """The trainable side of PPO: float32 masters, AdamW, the LR schedule and the KL coefficient.

    `reuse_first_forward` (default on) saves one forward pass over a micro-batch per update:
    before the first optimizer step the policy is still the one that sampled, so the forward
    that computes the first micro-batch's behaviour log-probs, kept with its gradients, is that
    micro-batch's training forward too. Its log-probs are exactly those a separate no-grad pass
    computes (same code path), so the first ratio is 1 either way; off, every behaviour
    log-prob comes from a no-grad pass and training repeats the forward. The kept forward waits
    in `_reused` alone, and training takes it out: any other reference would keep its graph,
    and the memory that holds, alive for the whole update.
    """

    def __init__(
        self,
        model: RoleModel,
        cfg: PPOConfig,
        seed: int,
        accelerator: Accelerator,
        reuse_first_forward: bool = True,
    ) -> None:
        self.model, self.cfg, self.seed, self.accelerator = model, cfg, seed, accelerator
        self.reuse_first_forward = reuse_first_forward
        self.masters = MasterWeights(model.named_trainable())
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
        self._reused: tuple[torch.Tensor, torch.Tensor] | None = None  # (rows, their log-probs)

    @property
    def micro_batch_size(self) -> int:
        return max(1, self.cfg.minibatch_size // self.cfg.grad_accum)

    def epoch_orders(self, index: int) -> list[torch.Tensor]:
        """The shuffled row order of each PPO epoch of update `index` (counted from 0)."""
        generator = torch.Generator().manual_seed(self.seed + index)
        size = self.cfg.rollout_batch_size
        return [torch.randperm(size, generator=generator) for _ in range(self.cfg.ppo_epochs)]

    def update(self, rollout: Rollout, index: int) -> dict[str, float]:
        """Learn from one rollout (update `index`, counted from 0); returns this process's metrics."""
        orders = self.epoch_orders(index)
        first = orders[0][: self.micro_batch_size].to(rollout.mask.device)
        logprobs, entropy = self.behaviour(rollout, first)
        targets, metrics = self.advantages(rollout, logprobs)
        metrics["entropy"] = masked_mean(entropy, rollout.mask).item()
        metrics |= self.train(rollout, targets, orders, index)
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        # The KL coefficient adapts to the KL of every process's rollouts alike.
        samples = len(rollout.scores) * self.accelerator.num_processes
        self.kl.update(mean_over_processes(self.accelerator, metrics["kl"]), samples)
        return metrics

    def behaviour(self, r: Rollout, first: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(log-probs, entropy) of the policy on every answer token before this update's first
        step. With `reuse_first_forward`, the `first` rows are computed last and with gradients,
        after the no-grad pass over the others has freed its memory, and kept for training."""
        model, temperature = self.model, self.cfg.temperature
        logprobs, entropy = torch.zeros_like(r.mask), torch.zeros_like(r.mask)
        rest = torch.ones(len(r.mask), dtype=torch.bool, device=r.mask.device)
        if self.reuse_first_forward:
            rest[first] = False
        with model.role("policy"):
            if rest.any():
                with torch.no_grad():
                    logprobs[rest], logits = answer_logprobs(
                        model, r.input_ids[rest], r.attention_mask[rest], r.mask[rest], temperature
                    )
                    entropy[rest] = unpack(entropy_from_logits(logits), r.mask[rest])
                del logits  # (rows x answer tokens x vocabulary): freed before the next forward
            cpu.release_memory()  # what the no-grad pass freed, before the graph is built
            if self.reuse_first_forward:
                kept, logits = answer_logprobs(
                    model, r.input_ids[first], r.attention_mask[first], r.mask[first], temperature
                )
                logprobs[first] = kept.detach()
                entropy[first] = unpack(entropy_from_logits(logits.detach()), r.mask[first])
                self._reused = (first, kept)
        return logprobs, entropy

    def advantages(self, r: Rollout, logprobs: torch.Tensor) -> tuple[Targets, dict[str, float]]:
        """KL-penalised token rewards, then GAE; `logprobs` are the behaviour policy's."""
        cfg = self.cfg
        kl = kl_per_token(logprobs, r.ref_logprobs, cfg.kl_estimator) * r.mask
        rewards = token_rewards(r.scores, kl, r.mask, self.kl.coef)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, r.mask, shift_mean=False)
        advantages, returns = gae(rewards, r.values, r.mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, r.mask)
        kl_per_answer = kl.sum(1)
        metrics = {
            "kl": kl_per_answer.mean().item(),
            "kl_coef": self.kl.coef,
            "non_score_reward": (-self.kl.coef * kl_per_answer).mean().item(),
            "explained_variance": explained_variance(r.values, returns, r.mask).item(),
        }
        return Targets(logprobs, advantages, returns), metrics

    def train(
        self,
        r: Rollout,
        targets: Targets,
        orders: list[torch.Tensor],
        index: int,
    ) -> dict[str, float]:
        """One optimizer step per minibatch of each epoch's order; metrics averaged over steps."""
        cfg, micro = self.cfg, self.micro_batch_size
        totals: dict[str, list[float]] = {}
        for order in orders:
            for start in range(0, len(order), cfg.minibatch_size):
                minibatch = order[start : start + cfg.minibatch_size]
                for micro_start in range(0, len(minibatch), micro):
                    rows = minibatch[micro_start : micro_start + micro].to(r.mask.device)
                    weight = len(rows) / len(minibatch)
                    stats = self._train_rows(r, targets, rows, weight, index)
                    for key, value in stats.items():
                        totals.setdefault(key, []).append(value)
                totals.setdefault("grad_norm", []).append(self._step())
        return {key: sum(values) / len(values) for key, values in totals.items()}

    def _train_rows(
        self,
        r: Rollout,
        targets: Targets,
        rows: torch.Tensor,
        weight: float,
        index: int,
    ) -> dict[str, float]:
        """One micro-batch's policy and value losses, backpropagated."""
        cfg, model = self.cfg, self.model
        ids, attention, mask = r.input_ids[rows], r.attention_mask[rows], r.mask[rows]
        reused, self._reused = self._reused, None
        if reused is not None and torch.equal(reused[0], rows):
            logprobs = reused[1]  # the behaviour pass's forward of these very rows
        else:
            with model.role("policy"):
                logprobs, _ = answer_logprobs(model, ids, attention, mask, cfg.temperature)
        del reused
        pg_loss, stats = policy_loss(
            logprobs, targets.logprobs[rows], targets.advantages[rows], mask, cfg.clip_range
        )
        self._backward(pg_loss * weight, "policy loss", index)
        values = answer_values(model, ids, attention, r.answer_width)
        vf_loss, value_stats = value_loss(
            values, r.values[rows], targets.returns[rows], mask, cfg.value_clip_range
        )
        # Policy and value use different adapters, so each gets its own forward and backward.
        self._backward(cfg.value_coef * vf_loss * weight, "value loss", index)
        return {
            "policy_loss": pg_loss.item(),
            "value_loss": vf_loss.item(),
            **{key: value.item() for key, value in {**stats, **value_stats}.items()},
        }

    def _backward(self, loss: torch.Tensor, what: str, index: int) -> None:
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"update {index + 1}: {what} is {loss.item()}")
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
