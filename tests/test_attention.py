"""`model.attn_implementation: auto` on CPU computes what sdpa and eager compute."""

import math

import torch

from alignment.config import ModelConfig
from alignment.cpu.attention import ATTENTION_NAME, EAGER_MAX_SCORES
from alignment.models import load_model


def test_auto_attention_matches_sdpa_and_eager_short_long_and_decoding(tiny_model_dir):
    models = {
        name: load_model(
            ModelConfig(name=str(tiny_model_dir), dtype="float32", attn_implementation=name)
        )
        for name in ("auto", "sdpa", "eager")
    }
    assert models["auto"].config._attn_implementation == ATTENTION_NAME
    torch.manual_seed(0)
    short = torch.randint(3, 200, (3, 12))
    short_mask = torch.ones_like(short)
    short_mask[0, :4] = 0  # left padding
    heads = models["auto"].config.num_attention_heads
    past_limit = math.isqrt(EAGER_MAX_SCORES // heads) + 20  # one row's scores past the limit: sdpa
    long = torch.randint(3, 200, (1, past_limit))
    outputs = {}
    with torch.no_grad():
        for name, model in models.items():
            outputs[name] = (
                model(input_ids=short, attention_mask=short_mask).logits[short_mask.bool()],
                model(input_ids=long).logits,
                model.generate(short, attention_mask=short_mask, max_new_tokens=4, do_sample=False),
            )
    for name in ("sdpa", "eager"):
        for got, expected in zip(outputs["auto"][:2], outputs[name][:2], strict=True):
            torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
        assert torch.equal(outputs["auto"][2], outputs[name][2])  # decoding: one query at a time
