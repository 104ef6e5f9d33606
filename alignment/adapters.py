"""The adapters a stage starts from: found in the run directory or given, and checked to fit."""

from __future__ import annotations

import json
from pathlib import Path

from alignment.config import ModelConfig, Recipe
from alignment.errors import RunStateError
from alignment.hub import resolve_adapter
from alignment.models import base_model_id


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


def base_names(model_cfg: ModelConfig, source: str) -> tuple[str, str]:
    """The names an adapter may record for this run's base: its Hub id (what `align` writes)
    and the local directory or id it loads from (what other tools write)."""
    return base_model_id(model_cfg), source


def check_same_base(adapter_dir: Path, names: tuple[str, ...], role: str) -> None:
    """Refuse an adapter trained on another base model than this run's, known by `names`."""
    recorded = json.loads((adapter_dir / "adapter_config.json").read_text()).get(
        "base_model_name_or_path"
    )
    if recorded and Path(recorded).name not in {Path(name).name for name in names}:
        raise RunStateError(
            f"{adapter_dir}: the {role} adapter was trained on {recorded!r}, but this run's base model "
            f"is {names[0]!r}; adapters only fit the base model they were trained on"
        )
