"""TRL 1.12.0's PPOTrainer on the benchmark's setup; run by bench/ppo_vs_trl.py in its own venv.

    <venv>/bin/python bench/trl_ppo_driver.py SPEC.json

Imports nothing from `alignment` (whose dependencies pin a newer TRL): everything it needs is in
the spec the benchmark writes. The setup is TRL's own: a LoRA policy (a PeftModel started from
our SFT adapter, so TRL's reference is that PeftModel with its adapter disabled, i.e. the bare
base), a separate full reward model and a separate full value model trained in full.

Prints one JSON line per update, `{"trl_update": n, "seconds": ..., ...}`, timed from the end of
the previous update (the first from the start of train(), after every model is loaded).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

import torch
from datasets import Dataset
from peft import PeftModel
from torch import nn
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)
from trl.experimental.ppo import PPOConfig, PPOTrainer


class UpdateTimer(TrainerCallback):
    """Seconds per PPO update plus that update's logged figures, as one JSON line each."""

    def __init__(self) -> None:
        self.last = 0.0
        self.logs: dict[str, float] = {}

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last = time.perf_counter()

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kw: Any,
    ) -> None:
        self.logs = dict(logs or {})

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        now = time.perf_counter()
        record = {"trl_update": state.global_step, "seconds": now - self.last}
        for key in ("objective/scores", "objective/kl", "objective/rlhf_reward", "val/ratio"):
            if key in self.logs:
                record[key] = self.logs[key]
        print(json.dumps(record), flush=True)
        self.last = now


def normalised_reward_model(path: str, mean: float, std: float, dtype: torch.dtype) -> nn.Module:
    """The merged reward model with the RM's stored statistics folded into its score head, so TRL
    maximises the same normalised score as `align ppo` (TRL itself has no reward normalisation)."""
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    weight = model.score.weight.detach()
    head = nn.Linear(weight.shape[1], 1, bias=True, dtype=dtype)
    with torch.no_grad():
        head.weight.copy_(weight / std)
        head.bias.fill_(-mean / std)
    model.score = head  # get_reward() calls model.score(hidden) directly
    return model


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    torch.manual_seed(spec["seed"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model_dir"])
    # TRL masks every pad-id token (attention_mask = ids != pad). SmolLM2's pad is <|im_end|>,
    # which also ends each turn INSIDE the chat prompt, so give TRL a pad id no prompt uses.
    tokenizer.pad_token = spec["pad_token"]
    tokenizer.padding_side = "left"  # TRL generates from left-padded queries

    # Every model in the benchmark's dtype, as ours loads its base; no autocast (bf16=False below).
    dtype = getattr(torch, spec["dtype"])
    base = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=dtype)
    policy = PeftModel.from_pretrained(base, spec["sft_adapter"], is_trainable=True)
    reward = normalised_reward_model(
        spec["reward_model"], spec["reward_mean"], spec["reward_std"], dtype
    )
    value = AutoModelForSequenceClassification.from_pretrained(
        spec["reward_model"], num_labels=1, dtype=dtype
    )  # TRL's value model: a full copy of the (raw) reward model, trained in full

    batches: list[list[list[int]]] = spec["prompt_batches"]
    rows = [{"input_ids": ids} for batch in batches for ids in batch]
    dataset = Dataset.from_list(rows)
    batch_size, minibatch = spec["rollout_batch_size"], spec["minibatch_size"]
    args = PPOConfig(
        output_dir=spec["output_dir"],
        seed=spec["seed"],
        # TRL: rollout batch = per_device_train_batch_size x gradient_accumulation_steps, split into
        # num_mini_batches optimizer steps. With accumulation 1 each minibatch is one step, as ours.
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        num_mini_batches=batch_size // minibatch,
        local_rollout_forward_batch_size=batch_size,
        total_episodes=len(rows),
        num_ppo_epochs=spec["ppo_epochs"],
        response_length=spec["max_new_tokens"],
        temperature=spec["temperature"],
        stop_token="eos",
        missing_eos_penalty=spec["missing_eos_penalty"],
        learning_rate=spec["learning_rate"],
        lr_scheduler_type="constant",
        weight_decay=0.01,  # torch AdamW's default, which `align ppo` uses
        kl_coef=spec["kl_coef"],
        kl_estimator="k1",
        cliprange=0.2,
        cliprange_value=0.2,
        vf_coef=spec["value_coef"],
        gamma=1.0,
        lam=0.95,
        num_sample_generations=0,  # no extra sampling passes inside the timed loop
        bf16=False,  # no autocast: the models are loaded in the benchmark's dtype, as ours
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
    )
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=None,  # a PeftModel: TRL's reference is the policy with its adapter disabled
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        eval_dataset=dataset,
        callbacks=[UpdateTimer()],
    )
    # Same prompts per update as `align ppo`: TRL's own loader reshuffles, so read the spec's
    # batches in order instead (one process, CPU: nothing for accelerate to shard).
    trainer.dataloader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=DataCollatorWithPadding(tokenizer),
        drop_last=True,
    )
    trainer.train()
    trainer.model.policy.save_pretrained(spec["output_dir"])  # the LoRA policy, for re-scoring
    tokenizer.save_pretrained(spec["output_dir"])
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
    print(
        json.dumps({"trl_done": True, "policy": spec["output_dir"], "peak_gpu_gib": peak}),
        flush=True,
    )


if __name__ == "__main__":
    main()
