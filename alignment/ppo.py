"""Stage 3, PPO: raise the reward model's score while a KL penalty keeps the policy near the SFT model.

Our own loop (TRL removed its PPOTrainer in 1.13) over the library in alignment/rlhf/. The four
roles (policy, reference, reward, value) are adapters on one base model (rlhf/roles.py). Each
update is:

    rollout     the policy samples an answer per prompt (KV cache, per-sequence seeds) and the
                frozen roles score them: reference log-probs, values, reward (rlhf/rollout.py)
    learn       behaviour log-probs, KL-penalised GAE advantages, then `ppo_epochs` passes of
                clipped policy and value losses over shuffled minibatches (rlhf/learner.py)

with a checkpoint every `save_every` updates that a resumed run continues from exactly
(rlhf/checkpoint.py). Several processes under `accelerate launch` each roll out their own
prompts and average gradients.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file
from tqdm.auto import tqdm
from transformers import AutoConfig, PreTrainedTokenizerBase, set_seed

from alignment import cpu
from alignment.adapters import base_names, input_adapter
from alignment.config import Recipe
from alignment.data import read_prompts
from alignment.errors import DataError, RunStateError, TrainingDiverged
from alignment.models import (
    base_model_id,
    load_model,
    load_tokenizer,
    name_base_in,
    resolve_model,
)
from alignment.rlhf.checkpoint import (
    last_checkpoint,
    load_checkpoint,
    save_checkpoint,
    truncate_log,
)
from alignment.rlhf.learner import Learner, mean_over_processes
from alignment.rlhf.roles import RoleModel
from alignment.rlhf.rollout import Prompt, RewardScale, Rollout, Sampler, prompt_indices
from alignment.runs import (
    append_jsonl,
    end_stage,
    read_jsonl,
    record_metrics,
    start_stage,
    write_model_card,
    write_summary,
)
from alignment.tokens import encode_prompt

__all__ = ["PPOOutcome", "run_ppo"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PPOParts:
    """What one PPO run holds."""

    recipe: Recipe
    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    prompts: list[Prompt]
    model: RoleModel
    sampler: Sampler
    learner: Learner


@dataclass
class PPOOutcome:
    out_dir: Path
    summary: dict[str, Any]
    history: list[dict[str, Any]]


def build(recipe: Recipe, accelerator: Accelerator) -> PPOParts:
    """Prompts, roles, sampler and learner, every input checked before any rollout."""
    cfg = recipe.ppo
    # Adapters named in the recipe may be Hub ids; the run's own stages are local directories.
    sft_dir = input_adapter(recipe, cfg.sft_adapter, "ppo.sft_adapter", "sft")
    rm_dir = input_adapter(recipe, cfg.reward_adapter, "ppo.reward_adapter", "rm")
    source = resolve_model(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    prompts = encode_prompts(recipe, tokenizer, source)
    base = load_model(recipe.model, source=source)
    model = RoleModel(base, sft_dir, rm_dir, base_names(recipe.model, source))
    for directory in (sft_dir, rm_dir):
        check_tokenizer(recipe, tokenizer, directory)
    model.to(accelerator.device)
    scale = RewardScale.read(rm_dir, cfg.normalize_rewards)
    sampler = Sampler(model, tokenizer, cfg, scale, recipe.seed, accelerator.process_index)
    learner = Learner(model, cfg, recipe.seed, accelerator)
    return PPOParts(recipe, accelerator, tokenizer, prompts, model, sampler, learner)


def encode_prompts(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, source: str) -> list[Prompt]:
    """Every prompt, encoded; refused if it (with a full answer) would not fit."""
    cfg = recipe.ppo
    context = getattr(AutoConfig.from_pretrained(source), "max_position_embeddings", None)
    encoded = []
    for origin, messages in read_prompts(cfg.prompts):
        ids = encode_prompt(tokenizer, messages)
        if len(ids) > cfg.max_prompt_length:
            raise DataError(
                f"{origin}: prompt is {len(ids)} tokens, longer than ppo.max_prompt_length="
                f"{cfg.max_prompt_length}"
            )
        if context and len(ids) + cfg.max_new_tokens > context:
            raise DataError(
                f"{origin}: prompt ({len(ids)} tokens) plus ppo.max_new_tokens="
                f"{cfg.max_new_tokens} exceeds the model's context of {context}"
            )
        encoded.append((messages, ids))
    return encoded


def check_tokenizer(recipe: Recipe, tokenizer: PreTrainedTokenizerBase, directory: Path) -> None:
    """Refuse an adapter saved with another vocabulary than the base model's."""
    if (directory / "tokenizer_config.json").is_file():
        theirs = load_tokenizer(recipe.model, str(directory))
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise RunStateError(
                f"{directory}: its tokenizer differs from the base model's "
                f"({len(theirs)} vs {len(tokenizer)} tokens); train every stage on one base"
            )


def ppo_update(parts: PPOParts, update: int) -> tuple[dict[str, float], Rollout]:
    """Update number `update` (from 0): rollout, then learn; metrics averaged over processes."""
    recipe, accelerator = parts.recipe, parts.accelerator
    chosen = prompt_indices(
        len(parts.prompts), recipe.seed, update, recipe.ppo.rollout_batch_size,
        accelerator.num_processes, accelerator.process_index,
    )  # fmt: skip
    rollout, metrics = parts.sampler.rollout([parts.prompts[i] for i in chosen], update)
    cpu.release_memory()  # each phase frees what the next would otherwise pile on top of
    started = time.perf_counter()
    metrics |= parts.learner.update(rollout, update)
    cpu.release_memory()
    metrics["seconds_train"] = time.perf_counter() - started
    metrics |= rollout.stats()
    return {k: mean_over_processes(accelerator, v) for k, v in metrics.items()}, rollout


def run_ppo(recipe: Recipe, resume: bool = False) -> PPOOutcome:
    """Run (or resume) the PPO stage; returns where the policy adapter was saved and the metrics."""
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    cpu.tune_process()
    set_seed(recipe.seed)
    cfg, out = recipe.ppo, recipe.output_dir / "ppo"
    checkpoint = last_checkpoint(out)
    if checkpoint is not None and not resume:
        raise RunStateError(
            f"{out} already holds a run ({checkpoint.name}); pass --resume to continue it, or set run_dir=<new dir>"
        )
    if accelerator.is_main_process:
        start_stage(recipe, "ppo")
    parts = build(recipe, accelerator)
    update = 0
    if checkpoint is not None:
        update = load_checkpoint(checkpoint, parts.learner)
        log.info("resuming PPO from %s", checkpoint)
    metrics_path, samples_path = out / "metrics.jsonl", out / "samples.jsonl"
    if accelerator.is_main_process:
        for path in (metrics_path, samples_path):
            truncate_log(path, update)

    main = accelerator.is_main_process
    bar = tqdm(total=cfg.updates, initial=update, desc="PPO", disable=not main)
    while update < cfg.updates:
        metrics, rollout = ppo_update(parts, update)
        update += 1
        if main:
            record_metrics(metrics_path, "update", update, metrics)
            if update % cfg.sample_every == 0 or update == 1:
                log_samples(samples_path, update, rollout)
        bar.update(1)
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", kl=f"{metrics['kl']:.3f}")
        if update % cfg.save_every == 0 or update == cfg.updates:
            save_checkpoint(out, parts.learner, update)
        if not all(math.isfinite(v) for v in metrics.values()):
            raise TrainingDiverged(f"update {update}: non-finite metrics {metrics}")
    bar.close()

    history = read_jsonl(metrics_path) if metrics_path.exists() else []
    first, last = (history[0], history[-1]) if history else ({}, {})
    summary = {
        "updates": update,
        "processes": accelerator.num_processes,
        "reward_first": first.get("reward"),
        "reward_last": last.get("reward"),
        "kl_last": last.get("kl"),
        "answer_length_last": last.get("answer_length"),
    }
    if main:
        save_policy(parts, out, summary)
    accelerator.wait_for_everyone()
    end_stage()
    return PPOOutcome(out, summary, history)


def log_samples(path: Path, update: int, rollout: Rollout, count: int = 3) -> None:
    """Append a few of this update's answers to samples.jsonl and show them as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"PPO update {update}: sample answers", show_lines=True)
    for column in ("prompt", "answer", "reward"):
        table.add_column(column)
    scores = rollout.raw_scores.tolist()
    for prompt, answer, score in zip(rollout.prompts, rollout.answers, scores, strict=True):
        if table.row_count == count:
            break
        append_jsonl(path, {"update": update, "prompt": prompt, "answer": answer, "score": score})
        table.add_row(prompt[-200:], answer[:300], f"{score:.3f}")
    Console(stderr=True).print(table)


def save_policy(parts: PPOParts, out: Path, summary: dict[str, Any]) -> None:
    """The policy alone as a standard PEFT adapter: PeftModel.from_pretrained(base, dir) loads it."""
    peft = parts.model.peft
    config = peft.peft_config["policy"]
    with parts.learner.masters.swapped_in():  # the float32 weights the optimizer holds
        # We never resize the vocabulary; "auto" would look the base up on the Hub to check.
        weights = get_peft_model_state_dict(
            peft, adapter_name="policy", save_embedding_layers=False
        )
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in weights.items()},
            out / "adapter_model.safetensors",
        )
    config.inference_mode = True
    name_base_in(config, parts.recipe.model)
    config.save_pretrained(out)
    config.inference_mode = False
    parts.tokenizer.save_pretrained(out)
    write_summary(out, summary)
    write_model_card(out, parts.recipe, "ppo", base_model_id(parts.recipe.model), summary)
