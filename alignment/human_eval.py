"""Human A/B evaluation, as InstructGPT evaluated its policies: people compare the SFT answer and
the final policy's answer to the same held-out prompt, blind, and say which is better.

The pairs go into a ranking store of their own (never the one the reward model trains on) as
prompts with two candidates, marked `AB_EVALUATION`; the ranking app shows such a prompt as a
two-answer comparison (A better / B better / tie / both bad), sides in an order of its own per
annotator. "A better" and "B better" are rankings, "tie" a tied ranking, "both bad" a skip with
that reason; all of them leave the prompt to the next annotator as any ranking does. Which answer
came from which policy is stored with the candidate (`adapter`) and never shown.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from alignment.stats import mean_interval
from alignment.store import AB_EVALUATION, BOTH_BAD, NewCandidate, Store, prompt_key


@dataclass(frozen=True)
class Verdict:
    """One annotator's judgement of one pair, from the final policy's side."""

    prompt_id: int
    annotator: str
    outcome: float  # 1: final better, 0.5: tie or both bad, 0: SFT better
    label: str  # "final better", "SFT better", "tie" or "both bad"


def post_pairs(
    store: Store, rows: Iterable[dict[str, Any]], stage: str, model: str, seed: int
) -> int:
    """Put each evaluated prompt's SFT and `stage` answers into the store as a blind pair (stored
    sides shuffled with `seed`); prompts already there are left alone. Returns how many were
    added. `rows` are eval/answers.jsonl rows."""
    rng = random.Random(seed)
    present = store.sampled_keys()
    added = 0
    for row in rows:
        messages = row["messages"]
        pair = [
            NewCandidate(row[f"{name}_answer"], model, {"evaluation": "a/b"}, adapter=name)
            for name in ("sft", stage)
        ]
        rng.shuffle(pair)
        if prompt_key(messages) not in present:
            added += store.add_sampled(messages, pair, source=AB_EVALUATION) is not None
    return added


def verdicts(store: Store) -> list[Verdict]:
    """Every current judgement of an A/B pair in the store."""
    policy_of: dict[int, dict[int, str]] = {}

    def policies(prompt_id: int) -> dict[int, str]:
        """candidate id -> "sft" or "final" for an A/B pair; empty for any other prompt."""
        if prompt_id not in policy_of:
            adapters = {c["id"]: c["adapter"] for c in store.candidates(prompt_id)}
            is_pair = len(adapters) == 2 and list(adapters.values()).count("sft") == 1
            policy_of[prompt_id] = (
                {i: "sft" if a == "sft" else "final" for i, a in adapters.items()}
                if is_pair
                else {}
            )
        return policy_of[prompt_id]

    found = []
    for ranking in store.current_rankings():
        sides = policies(ranking.prompt_id)
        if not sides:
            continue  # not a pair of an A/B evaluation
        rank = {sides[item.candidate_id]: item.rank for item in ranking.items}
        if rank["final"] == rank["sft"]:
            outcome, label = 0.5, "tie"
        elif rank["final"] < rank["sft"]:
            outcome, label = 1.0, "final better"
        else:
            outcome, label = 0.0, "SFT better"
        found.append(Verdict(ranking.prompt_id, ranking.annotator, outcome, label))
    for skip in store.current_skips():
        if skip.reason == BOTH_BAD and policies(skip.prompt_id):
            found.append(Verdict(skip.prompt_id, skip.annotator, 0.5, "both bad"))
    return found


def _win_rate(judged: list[Verdict], seed: int) -> dict[str, float]:
    """Mean over prompts of each prompt's mean outcome, with its bootstrap interval over prompts
    (several annotators of one prompt are not independent samples)."""
    by_prompt: dict[int, list[float]] = defaultdict(list)
    for verdict in judged:
        by_prompt[verdict.prompt_id].append(verdict.outcome)
    return mean_interval([sum(v) / len(v) for v in by_prompt.values()], seed).as_dict()


def summarise_humans(judged: list[Verdict], pairs: int, seed: int) -> dict[str, Any]:
    """The human win rate of the final policy over SFT, overall and per annotator, with 95%
    intervals, and how often each verdict was given."""
    summary: dict[str, Any] = {"pairs": pairs, "judgements": len(judged)}
    counts: dict[str, int] = defaultdict(int)
    for verdict in judged:
        counts[verdict.label] += 1
    summary["verdicts"] = {
        label: counts[label] for label in ("final better", "SFT better", "tie", "both bad")
    }
    if not judged:
        return summary
    summary["prompts_judged"] = len({v.prompt_id for v in judged})
    summary["win_rate"] = _win_rate(judged, seed)
    annotators = sorted({v.annotator for v in judged})
    summary["per_annotator"] = {
        name: {
            "judgements": sum(v.annotator == name for v in judged),
            "win_rate": _win_rate([v for v in judged if v.annotator == name], seed),
        }
        for name in annotators
    }
    return summary
