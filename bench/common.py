"""Shared benchmark plumbing: run a command as a child, read its own peak RSS, parse Trainer logs."""

from __future__ import annotations

import ast
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Measured:
    label: str
    wall_seconds: float
    peak_rss_mib: float
    output: str  # stdout + stderr


def run_measured(
    label: str, command: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> Measured:
    """Run `command`, returning its wall time and the peak RSS of that child alone (wait4 rusage)."""
    log_path = Path(os.environ.get("BENCH_LOG_DIR", "/tmp")) / f"bench-{label}.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        child = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
        )
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - started
    output = log_path.read_text()
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(
            f"{label} failed (exit {os.waitstatus_to_exitcode(status)}); log: {log_path}\n{output[-3000:]}"
        )
    return Measured(label, wall, usage.ru_maxrss / 1024, output)  # ru_maxrss is KiB on Linux


def tool(name: str) -> str:
    """The console script `name` (align, trl) of the environment running the benchmark, found
    beside its interpreter, so a virtual environment works without being activated."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        sys.exit(f"{name}: not installed in {sys.prefix} (the environment running this benchmark)")
    return found


def threads_env(threads: int) -> dict[str, str]:
    """Torch threads of a benchmarked child; every side of a comparison gets the same setting."""
    # On a crowded CPU, OpenMP threads spin-wait for each other: one thread per process was ~5x
    # faster than two here under load.
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


# Injected into each child (and the training process `trl sft` launches through accelerate) as
# `sitecustomize`: when transformers' Trainer is imported, it wraps `train` and `training_step` to
# print the settings the run really trains with, the memory high-water mark at the start of training
# (model load) and at the end, and the tokens each run trained on. Comparing these is how the
# benchmark checks that the runs are equivalent rather than trusting the command lines.
PROBE_SOURCE = r"""
import importlib.abc, importlib.util, json, sys

def _hwm_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) // 1024
    return -1

def _settings(trainer):
    args, model = trainer.args, trainer.model
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    quant = getattr(base.config, "quantization_config", None)
    quant = quant.to_dict() if hasattr(quant, "to_dict") else quant
    peft = getattr(model, "peft_config", {}).get("default")
    trainable = {}
    for param in model.parameters():
        if param.requires_grad:
            trainable[str(param.dtype)] = trainable.get(str(param.dtype), 0) + param.numel()
    return {
        "activation_checkpointing": bool(getattr(args, "activation_checkpointing", None) or getattr(args, "gradient_checkpointing", None)),
        "model_checkpointing": bool(getattr(base, "is_gradient_checkpointing", False)),
        "bf16": args.bf16, "fp16": args.fp16,
        "model_dtype": str(base.dtype),
        "attn": getattr(base.config, "_attn_implementation", None),
        "quant": None if quant is None else {k: quant.get(k) for k in ("load_in_4bit", "load_in_8bit", "bnb_4bit_quant_type", "bnb_4bit_use_double_quant", "bnb_4bit_compute_dtype", "bnb_4bit_quant_storage")},
        "lora": None if peft is None else {"r": peft.r, "alpha": peft.lora_alpha, "dropout": peft.lora_dropout, "targets": sorted(peft.target_modules), "bias": peft.bias},
        "trainable_params": trainable,
        "batch": args.per_device_train_batch_size, "grad_accum": args.gradient_accumulation_steps,
        "lr": args.learning_rate, "scheduler": str(args.lr_scheduler_type), "warmup": args.warmup_steps,
        "weight_decay": args.weight_decay, "optim": str(args.optim), "max_grad_norm": args.max_grad_norm,
        "epochs": args.num_train_epochs, "max_steps": args.max_steps, "seed": args.seed,
        "max_length": getattr(args, "max_length", None), "padding_free": getattr(args, "padding_free", None),
        "sampler": getattr(args, "train_sampling_strategy", None),
        "train_examples": len(trainer.train_dataset),
        "completion_only_loss": getattr(trainer, "completion_only_loss", None),
    }

def _patch(module):
    trainer_cls = module.Trainer
    train, step = trainer_cls.train, trainer_cls.training_step
    seen = {"longest": [0, 0], "label_tokens": 0, "steps": 0}

    def probed_train(self, *args, **kwargs):
        print("BENCH-PROBE-START " + json.dumps({"hwm_mib": _hwm_mib(), **_settings(self)}, default=str), flush=True)
        result = train(self, *args, **kwargs)
        print("BENCH-PROBE-END " + json.dumps({"hwm_mib": _hwm_mib(), **seen}), flush=True)
        return result

    def probed_step(self, model, inputs, *args, **kwargs):
        shape = list(inputs["input_ids"].shape)
        if shape[0] * shape[1] > seen["longest"][0] * seen["longest"][1]:
            seen["longest"] = shape
        if "labels" in inputs:
            seen["label_tokens"] += int((inputs["labels"] != -100).sum())
        seen["steps"] += 1
        return step(self, model, inputs, *args, **kwargs)

    trainer_cls.train, trainer_cls.training_step = probed_train, probed_step

class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "transformers.trainer":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        def exec_and_patch(module):
            exec_module(module)
            _patch(module)
        spec.loader.exec_module = exec_and_patch
        return spec

sys.meta_path.insert(0, _Finder())
"""


def probe_env(work: Path) -> dict[str, str]:
    """Environment that loads the probe into every Python process of a run (see PROBE_SOURCE)."""
    probe_dir = work / "probe"
    probe_dir.mkdir(exist_ok=True)
    (probe_dir / "sitecustomize.py").write_text(PROBE_SOURCE)
    path = os.pathsep.join(p for p in (str(probe_dir), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": path}


def probe_reports(output: str) -> tuple[dict, dict]:
    """The (start, end) records the probe printed in a run's output."""
    start = end = None
    for line in output.replace("\r", "\n").splitlines():
        if line.startswith("BENCH-PROBE-START "):
            start = json.loads(line.removeprefix("BENCH-PROBE-START "))
        elif line.startswith("BENCH-PROBE-END "):
            end = json.loads(line.removeprefix("BENCH-PROBE-END "))
    if start is None or end is None:
        raise RuntimeError("the run printed no BENCH-PROBE records (was the probe not loaded?)")
    return start, end


def trainer_logs(output: str) -> list[dict[str, float]]:
    """The dicts a transformers Trainer prints on each log step (its console callback)."""
    logs = []
    for line in output.replace("\r", "\n").splitlines():
        start = line.find("{'")
        if start < 0:
            continue
        try:
            record = ast.literal_eval(line[start:])
        except (ValueError, SyntaxError):
            continue
        logs.append({k: float(v) for k, v in record.items() if _is_number(v)})
    return logs


def _is_number(value: object) -> bool:
    try:
        float(value)  # transformers 5 prints some values as formatted strings
    except (TypeError, ValueError):
        return False
    return True


def cpu_model() -> str:
    """The CPU's name as /proc/cpuinfo gives it (platform.processor() is often empty on Linux)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> str:
    """Host, cores, CPU and whether it computes bfloat16 natively: CPU figures depend on all three."""
    from alignment.models import cpu_has_native_bf16  # here: ranking_load needs no torch

    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16 (float32)"
    return (
        f"{platform.node()}: {os.cpu_count()} cores, {cpu_model()}, {bf16}, "
        f"Python {platform.python_version()}"
    )
