"""Retrieval lists from nearest index neighbours."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def neighbour_lists(neighbours, index_ids: Sequence[str], k: int = 100) -> list[list[str]]:
    """The first ``k`` index ids of each query's neighbour row (an array or a list of rows), dropping the
    -1 padding."""
    ids = np.asarray(index_ids, dtype=object)
    return [ids[row[row >= 0][:k]].tolist() for row in neighbours]


def discriminative_rerank(
    neighbours: np.ndarray, query_labels: np.ndarray, index_labels: np.ndarray, index_confidence: np.ndarray,
    k: int = 100, append: bool = True,
) -> list[np.ndarray]:
    """smlyaka 2019 retrieval post-processing, on index positions: in each query's neighbour row, the index
    images whose predicted label equals the query's move ahead of the others (order kept inside both
    groups); with ``append``, index images of that label not yet retrieved follow them, most confident
    first, and the list is cut at ``k``. Queries without a label (-1) keep their row."""
    by_label: dict[int, np.ndarray] = {}
    order = np.argsort(-index_confidence, kind="stable")
    for label in np.unique(query_labels[query_labels >= 0]):
        by_label[int(label)] = order[index_labels[order] == label]
    out = []
    for row, label in zip(neighbours, query_labels):
        row = row[row >= 0]
        if label < 0:
            out.append(row[:k])
            continue
        same = index_labels[row] == label
        parts = [row[same]]
        if append:
            extra = by_label[int(label)]
            parts.append(extra[~np.isin(extra, row)])
        parts.append(row[~same])
        out.append(np.concatenate(parts)[:k])
    return out
