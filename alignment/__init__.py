"""RLHF on a laptop: SFT, reward modelling and PPO as LoRA adapters over one (4-bit) base model."""

__version__ = "0.1.0"
