"""Bootstrap intervals and the length-controlled win rate (alignment.stats)."""

import numpy as np
import pytest

from alignment.stats import (
    difference_interval,
    length_controlled_win_rate,
    mean_interval,
    outcomes,
)


def test_mean_interval_brackets_the_mean_and_narrows_with_more_prompts():
    few = mean_interval([1.0] * 18 + [0.0] * 7, seed=1)
    many = mean_interval([1.0] * 280 + [0.0] * 120, seed=1)
    for interval in (few, many):
        assert interval.low < interval.estimate < interval.high
    assert many.high - many.low < (few.high - few.low) / 2  # ~1/sqrt(n)
    # 400 coin flips at p=0.7: the normal-approximation half-width is 1.96*sqrt(.21/400) = 0.045
    assert many.high - many.low == pytest.approx(0.09, abs=0.02)


def test_constant_values_give_a_point_interval_and_the_same_seed_the_same_interval():
    assert tuple(vars(mean_interval([0.5] * 10)).values()) == (0.5, 0.5, 0.5)
    values = [0.1, 0.9, 0.4, 0.3, 0.8, 0.2]
    assert mean_interval(values, seed=3) == mean_interval(values, seed=3)


def test_difference_is_paired_prompt_by_prompt():
    before = [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]
    after = [b + 1.0 for b in before]  # +1 on every prompt: no spread in the difference
    assert tuple(vars(difference_interval(after, before)).values()) == (1.0, 1.0, 1.0)


def test_outcomes_count_ties_as_half():
    assert outcomes([2, 1, 1], [1, 1, 2]) == [1.0, 0.5, 0.0]


def test_length_controlled_win_rate_removes_a_win_that_length_alone_explains():
    rng = np.random.default_rng(0)
    # The final policy answers longer on 80% of prompts and the judge mostly prefers the longer
    # answer; at equal length it is a coin flip.
    length_difference = np.where(rng.random(300) < 0.8, 15.0, -15.0) + rng.normal(0, 3, 300)
    longer_wins = rng.random(300) < 0.85
    results = np.where(longer_wins == (length_difference > 0), 1.0, 0.0)
    raw = mean_interval(results.tolist())
    controlled = length_controlled_win_rate(results.tolist(), length_difference.tolist())
    assert raw.low > 0.6  # raw: "clearly better"
    assert controlled.low < 0.5 < controlled.high  # length-controlled: no evidence
    assert controlled.low < controlled.estimate < controlled.high


def test_length_controlled_win_rate_keeps_a_win_that_is_not_about_length():
    rng = np.random.default_rng(1)
    length_difference = rng.normal(0, 20, 300)
    results = (rng.random(300) < 0.75).astype(float)
    controlled = length_controlled_win_rate(results.tolist(), length_difference.tolist())
    assert controlled.low > 0.6 and controlled.estimate == pytest.approx(results.mean(), abs=0.03)
