"""Rankings out of the store, as the reward-model stage reads them.

Two JSONL formats (one JSON object per line, UTF-8, in ranking-id order):

rankings: one row per current ranking (superseded and retracted ones are left out)
    {"ranking_id": 7, "prompt_id": 3, "prompt": [chat messages],
     "completions": [candidate texts, best first], "ranks": [1, 2, 2, 3], "annotator": "alice"}
  `ranks[i]` is the rank group of `completions[i]`: 1 = best, equal numbers = a tie. Tied
  completions appear in sampling order.

pairs: one row per preference pair of a ranking, K-choose-2 per untied K-way ranking
    {"prompt": [chat messages], "chosen": [{"role": "assistant", "content": "..."}],
     "rejected": [{"role": "assistant", "content": "..."}], "ranking_id": 7, "annotator": "alice"}
  Tied pairs are left out; with include_ties they are kept and every row gets "tie": true/false
  (for a tie, chosen/rejected is just the sampling order).

Aggregation (`aggregate="mean-rank"`): a prompt's current rankings by several annotators become
one ranking. Each candidate's mean rank over those annotators decides the order; equal means are
a tie (compared exactly, as sums of integer ranks). The row's ranking_id is the lowest id among
the rankings merged and annotator is their names joined by "+", e.g. "alice+bob".
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignment.errors import DataError
from alignment.store import RankedItem, Store, StoredRanking

Format = Literal["rankings", "pairs"]
Aggregate = Literal["none", "mean-rank"]


def aggregate_mean_rank(rankings: list[StoredRanking]) -> StoredRanking:
    """Merge one prompt's rankings by several annotators (see the module docstring)."""
    totals: dict[int, int] = defaultdict(int)
    counts: dict[int, int] = defaultdict(int)
    items: dict[int, RankedItem] = {}
    for ranking in rankings:
        for item in ranking.items:
            totals[item.candidate_id] += item.rank
            counts[item.candidate_id] += 1
            items[item.candidate_id] = item
    # Only candidates every annotator ranked can be compared on the same footing.
    shared = [c for c in totals if counts[c] == len(rankings)]
    ordered = sorted(shared, key=lambda c: (totals[c], items[c].position))
    groups = {total: n for n, total in enumerate(sorted({totals[c] for c in shared}), start=1)}
    first = min(rankings, key=lambda r: r.ranking_id)
    merged = [RankedItem(c, items[c].position, items[c].text, groups[totals[c]]) for c in ordered]
    return StoredRanking(
        ranking_id=first.ranking_id,
        prompt_id=first.prompt_id,
        messages=first.messages,
        annotator="+".join(sorted(r.annotator for r in rankings)),
        created_at=max(r.created_at for r in rankings),
        tie=len(groups) < len(merged),
        items=merged,
    )


def rankings_for_export(
    store: Store, min_annotators: int = 1, aggregate: Aggregate = "none"
) -> Iterator[StoredRanking]:
    current = store.current_rankings(min_annotators)
    if aggregate == "none":
        yield from current
        return
    if aggregate != "mean-rank":
        raise DataError(f"aggregate {aggregate!r}: expected none or mean-rank")
    by_prompt: dict[int, list[StoredRanking]] = defaultdict(list)
    for ranking in current:
        by_prompt[ranking.prompt_id].append(ranking)
    merged = [aggregate_mean_rank(group) for group in by_prompt.values()]
    yield from sorted(merged, key=lambda r: r.ranking_id)


def ranking_row(ranking: StoredRanking) -> dict[str, Any]:
    return {
        "ranking_id": ranking.ranking_id,
        "prompt_id": ranking.prompt_id,
        "prompt": ranking.messages,
        "completions": [item.text for item in ranking.items],
        "ranks": [item.rank for item in ranking.items],
        "annotator": ranking.annotator,
    }


def pair_rows(ranking: StoredRanking, include_ties: bool = False) -> Iterator[dict[str, Any]]:
    """The K-choose-2 preferences of one ranking (items are best first)."""
    items = ranking.items
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            tie = items[i].rank == items[j].rank
            if tie and not include_ties:
                continue
            row: dict[str, Any] = {
                "prompt": ranking.messages,
                "chosen": [{"role": "assistant", "content": items[i].text}],
                "rejected": [{"role": "assistant", "content": items[j].text}],
                "ranking_id": ranking.ranking_id,
                "annotator": ranking.annotator,
            }
            if include_ties:
                row["tie"] = tie
            yield row


def export_rows(
    store: Store,
    fmt: Format,
    min_annotators: int = 1,
    include_ties: bool = False,
    aggregate: Aggregate = "none",
) -> Iterator[dict[str, Any]]:
    if min_annotators < 1:
        raise DataError(f"--min-annotators {min_annotators}: must be 1 or more")
    rankings = rankings_for_export(store, min_annotators, aggregate)
    if fmt == "rankings":
        for ranking in rankings:
            yield ranking_row(ranking)
    elif fmt == "pairs":
        for ranking in rankings:
            yield from pair_rows(ranking, include_ties)
    else:
        raise DataError(f"--format {fmt!r}: expected rankings or pairs")


@dataclass(frozen=True)
class ExportResult:
    rows: int
    out: Path | None
    dataset_dir: Path | None


def write_jsonl(rows: Iterable[dict[str, Any]], out: Path) -> int:
    """Write rows to `out` atomically: readers never see a half-written export."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    count = 0
    with partial.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            count += 1
        f.flush()
        os.fsync(f.fileno())
    partial.replace(out)
    return count


def export(
    store: Store,
    fmt: Format,
    out: str | Path | None,
    min_annotators: int = 1,
    include_ties: bool = False,
    aggregate: Aggregate = "none",
    save_to_disk: str | Path | None = None,
) -> ExportResult:
    """Write the JSONL file and/or a `datasets` directory (`Dataset.save_to_disk`)."""
    if out is None and save_to_disk is None:
        raise DataError("nothing to write: give --out FILE.jsonl and/or --save-to-disk DIR")
    rows = export_rows(store, fmt, min_annotators, include_ties, aggregate)
    count = 0
    out_path = Path(out) if out is not None else None
    if save_to_disk is None:
        count = write_jsonl(rows, out_path)  # type: ignore[arg-type]
        return ExportResult(count, out_path, None)
    import datasets

    materialized = list(rows)
    if out_path is not None:
        write_jsonl(materialized, out_path)
    target = Path(save_to_disk)
    datasets.Dataset.from_list(materialized).save_to_disk(str(target))
    return ExportResult(len(materialized), out_path, target)
