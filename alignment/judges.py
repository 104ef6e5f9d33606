"""Judges: rank sampled answers without people, into the same store annotators use.

A judge signs in to the store as annotator `judge:<name>`, takes leases and submits rankings
exactly as a person would, so nothing downstream can tell (or needs to care) who ranked.

    rubric        transparent and deterministic: a weighted sum of simple, named criteria
                  whose weights and bounds live in the recipe
    reward-model  any reward adapter (a "gold" RM, as in reward over-optimisation studies)
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from alignment.config import JudgeConfig, RubricConfig
from alignment.store import Store
from alignment.tokens import Messages

log = logging.getLogger(__name__)
Scorer = Callable[[Messages, Sequence[str]], list[float]]

_WORD = re.compile(r"[A-Za-z0-9']+")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "can",
        "do",
        "does",
        "for",
        "from",
        "how",
        "i",
        "in",
        "is",
        "it",
        "me",
        "my",
        "of",
        "on",
        "or",
        "please",
        "should",
        "that",
        "the",
        "this",
        "to",
        "was",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
    ]
)


def _words(text: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(text)]


def rubric_criteria(rubric: RubricConfig, prompt: str, answer: str) -> dict[str, float]:
    """Each criterion of the rubric in [0, 1] for one answer; the judge's score is their weighted mean."""
    words = _words(answer)
    count = len(words)
    low, high = rubric.min_words, rubric.max_words
    if count < low:
        length = count / low
    elif count > high:
        length = max(0.0, 1 - (count - high) / high)
    else:
        length = 1.0
    stripped = answer.rstrip()
    complete = 1.0 if stripped.endswith((".", "!", "?", "```", ")", '"')) else 0.0
    topic = {w for w in _words(prompt) if len(w) > 2 and w not in _STOPWORDS}
    relevance = len(topic & set(words)) / len(topic) if topic else 1.0
    trigrams = list(zip(words, words[1:], words[2:], strict=False))
    repetition = 1 - (len(trigrams) - len(set(trigrams))) / len(trigrams) if trigrams else 1.0
    lowered = answer.lower()
    banned = 0.0 if any(p.lower() in lowered for p in rubric.banned_phrases) else 1.0
    return {
        "length": length,
        "complete": complete,
        "relevance": relevance,
        "no_repetition": repetition,
        "no_banned_phrases": banned,
    }


def rubric_score(rubric: RubricConfig, prompt: str, answer: str) -> float:
    criteria = rubric_criteria(rubric, prompt, answer)
    weights = rubric.weights
    return sum(weights[name] * value for name, value in criteria.items()) / sum(weights.values())


def rubric_scorer(rubric: RubricConfig) -> Scorer:
    def score(messages: Messages, answers: Sequence[str]) -> list[float]:
        return [rubric_score(rubric, messages[-1]["content"], a) for a in answers]

    return score


def ranks_from_scores(scores: Sequence[float], decimals: int = 6) -> list[int]:
    """Dense ranks, 1 = best; scores equal to `decimals` places tie."""
    rounded = [round(s, decimals) for s in scores]
    distinct = sorted(set(rounded), reverse=True)
    return [distinct.index(s) + 1 for s in rounded]


def judge_store(store: Store, name: str, scorer: Scorer, per_prompt: int = 1) -> int:
    """Rank every prompt in the judge's queue; returns how many rankings it submitted."""
    annotator = f"judge:{name}"
    store.sync_annotators([(annotator, "annotator")])
    submitted = 0
    while (lease := store.lease(annotator, per_prompt=per_prompt)) is not None:
        ranks = ranks_from_scores(scorer(lease.messages, lease.texts))
        store.submit_ranking(
            annotator, lease.token, ranks, tie=len(set(ranks)) < len(ranks), per_prompt=per_prompt
        )
        submitted += 1
    log.info("%s ranked %d prompts", annotator, submitted)
    return submitted


def reward_scorer(adapter: Path) -> Scorer:
    """A reward adapter as a scoring function (loaded once, scores at the last real token)."""
    from alignment.reward import load_reward_model, score

    model, tokenizer, stats = load_reward_model(adapter)

    def reward(messages: Messages, answers: Sequence[str]) -> list[float]:
        conversations = [[*messages, {"role": "assistant", "content": a}] for a in answers]
        return score(model, tokenizer, conversations, max_length=stats.get("max_length")).tolist()

    return reward


def build_scorer(judge: JudgeConfig, run_dir: Path) -> Scorer:
    """The recipe's judge as a scoring function."""
    if judge.kind == "rubric":
        return rubric_scorer(judge.rubric)
    from alignment.hub import resolve_adapter

    return reward_scorer(
        resolve_adapter(judge.reward_adapter) if judge.reward_adapter else run_dir / "rm"
    )
