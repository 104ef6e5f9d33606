"""The reward model as a library: encoding comparisons, scoring, loading, and metrics.

`alignment.rm` trains a reward adapter; PPO, the judges and evaluation score with it through:

    encoding    comparisons as token ids with a shared prefix, and their collator
    scoring     rewards at the last real token of each conversation
    loading     a reward adapter directory, to score with or for PPO's roles
    metrics     accuracy, margin, Kendall's tau and length buckets on held-out preferences
"""

from alignment.reward.encoding import ComparisonCollator, EncodedComparison, encode_comparison
from alignment.reward.loading import STATS_FILE, load_reward_model, read_reward_adapter
from alignment.reward.scoring import comparison_scores, score, scoring_ids

__all__ = [
    "STATS_FILE",
    "ComparisonCollator",
    "EncodedComparison",
    "comparison_scores",
    "encode_comparison",
    "load_reward_model",
    "read_reward_adapter",
    "score",
    "scoring_ids",
]
