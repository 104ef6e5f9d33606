"""The fused LoRA forward computes what PEFT's forward computes, values and gradients alike."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from alignment.config import LoraConfig, ModelConfig
from alignment.cpu.fused_lora import fuse_lora
from alignment.models import cast_adapter, load_model, peft_config


def lora_model(tiny_model_dir, dtype: str, quantization: str, dropout: float = 0.0):
    """A tiny model with one LoRA adapter in the base's compute dtype and a non-zero lora_B."""
    model_cfg = ModelConfig(name=str(tiny_model_dir), dtype=dtype, quantization=quantization)
    torch.manual_seed(0)
    model = get_peft_model(
        load_model(model_cfg), peft_config(LoraConfig(r=4, alpha=8, dropout=dropout))
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero, so the adapter changes outputs and gradients below
            torch.nn.init.normal_(param, std=0.05)
    cast_adapter(model, "default", model.get_input_embeddings().weight.dtype)
    return model


def loss_and_grads(model, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    ids = torch.arange(3, 27).reshape(2, 12)
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both models
    output = model(input_ids=ids, labels=ids)
    output.loss.backward()
    grads = {n: p.grad.float() for n, p in model.named_parameters() if p.grad is not None}
    return output.logits.float(), grads


@pytest.mark.parametrize(
    ("dtype", "quantization", "tolerance"),
    [("float32", "none", 1e-5), ("bfloat16", "none", 3e-2), ("bfloat16", "4bit", 3e-2)],
)
def test_fused_forward_matches_peft_values_and_gradients(
    tiny_model_dir, dtype, quantization, tolerance
):
    plain = lora_model(tiny_model_dir, dtype, quantization)
    fused = lora_model(tiny_model_dir, dtype, quantization)
    # Every adapted linear layer: q, k, v, o, gate, up, down in each of the 2 layers.
    assert fuse_lora(fused) == 14
    assert fuse_lora(fused) == 14  # again: still one wrapper per layer
    expected_logits, expected_grads = loss_and_grads(plain)
    logits, grads = loss_and_grads(fused)
    torch.testing.assert_close(logits, expected_logits, atol=tolerance, rtol=tolerance)
    assert grads.keys() == expected_grads.keys() and len(grads) == 28
    for name, grad in grads.items():
        scale = expected_grads[name].abs().max().item()
        torch.testing.assert_close(
            grad, expected_grads[name], atol=tolerance * scale, rtol=tolerance
        )


def test_dropout_training_and_disabled_adapters_match_peft(tiny_model_dir):
    plain = lora_model(tiny_model_dir, "float32", "none", dropout=0.3)
    fused = lora_model(tiny_model_dir, "float32", "none", dropout=0.3)
    fuse_lora(fused)
    plain.train(), fused.train()
    expected_logits, expected_grads = loss_and_grads(plain, seed=5)
    logits, grads = loss_and_grads(fused, seed=5)
    torch.testing.assert_close(logits, expected_logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name])
    ids = torch.arange(3, 15)[None]
    with torch.no_grad(), plain.disable_adapter(), fused.disable_adapter():
        base_logits = plain.eval()(input_ids=ids).logits
        torch.testing.assert_close(fused.eval()(input_ids=ids).logits, base_logits)
    with torch.no_grad():
        assert not torch.allclose(fused(input_ids=ids).logits, base_logits)  # the adapter is back


def test_fused_forward_on_4bit_layers_with_a_bias(tiny_model_dir, tmp_path):
    """bitsandbytes' 4-bit layer with a bias (Qwen2's q/k/v) returns a view autograd guards."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.attention_bias = True
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path)
    plain = lora_model(tmp_path, "float32", "4bit")
    fused = lora_model(tmp_path, "float32", "4bit")
    assert fuse_lora(fused) == 14
    expected_logits, expected_grads = loss_and_grads(plain)
    logits, grads = loss_and_grads(fused)
    torch.testing.assert_close(logits, expected_logits, atol=1e-4, rtol=1e-4)
    assert grads.keys() == expected_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], atol=1e-4, rtol=1e-3)
