"""Float32 master copies of trainable tensors that the model holds in a low-precision dtype.

PPO's adapters run in the base model's compute dtype: a float32 LoRA on a bfloat16 base would cast
every activation to float32 and back (measured in bench/RESULTS.md). The optimizer must not
step bfloat16 weights, though: with 8 bits of mantissa, Adam updates of 1e-4 relative size round
away. So the optimizer steps these float32 masters; the model's tensors are copies of them.
No library does this for a hand-written loop on CPU (torch.amp's autocast would also downcast
the float32 LM head that PPO's log-probs need).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


class MasterWeights:
    """Masters for the given named model tensors; float32 tensors serve as their own master."""

    def __init__(self, model_tensors: dict[str, torch.Tensor]) -> None:
        self.model_tensors = model_tensors
        self.masters = {
            name: tensor
            if tensor.dtype == torch.float32
            else tensor.detach().float().requires_grad_(True)
            for name, tensor in model_tensors.items()
        }

    def parameters(self) -> list[torch.Tensor]:
        return list(self.masters.values())

    def collect_grads(self) -> None:
        """Add the model tensors' gradients to the masters' (in float32) and clear them."""
        for name, tensor in self.model_tensors.items():
            master = self.masters[name]
            if master is tensor or tensor.grad is None:
                continue
            grad = tensor.grad.float()
            master.grad = grad if master.grad is None else master.grad + grad
            tensor.grad = None

    @torch.no_grad()
    def copy_to_model(self) -> None:
        for name, tensor in self.model_tensors.items():
            master = self.masters[name]
            if master is not tensor:
                tensor.copy_(master)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The model's tensors hold the float32 masters for the duration (to save them)."""
        held = {name: tensor.data for name, tensor in self.model_tensors.items()}
        for name, tensor in self.model_tensors.items():
            tensor.data = self.masters[name].data
        try:
            yield
        finally:
            for name, tensor in self.model_tensors.items():
                tensor.data = held[name]
