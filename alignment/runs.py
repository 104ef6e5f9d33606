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
import importlib.metadata
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from alignment.config import Recipe, save_recipe
from alignment.models import base_licence, base_provenance
from alignment.tracking import StageTrackers

METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step of a stage


def stage_dir(recipe: Recipe, stage: str) -> Path:
    return recipe.output_dir / stage


@dataclass
class _OpenStage:
    log_file: logging.Handler
    trackers: StageTrackers


_open_stage: _OpenStage | None = None  # a process runs one stage at a time
_STAGE_LOGGERS = ("alignment", "transformers", "trl", "peft")


def start_stage(recipe: Recipe, stage: str) -> Path:
    """Create the stage directory, save the resolved recipe, send logs to <stage>/train.log and
    metrics to the recipe's trackers (closing an earlier stage's first, so logs never mix)."""
    end_stage()
    out = stage_dir(recipe, stage)
    trackers = StageTrackers(
        recipe.report_to, out, recipe.name, stage, recipe.model_dump(mode="json")
    )
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, recipe.output_dir / "recipe.yaml")
    handler = logging.FileHandler(out / "train.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in _STAGE_LOGGERS:
        logging.getLogger(name).addHandler(handler)
    global _open_stage
    _open_stage = _OpenStage(handler, trackers)
    return out


def end_stage() -> None:
    """Close the running stage's train.log and trackers; later logs go to the console only."""
    global _open_stage
    if _open_stage is None:
        return
    for name in _STAGE_LOGGERS:
        logging.getLogger(name).removeHandler(_open_stage.log_file)
    _open_stage.log_file.close()
    _open_stage.trackers.finish()
    _open_stage = None


def record_metrics(path: Path, step_key: str, step: int, metrics: dict[str, Any]) -> None:
    """Append one row to a stage's metrics.jsonl and log it to the stage's trackers under the
    same names."""
    append_jsonl(path, {step_key: step, "time": time.time(), **metrics})
    if _open_stage is not None:
        _open_stage.trackers.log(metrics, step)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger(TrainerCallback):
    """Records every Trainer log (loss, eval loss, learning rate, tokens) in metrics.jsonl and
    the stage's trackers."""

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
            record_metrics(self.path, "step", state.global_step, logs)


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


# How a stage's adapter is loaded elsewhere: the PEFT auto class and the card's pipeline tag.
_REWARD_STAGES = ("rm",)
_LIBRARIES = ("alignment", "transformers", "trl", "peft", "accelerate", "torch")


def _usage(stage: str) -> tuple[str, str]:
    """(pipeline_tag, usage snippet) for a stage's adapter: a reward model is a sequence
    classifier with one label, every other stage a causal LM."""
    if stage in _REWARD_STAGES:
        return (
            "text-classification",
            """```python
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoTokenizer

from alignment.reward import score  # optional: rewards exactly as `align eval rm` reads them

model = AutoPeftModelForSequenceClassification.from_pretrained("<this directory or Hub id>", num_labels=1)
tokenizer = AutoTokenizer.from_pretrained("<this directory or Hub id>")
conversation = [{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."}]
print(score(model.eval(), tokenizer, [conversation]))
```""",
        )
    return (
        "text-generation",
        """```python
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

model = AutoPeftModelForCausalLM.from_pretrained("<this directory or Hub id>")
tokenizer = AutoTokenizer.from_pretrained("<this directory or Hub id>")
inputs = tokenizer.apply_chat_template(
    [{"role": "user", "content": "Hi!"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
)
answer = model.generate(**inputs, max_new_tokens=128)[0, inputs["input_ids"].shape[1]:]
print(tokenizer.decode(answer, skip_special_tokens=True))
```""",
    )


def _library_versions(quantized: bool) -> str:
    names = [*_LIBRARIES, "bitsandbytes"] if quantized else list(_LIBRARIES)
    return "\n".join(f"- {name} {importlib.metadata.version(name)}" for name in names)


def write_model_card(
    out: Path,
    recipe: Recipe,
    stage: str,
    base_model: str,
    metrics: dict[str, Any],
    note: str = "",
) -> None:
    """A Hub-style README with metadata (base model, licence, pipeline tag, data), how to load
    the adapter, metrics, library versions and the resolved recipe, so the adapter is
    self-describing wherever it goes, `align push` included."""
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
    pipeline_tag, usage = _usage(stage)
    licence = base_licence(recipe.model)
    metadata = [f"base_model: {base_model}", "library_name: peft", f"pipeline_tag: {pipeline_tag}"]
    if licence:
        metadata.append(f"license: {licence}")
    if hub_datasets:
        metadata.append(f"datasets: [{', '.join(hub_datasets)}]")
    quantized = recipe.model.quantization != "none"
    qlora = ", qlora" if recipe.model.quantization == "4bit" else ""
    metadata.append(f"tags: [alignment, {stage}, lora{qlora}]")
    header = "\n".join(metadata)
    provenance = base_provenance(recipe.model)
    licence_line = (
        f"Licence: {licence}, the base model's." if licence else "Licence: the base model's."
    )
    recipe_yaml = (recipe.output_dir / "recipe.yaml").read_text()
    (out / "README.md").write_text(
        f"""---
{header}
---

# {recipe.name}: {stage} adapter

A LoRA adapter (r={recipe.lora.r}, alpha={recipe.lora.alpha}) for `{base_model}`, trained by the
`{stage}` stage of the `alignment` toolkit. {provenance}

{licence_line}

{usage}

## Data

{data or "- (none recorded)"}

## Metrics

| metric | value |
| --- | --- |
{rows}

## Framework versions

{_library_versions(quantized)}

## Recipe

```yaml
{recipe_yaml}```
{note}"""
    )
