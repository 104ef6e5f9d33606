"""Evaluation: the SFT policy against the final (PPO or DPO) policy on held-out prompts.

Both policies are adapters on one base model and answer the same prompts greedily. Reported, each
with a 95% bootstrap interval over prompts (`alignment.stats`): judge score, reward and answer
length of each policy; the final policy's win rate over SFT on the judge's score, raw and
length-controlled; the score gains; the KL from SFT along the final policy's answers (exact per
position, summed over the answer). The reward is "gold" only from an independent reward adapter
(`eval.gold_reward_adapter`); by default it is the run's own RM, the one PPO optimised.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel

from alignment.config import Recipe, RubricConfig
from alignment.data import read_prompts
from alignment.errors import RunStateError
from alignment.generation import Completion, GenerationSettings, generate
from alignment.human_eval import post_pairs, summarise_humans, verdicts
from alignment.judges import build_scorer, reward_scorer, rubric_criteria
from alignment.models import float32_logits, load_model, load_tokenizer, resolve_model
from alignment.runs import append_jsonl, read_jsonl, write_json
from alignment.stats import (
    CONFIDENCE,
    LENGTH_CONTROL_METHOD,
    RESAMPLES,
    Interval,
    difference_interval,
    length_controlled_win_rate,
    mean_interval,
    outcomes,
)
from alignment.store import AB_EVALUATION, Store
from alignment.tokens import Messages, encode_prompt

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
    reward_model, rewards = _rewards(recipe, prompts, answers)
    lengths = {name: [float(c.num_tokens) for c in answers[name]] for name in adapters}
    report = summarise(recipe.seed, stage, judged, rewards, lengths, answers, kls)
    if cfg.max_kl_to_sft is not None:
        report["kl_bound"] = {
            "max": cfg.max_kl_to_sft,
            "within": report["kl_to_sft"]["high"] <= cfg.max_kl_to_sft,
        }
    report["judge"] = f"judge:{recipe.judge.name}"
    if recipe.judge.kind == "rubric":
        report["judge_criteria"] = rubric_breakdown(
            recipe.seed, stage, recipe.judge.rubric, prompts, answers
        )
    report["reward_model"] = reward_model
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
                "messages": messages,
                **{f"{name}_answer": answers[name][index].text for name in adapters},
                **{f"{name}_judge": judged[name][index] for name in adapters},
                **{f"{name}_tokens": int(lengths[name][index]) for name in adapters},
                **(
                    {f"{name}_reward": rewards[name][index] for name in adapters} if rewards else {}
                ),
                "kl_to_sft": kls[index],
            },
        )
    write_json(out / "eval.json", report)
    log.info(
        "%d held-out prompts: win rate of %s over SFT %s, length-controlled %s; KL to SFT %s",
        len(prompts),
        stage,
        Interval(**report["win_rate"]),
        Interval(**report["length_controlled_win_rate"]),
        Interval(**report["kl_to_sft"]),
    )
    return report


def summarise(
    seed: int,
    stage: str,
    judged: dict[str, list[float]],
    rewards: dict[str, list[float]],
    lengths: dict[str, list[float]],
    answers: dict[str, list[Completion]],
    kls: list[float],
) -> dict[str, Any]:
    """The evaluation's figures, each a mean over prompts with its 95% bootstrap interval; the
    win rates and gains compare the two policies prompt by prompt."""
    policies = ("sft", stage)
    report: dict[str, Any] = {
        "final_stage": stage,
        "prompts": len(kls),
        "confidence": CONFIDENCE,
        "bootstrap_resamples": RESAMPLES,
    }
    ends = {name: [c.finish_reason == "stop" for c in answers[name]] for name in policies}
    for name in policies:
        report[name] = {
            "judge_score": mean_interval(judged[name], seed).as_dict(),
            "reward": mean_interval(rewards[name], seed).as_dict() if rewards else None,
            "answer_tokens": mean_interval(lengths[name], seed).as_dict(),
            "finished": sum(ends[name]) / len(kls),
        }
    results = outcomes(judged[stage], judged["sft"])
    length_difference = [a - b for a, b in zip(lengths[stage], lengths["sft"], strict=True)]
    report["win_rate"] = mean_interval(results, seed).as_dict()
    report["length_controlled_win_rate"] = length_controlled_win_rate(
        results, length_difference, seed
    ).as_dict()
    report["length_control"] = LENGTH_CONTROL_METHOD
    # SFT's answers that hit max_new_tokens lose on completeness to any answer that ends, so a
    # policy that only learned to stop wins those prompts; the win rate where SFT ends shows that.
    report["prompts_where_sft_ends"] = sum(ends["sft"])
    if any(ends["sft"]):
        report["win_rate_where_sft_ends"] = mean_interval(
            [result for result, sft_ends in zip(results, ends["sft"], strict=True) if sft_ends],
            seed,
        ).as_dict()
    report["judge_score_gain"] = difference_interval(judged[stage], judged["sft"], seed).as_dict()
    if rewards:
        report["reward_gain"] = difference_interval(rewards[stage], rewards["sft"], seed).as_dict()
        report["reward_win_rate"] = mean_interval(
            outcomes(rewards[stage], rewards["sft"]), seed
        ).as_dict()
    report["kl_to_sft"] = mean_interval(kls, seed).as_dict()
    return report


def rubric_breakdown(
    seed: int,
    stage: str,
    rubric: RubricConfig,
    prompts: list[tuple[str, Messages]],
    answers: dict[str, list[Completion]],
) -> dict[str, dict[str, dict[str, float]]]:
    """Each rubric criterion's mean for both policies and the final policy's gain, with
    intervals: which criterion a win rate comes from (answers that end, or answers on topic)."""
    values = {
        name: [
            rubric_criteria(rubric, messages[-1]["content"], answer.text)
            for (_, messages), answer in zip(prompts, answers[name], strict=True)
        ]
        for name in ("sft", stage)
    }
    breakdown = {}
    for criterion in rubric.weights:
        sft, tuned = ([row[criterion] for row in values[name]] for name in ("sft", stage))
        breakdown[criterion] = {
            "sft": mean_interval(sft, seed).as_dict(),
            stage: mean_interval(tuned, seed).as_dict(),
            "gain": difference_interval(tuned, sft, seed).as_dict(),
        }
    return breakdown


def _rewards(
    recipe: Recipe, prompts: list, answers: dict[str, list[Completion]]
) -> tuple[dict[str, Any] | None, dict[str, list[float]]]:
    """Which reward model scores the answers, and its scores. Gold only when the recipe names a
    reward adapter other than the run's own RM: that one is what PPO optimised, so a gain on it
    says little about quality, and it is labelled as such."""
    own = recipe.output_dir / "rm"
    path = Path(recipe.eval.gold_reward_adapter or own)
    if not (path / "adapter_config.json").is_file():
        log.warning("%s: no reward adapter; reward is not reported", path)
        return None, {}
    gold = path.resolve() != own.resolve()
    scorer = reward_scorer(path)
    rewards = {
        name: [
            scorer(messages, [c.text])[0]
            for (_, messages), c in zip(prompts, completions, strict=True)
        ]
        for name, completions in answers.items()
    }
    return {"adapter": str(path), "gold": gold}, rewards


def human_db(recipe: Recipe) -> str:
    """Where the run's human A/B pairs live by default: a store of their own, never the one the
    reward model trains on."""
    return str(recipe.output_dir / "eval" / "humans.db")


def run_human_eval(recipe: Recipe, db: str) -> dict[str, Any]:
    """Post the evaluated prompts' answer pairs for people to compare blind (once), and fold
    their judgements so far into eval.json as `human`. Run again as judgements come in."""
    out = recipe.output_dir / "eval"
    if not (out / "eval.json").is_file():
        raise RunStateError(
            f"{out}: no evaluation yet; run `align run RECIPE --from eval --until eval` first"
        )
    report = json.loads((out / "eval.json").read_text())
    stage = report["final_stage"]
    rows = read_jsonl(out / "answers.jsonl")
    if rows and "messages" not in rows[0]:
        # Evaluations written before A/B evaluation kept only the last user turn.
        raise RunStateError(
            f"{out / 'answers.jsonl'}: rows have no `messages` (written by an older `align eval`); "
            "rerun `align run RECIPE --from eval --until eval` first"
        )
    store = Store(db)
    added = post_pairs(store, rows, stage, recipe.model.name, recipe.seed)
    pairs = store.prompts_from(AB_EVALUATION)
    report["human"] = {"db": db, **summarise_humans(verdicts(store), pairs, recipe.seed)}
    write_json(out / "eval.json", report)
    log.info("%s: %d new A/B pairs (%d in all)", db, added, pairs)
    return report
