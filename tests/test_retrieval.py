"""Retrieval post-processing: discriminative re-ranking (order within groups kept, positives appended by
confidence, cut at k), DBA, alpha-QE and local-feature re-ranking on hand-made vectors."""

from __future__ import annotations

import numpy as np
import pytest

from landmark_kit.retrieval import database_augment, discriminative_rerank, local_rerank, query_expand, soft_rerank


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


def _unit(x):
    x = np.asarray(x, np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_database_augment_adds_weighted_neighbours_but_not_itself():
    db = _unit([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.0, 0.0, 1.0]])
    out = database_augment(db, k=1, alpha=2.0)
    sims = db @ db.T
    expected = _unit([db[0] + sims[0, 1] ** 2 * db[1], db[1] + sims[1, 0] ** 2 * db[0], db[2]])
    np.testing.assert_allclose(out[:2], expected[:2], atol=1e-6)
    # the far vector's nearest other row has similarity 0: weight 0, the row stays itself
    np.testing.assert_allclose(out[2], db[2], atol=1e-6)


def test_query_expand_uses_the_first_k_neighbours_with_alpha_weights():
    db = _unit([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    q = _unit([[1.0, 0.2]])
    scores, rows = q @ db[[2, 0, 1]].T, np.array([[2, 0, 1]])
    out = query_expand(q, db, scores, rows, k=2, alpha=3.0)
    expected = _unit(q[0] + scores[0, 0] ** 3 * db[2] + scores[0, 1] ** 3 * db[0])
    np.testing.assert_allclose(out[0], expected, atol=1e-6)


def test_local_rerank_sorts_the_head_by_similarity_times_sqrt_inliers():
    rows = np.array([[10, 11, 12, 13], [5, 6, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.5, 0.4, -3.4e38, -3.4e38]], np.float32)
    inliers = np.array([[1, 16, 0], [0, 4, 0]])
    out, similarities = local_rerank(rows, scores, inliers)
    # 0.9 x 1, 0.8 x 4 = 3.2, 0.7 x 0 -> 11, 10, 12; the tail (13) keeps its place; padding stays last
    assert out.tolist() == [[11, 10, 12, 13], [6, 5, -1, -1]]
    assert similarities[0].tolist() == pytest.approx([0.8, 0.9, 0.7, 0.6])


def test_soft_rerank_moves_same_label_images_by_confidence_not_past_everything():
    index_labels = np.array([1, 2, 1, 3])
    confidence = np.array([0.5, 0.9, 0.05, 0.0])
    rows = np.array([[1, 0, 3, 2], [1, 0, 3, 2], [3, 2, -1, -1]])
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.9, 0.8, 0.7, 0.6], [0.5, 0.4, -3e38, -3e38]])
    out, out_scores = soft_rerank(rows, scores, np.array([1, -1, 1]), index_labels, confidence, up=1.0,
                                  down=0.5)
    assert np.array_equal(np.sort(out_scores, axis=1), np.sort(scores, axis=1))
    # query 0 (label 1): 1 -> 0.9 - 0.45, 0 -> 0.8 + 0.5, 3 -> 0.7 - 0, 2 -> 0.6 + 0.05: the weakly
    # confident same-label image 2 stays behind the closer 3; query 1 has no label and keeps its row
    assert out.tolist() == [[0, 3, 2, 1], [1, 0, 3, 2], [3, 2, -1, -1]]
