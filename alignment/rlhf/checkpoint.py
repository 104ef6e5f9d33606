"""Resumable PPO checkpoints, written atomically and read back without unpickling code.

<out>/checkpoints/update-N/ holds what a resumed run needs to reproduce the uninterrupted one:

    trainable.safetensors      float32 masters of the policy and value adapters and value head
    optimizer.pt, scheduler.pt their state dicts
    state.json                 the update count and the KL coefficient
    rng-<rank>.pt              each process's torch, Python and numpy RNG states

It is written into a hidden `.update-N.partial` folder and renamed when complete, so a kill
leaves the previous checkpoint intact; the last two are kept. Every .pt file is loaded with
`weights_only=True` (tensors and plain containers only), so a tampered file cannot run code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from alignment.rlhf.learner import Learner
from alignment.runs import read_jsonl


def _update_number(path: Path) -> int:
    return int(path.name.split("-")[1])


def last_checkpoint(out: Path) -> Path | None:
    found = sorted((out / "checkpoints").glob("update-*"), key=_update_number)
    return found[-1] if found else None


def save_checkpoint(out: Path, learner: Learner, update: int) -> None:
    """Everything a resumed run needs after `update` updates; every process calls this."""
    accelerator = learner.accelerator
    checkpoints = out / "checkpoints"
    final = checkpoints / f"update-{update}"
    staging = checkpoints / f".update-{update}.partial"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save_file(
            {k: v.detach().contiguous().cpu() for k, v in learner.masters.masters.items()},
            staging / "trainable.safetensors",
        )
        torch.save(learner.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(learner.scheduler.state_dict(), staging / "scheduler.pt")
        (staging / "state.json").write_text(
            json.dumps({"update": update, "kl_coef": learner.kl.coef})
        )
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), staging / f"rng-{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging.rename(final)
        for old in sorted(checkpoints.glob("update-*"), key=_update_number)[:-2]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def load_checkpoint(checkpoint: Path, learner: Learner) -> int:
    """Restore the learner and this process's RNG states; returns the updates already done."""
    masters = learner.masters.masters
    with torch.no_grad():
        for name, tensor in load_file(checkpoint / "trainable.safetensors").items():
            masters[name].copy_(tensor)
    learner.masters.copy_to_model()
    learner.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=True))
    learner.scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=True))
    state = json.loads((checkpoint / "state.json").read_text())
    learner.kl.coef = state["kl_coef"]
    rank = learner.accelerator.process_index
    _set_rng_state(torch.load(checkpoint / f"rng-{rank}.pt", weights_only=True))
    return state["update"]


def _rng_state() -> dict[str, Any]:
    # numpy's state holds an ndarray, which weights_only refuses: its keys are stored as a list.
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(cached_gaussian)],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, position, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state(
        (name, np.array(keys, dtype=np.uint32), position, has_gauss, cached_gaussian)
    )


def truncate_log(path: Path, last_update: int) -> None:
    """Drop records logged after the checkpoint being resumed: those updates are redone."""
    kept = [r for r in read_jsonl(path) if r["update"] <= last_update] if path.exists() else []
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))
