"""`align merge`: adapters merged into their (dequantised) base, loadable by Transformers alone."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from alignment.cli import main
from alignment.config import load_recipe
from alignment.errors import RunStateError
from alignment.models import load_model
from alignment.reward import load_reward_model, score
from alignment.rlhf.rollout import RewardScale
from alignment.rm import run_rm
from alignment.sft import run_sft
from alignment.trained import load_policy, open_adapter
from tests.conftest import demo_rows, write_jsonl
from tests.test_rm import synthetic_preferences

CONVERSATIONS = [
    [{"role": "user", "content": "Say 3"}, {"role": "assistant", "content": text}]
    for text in ("3!", "marker answer", "The quick brown fox jumps over the lazy dog.")
]


@pytest.fixture(scope="module")
def qlora_run(tmp_path_factory, tiny_model_dir):
    """An SFT and a reward adapter, both trained over the tiny model loaded in 4-bit NF4."""
    root = tmp_path_factory.mktemp("merge")
    demos = write_jsonl(root / "demos.jsonl", demo_rows(8, short=True))
    preferences = write_jsonl(root / "prefs.jsonl", synthetic_preferences(16, seed=5))
    (root / "recipe.yaml").write_text(
        f"""name: merge
run_dir: {root / "run"}
model: {{name: {tiny_model_dir}, quantization: 4bit, dtype: float32}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 2, batch_size: 4, eval_fraction: 0, learning_rate: 0.02}}
rm:
  data: {preferences}
  init: base
  max_steps: 2
  batch_size: 4
  eval_fraction: 0
  max_length: 64
  learning_rate: 0.02
  stats_examples: 8
"""
    )
    recipe = load_recipe(root / "recipe.yaml")
    run_sft(recipe)
    run_rm(recipe)
    return recipe


def test_merged_policy_loads_alone_and_computes_what_the_adapter_did(qlora_run, tmp_path, capsys):
    out = tmp_path / "merged-sft"
    main(["merge", str(qlora_run.output_dir / "sft"), "--out", str(out)])
    assert capsys.readouterr().out == (
        f"merged causal LM: {out} (the 4bit base was dequantised before merging)\n"
    )
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    assert getattr(merged.config, "quantization_config", None) is None
    assert {p.dtype for p in merged.parameters()} == {torch.float32}
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and "library_name: transformers" in card
    assert "trained in 4bit and dequantised to float32" in card

    adapter, tokenizer = load_policy(open_adapter(qlora_run.output_dir / "sft"))
    batch = tokenizer.apply_chat_template(CONVERSATIONS[2], return_tensors="pt", return_dict=True)
    with torch.no_grad():
        expected = adapter(**batch).logits
        base = load_model(qlora_run.model)(**batch).logits
        torch.testing.assert_close(merged(**batch).logits, expected, atol=1e-4, rtol=1e-4)
    assert (expected - base).abs().max() > 1e-2  # the adapter changed the model


def test_merged_reward_model_scores_as_the_adapter_with_its_normalisation(qlora_run, tmp_path):
    rm_dir = qlora_run.output_dir / "rm"
    out = tmp_path / "merged-rm"
    main(["merge", str(rm_dir), "--out", str(out)])
    merged = AutoModelForSequenceClassification.from_pretrained(out).eval()
    config = merged.config
    assert config.num_labels == 1 and config.id2label == {0: "reward"}
    assert "pipeline_tag: text-classification" in (out / "README.md").read_text()

    adapter, tokenizer, stats = load_reward_model(rm_dir)
    scale = RewardScale.read(rm_dir, normalize=True)  # what PPO normalises with
    assert (
        (config.reward_mean, config.reward_std)
        == (scale.mean, scale.std)
        == (
            stats["mean"],
            stats["std"],
        )
    )
    assert config.reward_max_length == 64
    expected = score(adapter, tokenizer, CONVERSATIONS)
    merged_scores = score(merged, tokenizer, CONVERSATIONS)
    torch.testing.assert_close(
        (merged_scores - config.reward_mean) / config.reward_std,
        (expected - scale.mean) / scale.std,
        atol=1e-4,
        rtol=1e-4,
    )
    assert expected.std() > 0
    # Transformers' own forward, as any tool loading the merged model reads a conversation.
    for conversation, reward in zip(CONVERSATIONS, expected, strict=True):
        batch = tokenizer.apply_chat_template(conversation, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            torch.testing.assert_close(merged(**batch).logits[0, 0], reward, atol=1e-4, rtol=1e-4)


def test_merge_refuses_a_used_output_or_a_directory_without_adapter(qlora_run, tmp_path, capsys):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    for adapter, out, message in [
        (qlora_run.output_dir / "sft", used, f"error: --out {used}: already exists"),
        (tmp_path, tmp_path / "new", f"error: {tmp_path}: not an adapter directory"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(["merge", str(adapter), "--out", str(out)])
        assert stop.value.code == 2
        assert capsys.readouterr().err.startswith(message)
    assert (used / "keep.txt").read_text() == "mine"
    with pytest.raises(RunStateError, match=r"a reward model's adapter .* give a policy"):
        load_policy(open_adapter(qlora_run.output_dir / "rm"))  # what `align chat` loads
