"""A sum-tree over non-negative weights, updated and searched many leaves at a time.

Level by level, whole index vectors move up (updates) or down (searches), so a batch of
256 costs about 2 x log2(capacity) numpy operations instead of 256 Python walks. Each
parent is stored as exactly ``left + right`` (rounded once), which guarantees that a
search for any mass below the root total ends on a leaf of positive weight.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class SumTree:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be >= 1")
        self.capacity = capacity
        self.leaf_start = 1 << max(capacity - 1, 0).bit_length()
        self.depth = self.leaf_start.bit_length() - 1
        self.nodes = np.zeros(2 * self.leaf_start, dtype=np.float64)  # root at 1

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    def leaves(self, indices: IntArray) -> FloatArray:
        return self.nodes[self.leaf_start + indices]

    def set(self, indices: IntArray, weights: FloatArray) -> None:
        """Set leaves ``indices`` (a later duplicate wins) and recompute their ancestors."""
        if len(indices) == 0:
            return
        if np.any(weights < 0):
            raise ValueError("weights must be non-negative")
        node = self.leaf_start + np.asarray(indices, dtype=np.int64)
        self.nodes[node] = weights
        node = np.unique(node)
        for _ in range(self.depth):
            node >>= 1  # still sorted, so duplicates are neighbours
            node = node[np.concatenate(([True], node[1:] != node[:-1]))]
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]

    def find(self, masses: FloatArray) -> IntArray:
        """For each mass in [0, total), the leaf whose cumulative range contains it."""
        mass = np.minimum(np.asarray(masses, dtype=np.float64), np.nextafter(self.total, 0.0))
        node = np.ones(len(mass), dtype=np.int64)
        for _ in range(self.depth):
            left = self.nodes[2 * node]
            right = mass >= left
            node = 2 * node + right
            # Rounding of ``mass - left`` must not carry the walk past the child's mass.
            mass = np.minimum(np.where(right, mass - left, mass), np.nextafter(self.nodes[node], 0))
        leaf: IntArray = node - self.leaf_start
        return leaf

    def rebuild(self) -> None:
        """Recompute every parent from the leaves (after loading the leaves)."""
        for level in range(self.depth - 1, -1, -1):
            node = np.arange(1 << level, 2 << level)
            self.nodes[node] = self.nodes[2 * node] + self.nodes[2 * node + 1]
