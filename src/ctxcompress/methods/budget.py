"""Token budgets (issue 20): compress a document into *at most N entries* instead of at a
fixed ratio — the ratio is chosen per document and recorded in its context.

Every method's compressed length is a non-increasing function of the ratio (chunks keep
``ceil(chunk / r)``-style budgets), so the chosen ratio is the smallest one, not below the
compressor's :attr:`~BudgetMixin.min_ratio`, whose :meth:`compressed_length` fits the budget.
The learned methods cannot go below their trained ratio (they hold learned vectors for that
many slots per chunk: SAC's per-slot anchor embeddings, the memory tokens); above it they use
the first slots' vectors, which is what a compressor trained with several ratios (part 2 of
the issue) learns to make good. The hard baselines have nothing learned and go down to 1.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from ..errors import InvalidInputError

# Ratio overrides by compressor (``id``), per thread and async task: the service's request
# threads may size a budget while its model thread compresses at another ratio.
_OVERRIDES: ContextVar[tuple[tuple[int, int], ...]] = ContextVar(
    "ctxcompress_ratio_overrides", default=()
)


class BudgetMixin:
    """The ratio in effect (:attr:`ratio`), switching it per call (:meth:`at_ratio`), and the
    ratio a token budget needs (:meth:`ratio_for_budget`), for a
    :class:`~ctxcompress.methods.base.Compressor`."""

    config: Any
    method: str

    def compressed_length(self, length: int) -> int:  # implemented by each method
        raise NotImplementedError

    @property
    def ratio(self) -> int:
        """The compression ratio in effect: ``config.ratio``, or the one :meth:`at_ratio`
        (a token budget) set for the current call. The fingerprint keeps the config's."""
        return dict(_OVERRIDES.get()).get(id(self)) or self.config.ratio

    @property
    def min_ratio(self) -> int:
        """The smallest ratio this compressor compresses at (its trained ratio; see the
        module docstring)."""
        return self.config.ratio

    @property
    def lowest_training_ratio(self) -> int:
        """The lowest ratio this compressor can be *trained* at, e.g. early in a ratio ramp
        (``train.ratio_ramp_steps``): :attr:`min_ratio`, unless a method has no per-slot
        vectors (SAC with a shared anchor embedding or none) and so compresses at any."""
        return self.min_ratio

    @contextlib.contextmanager
    def at_ratio(self, ratio: int, *, training: bool = False) -> Iterator[None]:
        """Compress at ``ratio`` instead of ``config.ratio`` inside the block (in this thread
        only). ``training``: the trainer's ratio ramp, which may go down to
        :attr:`lowest_training_ratio`."""
        floor = self.lowest_training_ratio if training else self.min_ratio
        if not isinstance(ratio, int) or isinstance(ratio, bool) or ratio < floor:
            raise InvalidInputError(
                f"{self.method} compresses at ratios >= {floor} "
                f"({'the lowest it can train at' if training else 'its trained ratio'}), "
                f"got {ratio!r}"
            )
        others = tuple(item for item in _OVERRIDES.get() if item[0] != id(self))
        token = _OVERRIDES.set((*others, (id(self), ratio)))
        try:
            yield
        finally:
            _OVERRIDES.reset(token)

    def length_at(self, length: int, ratio: int) -> int:
        """Entries a ``length``-token context keeps at ``ratio``."""
        with self.at_ratio(ratio):
            return self.compressed_length(length)

    def ratio_for_budget(self, length: int, budget: int) -> int:
        """The smallest ratio (>= :attr:`min_ratio`) at which a tokenized context of
        ``length`` tokens keeps at most ``budget`` entries."""
        if not isinstance(budget, int) or isinstance(budget, bool) or budget < 1:
            raise InvalidInputError(f"budget must be an integer >= 1 (entries), got {budget!r}")
        low, high = self.min_ratio, max(self.min_ratio, length)
        if self.length_at(length, low) <= budget:
            return low
        fewest = self.length_at(length, high)
        if fewest > budget:
            raise InvalidInputError(
                f"a budget of {budget} entries is below the {fewest} that {self.method} keeps "
                f"at least for this {length}-token context (its fixed entries: one per "
                f"{self.config.chunk_size}-token chunk, plus any kept prefix or sink tokens); "
                "raise the budget or split the document"
            )
        while high - low > 1:  # length_at(low) > budget >= length_at(high)
            mid = (low + high) // 2
            if self.length_at(length, mid) <= budget:
                high = mid
            else:
                low = mid
        return high
