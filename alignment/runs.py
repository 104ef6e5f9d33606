"""The run directory: where each stage writes its adapter, checkpoints, metrics, logs and card.

runs/<name>/
  recipe.yaml            the resolved recipe of the latest command
  <stage>/               sft, rm, ppo: a PEFT adapter directory plus
    metrics.jsonl        one JSON object per logged step
    summary.json         final figures of the stage
    train.log            the stage's log
    README.md            model card
    checkpoints/         resumable checkpoints
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from alignment.config import Recipe, save_recipe

METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step of a stage


def stage_dir(recipe: Recipe, stage: str) -> Path:
    return recipe.output_dir / stage


def start_stage(recipe: Recipe, stage: str) -> Path:
    """Create the stage directory, save the resolved recipe, and send logs to <stage>/train.log."""
    out = stage_dir(recipe, stage)
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, recipe.output_dir / "recipe.yaml")
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("alignment", "transformers", "trl", "peft"):
        logging.getLogger(name).addHandler(handler)
    return out


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger(TrainerCallback):
    """Appends every Trainer log (loss, eval loss, learning rate, tokens) to a JSONL file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if state.is_world_process_zero and logs:
            append_jsonl(self.path, {"step": state.global_step, "time": time.time(), **logs})


def metric_callbacks(out: Path) -> list[TrainerCallback]:
    """JSONL metrics always; TensorBoard event files in <stage>/tensorboard when it is installed."""
    callbacks: list[TrainerCallback] = [MetricsLogger(out / METRICS_FILE)]
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return callbacks
    from transformers.integrations import TensorBoardCallback

    tensorboard_logger = TensorBoardCallback()
    tensorboard_logger.logging_dir = str(
        out / "tensorboard"
    )  # the Trainer's default is under checkpoints/
    return [*callbacks, tensorboard_logger]


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: a non-finite number is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON atomically: a temporary file, synced, renamed over `path`."""
    staging = path.with_name(f".{path.name}.partial")
    with staging.open("w", encoding="utf-8") as f:
        f.write(json.dumps(_finite(data), indent=2, allow_nan=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(staging, path)
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(directory: Path) -> None:
    """Flush every file below `directory`, and the directories themselves, to disk."""
    for path in sorted(directory.rglob("*"), reverse=True):
        if path.is_file():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        elif path.is_dir():
            _fsync_dir(path)
    _fsync_dir(directory)


def count_rows(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def keep_first_rows(path: Path, count: int) -> None:
    """Keep the first `count` JSONL rows: a resumed stage logs the later ones again."""
    if path.exists():
        path.write_text("".join(line + "\n" for line in path.read_text().splitlines()[:count]))


def write_summary(out: Path, summary: dict[str, Any]) -> None:
    write_json(out / "summary.json", summary)


# The recipe keys that name each stage's training data, for the model card's Data section.
STAGE_DATA = {
    "sft": ("data", "eval_data"),
    "rm": ("data", "eval_data"),
    "ppo": ("prompts",),
    "dpo": ("data", "eval_data"),
}


def _is_hub_id(name: str) -> bool:
    # The Hub rejects a card whose metadata names a local path as a dataset.
    return not name.startswith((".", "/", "~")) and name.count("/") <= 1 and not Path(name).exists()


def _describe_source(source: str) -> str:
    path = Path(source)
    if path.is_file():
        content = path.read_bytes()
        lines = sum(1 for line in content.splitlines() if line.strip())
        rows = f"{lines} rows, " if path.suffix == ".jsonl" else ""
        return f"`{source}` (local file, {rows}sha256 {hashlib.sha256(content).hexdigest()[:16]})"
    if _is_hub_id(source):
        return f"[`{source}`](https://huggingface.co/datasets/{source}) (Hub dataset)"
    return f"`{source}` (not found when the card was written)"


def write_model_card(
    out: Path,
    recipe: Recipe,
    stage: str,
    base_model: str,
    metrics: dict[str, Any],
    note: str = "",
) -> None:
    """A Hub-style README with metadata (base model, data, metrics, the resolved recipe), so the
    adapter is self-describing wherever it goes, `align push` included."""
    rows = "\n".join(
        f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |"
        for k, v in metrics.items()
    )
    section = getattr(recipe, stage, None)
    sources = {
        f"{stage}.{key}": value
        for key in STAGE_DATA.get(stage, ())
        if (value := getattr(section, key, None))
    }
    data = "\n".join(f"- {key}: {_describe_source(str(v))}" for key, v in sources.items())
    hub_datasets = [str(v) for v in sources.values() if _is_hub_id(str(v))]
    metadata = [f"base_model: {base_model}", "library_name: peft"]
    if hub_datasets:
        metadata.append(f"datasets: [{', '.join(hub_datasets)}]")
    quantized = ", qlora" if recipe.model.quantization == "4bit" else ""
    metadata.append(f"tags: [alignment, {stage}, lora{quantized}]")
    header = "\n".join(metadata)
    recipe_yaml = (recipe.output_dir / "recipe.yaml").read_text()
    (out / "README.md").write_text(
        f"""---
{header}
---

# {recipe.name}: {stage} adapter

A LoRA adapter (r={recipe.lora.r}, alpha={recipe.lora.alpha}) for `{base_model}`, trained by the
`{stage}` stage of the `alignment` toolkit.

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("{base_model}")
model = PeftModel.from_pretrained(base, "<this directory or Hub id>")
```

## Data

{data or "- (none recorded)"}

## Metrics

| metric | value |
| --- | --- |
{rows}

## Recipe

```yaml
{recipe_yaml}```
{note}"""
    )
