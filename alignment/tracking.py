"""Experiment tracking: a stage's metrics go to the recipe's `report_to` trackers (TensorBoard,
trackio, Weights & Biases) through accelerate's tracker classes, under the names metrics.jsonl
uses, with the resolved recipe as the run's configuration.

One path for every stage: the Trainer stages hand their logs over in a callback
(runs.MetricsLogger) and PPO its per-update metrics, each where it writes metrics.jsonl.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.tracking import (
    GeneralTracker,
    TensorBoardTracker,
    TrackioTracker,
    WandBTracker,
    get_available_trackers,
)

from alignment.errors import RecipeError


def _flat(values: dict[str, Any], prefix: str = "") -> dict[str, bool | int | float | str]:
    """Dotted keys and scalar values: what TensorBoard's hparams (and every tracker) accept."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = (
                value if isinstance(value, (bool, int, float, str)) else str(value)
            )
    return flat


class StageTrackers:
    """The trackers of one stage. They start at the first metrics logged, so only the process
    that logs (the main one under `accelerate launch`) opens a tracker run."""

    def __init__(
        self, report_to: list[str], out: Path, project: str, stage: str, config: dict[str, Any]
    ) -> None:
        available = {str(tracker) for tracker in get_available_trackers()}
        missing = [name for name in report_to if name not in available]
        if missing:
            raise RecipeError(
                f"report_to: {', '.join(missing)} not installed; pip install "
                f"'alignment[{missing[0]}]', or leave it out of report_to"
            )
        makers: dict[str, Callable[[], GeneralTracker]] = {
            # TensorBoard's "run name" is the folder under logging_dir: <stage>/tensorboard.
            "tensorboard": lambda: TensorBoardTracker("tensorboard", out),
            "trackio": lambda: TrackioTracker(project, name=stage),
            "wandb": lambda: WandBTracker(project, name=stage, group=project),
        }
        self.makers = [makers[name] for name in report_to]
        self.config = _flat(config)
        self.trackers: list[GeneralTracker] = []

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Log the numeric `metrics` (metrics.jsonl's names) at `step`."""
        if self.makers and not self.trackers:
            self.trackers = [make() for make in self.makers]
            for tracker in self.trackers:
                tracker.start()
                tracker.store_init_configuration(self.config)
        numbers = {
            k: v
            for k, v in metrics.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        for tracker in self.trackers:
            tracker.log(numbers, step=step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
