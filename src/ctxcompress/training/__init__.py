"""Training: objectives, a deterministic data mixture, and an accelerate-based trainer."""

from .config import DataSource, LoopConfig, TrainConfig, load_config, parse_config
from .examples import SourceExamples, build_examples
from .objectives import (
    TrainExample,
    autoencoding_example,
    continuation_example,
    qa_example,
)
from .sampler import MixtureSampler
from .trainer import Trainer, train

__all__ = [
    "DataSource",
    "LoopConfig",
    "MixtureSampler",
    "SourceExamples",
    "TrainConfig",
    "TrainExample",
    "Trainer",
    "autoencoding_example",
    "build_examples",
    "continuation_example",
    "load_config",
    "parse_config",
    "qa_example",
    "train",
]
