"""RLHF on a laptop: SFT, reward modelling and PPO as LoRA adapters over one (4-bit) base model."""

from alignment import offline

offline.install()  # before any stage imports peft: see alignment/offline.py

__version__ = "0.1.0"
