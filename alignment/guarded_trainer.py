"""What keeps a Trainer stage (sft, rm, dpo) safe: complete checkpoints, exact resume, a divergence
guard, and Ctrl-C at a step boundary.

Complete checkpoints. The Trainer writes a checkpoint's weights, optimizer, scheduler and RNG state,
then `trainer_state.json`. Once it has, `StageGuard.on_save` syncs every file to disk and writes
STATE_FILE last, atomically: a checkpoint with that file is complete, one without was cut short
(a kill or a full disk mid-save). `--resume` takes the newest complete checkpoint and moves the
incomplete ones aside, saying which and why.

Exact resume. PEFT reloads adapters in float32 whatever they were saved in, so a bf16 run would
continue in another dtype; `_load_from_checkpoint` puts every tensor back in the dtype it trained
in before the optimizer is built. The loss sum and TRL's token count, which the Trainer does not
checkpoint, travel in STATE_FILE, so the resumed run's summary covers every step. Length-grouped
batches are drawn from (seed, epoch) rather than from the global RNG, whose state on resume is the
checkpoint's, not the one the uninterrupted run had when it started that epoch.

Divergence. A non-finite loss, gradient or weight stops the stage at that step with an error naming
it; the step is never checkpointed, so the last good checkpoint stays and no adapter is written.

Ctrl-C. The first interrupt finishes the current step, saves a checkpoint and stops with a message
saying how to resume; a second one stops at once.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.utils.data import Sampler
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, TrainOutput

from alignment.errors import RunStateError, TrainingDiverged
from alignment.runs import count_rows, fsync_tree, keep_first_rows, write_json

log = logging.getLogger(__name__)

STATE_FILE = "stage_state.json"  # written last: its presence marks a complete checkpoint


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C, handled: a checkpoint was saved at a step boundary; the message says how to resume."""


def keep_trainable_params_in(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """Put trainable tensors in the compute dtype (TRL casts QLoRA adapters to bf16, PEFT reloads
    them in float32). With float32 compute on a CPU a bf16 adapter would lose precision in every
    update and meet float32 activations in a bf16 head."""
    for param in model.parameters():
        if param.requires_grad and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.rsplit("-", 1)[1])


def checkpoint_to_resume(checkpoints: Path, resume: bool, metrics_file: Path) -> str | None:
    """The newest complete checkpoint `--resume` continues from; refuses to start over one silently.

    Incomplete checkpoints (no STATE_FILE) are moved aside as incomplete-<name>-<time>, and
    `metrics_file` keeps the rows logged up to the checkpoint (the later steps are trained again).
    """
    found = sorted(
        (
            p
            for p in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*")
            if p.name.split("-")[-1].isdigit()
        ),
        key=_step_of,
    )
    complete = [p for p in found if (p / STATE_FILE).is_file()]
    last = complete[-1] if complete else None
    if not resume:
        if found:
            raise RunStateError(
                f"{checkpoints.parent} already holds a run ({found[-1].name}); pass --resume to "
                "continue it, or set run_dir=<new dir> to start another"
            )
        return None
    for partial in (p for p in found if p not in complete):
        aside = checkpoints / f"incomplete-{partial.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        partial.rename(aside)
        log.warning(
            "--resume: skipped %s: incomplete (no %s; its save was cut short); moved to %s",
            partial.name,
            STATE_FILE,
            aside.name,
        )
    if last is None:
        log.warning(
            "--resume: no complete checkpoint in %s, starting from the beginning", checkpoints
        )
        keep_first_rows(metrics_file, 0)
        return None
    log.info("--resume: continuing from %s", last)
    keep_first_rows(metrics_file, json.loads((last / STATE_FILE).read_text())["metrics_rows"])
    return str(last)


class GuardedTrainer:
    """Mixin placed before a TRL trainer class: `class StageSFT(GuardedTrainer, SFTTrainer)`."""

    def __init__(
        self, *args: Any, compute_dtype: torch.dtype, metrics_file: Path, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.metrics_file = metrics_file  # its rows up to a checkpoint are what a resume keeps
        self.loss_sum = 0.0  # every optimizer step's loss, summed: the summary's mean covers all
        self.guard = StageGuard(self)
        self.add_callback(self.guard)
        keep_trainable_params_in(self.model, compute_dtype)

    def train_from(self, checkpoint: str | None) -> TrainOutput:
        """Train from the start or `checkpoint`; StageInterrupted if Ctrl-C stopped it early."""
        if checkpoint is not None:
            state = TrainerState.load_from_json(str(Path(checkpoint) / TRAINER_STATE_NAME))
            planned = self.args.max_steps if self.args.max_steps > 0 else state.max_steps
            if state.global_step >= planned:
                return self._restore_finished(checkpoint, state)
        with self.guard.handling_ctrl_c():
            result = self.train(resume_from_checkpoint=checkpoint)
        if self.guard.interrupted:  # the CLI adds the command that resumes
            raise StageInterrupted(
                f"interrupted: stopped after step {self.state.global_step} and saved "
                f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            )
        return result

    def _restore_finished(self, checkpoint: str, state: TrainerState) -> TrainOutput:
        """The last checkpoint of a run killed after its last step, loaded without training (the
        Trainer resumed at max_steps would take one step more), with the end-of-training log."""
        self._load_from_checkpoint(checkpoint)
        self.state = state
        metrics = {
            "train_runtime": 0.0,
            "total_flos": state.total_flos,
            "train_loss": self.mean_loss(),
        }
        self.log(metrics)
        return TrainOutput(state.global_step, self.mean_loss(), metrics)

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        value = loss.item()
        if not math.isfinite(value):
            raise self.guard.diverged(f"the loss is {value}")
        self.loss_sum += value
        return loss

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: Any = None) -> None:
        dtypes = {name: param.dtype for name, param in self.model.named_parameters()}
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        # PEFT upcasts reloaded adapters (DPO's frozen reference too): every tensor goes back to the
        # dtype it trained in, before the optimizer is built.
        for name, param in self.model.named_parameters():
            if param.dtype != dtypes.get(name, param.dtype):
                param.data = param.data.to(dtypes[name])
        state = json.loads((Path(resume_from_checkpoint) / STATE_FILE).read_text())
        self.loss_sum = state["loss_sum"]
        if "num_tokens" in state:  # TRL's running token count, logged as num_tokens
            self._total_train_tokens = state["num_tokens"]

    def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Sampler | None:
        sampler = super()._get_train_sampler(*args, **kwargs)
        if isinstance(sampler, LengthGroupedSampler):
            return EpochSeededLengthSampler(sampler.lengths, sampler.batch_size, self.args.seed)
        return sampler

    def mean_loss(self) -> float:
        return self.loss_sum / max(self.state.global_step, 1)

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if "train_loss" in logs:  # the Trainer's own figure covers only steps since a resume
            logs["train_loss"] = self.mean_loss()
        super().log(logs, *args, **kwargs)


class EpochSeededLengthSampler(Sampler[int]):
    """transformers' length-grouped order, drawn from (seed, epoch); the Trainer calls set_epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int) -> None:
        self.lengths, self.batch_size, self.seed, self.epoch = lengths, batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class StageGuard(TrainerCallback):
    """The divergence checks, the completeness marker and the Ctrl-C handler of a GuardedTrainer."""

    def __init__(self, trainer: GuardedTrainer) -> None:
        self.trainer = trainer
        self.interrupted = False

    def diverged(self, what: str) -> TrainingDiverged:
        checkpoints = Path(self.trainer.args.output_dir)
        complete = [p.name for p in checkpoints.glob(f"{PREFIX_CHECKPOINT_DIR}-*/{STATE_FILE}")]
        kept = (
            f"the last good checkpoint is kept in {checkpoints}"
            if complete
            else "no checkpoint was saved before it"
        )
        return TrainingDiverged(
            f"training diverged at step {self.trainer.state.global_step + 1}: {what}; {kept}, and "
            "no adapter was written (lower the learning rate, or check the data)"
        )

    def _check_finite(self, model: torch.nn.Module, of_grads: bool) -> None:
        for name, param in model.named_parameters():
            tensor = param.grad if of_grads else param
            if param.requires_grad and tensor is not None and not torch.isfinite(tensor).all():
                raise self.diverged(
                    f"{'the gradient of' if of_grads else 'the weight'} {name} is not finite"
                )

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._check_finite(self.trainer.model, of_grads=True)

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        # Before the Trainer logs, evaluates or saves this step: a bad step is never checkpointed.
        self._check_finite(self.trainer.model, of_grads=False)
        if self.interrupted:
            control.should_save = True
            control.should_training_stop = True

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        fsync_tree(checkpoint)
        marker = {
            "step": state.global_step,
            "loss_sum": self.trainer.loss_sum,
            "metrics_rows": count_rows(self.trainer.metrics_file),
        }
        if hasattr(self.trainer, "_total_train_tokens"):
            marker["num_tokens"] = self.trainer._total_train_tokens
        write_json(checkpoint / STATE_FILE, marker)

    @contextmanager
    def handling_ctrl_c(self) -> Iterator[None]:
        """Inside the block, Ctrl-C asks for a stop at the next step boundary (main thread only:
        signal handlers can only be set there)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_interrupt)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def _on_interrupt(self, signum: int, frame: FrameType | None) -> None:
        if self.interrupted:  # the second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.interrupted = True
        log.warning(
            "interrupt: finishing this step, saving a checkpoint, then stopping (Ctrl-C again to stop now)"
        )
