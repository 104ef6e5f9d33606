"""Inter-annotator agreement: Kendall's tau-b and Krippendorff's alpha, and the report over a
store's current rankings."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.agreement import agreement, kendall_tau_b, krippendorff_alpha
from alignment.store import Store
from tests.ranking_support import ranked_store


@pytest.fixture
def ranked(tmp_path: Path) -> Store:
    return ranked_store(tmp_path / "rankings.db")


def test_krippendorff_alpha_matches_the_published_example() -> None:
    # Krippendorff (2011), "Computing Krippendorff's alpha-reliability", 4 coders x 12 units.
    n = None
    coders = [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, n, n, n],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, n, 3],
        [n, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, n],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, n],
    ]
    units = [[v for v in column if v is not None] for column in zip(*coders, strict=True)]
    assert krippendorff_alpha(units, "nominal") == pytest.approx(0.743, abs=5e-4)
    assert krippendorff_alpha(units, "ordinal") == pytest.approx(0.815, abs=5e-4)
    assert krippendorff_alpha(units, "interval") == pytest.approx(0.849, abs=5e-4)
    assert krippendorff_alpha([[1, 1], [1, 1]]) is None  # no variation: undefined
    assert krippendorff_alpha([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)


def test_kendall_tau_b_agrees_with_scipy() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    cases = [
        ([1, 2, 3, 4], [1, 2, 3, 4]),
        ([1, 2, 3, 4], [4, 3, 2, 1]),
        ([1, 2, 2, 3], [2, 1, 3, 3]),
        ([1, 1, 2, 3, 4], [2, 1, 1, 4, 3]),
    ]
    for x, y in cases:
        assert kendall_tau_b(x, y) == pytest.approx(scipy_stats.kendalltau(x, y).statistic)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None


def test_agreement_report(ranked: Store) -> None:
    report = agreement(ranked.current_rankings(min_annotators=2))
    assert [p.prompt_id for p in report.prompts] == [1]
    # alice [1,2,2,3] vs bob [2,1,3,4] by position: 4 concordant, 1 discordant, 1 tie in alice.
    assert report.prompts[0].tau == pytest.approx(kendall_tau_b([1, 2, 2, 3], [2, 1, 3, 4]))
    assert report.mean_tau == report.prompts[0].tau
    assert report.alpha == pytest.approx(
        krippendorff_alpha([[1, 2], [2, 1], [2, 3], [3, 4]], "ordinal")
    )
