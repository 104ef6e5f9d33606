"""The GPU path measured on real model shapes (issue 18); `bench/gpu_check.sh` runs this.

    python bench/gpu_check.py [--dry-run] [--trl-1.12 DIR]

Models of the real architectures (bench/qwen2.5-*-instruct.json) are built with random weights:
speed and memory do not depend on weight values, and no weights reach the GPU machine. The
tokenizer is a byte-level BPE trained on the shipped data, its vocabulary filled up to the
model's with atomic filler tokens, so any sampled id decodes to text that encodes back to one
token: answers re-scored by the reward model are as long as sampled. Random models almost never
sample the end-of-turn token, so every answer runs to `max_new_tokens` on both sides of a
comparison (the answer lengths are reported to show it).

Sections, each through the project's own stages:
    sft        7B shape, 4-bit NF4 + LoRA, bf16, gradient checkpointing, paged 8-bit AdamW:
               `align sft` (our stage) and TRL's SFTTrainer with the same settings
    ppo_7b     `align ppo` on the 7B shape: four roles as adapters on one 4-bit base
    chain      `align run` of the whole chain on the 1.5B shape, short settings, to its report
    ppo_vs_trl `align ppo` against TRL 1.12's PPOTrainer on the 1.5B shape, same prompts
               (bench/ppo_vs_trl.py's TRL side), both unquantized in the compute dtype

`--dry-run` runs every section on CPU with tiny models of the same family in seconds, so the
script is tested where there is no GPU; what needs CUDA (paged 8-bit AdamW, bf16 autocast, GPU
memory) is named as skipped. Figures are printed and, with $OUT set, written to $OUT/gpu_check.json
after each section, so a run stopped at its time limit still returns what it measured.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
from common import ROOT, machine
from ppo_vs_trl import merged_reward_model, prompt_batches, run_trl, trl_folder

from alignment.cli import main as align_main
from alignment.config import Recipe, load_recipe
from alignment.data import sft_examples
from alignment.models import cache_root, peft_config, quantization_config
from alignment.ppo import run_ppo
from alignment.rm import run_rm
from alignment.sft import run_sft

BENCH = ROOT / "bench"
SHAPES = {"7b": BENCH / "qwen2.5-7b-instruct.json", "1.5b": BENCH / "qwen2.5-1.5b-instruct.json"}
TINY_SHAPE = {  # --dry-run: the same Qwen2 architecture, small enough for a CPU test
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # Qwen2.5's ChatML names
H200_BF16_FLOPS = 989e12  # dense bf16 peak by the datasheet (H200.md); MFU is against this
PREFERENCES = ROOT / "data" / "hh-rlhf-harmless" / "train.jsonl"


@dataclass(frozen=True)
class Sizes:
    """How much each section runs: the GPU figures, or --dry-run's seconds on CPU."""

    bpe_vocab: int  # merges learned from the shipped data; the model's vocabulary is filled up
    sft_steps: int
    sft_batch: int
    sft_max_length: int
    ppo_updates: int
    rollout_batch: int
    minibatch: int
    max_new_tokens: int
    chain_prompts: int


GPU_SIZES = Sizes(8000, 12, 4, 1024, 4, 16, 4, 128, 16)
DRY_RUN_SIZES = Sizes(400, 2, 2, 64, 1, 4, 2, 4, 4)


@dataclass
class Setup:
    dry_run: bool
    sizes: Sizes
    work: Path
    tokenizer_dir: Path
    results: dict[str, Any]
    trl_1_12: Path | None


def log(message: str) -> None:
    print(f"[gpu-check] {message}", file=sys.stderr, flush=True)


# --- models and tokenizer ----------------------------------------------------------------------


def build_tokenizer(directory: Path, bpe_vocab: int) -> Path:
    """A ChatML byte-level BPE trained on the shipped demonstrations and prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from alignment.models import DEFAULT_CHAT_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    texts = [ROOT / "data" / "demos.jsonl", ROOT / "data" / "prompts.jsonl"]
    backend.train_from_iterator((line for path in texts for line in path.open()), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    return directory


def fill_vocabulary(tokenizer_dir: Path, vocab_size: int, directory: Path) -> None:
    """Save the tokenizer with atomic filler tokens up to the model's vocabulary, so that every
    id a random model samples decodes to text that encodes back to that one id."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    missing = vocab_size - len(tokenizer)
    tokenizer.add_tokens([f"<|filler_{i}|>" for i in range(missing)])
    tokenizer.save_pretrained(directory)


def build_model(shape: str, setup: Setup) -> Path:
    """A random-weight model of `shape` (tiny with --dry-run) with its tokenizer, in the compute
    dtype, built on the GPU where there is one; saved once per run."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    directory = setup.work / f"model-{shape}"
    if (directory / "config.json").is_file():
        return directory
    values = json.loads(SHAPES[shape].read_text())
    tokenizer = AutoTokenizer.from_pretrained(setup.tokenizer_dir)
    if setup.dry_run:
        values |= TINY_SHAPE | {"vocab_size": len(tokenizer)}
    values |= {
        "bos_token_id": None,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = AutoConfig.for_model(values.pop("model_type"), **values)
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    started = time.perf_counter()
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(directory)
    del model
    free_memory()
    fill_vocabulary(setup.tokenizer_dir, config.vocab_size, directory)
    log(f"built {shape} model in {directory} ({time.perf_counter() - started:.0f} s)")
    return directory


# --- measuring ---------------------------------------------------------------------------------


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@contextmanager
def peak_gpu_memory(into: dict[str, Any]) -> Iterator[None]:
    """Put the section's peak GPU memory (GiB allocated by torch) in `into`; None on CPU."""
    free_memory()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    yield
    into["peak_gpu_gib"] = (
        round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None
    )
    free_memory()


def matmul_params(model_dir: Path) -> int:
    """Weights each token is multiplied with: every linear layer of the body and the LM head."""
    config = json.loads((model_dir / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = hidden // config["num_attention_heads"] * config["num_key_value_heads"]
    per_layer = 2 * hidden * hidden + 2 * hidden * kv + 3 * hidden * config["intermediate_size"]
    return layers * per_layer + hidden * config["vocab_size"]


def model_flop_utilisation(model_dir: Path, tokens_per_second: float) -> float | None:
    """LoRA training FLOPs over the bf16 peak: forward (2N) and input gradients (2N) per token;
    the frozen base has no weight gradients, and recomputation (checkpointing), attention scores
    and the adapters' own small products are not counted. None off the GPU."""
    if not torch.cuda.is_available():
        return None
    return round(4 * matmul_params(model_dir) * tokens_per_second / H200_BF16_FLOPS, 4)


def recipe_for(base: str, model_dir: Path, run_dir: Path, overrides: list[str]) -> Recipe:
    """One of the shipped GPU recipes pointed at a built model; CPU-only settings on --dry-run."""
    return load_recipe(
        ROOT / "recipes" / base,
        [f"model.name={model_dir}", f"run_dir={run_dir}", *cpu_overrides(), *overrides],
    )


def cpu_overrides() -> list[str]:
    """The GPU recipes' model settings that CPU needs changed: float32 and its attention."""
    if torch.cuda.is_available():
        return []
    return ["model.dtype=float32", "model.attn_implementation=auto"]


def record(setup: Setup, key: str, figures: Any) -> None:
    """Print one section's figures and rewrite $OUT/gpu_check.json with everything so far."""
    target = setup.results if key == "total_seconds" else setup.results["sections"]
    target[key] = figures
    print(f"{key}: {json.dumps(figures)}", flush=True)
    if out := os.environ.get("OUT"):
        Path(out, "gpu_check.json").write_text(json.dumps(setup.results, indent=2))


# --- sections ----------------------------------------------------------------------------------


def sft_settings(setup: Setup) -> list[str]:
    s = setup.sizes
    optimizer = "paged_adamw_8bit" if torch.cuda.is_available() else "adamw_torch"
    return [
        f"sft.max_steps={s.sft_steps}", f"sft.batch_size={s.sft_batch}", "sft.grad_accum=1",
        f"sft.max_length={s.sft_max_length}", "sft.eval_fraction=0", "sft.logging_steps=1",
        "sft.save_steps=100000", "sft.gradient_checkpointing=true",
        f"sft.trainer_args={{optim: {optimizer}}}",
    ]  # fmt: skip


def section_sft(setup: Setup) -> dict[str, Any]:
    """`align sft` and TRL's SFTTrainer on the 7B shape with the same settings: tokens/s
    (non-padding tokens trained over train_runtime), MFU and peak GPU memory."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from alignment.models import compute_dtype, trainer_precision

    model_dir = build_model("7b", setup)
    recipe = recipe_for("7b-qlora.yaml", model_dir, setup.work / "sft", sft_settings(setup))
    cfg, figures = recipe.sft, {}

    trl_side: dict[str, Any] = {}
    with peak_gpu_memory(trl_side):
        model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            quantization_config=quantization_config(recipe.model),
            dtype=compute_dtype(recipe.model),
            device_map={"": 0 if torch.cuda.is_available() else "cpu"},
        )
        args = SFTConfig(
            output_dir=str(setup.work / "trl-sft"),
            max_steps=cfg.max_steps,
            per_device_train_batch_size=cfg.batch_size,
            gradient_accumulation_steps=cfg.grad_accum,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type=cfg.lr_scheduler,
            warmup_steps=cfg.warmup_ratio,
            gradient_checkpointing=cfg.gradient_checkpointing,
            optim=cfg.trainer_args["optim"],
            max_length=cfg.max_length,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=recipe.seed,
            **trainer_precision(recipe.model),
        )
        trainer = SFTTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_list(sft_examples(cfg.data)),
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            peft_config=peft_config(recipe.lora),
        )
        seconds = trainer.train().metrics["train_runtime"]
        tokens = max(r["num_tokens"] for r in trainer.state.log_history if "num_tokens" in r)
        del model, trainer
    ours: dict[str, Any] = {}
    with peak_gpu_memory(ours):
        outcome = run_sft(recipe)
        ours_seconds = outcome.summary["train_seconds"]
        metrics = [json.loads(line) for line in (outcome.out_dir / "metrics.jsonl").open()]
        ours_tokens = max(r["num_tokens"] for r in metrics if "num_tokens" in r)
        del outcome
    for side, (n, s) in {"align": (ours_tokens, ours_seconds), "trl": (tokens, seconds)}.items():
        side_figures = ours if side == "align" else trl_side
        side_figures |= {
            "tokens": int(n),
            "train_seconds": round(s, 2),
            "tokens_per_second": round(n / s, 1),
            "mfu": model_flop_utilisation(model_dir, n / s),
        }
        figures[side] = side_figures
    figures["settings"] = {
        "shape": "qwen2.5-7b-instruct",
        "steps": cfg.max_steps,
        "batch": cfg.batch_size,
        "max_length": cfg.max_length,
        "optimizer": cfg.trainer_args["optim"],
        "quantization": recipe.model.quantization,
        "gradient_checkpointing": cfg.gradient_checkpointing,
        "sft_adapter": str(setup.work / "sft" / "sft"),
    }
    figures["align_vs_trl_tokens_per_second"] = round(
        ours["tokens_per_second"] / trl_side["tokens_per_second"], 3
    )
    return figures


def ppo_settings(setup: Setup, updates: int) -> list[str]:
    s = setup.sizes
    return [
        f"ppo.updates={updates}", f"ppo.rollout_batch_size={s.rollout_batch}",
        f"ppo.minibatch_size={s.minibatch}", "ppo.grad_accum=1", "ppo.ppo_epochs=2",
        f"ppo.max_new_tokens={s.max_new_tokens}", "ppo.temperature=1.0", "ppo.top_p=1.0",
        f"ppo.save_every={updates}", f"ppo.sample_every={updates}",
    ]  # fmt: skip


def ppo_figures(history: list[dict[str, Any]], batch: int) -> dict[str, Any]:
    """Seconds per update split by phase, rollout tokens/s and answer lengths; the first update
    (kernel and allocator warm-up) is left out when there are more."""
    timed = history[1:] if len(history) > 1 else history
    phases = {
        p: sum(u[f"seconds_{p}"] for u in timed) / len(timed)
        for p in ("generate", "score", "train")
    }
    answer = sum(u["answer_length"] for u in timed) / len(timed)
    return {
        "updates_timed": len(timed),
        "seconds_per_update": round(sum(phases.values()), 3),
        **{f"seconds_{p}": round(v, 3) for p, v in phases.items()},
        "rollout_tokens_per_second": round(answer * batch / phases["generate"], 1),
        "answer_length": round(answer, 2),
        "finished_fraction": round(sum(u["finished_fraction"] for u in timed) / len(timed), 3),
    }


def section_ppo_7b(setup: Setup) -> dict[str, Any]:
    """`align ppo` with policy, reference, reward and value as four adapters on one 4-bit base of
    the 7B shape, from the SFT section's adapter and a reward adapter trained briefly here."""
    model_dir = build_model("7b", setup)
    run_dir = setup.work / "ppo-7b"
    rm_settings = [
        f"rm.data={PREFERENCES}", "rm.init=base", "rm.max_steps=2", "rm.batch_size=2", "rm.grad_accum=1",
        "rm.eval_fraction=0", f"rm.max_length={setup.sizes.sft_max_length}",
        f"rm.stats_examples={setup.sizes.rollout_batch}", "rm.save_steps=100000",
    ]  # fmt: skip
    run_rm(recipe_for("7b-qlora.yaml", model_dir, run_dir, rm_settings))
    sft_adapter = setup.results["sections"]["sft"]["settings"]["sft_adapter"]
    overrides = [f"ppo.sft_adapter={sft_adapter}", *ppo_settings(setup, setup.sizes.ppo_updates)]
    figures: dict[str, Any] = {}
    with peak_gpu_memory(figures):
        outcome = run_ppo(recipe_for("7b-qlora.yaml", model_dir, run_dir, overrides))
    figures |= ppo_figures(outcome.history, setup.sizes.rollout_batch)
    figures["settings"] = {"shape": "qwen2.5-7b-instruct", "quantization": "4bit", "roles": 4}
    return figures


def section_chain(setup: Setup) -> dict[str, Any]:
    """`align run` of every stage on the 1.5B shape with the shipped data and short settings."""
    model_dir = build_model("1.5b", setup)
    s, run_dir = setup.sizes, setup.work / "chain"
    overrides = [
        f"model.name={model_dir}", f"run_dir={run_dir}", *cpu_overrides(),
        *sft_settings(setup), f"chain.sample_limit={s.chain_prompts}", "sample.k=2",
        f"sample.max_new_tokens={s.max_new_tokens}", "rm.max_steps=2", "rm.eval_fraction=0",
        "rm.save_steps=100000", f"rm.stats_examples={s.rollout_batch}",
        *ppo_settings(setup, s.ppo_updates), f"eval.limit={s.chain_prompts}",
        f"eval.max_new_tokens={s.max_new_tokens}",
    ]  # fmt: skip
    started = time.perf_counter()
    align_main(["run", str(ROOT / "recipes" / "qwen2.5-1.5b-qlora.yaml"), *overrides])
    reports = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("report*.html"))
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "stages_done": sorted(p.parent.name for p in run_dir.glob("*/summary.json")),
        "report": reports,
        "run_dir": str(run_dir),
    }


def section_ppo_vs_trl(setup: Setup) -> dict[str, Any]:
    """`align ppo` and TRL 1.12's PPOTrainer on the 1.5B shape, same prompts and batch, from the
    chain's SFT and reward adapters, both unquantized in the compute dtype (as bench/ppo_vs_trl.py)."""
    s, model_dir = setup.sizes, build_model("1.5b", setup)
    chain_dir = Path(setup.results["sections"]["chain"]["run_dir"])
    dtype = "bfloat16" if torch.cuda.is_available() else "float32"
    run_dir = setup.work / "ppo-1.5b"
    overrides = [
        "model.quantization=none", f"model.dtype={dtype}", f"ppo.sft_adapter={chain_dir / 'sft'}",
        f"ppo.reward_adapter={chain_dir / 'rm'}", *ppo_settings(setup, s.ppo_updates),
    ]  # fmt: skip
    ours: dict[str, Any] = {}
    with peak_gpu_memory(ours):
        recipe = recipe_for("qwen2.5-1.5b-qlora.yaml", model_dir, run_dir, overrides)
        ours |= ppo_figures(run_ppo(recipe).history, s.rollout_batch)
    figures: dict[str, Any] = {"align": ours}
    if setup.trl_1_12 is None:
        figures["trl"] = "skipped: no TRL 1.12 (its wheel did not travel, or --trl-1.12 unset)"
        return figures
    from alignment.models import load_tokenizer

    args = argparse.Namespace(
        dtype=dtype, batch_size=s.rollout_batch, minibatch_size=s.minibatch, ppo_epochs=2,
        max_new_tokens=s.max_new_tokens, learning_rate=recipe.ppo.learning_rate,
        kl_coef=recipe.ppo.kl_coef, updates=s.ppo_updates, threads=os.cpu_count() or 1,
    )  # fmt: skip
    batches = prompt_batches(
        load_tokenizer(recipe.model),
        recipe.ppo.prompts,
        s.ppo_updates,
        s.rollout_batch,
        recipe.seed,
    )
    reward_dir = merged_reward_model(setup.work, chain_dir / "rm")
    work = setup.work / "trl-ppo"
    work.mkdir(exist_ok=True)
    measured, updates = run_trl(
        args, setup.trl_1_12, chain_dir, reward_dir, batches, recipe.seed, work, str(model_dir)
    )
    done = next(json.loads(line) for line in measured.output.splitlines() if '"trl_done"' in line)
    timed = updates[1:] if len(updates) > 1 else updates
    figures["trl"] = {
        "updates_timed": len(timed),
        "seconds_per_update": round(sum(u["seconds"] for u in timed) / len(timed), 3),
        "peak_gpu_gib": done["peak_gpu_gib"],
    }
    figures["align_vs_trl_seconds"] = round(
        ours["seconds_per_update"] / figures["trl"]["seconds_per_update"], 3
    )
    if ours["peak_gpu_gib"] and done["peak_gpu_gib"]:
        figures["align_vs_trl_memory"] = round(ours["peak_gpu_gib"] / done["peak_gpu_gib"], 3)
    return figures


SECTIONS: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "sft": section_sft,
    "ppo_7b": section_ppo_7b,
    "chain": section_chain,
    "ppo_vs_trl": section_ppo_vs_trl,
}


def find_trl_1_12(given: Path | None) -> Path | None:
    """TRL 1.12 installed in a folder of its own: the one given, else bench/ppo_vs_trl.py's."""
    for folder in (given, trl_folder(cache_root())):
        if folder is not None and (folder / "trl" / "experimental" / "ppo").is_dir():
            return folder
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny models on CPU, in seconds")
    parser.add_argument(
        "--trl-1.12", dest="trl_1_12", type=Path, default=None, help="folder holding TRL 1.12"
    )
    parser.add_argument("--work", type=Path, default=None, help="default: a new temporary folder")
    args = parser.parse_args()
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on the GPU machine, or pass --dry-run")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    sizes = DRY_RUN_SIZES if args.dry_run else GPU_SIZES
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    results: dict[str, Any] = {
        "date": str(date.today()),
        "machine": machine(),
        "device": device,
        "dry_run": args.dry_run,
        "sizes": asdict(sizes),
        "skipped_off_gpu": []
        if torch.cuda.is_available()
        else ["paged 8-bit AdamW (adamw_torch instead)", "bf16 autocast", "GPU memory", "MFU"],
        "sections": {},
    }
    setup = Setup(
        args.dry_run, sizes, work, work / "tokenizer", results, find_trl_1_12(args.trl_1_12)
    )
    build_tokenizer(setup.tokenizer_dir, sizes.bpe_vocab)
    log(f"work directory {work}; device {device}")
    started = time.perf_counter()
    for name, section in SECTIONS.items():
        began = time.perf_counter()
        figures = section(setup)
        figures["section_seconds"] = round(time.perf_counter() - began, 1)
        record(setup, name, figures)
    record(setup, "total_seconds", round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main()
