"""CPU-only speed-ups, behind one door. Every call here is a no-op where a GPU does the work.

Eager CPU torch leaves speed and memory on the table that a GPU stack does not: glibc keeps
freed activations resident, PEFT's LoRA forward makes extra passes over each output, TRL
projects padding onto the vocabulary, CPU flash attention has a slow bfloat16 backward, and
bitsandbytes' 4-bit kernels differ between training and decoding. The stages call:

    tune_process()          once at a stage's start (memory release, TRL's head compaction)
    release_memory()        between phases that free large buffers (PPO: generate, score, train)
    fuse_adapters(model)    once a model holds its LoRA adapters (PPO's four roles)
    decoding(model)         around a decoding loop (packed 4-bit kernel)

and `attention_implementation` picks the kernel a model loads with. What each one gains, and
what was tried and dropped, is measured in bench/RESULTS.md (`python bench/cpu_dtype.py`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch

from alignment.cpu.attention import attention_implementation
from alignment.cpu.fused_lora import fuse_lora
from alignment.cpu.labelled_positions import score_labelled_positions_only
from alignment.cpu.memory import release_freed_heap, return_freed_tensors_to_os
from alignment.cpu.packed_4bit import fast_4bit_inference, forbid_implicit_repacking

__all__ = [
    "attention_implementation",
    "decoding",
    "forbid_implicit_repacking",
    "fuse_adapters",
    "release_memory",
    "tune_process",
]


def applies() -> bool:
    """Whether the CPU paths run: only where no GPU is present."""
    return not torch.cuda.is_available()


def tune_process() -> None:
    """Process-wide settings for a CPU run; safe to call more than once."""
    if applies():
        return_freed_tensors_to_os()
        score_labelled_positions_only()


def release_memory() -> None:
    """Hand freed heap pages back to the OS between phases of a CPU run."""
    if applies():
        release_freed_heap()


def fuse_adapters(model: torch.nn.Module) -> None:
    """Add each LoRA update in one kernel (falls back to PEFT's forward where it does not fit)."""
    if applies():
        fuse_lora(model)


@contextmanager
def decoding(model: torch.nn.Module) -> Iterator[None]:
    """Decode with bitsandbytes' packed 4-bit CPU kernel inside this block."""
    with fast_4bit_inference(model) if applies() else nullcontext():
        yield
