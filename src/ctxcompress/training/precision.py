"""bfloat16 training steps with the frozen base weights held in bfloat16 (issue 38, lever 5).

Under ``torch.autocast`` every matmul runs in bfloat16, but autocast caches the cast of a
weight only when that weight requires a gradient: the *frozen* base weights — nearly all of
a compressor's weights — are cast from float32 again in every forward and backward pass, and
that cast costs about as much as the bfloat16 matmul saves (SAC's step: 1.05x faster under
autocast alone). :class:`FrozenWeightsInLowPrecision` keeps a bfloat16 copy of every frozen
linear weight beside the float32 one and points the parameters at the copies only for the
duration of a training step (a pointer swap, no copy per step), so that:

- the matmuls read bfloat16 weights directly (the cast is gone);
- what training updates — LoRA weights, learned vectors, their AdamW state — stays float32,
  and so do the embedding table (the residual stream starts in float32), norms and biases;
- outside a step (evaluation callbacks, saving, the model after training) the model is the
  float32 model it was, bit for bit.

The cost is one bfloat16 copy of the frozen linear weights (SmolLM2-135M: ~190 MB).
"""

from __future__ import annotations

import contextlib
import functools
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import nn

NATIVE_BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
"""x86 CPU flags of native bfloat16 arithmetic (AVX512-BF16 dot products, AMX tiles)."""


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX-BF16). Elsewhere
    oneDNN emulates bfloat16 matmuls in float32 and a bfloat16 step is *slower*."""
    cpuinfo = Path("/proc/cpuinfo")
    if sys.platform.startswith("linux") and cpuinfo.is_file():
        flags = set()
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                flags.update(line.split(":", 1)[1].split())
                break
        return any(flag in flags for flag in NATIVE_BF16_CPU_FLAGS)
    return False  # no way to tell: assume emulated (the warning says how to check)


def warn_if_bf16_is_emulated(device: torch.device) -> bool:
    """Warn (and return True) when bfloat16 steps on ``device`` will be slower than float32."""
    if device.type != "cpu" or cpu_has_native_bf16():
        return False
    warnings.warn(
        "train.mixed_precision=bf16 on a CPU without native bfloat16 (no AVX512-BF16 or "
        "AMX-BF16 in /proc/cpuinfo): the bfloat16 matmuls are emulated and each training "
        "step will be SLOWER than in float32. Set train.mixed_precision=no on this machine.",
        RuntimeWarning,
        stacklevel=2,
    )
    return True


class FrozenWeightsInLowPrecision:
    """Frozen linear weights of ``modules`` swapped to ``dtype`` inside :meth:`active`.

    ``trainable`` are the parameters training updates; they (and anything that is not the
    weight of an ``nn.Linear``, or that is shared with an embedding table, like a tied LM
    head) keep their dtype. Weights already in ``dtype`` are left alone."""

    def __init__(
        self,
        modules: Iterable[nn.Module],
        trainable: Iterable[nn.Parameter],
        dtype: torch.dtype = torch.bfloat16,
    ) -> None:
        keep = {id(p) for p in trainable}
        for module in modules:
            for sub in module.modules():
                if isinstance(sub, nn.Embedding):
                    keep.add(id(sub.weight))
        self.dtype = dtype
        self._swaps: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] = []
        seen: set[int] = set()
        for module in modules:
            for sub in module.modules():
                weight = getattr(sub, "weight", None) if isinstance(sub, nn.Linear) else None
                if not isinstance(weight, nn.Parameter) or id(weight) in keep | seen:
                    continue
                seen.add(id(weight))
                if weight.requires_grad or weight.dtype == dtype or not weight.is_floating_point():
                    continue
                self._swaps.append((weight, weight.data, weight.data.to(dtype)))
        self._depth = 0

    @property
    def weights(self) -> int:
        """How many weight tensors are swapped."""
        return len(self._swaps)

    @property
    def extra_bytes(self) -> int:
        """Memory the low-precision copies take."""
        return sum(low.numel() * low.element_size() for _, _, low in self._swaps)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Inside the block the frozen weights are the low-precision copies (re-entrant)."""
        if self._depth == 0:
            for param, _, low in self._swaps:
                param.data = low
        self._depth += 1
        try:
            yield
        finally:
            self._depth -= 1
            if self._depth == 0:
                for param, full, _ in self._swaps:
                    param.data = full


__all__ = [
    "FrozenWeightsInLowPrecision",
    "cpu_has_native_bf16",
    "warn_if_bf16_is_emulated",
]
