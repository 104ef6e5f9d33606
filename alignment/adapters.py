"""The adapters a stage starts from: found in the run directory or given, and checked to fit."""

from __future__ import annotations

import json
from pathlib import Path

from alignment.config import Recipe
from alignment.errors import RunStateError
from alignment.hub import resolve_adapter


def input_adapter(recipe: Recipe, given: str | Path | None, key: str, stage: str) -> Path:
    """The adapter directory recipe key `key` names (a directory or Hub id), else the run's own
    <run_dir>/<stage>; refused unless it holds an adapter."""
    path = resolve_adapter(given, key) if given else recipe.output_dir / stage
    if not (path / "adapter_config.json").is_file():
        hint = (
            f"{key} must be an adapter directory or Hub id"
            if given
            else f"run `align {stage}` with this recipe first, or set {key}"
        )
        raise RunStateError(f"{path}: no {stage} adapter here; {hint}")
    return path


def check_same_base(adapter_dir: Path, base_name: str, role: str) -> None:
    """Refuse an adapter trained on another base model than this run's."""
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if recorded and Path(recorded).name != Path(base_name).name:
        raise RunStateError(
            f"{adapter_dir}: the {role} adapter was trained on {recorded!r}, but this run's base model "
            f"is {base_name!r}; adapters only fit the base model they were trained on"
        )
