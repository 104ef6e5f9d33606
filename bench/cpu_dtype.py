"""Compute dtype and LoRA cost on this CPU: what `model.dtype: auto` and PPO's speed rest on.

    python bench/cpu_dtype.py [--threads 1] [--repeats 3]

SmolLM2-135M-Instruct (the embedded model) with a LoRA adapter (r=16, all linear layers) on a
batch of 4 x 128 random tokens: seconds per forward and per forward+backward, float32 against
bfloat16, unquantized and 4-bit NF4; then, in bfloat16, a LoRA forward+backward (dropout 0.05 in
train mode, and dropout off as PPO runs it) against training every weight of the full model;
then the attention kernels behind `model.attn_implementation` (sdpa, eager, and auto, which on
CPU picks eager while a layer's scores stay within 2^20) on a bf16 LoRA forward+backward at short
and long lengths; last, PEFT's LoRA forward against `alignment.cpu.fused_lora` with bf16 adapters, as
PPO runs them. Ratios are against float32 (first table), the full model (second), sdpa (third)
and PEFT (fourth), measured in this run.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from datetime import date
from functools import partial

import torch
from common import machine
from peft import get_peft_model

from alignment.config import LoraConfig, ModelConfig
from alignment.cpu.fused_lora import fuse_lora
from alignment.models import cast_adapter, cpu_has_native_bf16, load_model, peft_config


def seconds(call: Callable[[], None], repeats: int) -> float:
    call()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - started) / repeats


def timings(model: torch.nn.Module, ids: torch.Tensor, repeats: int) -> tuple[float, float]:
    def forward() -> None:
        with torch.no_grad():
            model(input_ids=ids)

    def forward_backward() -> None:
        model(input_ids=ids, labels=ids).loss.backward()

    return seconds(forward, repeats), seconds(forward_backward, repeats)


def padded_step(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> None:
    model(input_ids=ids, attention_mask=mask, labels=ids).loss.backward()


def lora(quantization: str, dtype: str, dropout: float, attention: str = "sdpa") -> torch.nn.Module:
    config = ModelConfig(quantization=quantization, dtype=dtype, attn_implementation=attention)
    base = load_model(config)
    return get_peft_model(base, peft_config(LoraConfig(r=16, alpha=32, dropout=dropout)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = torch.randint(100, 40000, (4, 128))

    print(f"## CPU dtype and LoRA cost, {date.today()}, {machine()}")
    print(f"native bf16 (AVX512-BF16 or AMX): {cpu_has_native_bf16()}; threads {args.threads}")
    print("| base | fwd fp32 s | fwd bf16 s | fwd+bwd fp32 s | fwd+bwd bf16 s | bf16 speed-up |")
    print("| --- | --- | --- | --- | --- | --- |")
    for quantization in ("none", "4bit"):
        fp32 = timings(lora(quantization, "float32", 0.0), ids, args.repeats)
        bf16 = timings(lora(quantization, "bfloat16", 0.0), ids, args.repeats)
        print(
            f"| {quantization} | {fp32[0]:.2f} | {bf16[0]:.2f} | {fp32[1]:.2f} | {bf16[1]:.2f} | "
            f"{fp32[0] / bf16[0]:.1f}x fwd, {fp32[1] / bf16[1]:.1f}x fwd+bwd |"
        )

    full = load_model(ModelConfig(dtype="bfloat16"))
    full.requires_grad_(True)
    full.train()
    runs = {"full model, every weight trained": full}
    for dropout in (0.05, 0.0):
        model = lora("none", "bfloat16", dropout)
        model.train()
        runs[f"LoRA r=16, dropout {dropout}"] = model
    results = {label: timings(model, ids, args.repeats)[1] for label, model in runs.items()}
    baseline = results["full model, every weight trained"]
    print("\n| bf16, unquantized | fwd+bwd s | vs full model |")
    print("| --- | --- | --- |")
    for label, value in results.items():
        print(f"| {label} | {value:.2f} | {value / baseline:.2f}x |")

    print(
        "\n| bf16 LoRA fwd+bwd, 1 padded row per batch | sdpa s | eager s | auto s | auto vs sdpa |"
    )
    print("| --- | --- | --- | --- | --- |")
    models = {name: lora("none", "bfloat16", 0.0, name) for name in ("sdpa", "eager", "auto")}
    for rows, length in ((4, 100), (4, 256), (4, 512)):
        figures = round_robin(models, rows, length, args.repeats)
        print(
            f"| {rows} x {length} tokens | {figures['sdpa']:.2f} | {figures['eager']:.2f} | "
            f"{figures['auto']:.2f} | {figures['auto'] / figures['sdpa']:.2f}x |"
        )

    print("\n| bf16 LoRA in bf16, auto attention, fwd+bwd | PEFT s | fused s | fused vs PEFT |")
    print("| --- | --- | --- | --- |")
    models = {name: lora("none", "bfloat16", 0.0, "auto") for name in ("PEFT", "fused")}
    for model in models.values():
        cast_adapter(model, "default", torch.bfloat16)
    fuse_lora(models["fused"])
    for rows, length in ((4, 100), (8, 100)):
        figures = round_robin(models, rows, length, args.repeats)
        print(
            f"| {rows} x {length} tokens | {figures['PEFT']:.2f} | {figures['fused']:.2f} | "
            f"{figures['fused'] / figures['PEFT']:.2f}x |"
        )


def round_robin(
    models: dict[str, torch.nn.Module], rows: int, length: int, repeats: int
) -> dict[str, float]:
    """Seconds per padded training step of each model, measured one step per model in turn: the
    variants differ by 10-20%, about as much as the load on a shared CPU drifts over the minute
    one model's repeats would take."""
    batch = torch.randint(100, 40000, (rows, length))
    mask = torch.ones_like(batch)
    mask[0, : length // 4] = 0  # left padding, as PPO's prompts have
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats + 1):
        for name, model in models.items():
            model.train()
            times[name].append(seconds(partial(padded_step, model, batch, mask), 1))
    return {name: sum(values[1:]) / repeats for name, values in times.items()}


if __name__ == "__main__":
    main()
