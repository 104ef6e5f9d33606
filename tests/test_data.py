import json

import pytest

from alignment.data import read_prompts, sft_examples
from alignment.errors import DataError
from tests.conftest import ROOT, write_jsonl


def test_chat_rows_become_prompt_completion_pairs(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello!"},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            }
        ],
    )
    examples = sft_examples(str(path))
    # each assistant turn is trained once, with all the context before it
    assert [len(e["prompt"]) for e in examples] == [2, 4]
    assert examples[1]["completion"] == [{"role": "assistant", "content": "4"}]
    assert examples[1]["prompt"][0] == {"role": "system", "content": "Be brief."}
    whole = sft_examples(str(path), assistant_only_loss=False)
    assert len(whole) == 1 and len(whole[0]["messages"]) == 5


def test_prompt_completion_and_alpaca_rows(tmp_path):
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            {"prompt": "Capital of Peru?", "completion": "Lima."},
            {"instruction": "Translate to French", "input": "cat", "output": "chat"},
            {"instruction": "Say hi", "input": "", "output": "Hi!"},
        ],
    )
    a, b, c = sft_examples(str(path))
    assert a == {
        "prompt": [{"role": "user", "content": "Capital of Peru?"}],
        "completion": [{"role": "assistant", "content": "Lima."}],
    }
    assert b["prompt"][0]["content"] == "Translate to French\n\ncat"
    assert c["prompt"][0]["content"] == "Say hi"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("", "file is empty"),
        ('{"prompt": "a", "completion": "b"}\n{"prompt": oops}\n', r"d.jsonl:2: invalid JSON"),
        (
            '{"prompt": "a", "completion": "b"}\n{"question": "a"}\n',
            r"d.jsonl:2: unknown row format with keys \['question'\]",
        ),
        (
            '{"messages": [{"role": "user", "content": "hi"}]}\n',
            r"d.jsonl:1: conversation has no assistant turn",
        ),
        (
            '{"messages": [{"role": "robot", "content": "hi"}]}\n',
            r"d.jsonl:1: message 0 has role 'robot'",
        ),
        (
            '{"messages": [{"role": "user", "content": "  "}, {"role": "assistant", "content": "x"}]}\n',
            r"d.jsonl:1: message 0 \(user\) has empty",
        ),
        ('{"prompt": "", "completion": "b"}\n', r"d.jsonl:1: `prompt` is empty"),
        ("[1, 2]\n", r"d.jsonl:1: expected a JSON object, got list"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, content, expected):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        sft_examples(str(path))


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        sft_examples(str(tmp_path / "missing.jsonl"))


def test_prompts_must_end_with_user_turn(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(
        json.dumps(
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]}
        )
        + "\n"
    )
    with pytest.raises(DataError, match=r"p\.jsonl:1: a prompt must end with a user message"):
        read_prompts(str(path))


def test_shipped_data_is_valid():
    assert len(sft_examples(str(ROOT / "data" / "demos.jsonl"))) >= 300
    for name in ("prompts.jsonl", "prompts_heldout.jsonl"):
        assert len(read_prompts(str(ROOT / "data" / name))) >= 50


LATIN_1 = b'{"prompt": "a", "completion": "b"}\n\n{"prompt": "caf\xe9"}\n'


@pytest.mark.parametrize(
    ("content", "line", "offset", "hint"),
    [
        (b"\x1f\x8b\x08\x00binary", 1, 1, "it looks like a gzip file; decompress it first"),
        (
            '{"prompt": "hi"}\n'.encode("utf-16"),
            1,
            0,
            "it looks like UTF-16 text; save it as UTF-8",
        ),
        (b"SQLite format 3\x00\x10\x00", 1, 15, "it looks like an SQLite database"),
        (LATIN_1, 3, LATIN_1.index(b"\xe9"), "expected UTF-8 text"),
        ('{"prompt": "a"}'.encode("utf-16-le"), 1, 1, "expected UTF-8 text"),  # NUL bytes, no BOM
    ],
)
@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_files_that_are_not_utf8_text_name_line_and_byte_offset(
    tmp_path, content, line, offset, hint, suffix
):
    path = tmp_path / f"d{suffix}"
    path.write_bytes(content)
    expected = (
        f"{path}:{line}: not a UTF-8 text file (byte 0x{content[offset]:02x} at offset {offset}); "
        f"{hint}"
    )
    for read in (sft_examples, read_prompts):
        with pytest.raises(DataError) as error:
            read(str(path))
        assert str(error.value).startswith(expected)


def test_a_byte_order_mark_is_not_part_of_the_data(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + b'{"prompt": "Capital of Peru?", "completion": "Lima."}\n')
    assert sft_examples(str(path))[0]["completion"][0]["content"] == "Lima."
