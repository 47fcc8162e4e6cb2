"""Equivalence classes of integer ids, from recorded ties, solved once at the end.

The tracer only ever adds ties while it walks the graph and asks for the
classes when it is done, so instead of a Python union-find it keeps the ties
as arrays and finds connected components in one call to scipy.
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


class Equivalence:
    def __init__(self) -> None:
        self.size = 0
        self._a: list[np.ndarray] = []
        self._b: list[np.ndarray] = []

    def extend(self, n: int, joined: bool = False) -> np.ndarray:
        """Create `n` new ids (each its own class, or one class when `joined`)."""
        ids = np.arange(self.size, self.size + n, dtype=np.int64)
        self.size += n
        if joined and n > 1:
            self.tie(ids[:-1], ids[1:])
        return ids

    def tie(self, a: np.ndarray | int, b: np.ndarray | int) -> None:
        """Put a[k] and b[k] in one class, for every k."""
        self._a.append(np.atleast_1d(np.asarray(a, dtype=np.int64)))
        self._b.append(np.atleast_1d(np.asarray(b, dtype=np.int64)))

    def roots(self) -> np.ndarray:
        """For every id, the smallest id of its class."""
        if not self.size:
            return np.zeros(0, dtype=np.int64)
        a = np.concatenate(self._a) if self._a else np.zeros(0, dtype=np.int64)
        b = np.concatenate(self._b) if self._b else np.zeros(0, dtype=np.int64)
        graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(self.size, self.size))
        _, labels = connected_components(graph, directed=False)
        smallest = np.full(labels.max() + 1, self.size, dtype=np.int64)
        np.minimum.at(smallest, labels, np.arange(self.size, dtype=np.int64))
        return smallest[labels]
