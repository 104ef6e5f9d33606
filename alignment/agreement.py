"""Inter-annotator agreement on K-way rankings, written here (no scipy needed).

- Kendall's tau-b between two annotators' rankings of the same candidates (tau-b, because ranks
  can tie). Per prompt: the mean over every pair of annotators who ranked it. Overall: the mean of
  the per-prompt values.
- Krippendorff's alpha with the ordinal metric: units are candidates, coders are annotators,
  values are the rank groups given. Per prompt (the prompt's candidates are the units) and overall
  (every candidate of every prompt with two or more rankings is a unit).
Values undefined for lack of variation (e.g. everything tied) are None.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from alignment.store import StoredRanking

Metric = Literal["nominal", "ordinal", "interval"]


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b of two paired rank lists; None when either is constant."""
    if len(x) != len(y):
        raise ValueError(f"rank lists differ in length: {len(x)} and {len(y)}")
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx = (x[i] > x[j]) - (x[i] < x[j])
        dy = (y[i] > y[j]) - (y[i] < y[j])
        if dx == 0 and dy == 0:
            continue  # tied in both: counts toward neither denominator term
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx == dy:
            concordant += 1
        else:
            discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else None


def _delta(
    metric: Metric, values: list[float], counts: Counter
) -> dict[tuple[float, float], float]:
    delta: dict[tuple[float, float], float] = {}
    for a, b in itertools.product(values, repeat=2):
        if metric == "nominal":
            d = 0.0 if a == b else 1.0
        elif metric == "interval":
            d = (a - b) ** 2
        else:  # ordinal: distance by how many pairable values lie between the two ranks
            low, high = min(a, b), max(a, b)
            between = sum(counts[v] for v in values if low <= v <= high)
            d = (between - (counts[a] + counts[b]) / 2) ** 2
        delta[a, b] = d
    return delta


def krippendorff_alpha(
    units: Iterable[Sequence[float]], metric: Metric = "ordinal"
) -> float | None:
    """Krippendorff's alpha for units given as the values the coders assigned (missing left out).

    Built from the coincidence matrix: each unit with m >= 2 values adds 1/(m-1) for every ordered
    pair of its values. alpha = 1 - (n-1) * sum(o_ck d_ck) / sum(n_c n_k d_ck).
    """
    coincidence: Counter = Counter()
    for unit in units:
        m = len(unit)
        if m < 2:
            continue  # unpairable
        for i, j in itertools.permutations(range(m), 2):
            coincidence[unit[i], unit[j]] += 1 / (m - 1)
    if not coincidence:
        return None
    counts: Counter = Counter()
    for (c, _), weight in coincidence.items():
        counts[c] += weight
    n = sum(counts.values())
    values = sorted(counts)
    delta = _delta(metric, values, counts)
    observed = sum(weight * delta[pair] for pair, weight in coincidence.items())
    expected = sum(counts[c] * counts[k] * delta[c, k] for c in values for k in values)
    if expected == 0:
        return None
    return 1 - (n - 1) * observed / expected


@dataclass(frozen=True)
class PromptAgreement:
    prompt_id: int
    annotators: list[str]
    tau: float | None  # mean Kendall's tau-b over annotator pairs
    alpha: float | None  # Krippendorff's alpha, ordinal


@dataclass(frozen=True)
class AgreementReport:
    prompts: list[PromptAgreement]  # prompts with two or more current rankings
    mean_tau: float | None
    alpha: float | None  # pooled over all those prompts' candidates
    pairs: int  # annotator pairs compared

    def as_dict(self) -> dict:
        return {
            "prompts_compared": len(self.prompts),
            "annotator_pairs": self.pairs,
            "mean_kendall_tau_b": self.mean_tau,
            "krippendorff_alpha_ordinal": self.alpha,
            "per_prompt": [
                {
                    "prompt_id": p.prompt_id,
                    "annotators": p.annotators,
                    "kendall_tau_b": p.tau,
                    "krippendorff_alpha_ordinal": p.alpha,
                }
                for p in self.prompts
            ],
        }


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def agreement(rankings: Iterable[StoredRanking]) -> AgreementReport:
    """Agreement over the current rankings of every prompt ranked by two or more annotators."""
    by_prompt: Mapping[int, dict[str, dict[int, int]]] = defaultdict(dict)
    for ranking in rankings:
        by_prompt[ranking.prompt_id][ranking.annotator] = {
            item.candidate_id: item.rank for item in ranking.items
        }
    results: list[PromptAgreement] = []
    all_units: list[list[float]] = []
    pairs = 0
    for prompt_id in sorted(by_prompt):
        ranks = by_prompt[prompt_id]
        if len(ranks) < 2:
            continue
        names = sorted(ranks)
        taus = []
        for a, b in itertools.combinations(names, 2):
            shared = sorted(set(ranks[a]) & set(ranks[b]))
            taus.append(kendall_tau_b([ranks[a][c] for c in shared], [ranks[b][c] for c in shared]))
            pairs += 1
        candidates = sorted({c for given in ranks.values() for c in given})
        units = [[ranks[n][c] for n in names if c in ranks[n]] for c in candidates]
        all_units.extend(units)
        results.append(
            PromptAgreement(prompt_id, names, _mean(taus), krippendorff_alpha(units, "ordinal"))
        )
    return AgreementReport(
        prompts=results,
        mean_tau=_mean(p.tau for p in results),
        alpha=krippendorff_alpha(all_units, "ordinal") if all_units else None,
        pairs=pairs,
    )
