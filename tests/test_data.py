import json
from pathlib import Path

import datasets
import pytest
from datasets import Dataset

from alignment.config import DataSource
from alignment.data import read_prompts, sft_examples
from alignment.errors import DataError
from alignment.preferences import read_preferences
from tests.conftest import ROOT, demo_rows, write_jsonl


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


# Local files of every format `data` takes, and `datasets` sources given as mappings.

PROMPT_COMPLETION = [
    {"prompt": "Capital of Peru?", "completion": "Lima."},
    {"prompt": "Two plus two?", "completion": "Four."},
]


def write_table(path: Path, rows: list[dict]) -> Path:
    """Rows as a parquet or CSV file, written by `datasets` (pyarrow and pandas underneath)."""
    dataset = Dataset.from_list(rows)
    dataset.to_parquet(path) if path.suffix == ".parquet" else dataset.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet", ".csv"])
def test_every_local_format_reads_the_same_examples(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    if suffix == ".jsonl":
        write_jsonl(path, PROMPT_COMPLETION)
    elif suffix == ".json":
        path.write_text(json.dumps(PROMPT_COMPLETION))
    else:
        write_table(path, PROMPT_COMPLETION)
    assert sft_examples(str(path)) == sft_examples(
        str(write_jsonl(tmp_path / "x.jsonl", PROMPT_COMPLETION))
    )
    assert [p for _, p in read_prompts(str(path))] == [
        [{"role": "user", "content": row["prompt"]}] for row in PROMPT_COMPLETION
    ]


def test_parquet_keeps_chat_messages_and_csv_empty_cells_read_as_absent(tmp_path):
    chats = write_table(tmp_path / "chats.parquet", demo_rows(3))
    assert sft_examples(str(chats)) == sft_examples(
        str(write_jsonl(tmp_path / "c.jsonl", demo_rows(3)))
    )
    alpaca = write_table(
        tmp_path / "alpaca.csv",
        [
            {"instruction": "Say hi", "input": None, "output": "Hi!"},
            {"instruction": "Translate to French", "input": "cat", "output": "chat"},
        ],
    )
    first, second = sft_examples(str(alpaca))
    assert first["prompt"][0]["content"] == "Say hi"
    assert second["prompt"][0]["content"] == "Translate to French\n\ncat"


def test_preferences_from_parquet_and_csv(tmp_path):
    rows = [
        {"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Quito.", "margin": 1.5},
        {"prompt": "Two plus two?", "chosen": "Four.", "rejected": "Five.", "margin": None},
    ]
    for name in ("p.parquet", "p.csv"):
        data = read_preferences(str(write_table(tmp_path / name, rows)))
        assert [(c.prompt, c.answers, c.margin) for c in data.comparisons] == [
            ("Capital of Peru?", ("Lima.", "Quito."), 1.5),
            ("Two plus two?", ("Four.", "Five."), 0.0),
        ]
        assert data.formats == {"trl": 2}


def test_bad_rows_of_tables_name_file_and_row(tmp_path):
    path = write_table(
        tmp_path / "d.csv",
        [
            {"prompt": "Capital of Peru?", "completion": "Lima."},
            {"prompt": "Hi", "completion": None},
        ],
    )
    with pytest.raises(
        DataError, match=rf"^{path} row 1: unknown row format with keys \['prompt'\]"
    ):
        sft_examples(str(path))
    broken = tmp_path / "broken.parquet"
    broken.write_text("not parquet")
    with pytest.raises(DataError, match=rf"^{broken}: cannot read it as parquet \(ArrowInvalid"):
        sft_examples(str(broken))
    with pytest.raises(DataError, match="subset applies to a dataset directory or Hub dataset"):
        sft_examples(DataSource(path=str(path), subset="default"))


def test_sharegpt_conversations_become_chat(tmp_path):
    path = write_jsonl(
        tmp_path / "sharegpt.jsonl",
        [
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "human", "value": "Hi"},
                    {"from": "gpt", "value": "Hello!"},
                ]
            },
            {"conversations": [{"from": "human", "value": "2+2?"}, {"from": "bot", "value": "4"}]},
        ],
    )
    with pytest.raises(
        DataError,
        match=r"sharegpt.jsonl:2: conversations\[1\] has `from` 'bot'; expected one of system, human, gpt",
    ):
        sft_examples(str(path))
    path.write_text(path.read_text().splitlines()[0] + "\n")
    assert sft_examples(str(path)) == [
        {
            "prompt": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"},
            ],
            "completion": [{"role": "assistant", "content": "Hello!"}],
        }
    ]


def test_text_rows_are_trained_whole_and_not_mixed_with_chat(tmp_path):
    path = write_jsonl(
        tmp_path / "text.jsonl", [{"text": "The quick brown fox."}, {"text": "Water boils."}]
    )
    assert sft_examples(str(path)) == [{"text": "The quick brown fox."}, {"text": "Water boils."}]
    write_jsonl(path, [{"text": "The quick brown fox."}, *PROMPT_COMPLETION])
    with pytest.raises(
        DataError, match=r"text.jsonl:2 is a conversation but .*text.jsonl:1 is plain text"
    ):
        sft_examples(str(path))
    write_jsonl(path, [{"text": " "}])
    with pytest.raises(DataError, match=r"text.jsonl:1: `text` is empty"):
        sft_examples(str(path))


def test_a_dataset_directory_reads_the_split_asked_for(tmp_path):
    folder = tmp_path / "dataset"
    folder.mkdir()
    write_table(folder / "train.parquet", PROMPT_COMPLETION)
    write_table(folder / "held.parquet", [{"prompt": "Colour of the sky?", "completion": "Blue."}])
    source = DataSource(
        path=str(folder), data_files={"train": "train.parquet", "validation": "held.parquet"}
    )
    held = read_prompts(source, split="validation")  # a stage's eval_split
    assert held == [
        (f"{folder}[validation] row 0", [{"role": "user", "content": "Colour of the sky?"}])
    ]
    assert (
        len(sft_examples(source.model_copy(update={"split": "train[:1]"}), split="validation")) == 1
    )


def test_hub_datasets_get_every_option_at_the_load_dataset_boundary(monkeypatch):
    """The Hub cannot be reached here: `datasets.load_dataset` is faked, the one Hub boundary."""
    calls = []

    def load_dataset(path, **options):
        calls.append((path, options))
        if path == "me/missing":
            raise FileNotFoundError("Dataset 'me/missing' doesn't exist on the Hub")
        return Dataset.from_list([{"prompt": "Hi", "completion": "Hello!", "source": None}])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    source = DataSource(
        path="HuggingFaceH4/ultrachat_200k",
        subset="default",
        revision="abc123",
        data_files={"train_sft": "data/train_sft-*.parquet"},
        streaming=True,
    )
    assert sft_examples(source, split="train_sft")[0]["completion"][0]["content"] == "Hello!"
    sft_examples("trl-lib/Capybara", split="test")
    assert calls == [
        (
            "HuggingFaceH4/ultrachat_200k",
            {
                "name": "default",
                "revision": "abc123",
                "data_files": {"train_sft": "data/train_sft-*.parquet"},
                "split": "train_sft",
                "streaming": True,
            },
        ),
        (
            "trl-lib/Capybara",
            {
                "name": None,
                "revision": None,
                "data_files": None,
                "split": "test",
                "streaming": False,
            },
        ),
    ]
    with pytest.raises(
        DataError,
        match=r"'me/missing' is not a local .jsonl/.json/.parquet/.csv file, and as a dataset "
        r"directory or Hub dataset it cannot be read \(FileNotFoundError: Dataset 'me/missing'",
    ):
        read_prompts("me/missing")
    monkeypatch.setattr(
        datasets, "load_dataset", lambda path, **options: Dataset.from_list([{"question": "Hi"}])
    )
    with pytest.raises(DataError, match=r"^me/qa default\[train\] row 0: expected a `prompt`"):
        read_prompts(DataSource(path="me/qa", subset="default"))


def test_sft_trains_text_rows_on_the_eval_split_with_trainer_args(tmp_path, tiny_model_dir):
    """Through the real SFT stage: plain text rows from parquet, held-out rows from a dataset
    directory's `validation` split (sft.eval_split), and a TRL option from trainer_args."""
    import torch

    from alignment.config import load_recipe
    from alignment.sft import run_sft

    texts = [{"text": f"Question {i}: what is {i} plus {i}? {2 * i}."} for i in range(8)]
    train = write_table(tmp_path / "train.parquet", texts)
    held = tmp_path / "held"
    held.mkdir()
    write_table(held / "test.parquet", texts[:1])
    write_table(held / "validation.parquet", texts[:3])
    (tmp_path / "r.yaml").write_text(
        f"""name: text
run_dir: {tmp_path / "run"}
model: {{name: {tiny_model_dir}, dtype: float32}}
lora: {{r: 4, alpha: 8}}
sft:
  data: {train}
  eval_data: {held}
  eval_split: validation
  max_steps: 2
  batch_size: 4
  save_steps: 2
  trainer_args: {{optim: adafactor}}
"""
    )
    outcome = run_sft(load_recipe(tmp_path / "r.yaml"))
    assert outcome.summary["train_examples"] == 8 and outcome.summary["eval_examples"] == 3
    assert outcome.summary["eval_loss"] > 0
    saved = torch.load(
        outcome.out_dir / "checkpoints" / "checkpoint-2" / "training_args.bin", weights_only=False
    )
    assert saved.optim == "adafactor"
