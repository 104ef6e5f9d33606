import json
import shutil
import subprocess
import sys

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from alignment.config import load_recipe
from alignment.errors import ModelSourceError, RunStateError
from alignment.models import load_tokenizer, resolve_model
from alignment.runs import read_jsonl
from alignment.sft import run_sft


def logits_of(model, tokenizer):
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Question 3: what is 3 plus 3?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    model.eval()
    with torch.no_grad():
        return model(**batch).logits


def test_sft_trains_saves_and_reloads_with_peft(tiny_recipe, tiny_model_dir):
    recipe = load_recipe(tiny_recipe)
    outcome = run_sft(recipe)
    out = outcome.out_dir
    assert out == recipe.output_dir / "sft"
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md", "train.log"):
        assert (out / name).is_file(), name
    assert (recipe.output_dir / "recipe.yaml").is_file()
    assert load_recipe(recipe.output_dir / "recipe.yaml") == recipe

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["eval_examples"] == 5
    assert summary["eval_loss"] > 0
    logged = read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in logged if "loss" in r] == [1, 2, 3, 4]
    assert any("eval_loss" in r for r in logged)
    assert list((out / "tensorboard").iterdir())
    card = (out / "README.md").read_text()
    assert "library_name: peft" in card and f"base_model: {tiny_model_dir}" in card

    tokenizer = load_tokenizer(recipe.model)
    trained = logits_of(outcome.model, tokenizer)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    untouched = logits_of(base, tokenizer)
    reloaded = logits_of(PeftModel.from_pretrained(base, out), tokenizer)
    torch.testing.assert_close(reloaded, trained)
    assert not torch.allclose(reloaded, untouched)  # the adapter learned something


def test_only_assistant_tokens_carry_loss(tiny_recipe, tmp_path):
    recipe = load_recipe(tiny_recipe, ["sft.max_steps=1"])
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from alignment.data import sft_examples

    tokenizer = load_tokenizer(recipe.model)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(recipe.model))
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path), report_to=[], bf16=False),
        train_dataset=Dataset.from_list(sft_examples(recipe.sft.data)),
        processing_class=tokenizer,
    )
    row = trainer.train_dataset[0]
    trained = [
        token for token, label in zip(row["input_ids"], row["labels"], strict=True) if label != -100
    ]
    assert tokenizer.decode(trained) == "0 plus 0 is 0.<|im_end|>\n"


def test_4bit_nf4_lora_trains_on_cpu_in_float32(tiny_recipe):
    recipe = load_recipe(
        tiny_recipe, ["model.quantization=4bit", "sft.max_steps=2", "sft.save_steps=2"]
    )
    outcome = run_sft(recipe)
    weights = load_file(outcome.out_dir / "adapter_model.safetensors")
    assert weights and all(w.dtype == torch.float32 for w in weights.values())
    assert any(w.abs().sum() > 0 for k, w in weights.items() if "lora_B" in k)
    assert "Linear4bit" in str(
        type(outcome.model.base_model.model.model.layers[0].self_attn.q_proj.base_layer)
    )


def test_resume_continues_and_reproduces_the_uninterrupted_run(tiny_recipe):
    recipe = load_recipe(tiny_recipe)
    out = run_sft(recipe).out_dir
    uninterrupted = load_file(out / "adapter_model.safetensors")
    # Simulate a crash after the step-2 checkpoint: later state is gone, and so is the final
    # output, which is moved into place only once training ends.
    shutil.rmtree(out / "checkpoints" / "checkpoint-4")
    for final in ("adapter_model.safetensors", "adapter_config.json", "summary.json"):
        (out / final).unlink()
    metrics = read_jsonl(out / "metrics.jsonl")
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in metrics if r["step"] <= 2)
    )

    with pytest.raises(RunStateError, match="pass --resume"):
        run_sft(recipe)
    resumed = run_sft(recipe, resume=True)
    assert [r["step"] for r in read_jsonl(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]
    for key, value in load_file(resumed.out_dir / "adapter_model.safetensors").items():
        torch.testing.assert_close(value, uninterrupted[key])


def test_cli_runs_sft_and_reports_errors_without_traceback(tiny_recipe, tmp_path):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "alignment.cli",
            "sft",
            str(tiny_recipe),
            "sft.max_steps=1",
            "sft.eval_fraction=0",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "SFT adapter:" in done.stdout

    bad = subprocess.run(
        [sys.executable, "-m", "alignment.cli", "sft", str(tiny_recipe), "sft.lr=0.1"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert "sft.lr: unknown key" in bad.stderr and "Traceback" not in bad.stderr


def test_unknown_model_offline_says_how_to_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = load_recipe(
        __import__("pathlib").Path(__file__).parent.parent / "recipes" / "quickstart.yaml",
        ["model.name=someone/not-cached-model"],
    )
    with pytest.raises(ModelSourceError) as err:
        resolve_model(recipe.model)
    message = str(err.value)
    assert (
        "'someone/not-cached-model'" in message
        and "offline" in message
        and "model.name=DIR" in message
    )
