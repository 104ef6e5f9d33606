"""Reading preference data: every input format into one form, skips counted, errors located."""

import logging

import pytest

from alignment.errors import DataError
from alignment.preferences import (
    DROP_EMPTY,
    DROP_IDENTICAL,
    SKIP_EMPTY,
    SKIP_FEW,
    SKIP_IDENTICAL,
    SKIP_TIE,
    detect_format,
    hh_to_messages,
    read_preferences,
    with_off_topic_answers,
)
from tests.conftest import write_jsonl

USER = [{"role": "user", "content": "Name a colour."}]


def assistant(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


def ranking(completions: list[str], ranks: list[int], **extra) -> dict:
    return {
        "ranking_id": 7,
        "prompt_id": 3,
        "prompt": USER,
        "completions": completions,
        "ranks": ranks,
        "annotator": "alice",
        **extra,
    }


def test_each_format_is_detected_and_read_into_one_form(tmp_path):
    rows = [
        ranking(["Red.", "Blue, I think.", "Green", "No."], [1, 2, 2, 3]),
        {
            "prompt": USER,
            "chosen": assistant("Red."),
            "rejected": assistant("No."),
            "ranking_id": 7,
            "annotator": "alice",
        },
        {"prompt": USER, "chosen": assistant("Red."), "rejected": assistant("No."), "margin": 1.5},
        {"chosen": [*USER, *assistant("Red.")], "rejected": [*USER, *assistant("No.")]},
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
        {"chosen": "The sky is blue.", "rejected": "The sky is green."},
        {
            "chosen": "\n\nHuman: Name a colour.\n\nAssistant: Red.",
            "rejected": "\n\nHuman: Name a colour.\n\nAssistant: No.",
        },
    ]
    data = read_preferences(str(write_jsonl(tmp_path / "mixed.jsonl", rows)))
    assert [detect_format(r) for r in rows] == [
        "rankings",
        "pairs",
        "trl",
        "trl",
        "trl",
        "trl",
        "hh",
    ]
    assert dict(data.formats) == {"rankings": 1, "pairs": 1, "trl": 4, "hh": 1}
    assert not data.skipped and not data.dropped

    ranked, pair, margin, implicit, text, implicit_text, hh = data.comparisons
    # Ties form no pair: Blue and Green (both rank 2) are not compared with each other.
    assert ranked.ranks == (1, 2, 2, 3)
    assert sorted(ranked.pairs) == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert ranked.conversation(1) == [*USER, *assistant("Blue, I think.")]
    assert ranked.origin.endswith("mixed.jsonl:1")
    for comparison in (pair, implicit, hh):
        assert comparison.prompt == USER
        assert comparison.answers == (assistant("Red."), assistant("No."))
        assert comparison.pairs == ((0, 1),) and comparison.margin == 0.0
    assert margin.margin == 1.5
    assert (
        text.conversation(0) == "The sky is blue." and text.conversation(1) == "The sky is green."
    )
    assert implicit_text.answers == ("The sky is blue.", "The sky is green.")
    assert data.pair_count == 5 + 6


def test_hh_text_becomes_alternating_chat_turns():
    text = (
        "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: How do I boil an egg?"
        "\n\nHuman: Soft-boiled.\n\nAssistant: Eight minutes."
    )
    assert hh_to_messages("f:1", text, "chosen") == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "How do I boil an egg?\n\nSoft-boiled."},
        {"role": "assistant", "content": "Eight minutes."},
    ]


def test_unusable_rows_are_skipped_counted_and_named_by_reason(tmp_path, caplog):
    rows = [
        {"prompt": USER, "chosen": assistant("Same."), "rejected": assistant("Same.")},
        {"prompt": USER, "chosen": assistant("   "), "rejected": assistant("No.")},
        {"chosen": "\n\nHuman: Hi\n\nAssistant:", "rejected": "\n\nHuman: Hi\n\nAssistant: Hello"},
        ranking(["Only one."], [1]),
        ranking(["Red.", "  ", ""], [1, 2, 3]),  # one answer left once the empty ones go
        ranking(["Red.", "Blue."], [1, 1]),  # tied throughout
        {
            "prompt": USER,
            "chosen": assistant("Red."),
            "rejected": assistant("Blue."),
            "ranking_id": 7,
            "annotator": "bob",
            "tie": True,
        },
        ranking(["Red.", "Blue.", "", "Blue."], [1, 2, 3, 4]),  # trains; an empty one is dropped
    ]
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="alignment.preferences"):
        data = read_preferences(str(path))
    assert data.rows == 8
    assert dict(data.skipped) == {SKIP_IDENTICAL: 1, SKIP_EMPTY: 2, SKIP_FEW: 2, SKIP_TIE: 2}
    assert dict(data.dropped) == {DROP_EMPTY: 3, DROP_IDENTICAL: 1}
    (kept,) = data.comparisons
    assert kept.answers == (assistant("Red."), assistant("Blue."), assistant("Blue."))
    # Blue (rank 2) over the identical Blue (rank 4) is dropped; the rest stand.
    assert sorted(kept.pairs) == [(0, 1), (0, 2)]
    report = data.report()
    assert report["skipped"][SKIP_TIE] == 2 and report["comparisons"] == 1
    # Each row left out is named by file and line, in the summary and in the log.
    assert report["skipped_rows"] == {
        SKIP_IDENTICAL: [f"{path}:1"],
        SKIP_EMPTY: [f"{path}:2", f"{path}:3"],
        SKIP_FEW: [f"{path}:4", f"{path}:5"],
        SKIP_TIE: [f"{path}:6", f"{path}:7"],
    }
    assert report["dropped_rows"] == {
        DROP_EMPTY: [f"{path}:5", f"{path}:8"],
        DROP_IDENTICAL: [f"{path}:8"],
    }
    (logged,) = caplog.messages
    assert f"skipped 2, {SKIP_TIE}: {path}:6, {path}:7" in logged
    assert f"dropped 3, {DROP_EMPTY}: {path}:5, {path}:8" in logged


def test_many_skipped_rows_are_counted_in_full_and_named_in_part(tmp_path, caplog):
    rows = [ranking(["Red.", "Blue."], [1, 2])] + [ranking(["Red.", "Blue."], [1, 1])] * 30
    path = write_jsonl(tmp_path / "ties.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="alignment.preferences"):
        report = read_preferences(str(path)).report()
    assert report["skipped"] == {SKIP_TIE: 30}
    assert report["skipped_rows"][SKIP_TIE] == [f"{path}:{n}" for n in range(2, 22)]
    (logged,) = caplog.messages
    assert logged.endswith(
        f"skipped 30, {SKIP_TIE}: {path}:2, {path}:3, {path}:4, {path}:5, {path}:6 and 25 more"
    )


def test_file_without_usable_rows_says_why(tmp_path):
    path = write_jsonl(tmp_path / "ties.jsonl", [ranking(["Red.", "Blue."], [1, 1])])
    with pytest.raises(DataError) as error:
        read_preferences(str(path))
    assert str(error.value) == (
        f"{path}: no usable comparisons in 1 rows (skipped 1, {SKIP_TIE}: {path}:1)"
    )


@pytest.mark.parametrize(
    ("row", "fmt", "message"),
    [
        (
            {"question": "q", "answer": "a"},
            "auto",
            r"bad\.jsonl:2: unknown preference format.*question",
        ),
        (
            ranking(["a", "b"], [1]),
            "auto",
            r"bad\.jsonl:2: `ranks` must be a list of 2 rank numbers",
        ),
        (ranking(["a", "b"], [1, 0]), "auto", r"bad\.jsonl:2: `ranks`"),
        ({"prompt": USER, "completions": ["a", "b"]}, "auto", r"bad\.jsonl:2: .*no `ranks`"),
        (
            {"prompt": USER, "chosen": assistant("a"), "rejected": assistant("b"), "margin": "big"},
            "auto",
            r"bad\.jsonl:2: `margin` must be a finite number",
        ),
        (
            {"chosen": [{"role": "robot", "content": "a"}], "rejected": assistant("b")},
            "auto",
            r"bad\.jsonl:2: message 0 has role 'robot'",
        ),
        (
            {"chosen": "just text", "rejected": "other text"},
            "hh",
            r"bad\.jsonl:1: `chosen` is not HH",
        ),
        (
            {"chosen": "a", "rejected": "b"},
            "rankings",
            r"bad\.jsonl:1: rankings row has no `prompt`",
        ),
    ],
)
def test_bad_rows_are_errors_naming_file_line_and_key(tmp_path, row, fmt, message):
    good = {"prompt": USER, "chosen": assistant("Red."), "rejected": assistant("No.")}
    # A good row first, so the error must name the bad row's line (forced formats: alone).
    path = write_jsonl(tmp_path / "bad.jsonl", [good, row] if fmt == "auto" else [row])
    with pytest.raises(DataError, match=message):
        read_preferences(str(path), fmt=fmt)


def test_off_topic_answers_rank_another_prompts_best_answer_below_this_ones_best(tmp_path):
    rows = [
        {"prompt": [{"role": "user", "content": f"Question {q}?"}],
         "completions": [f"{q} worst", f"{q} best", f"{q} middle"], "ranks": [3, 1, 2]}
        for q in "ABCD"
    ]  # fmt: skip
    comparisons = read_preferences(str(write_jsonl(tmp_path / "r.jsonl", rows))).comparisons
    extended = with_off_topic_answers(comparisons, seed=0)
    donors = []
    for before, after in zip(comparisons, extended, strict=True):
        assert after.answers[:3] == before.answers and after.pairs[:-1] == before.pairs
        borrowed = after.answers[3][0]["content"]
        assert borrowed.endswith(" best") and borrowed[0] != before.prompt[0]["content"][-2]
        assert after.pairs[-1] == (1, 3)  # only this prompt's best answer is ranked above it
        donors.append(borrowed[0])
    assert sorted(donors) == list("ABCD")  # every prompt lends its best answer once
    assert with_off_topic_answers(comparisons, seed=0) == extended  # the seed decides
    assert with_off_topic_answers(comparisons[:1], seed=0) == comparisons[:1]  # no other prompt
