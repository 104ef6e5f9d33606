"""DPO from the rankings' pairs: the SFT adapter trained against a frozen copy of itself."""

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignment.config import load_recipe
from alignment.dpo import preference_rows, run_dpo
from alignment.errors import DataError, RunStateError
from alignment.preferences import read_preferences
from alignment.runs import read_jsonl
from alignment.sft import run_sft
from tests.conftest import demo_rows, write_jsonl


def pair_row(i: int, chosen: str, rejected: str) -> dict:
    """A row of `align export --format pairs`."""
    return {
        "prompt": [{"role": "user", "content": f"Question {i}: what is {i} plus {i}?"}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "ranking_id": i,
        "annotator": "alice",
    }


@pytest.fixture(scope="module")
def dpo_base(tmp_path_factory, tiny_model_dir):
    """A recipe whose run directory already holds an SFT adapter, and a pairs export."""
    root = tmp_path_factory.mktemp("dpo")
    demos = write_jsonl(root / "demos.jsonl", demo_rows(8, short=True))
    pairs = write_jsonl(
        root / "pairs.jsonl",
        [pair_row(i, f"{i} plus {i} is {2 * i}.", "The quick brown fox.") for i in range(12)],
    )
    recipe_path = root / "recipe.yaml"
    recipe_path.write_text(
        f"""name: dpo-test
run_dir: {root / "run"}
model: {{name: {tiny_model_dir}, dtype: float32}}  # compared with float32 reloads
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 2, batch_size: 4, eval_fraction: 0}}
dpo:
  data: {pairs}
  max_steps: 3
  batch_size: 4
  learning_rate: 5.0e-3
  warmup_ratio: 0
  lr_scheduler: constant
  max_length: 64
  logging_steps: 1
  eval_fraction: 0.25
  eval_steps: 10
  save_steps: 10
"""
    )
    run_sft(load_recipe(recipe_path))
    return recipe_path


def logits_of(model: torch.nn.Module, text_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=text_ids).logits


def test_dpo_starts_at_the_sft_reference_and_saves_a_loadable_adapter(dpo_base, tiny_model_dir):
    recipe = load_recipe(dpo_base)
    sft_dir = recipe.output_dir / "sft"
    outcome = run_dpo(recipe)
    out = outcome.out_dir
    assert out == recipe.output_dir / "dpo"

    # Step 0: policy and reference are both the SFT adapter, so implicit rewards are exactly 0.
    history = read_jsonl(out / "metrics.jsonl")
    first = next(h for h in history if "rewards/margins" in h)
    assert first["step"] == 1
    assert first["rewards/chosen"] == pytest.approx(0, abs=1e-6)
    assert first["rewards/margins"] == pytest.approx(0, abs=1e-6)
    assert first["loss"] == pytest.approx(0.6931, abs=1e-3)  # -log sigmoid(0)
    last = [h for h in history if "rewards/margins" in h][-1]
    assert last["step"] == 3 and last["rewards/margins"] > 0

    # The frozen reference is still the SFT adapter; the policy moved away from it.
    sft_weights = load_file(sft_dir / "adapter_model.safetensors")
    named = dict(outcome.model.named_parameters())
    moved = 0
    for key, value in sft_weights.items():
        stem = key.removesuffix(".weight")
        ref, policy = named[f"{stem}.ref.weight"], named[f"{stem}.default.weight"]
        assert torch.equal(ref.detach().cpu(), value), key
        assert not ref.requires_grad
        moved += not torch.equal(policy.detach().cpu(), value)
    assert moved > 0

    # A standard PEFT adapter directory that reloads to the trained policy.
    assert (out / "adapter_config.json").is_file() and not (out / "ref").exists()
    assert (out / "tokenizer_config.json").is_file()
    ids = torch.tensor([[1, 5, 9, 12, 30, 2]])
    outcome.model.set_adapter("default")
    outcome.model.eval()
    reloaded = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), out
    ).eval()
    torch.testing.assert_close(logits_of(reloaded, ids), logits_of(outcome.model, ids))
    sft_model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), sft_dir
    ).eval()
    assert not torch.allclose(logits_of(sft_model, ids), logits_of(reloaded, ids))

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3
    assert summary["train_pairs"] + summary["eval_pairs"] == 12
    assert summary["data"]["pairs"] == 12 and summary["data"]["formats"] == {"pairs": 12}
    card = (out / "README.md").read_text()
    assert "# dpo-test: dpo adapter" in card
    assert f"- dpo.data: `{recipe.dpo.data}` (local file, 12 rows" in card
    assert "| eval_margin |" in card and "| train_loss |" in card

    # A second run never starts over the first one's finished output by accident.
    with pytest.raises(RunStateError, match=r"already holds a finished .* nothing to --resume"):
        run_dpo(recipe)


def test_trl_rows_become_pairs_and_rankings_all_their_pairs(tmp_path):
    trl = write_jsonl(
        tmp_path / "trl.jsonl",
        [
            {  # implicit prompt: the shared start of chosen and rejected
                "chosen": [
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                ],
                "rejected": [
                    {"role": "user", "content": "Hi?"},
                    {"role": "assistant", "content": "Go away."},
                ],
            }
        ],
    )
    rows = preference_rows(read_preferences(str(trl)).comparisons)
    assert rows == [
        {
            "prompt": [{"role": "user", "content": "Hi?"}],
            "chosen": [{"role": "assistant", "content": "Hello! How can I help?"}],
            "rejected": [{"role": "assistant", "content": "Go away."}],
        }
    ]
    rankings = write_jsonl(
        tmp_path / "rankings.jsonl",
        [
            {
                "ranking_id": 1,
                "prompt_id": 1,
                "prompt": [{"role": "user", "content": "Name a colour."}],
                "completions": ["Blue.", "Red.", "Dog."],
                "ranks": [1, 1, 2],
                "annotator": "bob",
            }
        ],
    )
    rows = preference_rows(read_preferences(str(rankings)).comparisons)
    assert [(r["chosen"][0]["content"], r["rejected"][0]["content"]) for r in rows] == [
        ("Blue.", "Dog."),
        ("Red.", "Dog."),
    ]  # the tie between Blue and Red trains nothing


def recipe_with(dpo_base: Path, run_dir: Path, *overrides: str):
    return load_recipe(dpo_base, [f"run_dir={run_dir}", *overrides])


def test_bad_data_fails_naming_file_and_line_before_any_model_load(dpo_base, tmp_path):
    sft_dir = load_recipe(dpo_base).output_dir / "sft"
    chat = pair_row(1, "Two.", "Seven.")
    text = {"prompt": "1+1=", "chosen": "2", "rejected": "7"}
    mixed = write_jsonl(tmp_path / "mixed.jsonl", [chat, text])
    with pytest.raises(DataError, match=rf"{mixed}:2 is plain text but {mixed}:1 is chat"):
        run_dpo(recipe_with(dpo_base, tmp_path / "a", f"dpo.data={mixed}"))

    no_prompt = write_jsonl(
        tmp_path / "no_prompt.jsonl",
        [
            {
                "chosen": [{"role": "assistant", "content": "Yes."}],
                "rejected": [{"role": "assistant", "content": "No."}],
            }
        ],
    )
    with pytest.raises(DataError, match=rf"{no_prompt}:1: no prompt"):
        run_dpo(recipe_with(dpo_base, tmp_path / "b", f"dpo.data={no_prompt}"))

    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(chat) + "\n" + '{"prompt": [\n')
    with pytest.raises(DataError, match=rf"{broken}:2: invalid JSON"):
        run_dpo(recipe_with(dpo_base, tmp_path / "c", f"dpo.data={broken}"))

    unknown = write_jsonl(tmp_path / "unknown.jsonl", [{"question": "?", "answer": "!"}])
    with pytest.raises(DataError, match=rf"{unknown}:1: unknown preference format"):
        run_dpo(recipe_with(dpo_base, tmp_path / "d", f"dpo.data={unknown}"))

    # No SFT adapter in a fresh run directory: say which stage to run first.
    with pytest.raises(RunStateError, match="run `align sft` with this recipe first"):
        run_dpo(recipe_with(dpo_base, tmp_path / "e"))
    assert not (tmp_path / "e").exists()  # refused before anything was written
    assert (sft_dir / "adapter_config.json").is_file()
