"""The exact rectangular linear assignment in numpy, for bundles of ``matching="exact"`` models.

The model solves the exact assignment with ``scipy.optimize.linear_sum_assignment``; the runtime
carries its own small solver so that it needs neither torch nor scipy. The problems are tiny
(objects x proposals, at most a few dozen by ~50), so a shortest-augmenting-path solver with
numpy row operations costs well under a millisecond.

Algorithm: shortest augmenting paths with dual potentials (the Jonker-Volgenant family, in the
rectangular form described by D. F. Crouse, "On implementing 2D rectangular assignment
algorithms", IEEE TAES 2016). Each row is added in turn; a Dijkstra-like search over reduced
costs finds the cheapest path from it to a free column, the potentials are updated and the
path is flipped. Ties are broken as that description's reference implementation does (the
columns are scanned in descending index order; among equally short paths a free column wins,
the last one scanned), so the solution equals scipy's also where several optima exist (the
tests compare the two on random problems with ties).
"""

from __future__ import annotations

import numpy as np

__all__ = ["linear_sum_assignment"]


def linear_sum_assignment(cost: np.ndarray) -> np.ndarray:
    """The column of each row in a minimum-cost assignment of an ``(n, m)`` cost, ``n <= m``.

    Every row gets its own column; the sum of the chosen entries is minimal. The arithmetic is
    float64. Returns int64 ``(n,)``. Raises ``ValueError`` for ``n > m``, a cost that is not
    2-D, or a non-finite entry.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must be a 2-D (n, m) array, got shape {c.shape}")
    n, m = c.shape
    if n > m:
        raise ValueError(f"cost must have n <= m (each row takes its own column), got {n} x {m}")
    if not np.isfinite(c).all():
        raise ValueError("cost must be finite")
    u = np.zeros(n)  # row potentials
    v = np.zeros(m)  # column potentials
    col4row = np.full(n, -1, np.int64)
    row4col = np.full(m, -1, np.int64)
    for cur in range(n):
        sink, min_val, dist, path, rows_seen, cols_seen = _shortest_path(c, u, v, row4col, cur)
        # potentials: the rows and columns reached before the sink move by their slack
        u[cur] += min_val
        others = rows_seen.copy()
        others[cur] = False
        u[others] += min_val - dist[col4row[others]]
        v[cols_seen] -= min_val - dist[cols_seen]
        # flip the path: each row on it takes the column after it
        j = sink
        while True:
            i = path[j]
            row4col[j] = i
            col4row[i], j = j, col4row[i]
            if i == cur:
                break
    return col4row


def _shortest_path(c, u, v, row4col, cur):
    """Dijkstra over reduced costs from row ``cur`` to the nearest free column.

    Returns the sink column, the path length, each column's tentative distance, the row each
    column was reached from, and the rows and columns scanned."""
    n, m = c.shape
    dist = np.full(m, np.inf)
    path = np.full(m, -1, np.int64)
    remaining = np.arange(m - 1, -1, -1)  # columns not yet scanned, in scan order
    left = m
    rows_seen = np.zeros(n, bool)
    cols_seen = np.zeros(m, bool)
    min_val = 0.0
    i = cur
    while True:
        rows_seen[i] = True
        rem = remaining[:left]
        reduced = min_val + c[i, rem] - u[i] - v[rem]
        closer = reduced < dist[rem]
        path[rem[closer]] = i
        dist[rem] = np.where(closer, reduced, dist[rem])
        d = dist[rem]
        min_val = float(d.min())
        ties = np.flatnonzero(d == min_val)
        free = ties[row4col[rem[ties]] < 0]
        pos = int(free[-1] if len(free) else ties[0])
        j = int(rem[pos])
        cols_seen[j] = True
        remaining[pos] = remaining[left - 1]
        left -= 1
        if row4col[j] < 0:
            return j, min_val, dist, path, rows_seen, cols_seen
        i = int(row4col[j])
