"""TRL's fused LM head, told to project only labelled positions on CPU as well."""

from __future__ import annotations

import torch


def score_labelled_positions_only() -> None:
    """Let TRL's fused LM head project only positions that carry a label, on CPU as well.

    TRL compacts to labelled positions only where it runs Triton kernels, because elsewhere (e.g.
    XLA devices) a varying token count recompiles the tiles; eager CPU has no such cost. Prompt and
    padding positions are most of an SFT batch, so without this the 49k-wide head projects 2-3x
    the tokens it needs and keeps tile-sized temporaries for them. The result is identical: the
    skipped positions contribute exactly zero.
    """
    from trl.trainer import utils as trl_utils  # imported here: only the SFT stage needs TRL

    use_triton = getattr(trl_utils, "_use_triton", None)
    if use_triton is None or getattr(use_triton, "cpu_compacts", False):
        return  # a TRL without this switch, or already patched

    def compact_on_cpu_too(device: torch.device) -> bool:
        return device.type == "cpu" or use_triton(device)

    compact_on_cpu_too.cpu_compacts = True  # type: ignore[attr-defined]
    trl_utils._use_triton = compact_on_cpu_too
