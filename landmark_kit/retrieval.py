"""Retrieval lists from nearest index neighbours."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def neighbour_lists(neighbours: np.ndarray, index_ids: Sequence[str], k: int = 100) -> list[list[str]]:
    """The first ``k`` index ids of each query's neighbour row, dropping faiss's -1 padding."""
    ids = np.asarray(index_ids, dtype=object)
    return [ids[row[row >= 0][:k]].tolist() for row in neighbours]
