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

hf: the pairs as a `datasets` dataset (a `save_to_disk` directory and/or a private Hub dataset),
  each row also with "chosen_rank" and "rejected_rank" (the rank groups, 1 = best). TRL's
  RewardTrainer and DPOTrainer take it as it is: conversational prompt/chosen/rejected.

Aggregation (`aggregate="mean-rank"`): a prompt's current rankings by several annotators become
one ranking. Each candidate's mean rank over those annotators decides the order; equal means are
a tie (compared exactly, as sums of integer ranks). The row's ranking_id is the lowest id among
the rankings merged and annotator is their names joined by "+", e.g. "alice+bob".
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from alignment.errors import DataError, ModelSourceError
from alignment.hub import hub_errors, looks_like_repo_id
from alignment.store import RankedItem, Store, StoredRanking

Format = Literal["rankings", "pairs", "hf"]
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


def pair_rows(
    ranking: StoredRanking, include_ties: bool = False, ranks: bool = False
) -> Iterator[dict[str, Any]]:
    """The K-choose-2 preferences of one ranking (items are best first); with `ranks`, each
    row also has the two answers' rank groups."""
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
            if ranks:
                row.update(chosen_rank=items[i].rank, rejected_rank=items[j].rank)
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
    elif fmt in ("pairs", "hf"):
        for ranking in rankings:
            yield from pair_rows(ranking, include_ties, ranks=fmt == "hf")
    else:
        raise DataError(f"--format {fmt!r}: expected rankings, pairs or hf")


@dataclass(frozen=True)
class ExportResult:
    rows: int
    out: Path | None
    dataset_dir: Path | None
    hub_url: str | None = None


def write_jsonl(rows: Iterable[dict[str, Any]], out: Path, file_mode: int = 0o666) -> int:
    """Write rows to `out` atomically: readers never see a half-written export. `file_mode` is
    what the file is created with (less the umask), so a private export is never readable by
    others, not even while it is written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.unlink(missing_ok=True)  # a leftover would keep its own mode
    count = 0
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, file_mode)
    with open(fd, "w", encoding="utf-8") as f:
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
    file_mode: int = 0o666,
    push_to_hub: str | None = None,
) -> ExportResult:
    """Write the JSONL file (created with `file_mode`, less the umask) and/or a `datasets`
    directory (`Dataset.save_to_disk`); for `hf`, the dataset directory is `out`, and
    `push_to_hub` also uploads it as a private Hub dataset."""
    if fmt == "hf":
        if save_to_disk is not None:
            raise DataError("--format hf writes the dataset to --out DIR; drop --save-to-disk")
        return export_dataset(
            store, out, min_annotators, include_ties, aggregate, push_to_hub=push_to_hub
        )
    if push_to_hub is not None:
        raise DataError("--push-to-hub goes with --format hf")
    if out is None and save_to_disk is None:
        raise DataError("nothing to write: give --out FILE.jsonl and/or --save-to-disk DIR")
    rows = export_rows(store, fmt, min_annotators, include_ties, aggregate)
    count = 0
    out_path = Path(out) if out is not None else None
    if save_to_disk is None:
        count = write_jsonl(rows, out_path, file_mode)  # type: ignore[arg-type]
        return ExportResult(count, out_path, None)
    import datasets

    materialized = list(rows)
    if out_path is not None:
        write_jsonl(materialized, out_path, file_mode)
    target = Path(save_to_disk)
    datasets.Dataset.from_list(materialized).save_to_disk(str(target))
    return ExportResult(len(materialized), out_path, target)


def preference_features(include_ties: bool) -> Any:
    """The `hf` columns, kept even when there are no rows, so an empty export still loads."""
    import datasets

    turns = datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")})
    columns = {
        "prompt": turns,
        "chosen": turns,
        "rejected": turns,
        "ranking_id": datasets.Value("int64"),
        "annotator": datasets.Value("string"),
        "chosen_rank": datasets.Value("int32"),
        "rejected_rank": datasets.Value("int32"),
    }
    if include_ties:
        columns["tie"] = datasets.Value("bool")
    return datasets.Features(columns)


def check_can_push(repo_id: str) -> None:
    """Refuse a push that cannot happen, before anything is read or written."""
    from huggingface_hub import is_offline_mode

    if not looks_like_repo_id(repo_id):
        raise DataError(f"--push-to-hub {repo_id!r}: expected owner/name, e.g. me/preferences")
    if is_offline_mode():
        raise ModelSourceError(
            f"--push-to-hub {repo_id}: the Hugging Face Hub is offline (HF_HUB_OFFLINE is set), "
            "so nothing was written or uploaded. Write the dataset with --out DIR and push it "
            "later from a machine that is online, or unset HF_HUB_OFFLINE."
        )


def export_dataset(
    store: Store,
    out: str | Path | None,
    min_annotators: int = 1,
    include_ties: bool = False,
    aggregate: Aggregate = "none",
    push_to_hub: str | None = None,
) -> ExportResult:
    """The `hf` format: a `save_to_disk` directory at `out` (which must not exist yet: nothing
    is overwritten) and/or a private dataset `push_to_hub` on the Hub."""
    if out is None and push_to_hub is None:
        raise DataError("--format hf: give --out DIR (a `datasets` directory) and/or --push-to-hub")
    target = Path(out) if out is not None else None
    if target is not None and target.exists():
        raise DataError(f"{target}: already exists; export to a new directory")
    if push_to_hub is not None:
        check_can_push(push_to_hub)
    import datasets

    rows = list(export_rows(store, "hf", min_annotators, include_ties, aggregate))
    features = preference_features(include_ties)
    # Column by column, so that no rows still give the columns (from_list would give none).
    columns = {name: [row[name] for row in rows] for name in features}
    dataset = datasets.Dataset.from_dict(columns, features=features)
    if target is not None:
        partial = target.with_name(target.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # a crashed export's, never the user's
        # At least one shard: with none, an empty dataset could not be loaded back.
        dataset.save_to_disk(str(partial), num_shards=None if dataset.num_rows else 1)
        partial.rename(target)  # readers never see a half-written directory
    url = None
    if push_to_hub is not None:
        with hub_errors(f"--push-to-hub {push_to_hub}", "Nothing was uploaded."):
            url = str(dataset.push_to_hub(push_to_hub, private=True).commit_url)
    return ExportResult(len(rows), None, target, url)
