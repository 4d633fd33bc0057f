"""Deterministic data order for training: a weighted mixture of sources, epoch-shuffled.

Global example slot ``g`` (``step * batch_size + k``) is assigned to a source by a weighted
draw seeded by ``(seed, g)``, and takes that source's next example in an order reshuffled
every epoch from ``(seed, source, epoch)``. Everything follows from the seed and the position,
so every process computes the same global batch without communicating, and resuming needs
only the position (the per-source counters are stored too, and checked).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


class MixtureSampler:
    """Yields ``(source, index)`` pairs for consecutive global slots."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], seed: int) -> None:
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per data source, at least one source")
        if any(n < 1 for n in sizes):
            raise ValueError("every data source needs at least one example")
        if any(w <= 0 for w in weights):
            raise ValueError("data source weights must be > 0")
        self.sizes, self.weights, self.seed = list(sizes), list(weights), seed
        self.position = 0
        self.counters = [0] * len(sizes)
        self._orders: dict[int, tuple[int, list[int]]] = {}  # source -> (epoch, order)

    def _permutation(self, source: int, epoch: int) -> list[int]:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:
            order = list(range(self.sizes[source]))
            random.Random(f"{self.seed}:{source}:{epoch}").shuffle(order)
            self._orders[source] = cached = (epoch, order)
        return cached[1]

    def _source_of(self, slot: int) -> int:
        if len(self.sizes) == 1:
            return 0
        return random.Random(f"{self.seed}:slot:{slot}").choices(
            range(len(self.sizes)), weights=self.weights
        )[0]

    def take(self, count: int) -> list[tuple[int, int]]:
        """The next ``count`` slots' ``(source, index)``; advances the position."""
        out = []
        for _ in range(count):
            source = self._source_of(self.position)
            n = self.counters[source]
            epoch, offset = divmod(n, self.sizes[source])
            out.append((source, self._permutation(source, epoch)[offset]))
            self.counters[source] += 1
            self.position += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "counters": list(self.counters),
            "sizes": list(self.sizes),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["sizes"] != self.sizes or state["seed"] != self.seed:
            raise ValueError(
                "the checkpoint's data (source sizes / seed) differs from this run's: resume "
                "with the same data and seed, or start a new output_dir"
            )
        self.position, self.counters = 0, [0] * len(self.sizes)
        self.take(state["position"])  # replay: recomputes the counters from the seed
        if self.counters != state["counters"]:
            raise ValueError("the data sampler's replay does not match the checkpoint")
