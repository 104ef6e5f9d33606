"""Shared fixtures: a tiny random Llama and a byte-level BPE tokenizer built offline, in seconds."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.postgres_support import Cluster, skip_or_fail_without_postgres, throwaway_cluster

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "To reverse a list in Python, call reversed or use slicing with a step of minus one.",
    "Please answer briefly and politely. Thank you! What is the capital of France? Paris.",
    "system user assistant good great marker helpful answer question",
]


def build_tiny_model(
    directory: Path, vocab_size: int = 320, hidden: int = 64, init_range: float = 0.02
) -> Path:
    """Save a 2-layer random Llama with a ChatML tokenizer to `directory` (a real HF model dir)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    backend.train_from_iterator(CORPUS * 20, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",  # pad == eos, as in SmolLM2: the hard case for scoring
        unk_token="<|endoftext|>",
    )
    from alignment.models import DEFAULT_CHAT_TEMPLATE

    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=init_range,  # larger: logits spread enough for LoRA to move them
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def demo_rows(count: int, short: bool = False) -> list[dict]:
    """Chat demonstrations: "Question i: what is i plus i?" answered, or with `short` "Say i" -> "i!"."""

    def turns(i: int) -> list[dict[str, str]]:
        if short:
            return [
                {"role": "user", "content": f"Say {i}"},
                {"role": "assistant", "content": f"{i}!"},
            ]
        return [
            {"role": "user", "content": f"Question {i}: what is {i} plus {i}?"},
            {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
        ]

    return [{"messages": turns(i)} for i in range(count)]


def preference_rows(count: int, short: bool = False) -> list[dict]:
    """TRL explicit-prompt pairs: demo_rows' answer chosen over "The quick brown fox."."""
    return [
        {
            "prompt": row["messages"][:1],
            "chosen": row["messages"][1:],
            "rejected": [{"role": "assistant", "content": "The quick brown fox."}],
        }
        for row in demo_rows(count, short)
    ]


@pytest.fixture
def demos_file(tmp_path: Path) -> Path:
    return write_jsonl(tmp_path / "demos.jsonl", demo_rows(24))


@pytest.fixture
def tiny_recipe(tmp_path: Path, tiny_model_dir: Path, demos_file: Path) -> Path:
    """A recipe over the tiny model that trains a few SFT steps in seconds."""
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        f"""name: tiny
run_dir: {tmp_path / "run"}
model:
  name: {tiny_model_dir}
  dtype: float32  # exact comparisons with float32 reloads; `auto` runs in test_chain and test_ppo
lora:
  r: 4
  alpha: 8
sft:
  data: {demos_file}
  max_steps: 4
  batch_size: 4
  max_length: 64
  logging_steps: 1
  eval_steps: 2
  save_steps: 2
  eval_fraction: 0.2
"""
    )
    return recipe


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    """A throwaway PostgreSQL server for the session (tests/postgres_support.py)."""
    skip_or_fail_without_postgres()
    with throwaway_cluster() as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty ranking database of each kind: an SQLite file path or a PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "rankings.db")
    return request.getfixturevalue("postgres_cluster").new_database()
