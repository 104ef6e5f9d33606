"""`align chat`: talk to a trained model in the terminal, its answers streamed token by token.

The model is a stage directory (its adapter over the base it trained on, with the run's chat
template and `sample` settings), an adapter over a base given by name, or a model alone (a local
or merged directory, a Hub id, an embedded model). `--prompt` answers once, to stdout.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TextStreamer, set_seed

from alignment.config import ModelConfig, SampleConfig
from alignment.generation import GenerationSettings, stop_token_ids
from alignment.models import load_model, load_tokenizer
from alignment.tokens import Messages, encode_prompt
from alignment.trained import load_policy, open_adapter

RESET, EXIT = "/reset", "/exit"


@dataclass
class ChatModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    settings: GenerationSettings
    name: str  # what the banner calls it

    @torch.inference_mode()
    def answer(self, messages: Messages) -> str:
        """The model's next turn, printed to stdout as it is generated; returns its text."""
        prompt = torch.tensor([encode_prompt(self.tokenizer, messages)])
        device = next(self.model.parameters()).device
        sampled = self.settings.temperature > 0
        output = self.model.generate(
            input_ids=prompt.to(device),
            attention_mask=torch.ones_like(prompt).to(device),
            max_new_tokens=self.settings.max_new_tokens,
            do_sample=sampled,
            **(self.sampling() if sampled else {}),
            eos_token_id=sorted(stop_token_ids(self.model, self.tokenizer)),
            pad_token_id=self.tokenizer.pad_token_id,
            streamer=TextStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True),
        )
        return self.tokenizer.decode(output[0, prompt.shape[1] :], skip_special_tokens=True)

    def sampling(self) -> dict[str, float | int]:
        """generate's sampling options, for a temperature above 0."""
        return {
            "temperature": self.settings.temperature,
            "top_p": self.settings.top_p,
            "top_k": self.settings.top_k,
        }


def open_chat(
    target: str,
    adapter: str | None = None,
    max_new_tokens: int | None = None,
    temperature: float | None = None,
) -> ChatModel:
    """The model to chat with: `target` a stage directory, or a base model (with `adapter`)."""
    if adapter is not None or (Path(target) / "adapter_config.json").is_file():
        trained = open_adapter(adapter or target, base=target if adapter else None)
        model, tokenizer = load_policy(trained)
        recipe = trained.recipe
        name = f"{trained.path} on {trained.model_cfg.name}"
    else:
        model_cfg = ModelConfig(name=target)
        model, tokenizer = load_model(model_cfg), load_tokenizer(model_cfg)
        model.eval()
        recipe, name = None, target
    sample = recipe.sample if recipe is not None else SampleConfig()
    overrides = {"max_new_tokens": max_new_tokens, "temperature": temperature}
    sample = sample.model_copy(update={k: v for k, v in overrides.items() if v is not None})
    if recipe is not None:
        set_seed(recipe.seed)
    return ChatModel(model, tokenizer, GenerationSettings.from_config(sample), name)


def first_turn(system: str | None) -> Messages:
    return [{"role": "system", "content": system}] if system else []


def chat(model: ChatModel, system: str | None = None) -> None:
    """Read a turn, stream the answer, repeat; /reset starts over, /exit or Ctrl-D ends."""
    with contextlib.suppress(ImportError):  # not on Windows
        import readline  # noqa: F401  (line editing and history for input())
    messages = first_turn(system)
    settings = model.settings
    print(
        f"chatting with {model.name} (temperature {settings.temperature}, up to "
        f"{settings.max_new_tokens} new tokens); {RESET} starts over, {EXIT} or Ctrl-D ends",
        file=sys.stderr,
    )
    while True:
        try:
            text = input("you: ").strip()
        except EOFError:
            print(file=sys.stderr)
            return
        if text == EXIT:
            return
        if text == RESET:
            messages = first_turn(system)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        print("assistant: ", end="", flush=True)
        messages.append({"role": "assistant", "content": model.answer(messages)})
