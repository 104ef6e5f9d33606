"""The fast 4-bit CPU kernel serves sampling without breaking training."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from alignment.config import LoraConfig, ModelConfig
from alignment.cpu.packed_4bit import fast_4bit_inference
from alignment.generation import GenerationSettings, generate
from alignment.models import load_model, load_tokenizer, peft_config


@pytest.fixture
def qlora(tiny_model_dir):
    model_cfg = ModelConfig(name=str(tiny_model_dir), quantization="4bit")
    torch.manual_seed(0)
    model = get_peft_model(
        load_model(model_cfg), peft_config(LoraConfig(r=4, alpha=8, dropout=0.0))
    )
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero, so gradients reach the layers below
            torch.nn.init.normal_(param, std=0.05)
    return model, load_tokenizer(model_cfg, str(tiny_model_dir))


def lora_gradients(model) -> dict[str, torch.Tensor]:
    ids = torch.arange(3, 27).reshape(2, 12)
    model.zero_grad()
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def has_fast_kernel() -> bool:
    from bitsandbytes.functional import has_avx512bf16

    return has_avx512bf16()


def test_sampling_leaves_qlora_gradients_unchanged(qlora):
    # Without care, bitsandbytes repacks 4-bit layers on the first no-grad eval forward, and the
    # repacked layers pass no gradient: the first layer's LoRA gradients fell 30-1000x.
    model, tokenizer = qlora
    before = lora_gradients(model)
    settings = GenerationSettings(max_new_tokens=4, temperature=1.0, batch_size=2)
    generate(model, tokenizer, [[{"role": "user", "content": "Hi"}]] * 2, settings)
    model.eval()
    with torch.no_grad():
        model(input_ids=torch.arange(3, 10)[None])  # an evaluation, as trainers run mid-training
    after = lora_gradients(model)
    assert before.keys() == after.keys() and len(before) > 0
    for name, grad in before.items():
        assert torch.equal(grad, after[name]), name


@pytest.mark.skipif(not has_fast_kernel(), reason="the packed kernel needs AVX512-BF16")
def test_fast_inference_swaps_the_packed_layout_in_and_back(qlora):
    model, _ = qlora
    model.eval()
    layer = model.base_model.model.model.layers[0].mlp.down_proj.base_layer
    storage, quant_state = layer.weight.data_ptr(), layer.weight.quant_state
    ids = torch.arange(3, 19)[None]
    with torch.no_grad():
        exact = model(input_ids=ids).logits
    with fast_4bit_inference(model):
        assert layer.weight.quant_state.packing_format_for_cpu
        fast = model(input_ids=ids).logits
        with fast_4bit_inference(model):  # nested: stays packed, restores nothing early
            assert layer.weight.quant_state.packing_format_for_cpu
        assert layer.weight.quant_state.packing_format_for_cpu
    assert layer.weight.data_ptr() == storage and layer.weight.quant_state is quant_state
    assert not getattr(layer.weight.quant_state, "packing_format_for_cpu", False)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, exact)
    # The kernel computes in bf16: close to the trainable layout, not equal.
    assert not torch.equal(fast, exact)
    torch.testing.assert_close(fast, exact, atol=0.05, rtol=0.05)
