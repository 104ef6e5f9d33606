"""Human A/B evaluation: blind pairs into a store of their own, verdicts back as a win rate."""

from alignment.human_eval import post_pairs, summarise_humans, verdicts
from alignment.store import AB_EVALUATION, BOTH_BAD, Store


def _rows(n):
    return [
        {
            "messages": [{"role": "user", "content": f"Question {i}?"}],
            "sft_answer": f"SFT answer {i}.",
            "ppo_answer": f"PPO answer {i}.",
        }
        for i in range(n)
    ]


def _judge(store, name, choose):
    """Take every pair in `name`'s queue and give the verdict `choose(prompt_index, texts)`."""
    store.sync_annotators([(name, "annotator")])
    while (lease := store.lease(name, per_prompt=2)) is not None:
        index = int(lease.messages[-1]["content"].split()[1].rstrip("?"))
        verdict = choose(index, lease.texts)
        if verdict == BOTH_BAD:
            store.skip(name, lease.token, BOTH_BAD, per_prompt=2)
            continue
        ranks = {"ppo": [1, 2], "sft": [2, 1], "tie": [1, 1]}[verdict]
        if lease.texts[0].startswith("SFT") and verdict != "tie":
            ranks = ranks[::-1]  # ranks are in display order: A is the SFT answer here
        store.submit_ranking(name, lease.token, ranks, tie=verdict == "tie", per_prompt=2)


def test_pairs_are_posted_once_blind_and_both_sides_come_first_somewhere(tmp_path):
    store = Store(tmp_path / "humans.db")
    assert post_pairs(store, _rows(40), "ppo", "tiny", seed=1) == 40
    assert post_pairs(store, _rows(40), "ppo", "tiny", seed=1) == 0  # idempotent
    firsts = {store.candidates(p)[0]["adapter"] for p in range(1, 41)}
    assert firsts == {"sft", "ppo"}  # stored sides shuffled
    store.sync_annotators([("ann", "annotator")])
    lease = store.lease("ann")
    assert len(lease.texts) == 2 and lease.source == AB_EVALUATION


def test_verdicts_give_the_win_rate_overall_and_per_annotator(tmp_path):
    store = Store(tmp_path / "humans.db")
    post_pairs(store, _rows(12), "ppo", "tiny", seed=0)
    # ann prefers PPO on 0-8, SFT on 9, tie on 10, both bad on 11; bob prefers SFT everywhere.
    _judge(
        store,
        "ann",
        lambda i, _: "ppo" if i < 9 else "sft" if i == 9 else "tie" if i == 10 else BOTH_BAD,
    )
    _judge(store, "bob", lambda i, _: "sft")
    judged = verdicts(store)
    assert len(judged) == 24
    summary = summarise_humans(judged, pairs=12, seed=0)
    assert summary["verdicts"] == {"final better": 9, "SFT better": 13, "tie": 1, "both bad": 1}
    ann = summary["per_annotator"]["ann"]["win_rate"]
    assert ann["estimate"] == (9 + 0.5 + 0.5) / 12 and ann["low"] < ann["estimate"] < ann["high"]
    assert summary["per_annotator"]["bob"]["win_rate"]["estimate"] == 0.0
    # Overall: per prompt, the mean of its two verdicts; then the mean over prompts.
    assert summary["win_rate"]["estimate"] == (9 * 0.5 + 0 + 0.25 + 0.25) / 12
