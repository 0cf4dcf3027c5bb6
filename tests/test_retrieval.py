"""Discriminative re-ranking: order within groups kept, positives appended by confidence, cut at k."""

from __future__ import annotations

import numpy as np

from landmark_kit.retrieval import discriminative_rerank


def test_rerank_order_and_appended_positives():
    index_labels = np.array([5, 7, 5, 9, 7, 5, 7])
    confidence = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.95, 0.85])
    neighbours = np.array([[3, 1, 0, 4, -1], [0, 2, 3, 1, 4]])
    out = discriminative_rerank(neighbours, np.array([7, -1]), index_labels, confidence, k=6)
    # query 0 (label 7): its label-7 neighbours 1, 4 first in their order, then unretrieved label-7 image 6,
    # then the rest in their order; the -1 padding is dropped
    assert out[0].tolist() == [1, 4, 6, 3, 0]
    assert out[1].tolist() == [0, 2, 3, 1, 4]  # no predicted label: untouched
    no_append = discriminative_rerank(neighbours, np.array([7, 5]), index_labels, confidence, k=3, append=False)
    assert no_append[0].tolist() == [1, 4, 3] and no_append[1].tolist() == [0, 2, 3]
    appended = discriminative_rerank(neighbours, np.array([7, 5]), index_labels, confidence, k=10)
    assert appended[1].tolist() == [0, 2, 5, 3, 1, 4]  # label-5 image 5 (confidence 0.95) appended
