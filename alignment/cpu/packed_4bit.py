"""bitsandbytes' packed 4-bit CPU kernel, used only for decoding, where it is fast and harmless.

On CPUs with AVX512-BF16, bitsandbytes repacks a 4-bit layer's weights for a bf16 GEMV kernel
the first time the layer runs in eval mode on an input that needs no gradient. The repacked
layer passes no gradient backward (the kernel has no autograd) and stays repacked: on SmolLM2
with QLoRA, one sampling or evaluation pass cut the first layer's LoRA gradients by orders of
magnitude for the rest of training (tests/test_cpu_4bit.py). The kernel also only pays off for
few rows: it is several times faster for one decoding step and about 2x slower for a scoring
batch (bench/RESULTS.md). So every model we load forbids the implicit repacking, and decoding
asks for the packed layout with `fast_4bit_inference(model)`, which swaps in a packed copy of
each frozen 4-bit weight (made once per layer, about the weight's size) and swaps back on exit.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

_PACKED = "_alignment_packed_for_cpu"  # module attribute caching the packed (weight, quant_state)


def _linear_4bit_layers(model: nn.Module) -> list[nn.Module]:
    try:
        from bitsandbytes.nn import Linear4bit
    except ImportError:  # bitsandbytes not installed: no 4-bit layers
        return []
    return [m for m in model.modules() if isinstance(m, Linear4bit)]


def forbid_implicit_repacking(model: nn.Module) -> None:
    """Keep every 4-bit layer in its trainable layout whatever forward runs (see the docstring)."""
    for layer in _linear_4bit_layers(model):
        layer.support_avx512bf16_for_cpu = False


def _packable(layer: nn.Module) -> bool:
    weight = layer.weight
    quant_state = getattr(weight, "quant_state", None)
    return (
        weight.device.type == "cpu"
        and quant_state is not None
        and not getattr(quant_state, "packing_format_for_cpu", False)
        and len(quant_state.shape) == 2
        and quant_state.shape[0] % 32 == 0  # the kernel's block of output rows
        and quant_state.shape[1] % 2 == 0
    )


@contextmanager
def fast_4bit_inference(model: nn.Module) -> Iterator[None]:
    """Run the model's 4-bit layers with the packed CPU kernel inside this block (no gradients).

    For forwards of a few rows (decoding); a no-op without 4-bit layers on the CPU or without
    AVX512-BF16. Results differ from the trainable layout by bf16 rounding.
    """
    layers = _linear_4bit_layers(model)
    if not layers:
        yield
        return
    from bitsandbytes.functional import _convert_weight_packed_for_cpu, has_avx512bf16

    if not has_avx512bf16():
        yield
        return
    originals = []
    for layer in layers:
        if not _packable(layer):
            continue
        weight = layer.weight
        if not hasattr(layer, _PACKED):
            # The conversion rewrites the quant state in place, so it works on a copy.
            state = copy.deepcopy(weight.quant_state)
            setattr(layer, _PACKED, _convert_weight_packed_for_cpu(weight.data, state))
        originals.append((layer, weight.data, weight.quant_state))
        weight.data, weight.quant_state = getattr(layer, _PACKED)
    try:
        with torch.no_grad():
            yield
    finally:
        for layer, data, quant_state in originals:
            layer.weight.data, layer.weight.quant_state = data, quant_state
