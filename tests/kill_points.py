"""Run one `align` stage and SIGKILL it at a chosen point: `python -m tests.kill_points POINT STEP ARGS...`.

POINT is where the process dies, at optimizer step STEP:
- mid-save: inside the Trainer's checkpoint save, after the weights, before trainer_state.json;
- mid-run: as step STEP + 1 begins (checkpoint-STEP, if one was due, is complete);
- after-last: after training, before the stage writes its final adapter.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import transformers

from alignment import trainers
from alignment.cli import main


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


@contextmanager
def added_callback(callback: transformers.TrainerCallback) -> Iterator[None]:
    """Every Trainer built inside the block also runs `callback`."""
    init = transformers.Trainer.__init__

    def init_with_callback(self: transformers.Trainer, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        self.add_callback(callback)

    transformers.Trainer.__init__ = init_with_callback
    try:
        yield
    finally:
        transformers.Trainer.__init__ = init


def install(point: str, step: int) -> None:
    if point == "mid-save":
        save_to_json = transformers.TrainerState.save_to_json

        def save_state(self: transformers.TrainerState, path: str) -> None:
            if self.global_step == step:
                die()
            save_to_json(self, path)

        transformers.TrainerState.save_to_json = save_state
    elif point == "mid-run":

        class Killer(transformers.TrainerCallback):
            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                if state.global_step == step:
                    die()

        global _killer  # held: a collected context manager would undo the patch
        _killer = added_callback(Killer())
        _killer.__enter__()
    elif point == "after-last":
        trainers.save = lambda *args, **kwargs: die()
    else:
        raise SystemExit(f"unknown kill point {point!r}")


if __name__ == "__main__":
    install(sys.argv[1], int(sys.argv[2]))
    main(sys.argv[3:])
