"""ctxcompress: learned context compression for LLMs (SAC, PIC and their baselines).

import ctxcompress as cc
comp = cc.build_compressor("sac", ratio=4)          # embedded SmolLM2-135M by default
ctx = comp.compress("a long document ...")
comp.generate(ctx, ["question 1?", "question 2?"], max_new_tokens=32)
"""

from .context import CompressedContext
from .errors import (
    ContextMismatchError,
    ContextNotFoundError,
    ContextTooLongError,
    CorruptFileError,
    CtxCompressError,
    InvalidInputError,
    ModelLoadError,
    PromptTooLongError,
)
from .methods import METHODS, Compressor, build_compressor, load_compressor
from .models import BaseModel, load_base_model
from .version import __version__

__all__ = [
    "METHODS",
    "BaseModel",
    "CompressedContext",
    "Compressor",
    "ContextMismatchError",
    "ContextNotFoundError",
    "ContextTooLongError",
    "CorruptFileError",
    "CtxCompressError",
    "InvalidInputError",
    "ModelLoadError",
    "PromptTooLongError",
    "__version__",
    "build_compressor",
    "load_base_model",
    "load_compressor",
]
