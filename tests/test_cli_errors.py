"""Failures of the machine, not the input, end `align` with one line and a documented exit code.

Full and read-only disks are real: small tmpfs mounts (the tests run as root, where chmod does not
stop writes). Where mounting is not permitted those tests skip and say so.
"""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch

from alignment.cli import (
    EXIT_BAD_INPUT,
    EXIT_FILE_SYSTEM,
    EXIT_INTERRUPTED,
    _how_to_continue,
    main,
)
from alignment.errors import describe_file_system_failure
from tests.conftest import ROOT

MakeFileSystem = Callable[..., Path]


@pytest.fixture
def small_file_system(tmp_path: Path) -> Iterator[MakeFileSystem]:
    """Mount a tmpfs of `size` (e.g. "64k"), optionally read-only; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str = "64k", read_only: bool = False) -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        _close_log_files_under(point)  # stages leave their train.log handler on the loggers
        subprocess.run(["umount", "--lazy", str(point)], check=True)


def _close_log_files_under(point: Path) -> None:
    loggers = [logging.getLogger(), *map(logging.getLogger, logging.root.manager.loggerDict)]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and handler.baseFilename.startswith(
                str(point)
            ):
                logger.removeHandler(handler)
                handler.close()


def run_align(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """`align ARGS` in this process: its exit code and the lines it wrote to stderr."""
    capsys.readouterr()
    ctrl_c = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(SystemExit) as exited:
            main(args)
    finally:
        signal.signal(signal.SIGINT, ctrl_c)  # a stage that fails mid-training may leave its own
    return int(exited.value.code), capsys.readouterr().err.splitlines()


# --- files that are not text ---------------------------------------------------------------


def test_a_gzip_file_given_as_sft_data_names_file_and_offset(tiny_recipe, tmp_path, capsys):
    data = tmp_path / "demos.jsonl"
    data.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    code, err = run_align(["sft", str(tiny_recipe), f"sft.data={data}"], capsys)
    assert code == EXIT_BAD_INPUT
    assert err == [
        f"error: {data}:1: not a UTF-8 text file (byte 0x8b at offset 1); "
        "it looks like a gzip file; decompress it first"
    ]


def test_a_latin1_prompts_file_names_its_line_and_offset(tiny_recipe, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    content = b'{"prompt": "hello"}\n{"prompt": "caf\xe9"}\n'  # Latin-1, not UTF-8
    prompts.write_bytes(content)
    code, err = run_align(["sample", str(tiny_recipe), "--prompts", str(prompts)], capsys)
    assert code == EXIT_BAD_INPUT
    offset = content.index(b"\xe9")
    assert err == [
        f"error: {prompts}:2: not a UTF-8 text file (byte 0xe9 at offset {offset}); "
        "expected UTF-8 text"
    ]


def test_a_recipe_that_is_not_text_is_one_line_too(tmp_path, capsys):
    recipe = tmp_path / "recipe.yaml"
    content = b"name: x\nseed: \xff\n"
    recipe.write_bytes(content)
    code, err = run_align(["config", str(recipe)], capsys)
    assert code == EXIT_BAD_INPUT
    offset = content.index(b"\xff")
    assert err == [
        f"error: {recipe}:2: not a UTF-8 text file (byte 0xff at offset {offset}); "
        "expected UTF-8 text"
    ]


# --- full and read-only disks ---------------------------------------------------------------


def test_read_only_run_directory(tiny_recipe, small_file_system, capsys):
    read_only = small_file_system(read_only=True)
    code, err = run_align(["sft", str(tiny_recipe), f"run_dir={read_only / 'run'}"], capsys)
    assert code == EXIT_FILE_SYSTEM
    assert err == [f"error: cannot write {read_only / 'run'}: read-only file system"]


def test_disk_filling_up_during_training(tiny_recipe, small_file_system, capsys):
    # Room for the run's first files, not for a checkpoint (adapter 36 kB, optimizer 89 kB).
    full = small_file_system(size="128k")
    args = ["sft", str(tiny_recipe), f"run_dir={full / 'run'}"]
    code, err = run_align(args, capsys)
    assert code == EXIT_FILE_SYSTEM
    (line,) = [line for line in err if line.startswith("error:")]
    assert err[-1] == line and "Traceback" not in "\n".join(err)
    assert line.startswith(f"error: cannot write {full / 'run' / 'sft'}/")
    assert line.endswith(
        "disk full (No space left on device); free some space, then resume with: "
        f"align sft {tiny_recipe} run_dir={full / 'run'} --resume"
    )


def test_interrupt_exits_130_with_the_command_that_resumes(tiny_recipe, tmp_path):
    run = tmp_path / "run"
    args = ["sft", str(tiny_recipe), "sft.max_steps=100000", "sft.save_steps=100000"]
    process = subprocess.Popen(
        [sys.executable, "-m", "alignment.cli", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        while not (run / "sft" / "metrics.jsonl").is_file() and process.poll() is None:
            time.sleep(0.5)  # until training has logged a step
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=600)
    finally:
        process.kill()
    assert process.returncode == EXIT_INTERRUPTED, stderr[-3000:]
    assert "Traceback" not in stderr
    last = stderr.splitlines()[-1]
    assert last.startswith("interrupted") and last.endswith(
        f"resume with: align sft {tiny_recipe} sft.max_steps=100000 sft.save_steps=100000 --resume"
    )


# --- what each writing library raises on a full or read-only disk ---------------------------

TENSOR = torch.zeros(100_000)  # 400 kB: more than the file system holds


def _sqlite_rows(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("CREATE TABLE t (x)")
        connection.executemany("INSERT INTO t VALUES (?)", [("x" * 1000,)] * 1000)
        connection.commit()
    finally:
        connection.close()


def _torch_save_to_file_object(path: Path) -> None:
    with path.open("wb") as file:
        torch.save({"x": TENSOR}, file)


WRITERS: dict[str, Callable[[Path], object]] = {
    "torch.save": lambda path: torch.save({"x": TENSOR}, path),
    "torch.save to a file object": _torch_save_to_file_object,
    "safetensors": lambda path: safetensors.torch.save_file({"x": TENSOR}, path),
    "Path.write_text": lambda path: path.write_text("x" * 400_000),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_each_library_failure_on_a_full_disk_names_the_file(writer, small_file_system):
    target = small_file_system() / "out.bin"
    with pytest.raises(Exception) as failed:
        WRITERS[writer](target)
    assert describe_file_system_failure(failed.value) == (
        f"cannot write {target}: disk full (No space left on device)",
        28,
    )


@pytest.mark.parametrize("writer", ["torch.save", "safetensors", "Path.write_text"])
def test_each_library_failure_on_a_read_only_disk_names_the_file(writer, small_file_system):
    target = small_file_system(read_only=True) / "out.bin"
    with pytest.raises(Exception) as failed:
        WRITERS[writer](target)
    assert describe_file_system_failure(failed.value) == (
        f"cannot write {target}: read-only file system",
        30,
    )


def test_sqlite_on_a_full_disk(small_file_system):
    with pytest.raises(sqlite3.OperationalError) as failed:
        _sqlite_rows(small_file_system() / "rankings.db")
    assert describe_file_system_failure(failed.value) == (
        "cannot write an SQLite database: disk full (No space left on device)",
        28,
    )


@pytest.mark.parametrize(
    "error",
    [
        RuntimeError("CUDA out of memory"),
        ValueError("Permission denied by the Hub"),  # words alone, no file: not a disk matter
        PermissionError(1, "Operation not permitted"),  # EPERM without a file: a signal, an owner
        FileNotFoundError(2, "No such file or directory", "x.jsonl"),
    ],
)
def test_other_errors_are_left_alone(error):
    assert describe_file_system_failure(error) is None


def test_an_error_raised_from_a_disk_failure_is_traced_to_it(tmp_path):
    try:
        try:
            raise OSError(28, "No space left on device", str(tmp_path / "optimizer.pt"))
        except OSError as full:
            raise RuntimeError("checkpoint failed") from full
    except RuntimeError as wrapped:
        assert describe_file_system_failure(wrapped) == (
            f"cannot write {tmp_path / 'optimizer.pt'}: disk full (No space left on device)",
            28,
        )


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (
            ["sft", "r.yaml", "sft.max_steps=3"],
            "resume with: align sft r.yaml sft.max_steps=3 --resume",
        ),
        (["rm", "r.yaml", "--resume"], "resume with: align rm r.yaml --resume"),
        (
            ["run", "r.yaml", "--from", "rm", "--until", "ppo"],
            "resume with: align run r.yaml --until ppo",
        ),
        (["run", "my recipe.yaml", "--from=sft"], "resume with: align run 'my recipe.yaml'"),
        (
            ["sample", "r.yaml", "--prompts", "p.jsonl"],
            "resume with: align sample r.yaml --prompts p.jsonl",
        ),
        (["export", "--db", "r.db"], "run the command again"),
    ],
)
def test_how_to_continue(argv, expected):
    assert _how_to_continue(argv[0], argv) == expected
