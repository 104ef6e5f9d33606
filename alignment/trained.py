"""A trained stage directory opened for use after training (`align chat`, `align merge`): the
recipe it ran with, its base model settings, and the model with its adapter applied.

A stage directory (runs/<name>/sft, rm, ppo, dpo) is a PEFT adapter with the tokenizer it trained
with; the run's resolved recipe sits beside it (runs/<name>/recipe.yaml) and a reward adapter
records its base model settings in reward_stats.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from peft import PeftConfig, PeftModel
from transformers import PreTrainedTokenizerBase

from alignment.config import ModelConfig, Recipe, load_recipe
from alignment.errors import RunStateError
from alignment.hub import resolve_adapter
from alignment.models import load_model, load_tokenizer
from alignment.reward.loading import read_stats, saves_score_head


@dataclass(frozen=True)
class TrainedAdapter:
    path: Path  # the adapter directory (a Hub id is downloaded first)
    model_cfg: ModelConfig  # the base model and how it was loaded in training
    recipe: Recipe | None  # the run's recipe, when the adapter sits in a run directory
    is_reward: bool  # a reward adapter: a score head rather than the LM head

    @property
    def stage(self) -> str:
        return self.path.name


def open_adapter(adapter: str | Path, base: str | None = None) -> TrainedAdapter:
    """The adapter directory or Hub id `adapter`, over `base` when given, else over the base model
    its run trained it on (reward_stats.json, else the run's recipe.yaml, else adapter_config's
    base_model_name_or_path)."""
    path = resolve_adapter(adapter, "adapter")
    if not (path / "adapter_config.json").is_file():
        raise RunStateError(
            f"{adapter}: not an adapter directory (no adapter_config.json); expected a stage "
            "directory such as runs/<name>/sft or an adapter's Hub id"
        )
    config = PeftConfig.from_pretrained(str(path))
    recipe_file = path.parent / "recipe.yaml"
    recipe = load_recipe(recipe_file) if recipe_file.is_file() else None
    stats = read_stats(path)
    if base is not None:
        model_cfg = ModelConfig(name=base)
    elif "model" in stats:
        model_cfg = ModelConfig.model_validate(stats["model"])
    elif recipe is not None:
        model_cfg = recipe.model
    else:
        model_cfg = ModelConfig(name=config.base_model_name_or_path)
    return TrainedAdapter(path, model_cfg, recipe, saves_score_head(config))


def adapter_tokenizer(adapter: TrainedAdapter) -> PreTrainedTokenizerBase:
    """The tokenizer and chat template the adapter trained with (the base's if it has none)."""
    has_tokenizer = (adapter.path / "tokenizer_config.json").is_file()
    return load_tokenizer(adapter.model_cfg, str(adapter.path) if has_tokenizer else None)


def load_policy(
    adapter: TrainedAdapter, dequantize: bool = False
) -> tuple[PeftModel, PreTrainedTokenizerBase]:
    """(causal LM with the adapter, in eval mode, tokenizer) of a policy adapter (sft, ppo, dpo)."""
    if adapter.is_reward:
        raise RunStateError(
            f"{adapter.path}: a reward model's adapter (a score head, no language model head); "
            "give a policy: an sft, ppo or dpo stage directory"
        )
    base = load_model(adapter.model_cfg, dequantize=dequantize)
    # As trained: PEFT would otherwise upcast a bf16 adapter to float32 on load.
    model = PeftModel.from_pretrained(base, str(adapter.path), autocast_adapter_dtype=False)
    model.eval()
    return model, adapter_tokenizer(adapter)
