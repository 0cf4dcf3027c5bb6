"""Recognition from nearest train neighbours: one label and a confidence per query."""

from __future__ import annotations

import numpy as np


def nearest_neighbour_labels(
    scores: np.ndarray, neighbours: np.ndarray, train_labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label of the most similar train image and its similarity as the score (kNN top-1).

    ``scores``/``neighbours``: ``(Q, k)`` from :func:`landmark_kit.search.knn`, best first.
    A query with no neighbour (index -1) gets label -1 (no prediction).
    """
    first = neighbours[:, 0]
    labels = np.where(first >= 0, train_labels[np.maximum(first, 0)], -1).astype(np.int64)
    return labels, scores[:, 0].astype(np.float64)
