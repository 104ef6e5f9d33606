"""`align chat`: the real CLI driven through a pseudo-terminal, and `--prompt` answering once."""

import os
import pty
import select
import subprocess
import sys
import time

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignment.chat import open_chat
from alignment.cli import main
from alignment.config import load_recipe
from alignment.sft import run_sft
from tests.conftest import ROOT, build_tiny_model, demo_rows, write_jsonl

NEW_TOKENS = 8
GREEDY = ["--temperature", "0", "--max-new-tokens", str(NEW_TOKENS)]


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A tiny model with weights spread enough that its greedy answers are not all newlines."""
    return build_tiny_model(tmp_path_factory.mktemp("chat-base"), init_range=0.1)


@pytest.fixture(scope="module")
def sft_dir(tmp_path_factory, base_dir):
    root = tmp_path_factory.mktemp("chat")
    demos = write_jsonl(root / "demos.jsonl", demo_rows(8, short=True))
    (root / "recipe.yaml").write_text(
        f"""name: chat
run_dir: {root / "run"}
model: {{name: {base_dir}, dtype: float32}}
lora: {{r: 4, alpha: 8}}
sft: {{data: {demos}, max_steps: 2, batch_size: 4, eval_fraction: 0, learning_rate: 0.002}}
sample: {{temperature: 0.3, max_new_tokens: 12}}
"""
    )
    return run_sft(load_recipe(root / "recipe.yaml")).out_dir


def greedy_answer(base_dir, adapter_dir, text: str) -> str:
    """The adapter's greedy answer, computed with Transformers and PEFT alone."""
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), adapter_dir)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt"
    )["input_ids"]
    with torch.no_grad():
        output = model.eval().generate(
            prompt, max_new_tokens=NEW_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    answer = tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)
    assert answer.strip()  # words, not only newlines or an immediate stop
    return answer


def read_until(fd: int, marker: bytes, timeout: float = 180) -> str:
    seen = b""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"no {marker!r} on the terminal; it shows {seen.decode()!r}"
        if select.select([fd], [], [], remaining)[0]:
            seen += os.read(fd, 4096)
    return seen.decode().replace("\r\n", "\n")


def test_chat_in_a_terminal_streams_answers_and_ends_on_ctrl_d(sft_dir, base_dir):
    expected = greedy_answer(base_dir, sft_dir, "Say 3")
    terminal, child_side = pty.openpty()
    chat = subprocess.Popen(
        [sys.executable, "-m", "alignment.cli", "chat", str(sft_dir), *GREEDY],
        stdin=child_side,
        stdout=child_side,
        stderr=child_side,
        cwd=ROOT,
        env={**os.environ, "ALIGN_LOG_LEVEL": "WARNING"},
    )
    os.close(child_side)
    try:
        banner = read_until(terminal, b"you: ")
        assert f"chatting with {sft_dir} on {base_dir} (temperature 0.0" in banner
        os.write(terminal, b"Say 3\n")
        shown = read_until(terminal, b"you: ")
        assert f"Say 3\nassistant: {expected}\nyou: " in shown  # the typed line, echoed
        os.write(terminal, b"/reset\n")
        read_until(terminal, b"you: ")
        os.write(terminal, b"\x04")  # Ctrl-D on an empty line: end of input
        assert chat.wait(timeout=60) == 0
    finally:
        chat.kill()
        os.close(terminal)


def test_prompt_answers_once_to_stdout_with_a_base_and_adapter(sft_dir, base_dir, capsys):
    expected = greedy_answer(base_dir, sft_dir, "Say 3")
    main(["chat", str(base_dir), "--adapter", str(sft_dir), "--prompt", "Say 3", *GREEDY])
    assert capsys.readouterr().out == expected + "\n"


def test_a_stage_directory_chats_with_its_recipes_sampling_settings(sft_dir):
    settings = open_chat(str(sft_dir)).settings
    assert (settings.temperature, settings.max_new_tokens) == (0.3, 12)
    assert open_chat(str(sft_dir), temperature=0).settings.temperature == 0


def test_chat_refuses_a_directory_without_an_adapter(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["chat", str(tmp_path), "--adapter", str(tmp_path), "--prompt", "hi"])
    assert stop.value.code == 2
    assert "not an adapter directory" in capsys.readouterr().err
