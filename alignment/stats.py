"""Uncertainty for evaluation figures: bootstrap intervals over prompts and a length-controlled
win rate.

Every figure `align eval` reports is a mean over prompts, so its uncertainty comes from which
prompts were drawn: a 95% percentile bootstrap over prompts (scipy) gives each one an interval.
Paired figures (a difference, a win rate) resample prompts, never the two answers apart.

The length-controlled win rate answers "would the final policy still win if its answers were as
long as SFT's?". As in AlpacaEval's length-controlled win rate, it fits a logistic model of the
outcome (win 1, tie 0.5, loss 0) on the answers' length difference and reports the predicted win
rate at a length difference of zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from scipy.stats import bootstrap

CONFIDENCE = 0.95
RESAMPLES = 2000
LENGTH_CONTROL_METHOD = (
    "logistic fit of the outcome (win 1, tie 0.5, loss 0) on the answer-length difference "
    "(tokens, standardised); the win rate it predicts at equal length"
)
# A weak ridge keeps the fit finite when one policy wins every prompt (separable outcomes).
_RIDGE = 1e-4


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95% bootstrap interval over prompts."""

    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3f} [{self.low:.3f}, {self.high:.3f}]"

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _interval(
    samples: Sequence[Sequence[float]],
    statistic: Callable[..., float],
    seed: int,
    vectorized: bool,
) -> Interval:
    arrays = [np.asarray(s, dtype=float) for s in samples]
    estimate = float(statistic(*arrays))
    if len(arrays[0]) < 2 or all(np.ptp(a) == 0 for a in arrays):
        return Interval(estimate, estimate, estimate)  # nothing varies: no spread to resample
    result = bootstrap(
        arrays,
        statistic,
        paired=True,
        vectorized=vectorized,
        n_resamples=RESAMPLES,
        confidence_level=CONFIDENCE,
        method="percentile",  # BCa is undefined when a resampled statistic is constant
        rng=np.random.default_rng(seed),
    )
    low, high = result.confidence_interval
    return Interval(estimate, float(low), float(high))


def mean_interval(values: Sequence[float], seed: int = 0) -> Interval:
    """The mean over prompts with its 95% bootstrap interval."""
    return _interval([values], lambda v, axis=-1: np.mean(v, axis=axis), seed, vectorized=True)


def difference_interval(after: Sequence[float], before: Sequence[float], seed: int = 0) -> Interval:
    """Mean of `after - before` over prompts (paired) with its 95% bootstrap interval."""
    differences = np.asarray(after, dtype=float) - np.asarray(before, dtype=float)
    return mean_interval(differences.tolist(), seed)


def outcomes(after: Sequence[float], before: Sequence[float]) -> list[float]:
    """Per prompt: 1 where `after` scores higher, 0.5 on a tie, 0 where it scores lower."""
    return [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(after, before, strict=True)]


def _length_controlled(result: np.ndarray, length_difference: np.ndarray) -> float:
    scale = length_difference.std()
    x = length_difference / scale if scale > 0 else np.zeros_like(length_difference)

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        p = np.clip(expit(beta[0] + beta[1] * x), 1e-12, 1 - 1e-12)
        residual = p - result
        value = -np.mean(result * np.log(p) + (1 - result) * np.log(1 - p)) + _RIDGE * beta @ beta
        gradient = np.array([residual.mean(), (residual * x).mean()]) + 2 * _RIDGE * beta
        return value, gradient

    beta = minimize(loss, np.zeros(2), jac=True, method="L-BFGS-B").x
    return float(expit(beta[0]))


def length_controlled_win_rate(
    results: Sequence[float], length_difference: Sequence[float], seed: int = 0
) -> Interval:
    """Win rate at equal answer length (see the module docstring), with its 95% bootstrap
    interval. `results` are per-prompt outcomes (1, 0.5, 0); `length_difference` is the final
    answer's length minus SFT's, in tokens."""
    return _interval([results, length_difference], _length_controlled, seed, vectorized=False)
