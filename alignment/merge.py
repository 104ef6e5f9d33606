"""`align merge`: a stage's LoRA adapter merged into its base, saved as a full Transformers model.

A policy (sft, ppo, dpo) becomes an `AutoModelForCausalLM`; a reward adapter becomes an
`AutoModelForSequenceClassification` (one label, "reward") whose config also holds the reward
statistics PPO normalises with (`reward_mean`, `reward_std`, `reward_max_length`). A base trained
in 4-bit (or 8-bit) is loaded as trained and dequantised before merging, so the merged weights
compute what the adapter computed on the quantized base; the merged model is in the compute
dtype and says so on its card.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from alignment.errors import RunStateError
from alignment.models import base_model_id, compute_dtype
from alignment.reward.loading import load_reward_model
from alignment.runs import fsync_tree
from alignment.trained import TrainedAdapter, load_policy, open_adapter

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeOutcome:
    out: Path
    kind: str  # "causal LM" or "reward model"
    dequantized: str | None  # the quantization the base trained in, when it was dequantised

    def describe(self) -> str:
        """What was written, and whether the base was dequantised, in one line."""
        line = f"merged {self.kind}: {self.out}"
        if self.dequantized:
            line += f" (the {self.dequantized} base was dequantised before merging)"
        return line


def merge_adapter(adapter: str | Path, out: str | Path) -> MergeOutcome:
    """Merge the adapter `adapter` (a stage directory or Hub id) into its base and save to `out`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunStateError(f"--out {out}: already exists and is not an empty directory")
    trained = open_adapter(adapter)
    quantization = trained.model_cfg.quantization
    dequantized = None if quantization == "none" else quantization
    if trained.is_reward:
        model, tokenizer, stats = load_reward_model(trained.path, dequantize=True)
    else:
        model, tokenizer = load_policy(trained, dequantize=True)
    merged = model.merge_and_unload()
    merged.config.pad_token_id = tokenizer.pad_token_id
    if trained.is_reward:
        merged.config.id2label, merged.config.label2id = {0: "reward"}, {"reward": 0}
        merged.config.reward_mean = stats.get("mean")
        merged.config.reward_std = stats.get("std")
        merged.config.reward_max_length = stats.get("max_length")
    staging = out.with_name(f".{out.name}.partial")
    shutil.rmtree(staging, ignore_errors=True)
    merged.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    (staging / "README.md").write_text(_card(trained, dequantized))
    fsync_tree(staging)
    if out.exists():
        out.rmdir()  # empty, checked above
    os.replace(staging, out)
    outcome = MergeOutcome(out, "reward model" if trained.is_reward else "causal LM", dequantized)
    log.info("%s", outcome.describe())
    return outcome


def _card(trained: TrainedAdapter, dequantized: str | None) -> str:
    base = base_model_id(trained.model_cfg)
    dtype = str(compute_dtype(trained.model_cfg)).removeprefix("torch.")
    if trained.is_reward:
        pipeline, auto_class = "text-classification", "AutoModelForSequenceClassification"
        usage = """
conversation = [{"role": "user", "content": "..."}, {"role": "assistant", "content": "..."}]
batch = tokenizer.apply_chat_template(conversation, return_dict=True, return_tensors="pt")
reward = model(**batch).logits[0, 0]  # read at the last token, as `align eval rm` scores
normalised = (reward - model.config.reward_mean) / model.config.reward_std  # as PPO uses it
"""
    else:
        pipeline, auto_class = "text-generation", "AutoModelForCausalLM"
        usage = ""
    quantized = (
        f"The base was trained in {dequantized} and dequantised to {dtype} before merging, so "
        "the merged weights compute what the adapter computed on the quantized base.\n\n"
        if dequantized
        else ""
    )
    adapter_card = trained.path / "README.md"
    body = adapter_card.read_text().split("---", 2)[-1] if adapter_card.is_file() else ""
    return f"""---
base_model: {base}
library_name: transformers
pipeline_tag: {pipeline}
tags: [alignment, {trained.stage}, merged]
---

# Merged {trained.stage} model

The `{trained.stage}` LoRA adapter merged into `{base}` by `align merge` ({dtype} weights).
{quantized}
```python
from transformers import {auto_class}, AutoTokenizer

model = {auto_class}.from_pretrained("<this directory or Hub id>")
tokenizer = AutoTokenizer.from_pretrained("<this directory or Hub id>")
{usage}```

## The adapter's card
{body}"""
