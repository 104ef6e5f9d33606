"""Encoding comparisons for the reward model: token ids, the shared prefix, and batches.

The answers of one comparison share their conversation up to where they differ. With
`share_prefix` a comparison is one row: the shared tokens once, then each answer's tokens, with an
attention mask that lets each answer see the shared part and itself only, and position ids that
restart after the shared part for each answer. Every answer's score is the one it would get
alone, at fewer tokens where dialogues are long and answers short (HH-RLHF: ~1.6x fewer).
Too long conversations lose their START, so the answer being judged is kept.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.special import log_expit
from transformers import PreTrainedTokenizerBase

from alignment.preferences import Comparison
from alignment.tokens import conversation_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EncodedComparison:
    """A comparison as token ids: candidate k is `prefix + tails[k]`; pairs index candidates."""

    prefix: list[int]  # the start all candidates share (possibly cut)
    tails: list[list[int]]  # each candidate's own tokens
    better: list[int]  # pair i prefers candidate better[i] over worse[i]
    worse: list[int]
    margin: float
    length: int  # tokens in the shared-prefix layout, for batching by length
    pair_weights: list[float] | None = None  # per pair; None: all 1 (see `length_balanced`)
    pair_offsets: list[float] | None = None  # per pair, logits; None: all 0 (`length_explained`)

    @classmethod
    def from_row(cls, row: EncodedComparison | Mapping[str, Any]) -> EncodedComparison:
        """Back from a `datasets` row (the Trainer's dataset stores plain dicts)."""
        return row if isinstance(row, EncodedComparison) else cls(**row)


def encode_comparison(
    tokenizer: PreTrainedTokenizerBase, comparison: Comparison, max_length: int
) -> EncodedComparison:
    """The shared start and each answer's rest, cut to fit max_length.

    All candidates are cut at the same place, from the start, until the longest fits in
    max_length; if an answer's own tokens exceed it, each candidate keeps its last max_length
    tokens and nothing is shared.
    """
    sequences = [
        conversation_ids(tokenizer, comparison.conversation(k))
        for k in range(len(comparison.answers))
    ]
    # Shared tokens, leaving every candidate at least one token of its own to be scored at.
    limit = min(len(s) for s in sequences) - 1
    shared = 0
    while shared < limit and all(s[shared] == sequences[0][shared] for s in sequences):
        shared += 1
    tails = [s[shared:] for s in sequences]
    room = max_length - max(len(t) for t in tails)
    if room <= 0:
        prefix, tails = [], [s[-max_length:] for s in sequences]
    else:
        prefix = sequences[0][max(0, shared - room) : shared]
    return EncodedComparison(
        prefix=prefix,
        tails=tails,
        better=[b for b, _ in comparison.pairs],
        worse=[w for _, w in comparison.pairs],
        margin=comparison.margin,
        length=len(prefix) + sum(len(t) for t in tails),
    )


def _pair_lengths(row: EncodedComparison) -> list[tuple[int, int]]:
    """Per pair: the preferred answer's length and the other's, in tokens."""
    return [
        (len(row.tails[b]), len(row.tails[w])) for b, w in zip(row.better, row.worse, strict=True)
    ]


def length_balanced(rows: Sequence[EncodedComparison]) -> list[EncodedComparison]:
    """The same comparisons with pair weights under which the preferred answer is the longer one
    in half of the weight of unequal-length pairs and the shorter one in the other half. Under
    these weights length alone predicts no preference, so a reward model cannot fit the data by
    length (HH-RLHF harmless: the shorter answer wins 60% of pairs)."""
    # Per pair: 1 where the preferred answer is the longer one, -1 the shorter, 0 equal.
    directions = [[(b > w) - (b < w) for b, w in _pair_lengths(row)] for row in rows]
    longer = sum(d.count(1) for d in directions)
    shorter = sum(d.count(-1) for d in directions)
    if not longer or not shorter:
        return list(rows)  # nothing to balance against
    unequal = longer + shorter
    weight = {1: unequal / (2 * longer), -1: unequal / (2 * shorter), 0: 1.0}
    return [
        replace(row, pair_weights=[weight[d] for d in pair_directions])
        for row, pair_directions in zip(rows, directions, strict=True)
    ]


# A logit per doubling of length; the bound keeps the fit finite when length separates the data.
_MAX_LENGTH_COEFFICIENT = 20.0


def length_explained(rows: Sequence[EncodedComparison]) -> list[EncodedComparison]:
    """The same comparisons with a fixed length model added to each pair's reward difference in
    the loss, so length is explained before the reward model sees it (a product of experts with
    a length-only expert). The length model, `coefficient x log2(tokens better / tokens worse)`,
    is fitted to the training pairs by maximum likelihood. The reward model is then trained on
    what length does not explain, and scores without the length term."""
    log_ratios = [[float(np.log2(b / w)) for b, w in _pair_lengths(row)] for row in rows]
    x = np.array([value for pairs in log_ratios for value in pairs])
    if not x.any():
        return list(rows)  # all lengths equal: nothing to explain
    fit = minimize_scalar(
        lambda coefficient: -log_expit(coefficient * x).mean(),
        bounds=(-_MAX_LENGTH_COEFFICIENT, _MAX_LENGTH_COEFFICIENT),
        method="bounded",
    )
    log.info("length model: %+.2f logits per doubling of the preferred answer's length", fit.x)
    return [
        replace(row, pair_offsets=[fit.x * value for value in pairs])
        for row, pairs in zip(rows, log_ratios, strict=True)
    ]


@dataclass
class ComparisonCollator:
    """Batches encoded comparisons for one forward pass over all their candidates.

    Returns input_ids, attention_mask (a boolean (rows, 1, T, T) mask when answers share their
    prefix in one row, else the usual (rows, T) padding mask), position_ids, where each candidate
    ends (score_rows, score_cols), and for every pair: better/worse candidate indices, margin
    (less the pair's offset) and weight = 1 / (pairs of its comparison x comparisons in the batch).
    """

    pad_token_id: int
    share_prefix: bool = True

    def __call__(
        self, rows: Sequence[EncodedComparison | Mapping[str, Any]]
    ) -> dict[str, torch.Tensor]:
        rows = [EncodedComparison.from_row(row) for row in rows]
        sequences: list[list[int]] = []
        positions: list[list[int]] = []
        segments: list[list[int]] = []  # 0: shared prefix; k + 1: answer k of that row
        score_rows: list[int] = []
        score_cols: list[int] = []
        better: list[int] = []
        worse: list[int] = []
        margin: list[float] = []
        weight: list[float] = []
        for row in rows:
            first = len(score_rows)
            prefix, tails = row.prefix, row.tails
            if self.share_prefix:
                ids, pos, seg = list(prefix), list(range(len(prefix))), [0] * len(prefix)
                for k, tail in enumerate(tails):
                    ids += tail
                    pos += range(len(prefix), len(prefix) + len(tail))
                    seg += [k + 1] * len(tail)
                    score_rows.append(len(sequences))
                    score_cols.append(len(ids) - 1)
                sequences.append(ids)
                positions.append(pos)
                segments.append(seg)
            else:
                for tail in tails:
                    score_rows.append(len(sequences))
                    score_cols.append(len(prefix) + len(tail) - 1)
                    sequences.append(prefix + tail)
                    positions.append(list(range(len(prefix) + len(tail))))
                    segments.append([0] * (len(prefix) + len(tail)))
            pairs = len(row.better)
            better += [first + b for b in row.better]
            worse += [first + w for w in row.worse]
            # The loss subtracts the margin from the reward difference and adds the offset.
            margin += [float(row.margin) - o for o in row.pair_offsets or [0.0] * pairs]
            weight += [w / (pairs * len(rows)) for w in row.pair_weights or [1.0] * pairs]

        width = max(len(s) for s in sequences)
        input_ids = torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(sequences), width), dtype=torch.long)
        segment = torch.full((len(sequences), width), -1, dtype=torch.long)
        for i, (ids, pos, seg) in enumerate(zip(sequences, positions, segments, strict=True)):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            position_ids[i, : len(pos)] = torch.tensor(pos)
            segment[i, : len(seg)] = torch.tensor(seg)
        if self.share_prefix:
            causal = torch.ones(width, width, dtype=torch.bool).tril()
            key, query = segment[:, None, :], segment[:, :, None]
            # Each token sees the shared prefix and its own answer; padding sees itself, so no
            # row of the mask is empty (an empty row gives NaN in attention).
            attention_mask = (causal & ((key == 0) | (key == query)))[:, None]
        else:
            attention_mask = (segment >= 0).long()
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "score_rows": torch.tensor(score_rows),
            "score_cols": torch.tensor(score_cols),
            "better": torch.tensor(better, dtype=torch.long),
            "worse": torch.tensor(worse, dtype=torch.long),
            "margin": torch.tensor(margin),
            "pair_weight": torch.tensor(weight),
            "num_tokens": (segment >= 0).sum(),
        }
