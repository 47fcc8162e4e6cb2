"""A growable union-find over integer ids, used for channel variables."""

from __future__ import annotations

import numpy as np


class UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def __len__(self) -> int:
        return len(self.parent)

    def extend(self, n: int, joined: bool = False) -> np.ndarray:
        """Create `n` new ids (singletons, or one set when `joined`) and return them."""
        start = len(self.parent)
        if joined and n:
            self.parent.extend([start] * n)
        else:
            self.parent.extend(range(start, start + n))
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, a: int) -> int:
        parent = self.parent
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # Keep the smaller id as root so roots follow creation order.
            if rb < ra:
                ra, rb = rb, ra
            self.parent[rb] = ra

    def union_arrays(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist(), strict=True):
            self.union(x, y)

    def roots(self) -> np.ndarray:
        """The root of every id, by pointer jumping on the whole parent array at once."""
        parent = np.asarray(self.parent, dtype=np.int64)
        while True:
            grand = parent[parent]
            if np.array_equal(grand, parent):
                return parent
            parent = grand
