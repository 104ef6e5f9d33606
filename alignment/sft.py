"""Stage 1, supervised fine-tuning: a LoRA adapter trained on demonstrations with TRL's SFTTrainer."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from peft import PeftModel
from transformers import set_seed
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer
from trl.trainer import utils as trl_utils

from alignment.config import Recipe
from alignment.cpu_memory import return_freed_tensors_to_os
from alignment.data import sft_examples
from alignment.errors import RunStateError
from alignment.models import (
    base_model_id,
    compute_dtype,
    load_model,
    load_tokenizer,
    peft_config,
    resolve_model,
    trainer_precision,
)
from alignment.runs import metric_callbacks, start_stage, write_model_card, write_summary

log = logging.getLogger(__name__)


def checkpoint_to_resume(checkpoints: Path, resume: bool) -> str | None:
    """The checkpoint `--resume` continues from; refuses to silently restart over existing ones."""
    last = get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if resume and last is None:
        log.warning("--resume: no checkpoint in %s, starting from the beginning", checkpoints)
    if not resume and last is not None:
        raise RunStateError(
            f"{checkpoints.parent} already holds a run ({Path(last).name}); pass --resume to continue "
            "it, or set run_dir=<new dir> to start another"
        )
    return last


def keep_trainable_params_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Undo TRL's cast of QLoRA adapters to bf16 where compute runs in another dtype.

    With float32 compute (CPUs without native bf16), bf16 adapters would lose precision in every
    optimizer update, break a float32 head and slow each LoRA matmul about 2.4x. With bf16 compute
    this is a no-op.
    """
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def score_labelled_positions_only() -> None:
    """Let TRL's fused LM head project only positions that carry a label, on CPU as well.

    TRL compacts to labelled positions only where it runs Triton kernels, because elsewhere (e.g.
    XLA devices) a varying token count recompiles the tiles; eager CPU has no such cost. Prompt and
    padding positions are most of an SFT batch, so without this the 49k-wide head projects 2-3x
    the tokens it needs and keeps tile-sized temporaries for them. The result is identical: the
    skipped positions contribute exactly zero.
    """
    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "cpu_compacts", False):
        return  # a TRL without this switch, or already patched

    def compact_on_cpu_too(device: torch.device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact_on_cpu_too.cpu_compacts = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu_too


@dataclass
class SFTOutcome:
    out_dir: Path  # the saved adapter, tokenizer, metrics and card
    model: PeftModel  # the trained model, still in memory
    summary: dict[str, Any]


def run_sft(recipe: Recipe, resume: bool = False) -> SFTOutcome:
    """Train the SFT adapter and save it into the run directory."""
    cfg = recipe.sft
    set_seed(recipe.seed)
    on_cpu = not torch.cuda.is_available()
    if on_cpu:
        return_freed_tensors_to_os()
        score_labelled_positions_only()
    # Read and validate all data before the (slow) model load, so bad rows fail fast.
    train_rows = sft_examples(cfg.data, cfg.data_split, cfg.assistant_only_loss)
    train = Dataset.from_list(train_rows)
    if cfg.eval_data:
        evaluation = Dataset.from_list(
            sft_examples(cfg.eval_data, "train", cfg.assistant_only_loss)
        )
    elif cfg.eval_fraction > 0 and len(train) >= 2:
        split = train.train_test_split(test_size=cfg.eval_fraction, seed=recipe.seed)
        train, evaluation = split["train"], split["test"]
    else:
        evaluation = None

    out = start_stage(recipe, "sft")
    checkpoints = out / "checkpoints"
    last_checkpoint = checkpoint_to_resume(checkpoints, resume)
    source = resolve_model(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    model = load_model(recipe.model, source=source)

    args = SFTConfig(
        output_dir=str(checkpoints),
        seed=recipe.seed,
        max_length=cfg.max_length,
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
        padding_free=cfg.padding_free,
        activation_checkpointing=cfg.gradient_checkpointing,
        **trainer_precision(recipe.model),
        logging_steps=cfg.logging_steps,
        eval_strategy="steps" if evaluation is not None else "no",
        eval_steps=cfg.eval_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        report_to=[],
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train,
        eval_dataset=evaluation,
        processing_class=tokenizer,
        peft_config=peft_config(recipe.lora),
        callbacks=metric_callbacks(out),
    )
    keep_trainable_params_in(trainer.model, compute_dtype(recipe.model))
    result = trainer.train(resume_from_checkpoint=last_checkpoint)

    summary = {
        "train_loss": result.training_loss,
        "steps": result.global_step,
        "train_examples": len(train),
        "train_seconds": result.metrics.get("train_runtime"),
    }
    if evaluation is not None:
        summary["eval_examples"] = len(evaluation)
        summary["eval_loss"] = trainer.evaluate()["eval_loss"]
    if trainer.accelerator.is_main_process:  # under several processes, one writes
        trainer.model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        write_summary(out, summary)
        write_model_card(out, recipe, "sft", base_model_id(recipe.model), summary)
    trainer.accelerator.wait_for_everyone()
    log.info("SFT adapter saved to %s: %s", out, summary)
    return SFTOutcome(out, trainer.model, summary)
