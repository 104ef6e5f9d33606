"""LoRA's update added in one kernel: `addmm_` in place of PEFT's up-projection, scale and add.

PEFT computes `result + lora_B(lora_A(dropout(x))) * scaling`, so every adapted linear layer
makes two extra passes over its full-width output (the scale and the add) and allocates two
more outputs. On CPU those passes cost as much as the up-projection itself; a whole training step
gains a few percent (bench/RESULTS.md, `python bench/cpu_dtype.py`). PEFT has no fused path, so this
wraps each LoRA layer's forward; whatever the plain path does not cover (mixed-adapter batches,
merged or disabled adapters, several active adapters, DoRA and other variants, a bias on
lora_B, an adapter in another dtype than its input) goes to PEFT's own forward.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from peft.tuners.lora import LoraLayer


def fuse_lora(model: torch.nn.Module) -> int:
    """Route every LoRA linear layer of `model` through the fused forward; returns how many."""
    fused = 0
    for module in model.modules():
        if isinstance(module, LoraLayer) and isinstance(
            getattr(module, "base_layer", None), torch.nn.Linear
        ):
            if not isinstance(module.forward, functools.partial):  # fusing twice is a no-op
                module.forward = functools.partial(_fused_forward, module, module.forward)
            fused += 1
    return fused


def _fused_forward(
    layer: LoraLayer,
    peft_forward: Callable[..., torch.Tensor],
    x: torch.Tensor,
    *args: Any,
    **kwargs: Any,
) -> torch.Tensor:
    adapters = layer.active_adapters
    if (
        layer.disable_adapters
        or layer.merged
        or kwargs.get("adapter_names") is not None
        or len(adapters) != 1
        or adapters[0] not in layer.lora_A
        or adapters[0] in layer.lora_variant
    ):
        return peft_forward(x, *args, **kwargs)
    name = adapters[0]
    down, up = layer.lora_A[name], layer.lora_B[name]
    if up.bias is not None or not x.dtype == down.weight.dtype == up.weight.dtype:
        return peft_forward(x, *args, **kwargs)
    result = layer.base_layer(x, *args, **kwargs)
    dropout = layer.lora_dropout[name]  # called only when it does something: decoding is op-bound
    reduced = torch.nn.functional.linear(
        x if isinstance(dropout, torch.nn.Identity) else dropout(x), down.weight
    )
    if result.dtype != up.weight.dtype:  # under autocast: PEFT's own sum, cast back as it does
        return (result + up(reduced) * layer.scaling[name]).to(result.dtype)
    flat = result.view(-1, result.shape[-1])
    update = (reduced.view(-1, reduced.shape[-1]), up.weight.t())
    if torch.is_grad_enabled() and result._is_view():
        # bitsandbytes' 4-bit layer with a bias (Qwen2's q/k/v) returns a view of its autograd
        # Function's output, which autograd forbids changing in place.
        return torch.addmm(flat, *update, alpha=layer.scaling[name]).view(result.shape)
    flat.addmm_(*update, alpha=layer.scaling[name])
    return result
