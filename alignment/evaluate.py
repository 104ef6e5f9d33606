"""Evaluation: the SFT policy against the final (PPO or DPO) policy on held-out prompts.

Both policies are adapters on one base model and answer the same prompts greedily. Reported:
judge score of each, gold reward of each (a reward adapter, by default the run's own RM), the
final policy's win rate over SFT on the judge's score, the KL from SFT along the final policy's
answers (exact per position, summed over the answer), and answer lengths.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel

from alignment.config import Recipe
from alignment.data import read_prompts
from alignment.errors import RunStateError
from alignment.generation import GenerationSettings, generate
from alignment.judges import build_scorer, reward_scorer
from alignment.models import float32_logits, load_model, load_tokenizer, resolve_model
from alignment.runs import append_jsonl
from alignment.tokens import encode_prompt

log = logging.getLogger(__name__)


def final_stage(recipe: Recipe) -> str:
    """The stage whose adapter is evaluated against SFT: the last policy stage of the chain."""
    stages = [s for s in recipe.chain.stages if s in ("ppo", "dpo")]
    return stages[-1] if stages else "ppo"


@torch.no_grad()
def kl_along(
    model: PeftModel, prompt: list[int], answer: list[int], policy: str, reference: str
) -> float:
    """Sum over the answer's positions of KL(policy(.|context) || reference(.|context))."""
    if not answer:
        return 0.0
    ids = torch.tensor([prompt + answer])
    logits = {}
    for name in (policy, reference):
        model.set_adapter(name)
        logits[name] = float32_logits(model, ids, keep_last=len(answer) + 1)[0, :-1]
    log_p, log_q = F.log_softmax(logits[policy], -1), F.log_softmax(logits[reference], -1)
    return (log_p.exp() * (log_p - log_q)).sum().item()


def run_eval(recipe: Recipe) -> dict[str, Any]:
    cfg, run = recipe.eval, recipe.output_dir
    stage = final_stage(recipe)
    adapters = {"sft": run / "sft", stage: run / stage}
    for name, path in adapters.items():
        if not (path / "adapter_config.json").is_file():
            raise RunStateError(f"{path}: no {name} adapter to evaluate; run `align {name}` first")
    prompts = read_prompts(cfg.prompts)[: cfg.limit]
    source = resolve_model(recipe.model)
    tokenizer = load_tokenizer(recipe.model, source)
    model = PeftModel.from_pretrained(
        load_model(recipe.model, source=source), adapters["sft"], adapter_name="sft"
    )
    model.load_adapter(adapters[stage], adapter_name=stage)
    model.eval()
    encoded = [encode_prompt(tokenizer, messages) for _, messages in prompts]
    settings = GenerationSettings(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_p=1.0,
        top_k=0,
        batch_size=cfg.batch_size,
    )
    answers = {}
    for name in adapters:
        model.set_adapter(name)
        answers[name] = generate(
            model,
            tokenizer,
            encoded,
            settings,
            seeds=[recipe.seed + i for i in range(len(encoded))],
        )
    kls = [
        kl_along(model, p, c.token_ids, stage, "sft")
        for p, c in zip(encoded, answers[stage], strict=True)
    ]
    del model

    judge = build_scorer(recipe.judge, run)
    judged = {
        name: [
            judge(messages, [c.text])[0]
            for (_, messages), c in zip(prompts, answers[name], strict=True)
        ]
        for name in adapters
    }
    gold = _gold_rewards(recipe, prompts, answers)
    wins = [
        1.0 if f > s else 0.5 if f == s else 0.0
        for f, s in zip(judged[stage], judged["sft"], strict=True)
    ]
    report: dict[str, Any] = {
        "final_stage": stage,
        "prompts": len(prompts),
        "judge": f"judge:{recipe.judge.name}",
    }
    for name in adapters:
        report[name] = {
            "judge_score": sum(judged[name]) / len(prompts),
            "gold_reward": sum(gold[name]) / len(prompts) if gold else None,
            "answer_tokens": sum(c.num_tokens for c in answers[name]) / len(prompts),
            "finished": sum(c.finish_reason == "stop" for c in answers[name]) / len(prompts),
        }
    report["win_rate"] = sum(wins) / len(wins)
    report["kl_to_sft"] = sum(kls) / len(kls)
    rm_summary = run / "rm" / "summary.json"
    if rm_summary.is_file():
        report["rm_eval_accuracy"] = json.loads(rm_summary.read_text()).get("eval_accuracy")

    out = run / "eval"
    out.mkdir(parents=True, exist_ok=True)
    (out / "answers.jsonl").unlink(missing_ok=True)
    for index, (_, messages) in enumerate(prompts):
        append_jsonl(
            out / "answers.jsonl",
            {
                "prompt": messages[-1]["content"],
                **{f"{name}_answer": answers[name][index].text for name in adapters},
                **{f"{name}_judge": judged[name][index] for name in adapters},
                **({f"{name}_gold": gold[name][index] for name in adapters} if gold else {}),
                "kl_to_sft": kls[index],
            },
        )
    (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n")
    log.info("evaluation: %s", report)
    return report


def _gold_rewards(recipe: Recipe, prompts: list, answers: dict) -> dict[str, list[float]]:
    path = recipe.eval.gold_reward_adapter or recipe.output_dir / "rm"
    if not (Path(path) / "adapter_config.json").is_file():
        log.warning("%s: no reward adapter; gold reward is not reported", path)
        return {}
    gold = reward_scorer(Path(path))
    return {
        name: [
            gold(messages, [c.text])[0]
            for (_, messages), c in zip(prompts, completions, strict=True)
        ]
        for name, completions in answers.items()
    }
