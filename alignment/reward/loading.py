"""Reward adapters on disk: loading one to score with, or reading its parts for PPO.

A reward adapter directory (written by `align rm`) is a PEFT adapter of task SEQ_CLS whose
`score` head is saved through `modules_to_save`, the tokenizer, and `reward_stats.json`: the
reward mean/std on training answers (PPO normalises with them), the max_length it trained at and
the model settings needed to reload it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig, PeftModel, TaskType
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl.trainer.reward_trainer import suppress_seqcls_warning

from alignment.config import ModelConfig
from alignment.errors import RunStateError
from alignment.models import load_model, load_tokenizer

STATS_FILE = "reward_stats.json"
SCORE_KEY = "base_model.model.score.weight"  # where PEFT saves a sequence-classification head


def read_stats(path: Path) -> dict[str, Any]:
    """The reward adapter's reward_stats.json, or {} where it has none (e.g. `trl reward`'s)."""
    stats_path = path / STATS_FILE
    return json.loads(stats_path.read_text()) if stats_path.is_file() else {}


def saves_score_head(adapter: PeftConfig) -> bool:
    """Whether a PEFT adapter is a reward model's: a sequence-classification task or a saved
    `score` head."""
    return adapter.task_type == TaskType.SEQ_CLS or "score" in (adapter.modules_to_save or [])


def load_reward_model(
    path: str | Path,
    quantization: str | None = None,
    dtype: str | None = None,
    dequantize: bool = False,
) -> tuple[PeftModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """(model in eval mode, tokenizer, stats) of a reward adapter directory.

    Reads the base model settings from reward_stats.json; a directory without one (e.g. from
    `trl reward`) uses adapter_config.json's base model with default settings. `quantization`
    overrides the recorded quantization, `dtype` the recorded compute dtype; `dequantize` loads a
    quantized base as trained and unpacks it to plain weights (for merging).
    """
    path = Path(path)
    if not (path / "adapter_config.json").is_file():
        raise RunStateError(
            f"{path}: not a reward adapter directory (no adapter_config.json); train one with "
            "`align rm RECIPE`"
        )
    adapter = PeftConfig.from_pretrained(str(path))
    if not saves_score_head(adapter):
        raise RunStateError(
            f"{path}: this adapter has no trained score head (task {adapter.task_type}); it is "
            "not a reward model"
        )
    stats = read_stats(path)
    if "model" in stats:
        model_cfg = ModelConfig.model_validate(stats["model"])
    else:
        model_cfg = ModelConfig(name=adapter.base_model_name_or_path)
    overrides = {"quantization": quantization, "dtype": dtype}
    model_cfg = model_cfg.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    has_tokenizer = (path / "tokenizer_config.json").is_file()
    tokenizer = load_tokenizer(model_cfg, str(path) if has_tokenizer else None)
    with suppress_seqcls_warning():
        base: PreTrainedModel = load_model(model_cfg, head="score", dequantize=dequantize)
    # By default PEFT upcasts bf16/fp16 adapters to float32 on load; training ran them in the
    # compute dtype, and scores only reproduce exactly in it (bf16 scores moved by ~0.02 otherwise).
    model = PeftModel.from_pretrained(base, str(path), autocast_adapter_dtype=False)
    model.eval()
    return model, tokenizer, stats


def read_reward_adapter(
    rm_dir: Path,
) -> tuple[PeftLoraConfig, dict[str, torch.Tensor], torch.Tensor]:
    """The LoRA config, LoRA weights and score-head weight of a reward-model adapter directory."""
    config_path, weights_path = rm_dir / "adapter_config.json", rm_dir / "adapter_model.safetensors"
    if not (config_path.is_file() and weights_path.is_file()):
        raise RunStateError(
            f"{rm_dir}: no reward adapter here (run `align rm` first, or set ppo.reward_adapter)"
        )
    weights = load_file(weights_path)
    if SCORE_KEY not in weights:
        raise RunStateError(
            f"{weights_path}: no score head ({SCORE_KEY}); is this a reward-model adapter?"
        )
    head = weights.pop(SCORE_KEY)
    config = PeftLoraConfig.from_pretrained(rm_dir)
    # The same LoRA, applied to the causal-LM body: its head is ours (below), not a PEFT module.
    config.task_type = TaskType.CAUSAL_LM
    config.modules_to_save = None
    return config, weights, head
