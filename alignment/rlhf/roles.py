"""One base model, four roles: policy, reference, reward and value as named LoRA adapters.

PPO needs four networks. Here they share one frozen (optionally 4-bit) base model in memory and
differ only by small adapters and scalar heads:

    policy     trainable, initialised from the SFT adapter
    reference  frozen SFT adapter, so KL is measured against the SFT model, not the bare base
    reward     frozen reward-model adapter plus its score head
    value      trainable, initialised from the reward adapter and head

Only one adapter is active per forward pass; `RoleModel.role(name)` switches between them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from peft import PeftModel, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers import PreTrainedModel

from alignment import cpu
from alignment.adapters import check_same_base
from alignment.errors import RunStateError
from alignment.models import cast_adapter, float32_logits
from alignment.reward import read_reward_adapter
from alignment.tokens import last_token_index, position_ids

ROLES = ("policy", "reference", "reward", "value")
TRAINABLE_ROLES = ("policy", "value")


class RoleModel(nn.Module):
    """The four PPO roles over one base model, with a frozen reward head and a trainable value head."""

    def __init__(
        self, base: PreTrainedModel, sft_dir: Path, rm_dir: Path, base_names: tuple[str, ...]
    ) -> None:
        super().__init__()
        for directory, role in ((sft_dir, "SFT"), (rm_dir, "reward")):
            if not (directory / "adapter_config.json").is_file():
                raise RunStateError(f"{directory}: no {role} adapter here (run its stage first)")
            check_same_base(directory, base_names, role)
        self.peft = PeftModel.from_pretrained(
            base, sft_dir, adapter_name="policy", is_trainable=True
        )
        self.peft.load_adapter(sft_dir, adapter_name="reference", is_trainable=False)
        reward_config, reward_weights, head = read_reward_adapter(rm_dir)
        for role in ("reward", "value"):
            self.peft.add_adapter(role, reward_config)
            incompatible = set_peft_model_state_dict(self.peft, reward_weights, adapter_name=role)
            if incompatible.unexpected_keys:
                raise RunStateError(
                    f"{rm_dir}: adapter weights do not fit the base model: {incompatible.unexpected_keys[:3]}"
                )
        # PEFT loads adapters in float32; computing them in the base's dtype spares a cast of every
        # activation both ways (trainable ones keep float32 masters: see rlhf/master_weights.py).
        compute_dtype = base.get_input_embeddings().weight.dtype
        for role in ("policy", "reference", "value"):
            cast_adapter(self.peft, role, compute_dtype)
        # The reward role computes in the dtype the RM trained in, so it scores as `align rm` does.
        cast_adapter(self.peft, "reward", head.dtype)
        self.reward_head = nn.Linear(head.shape[1], 1, bias=False, dtype=head.dtype)
        # The value head is float32 whatever the compute dtype: it is tiny and reads float32 hidden states.
        self.value_head = nn.Linear(head.shape[1], 1, bias=False, dtype=torch.float32)
        with torch.no_grad():
            self.reward_head.weight.copy_(head)
            self.value_head.weight.copy_(head)
        self.reward_head.requires_grad_(False)
        cpu.fuse_adapters(self.peft)
        # PEFT's set_adapter walks every module of the model, and an update switches roles many
        # times; so the adapter layers are listed once here and switched directly (what that
        # saves is measured in bench/RESULTS.md, PPO section, "Role switches").
        self.adapter_layers = [m for m in self.peft.modules() if isinstance(m, BaseTunerLayer)]
        self.trainable = [
            p
            for n, p in self.peft.named_parameters()
            if any(f".{r}." in n for r in TRAINABLE_ROLES)
        ]
        for param in self.peft.parameters():
            param.requires_grad_(False)
        self.active = ""  # no role yet, so this first switch happens
        self.use_role("policy")

    def use_role(self, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {ROLES}")
        if role == self.active:
            return
        for layer in self.adapter_layers:
            layer.set_adapter(role, inference_mode=True)
        self.peft.base_model.active_adapter = role
        # Switching freezes every adapter; which tensors train never changes: policy and value.
        for param in self.trainable:
            param.requires_grad_(True)
        self.active = role

    @contextmanager
    def role(self, role: str) -> Iterator[None]:
        previous = self.active
        self.use_role(role)
        try:
            yield
        finally:
            self.use_role(previous)

    def named_trainable(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor by name: the policy and value adapters and the value head."""
        named = {n: p for n, p in self.peft.named_parameters() if p.requires_grad}
        named["value_head.weight"] = self.value_head.weight
        return named

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Last hidden states of the active role's body (no LM head: the heads here are scalar)."""
        body = self.peft.base_model.model.get_decoder()
        return body(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids(attention_mask),
        ).last_hidden_state

    def logits(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        keep_last: int,
        select: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LM logits (float32 head) of the active role for the last `keep_last` positions only,
        and of those only the `select`ed ones if given (see models.float32_logits)."""
        return float32_logits(
            self.peft, input_ids, attention_mask, position_ids(attention_mask), keep_last, select
        )

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        with self.role("value"):
            return self.value_head(self.hidden(input_ids, attention_mask).float()).squeeze(-1)

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Reward-model score at the last real token of each row (right padding, pad may equal EOS)."""
        with self.role("reward"):
            hidden = self.hidden(input_ids, attention_mask)
        last = last_token_index(attention_mask)
        last_hidden = hidden[torch.arange(len(hidden)), last].to(self.reward_head.weight.dtype)
        return self.reward_head(last_hidden).squeeze(-1).float()
