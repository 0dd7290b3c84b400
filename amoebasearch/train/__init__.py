"""Stage 2, one-for-all fine-tuning: SMoL adapters (``smol``), the distillation objective
(``distill``), instruction data (``instruct``), the resumable loop (``trainer``), held-out
perplexity (``evaluate``) and the supernet directory (``supernet``).
"""

from amoebasearch.train.distill import balance, sandwich
from amoebasearch.train.smol import SMoLConfig, SMoLModel
from amoebasearch.train.supernet import DataConfig, SpaceConfig, Supernet, load_supernet, train_supernet
from amoebasearch.train.trainer import TrainConfig, train

__all__ = [
    "DataConfig",
    "SMoLConfig",
    "SMoLModel",
    "SpaceConfig",
    "Supernet",
    "TrainConfig",
    "balance",
    "load_supernet",
    "sandwich",
    "train",
    "train_supernet",
]
