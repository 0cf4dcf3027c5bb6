"""Recognition post-processing: soft-voting formula and distractor suppression on hand-made neighbours."""

from __future__ import annotations

import numpy as np
import pandas as pd

from landmark_kit.metrics import global_average_precision
from landmark_kit.recognition import nearest_neighbour_labels, nonlandmark_penalty, soft_vote, suppress_frequent


def test_soft_vote_formula_on_hand_made_neighbours():
    train_labels = np.array([7, 8, 8, 9])
    scores = np.array([[0.9, 0.8, 0.7], [0.6, 0.5, -1e30]])
    neighbours = np.array([[0, 1, 2], [3, 0, -1]])
    label, score = soft_vote(scores, neighbours, train_labels, k=3)
    # query 0: label 7 -> 2*0.9-1 = 0.8; label 8 -> (0.6) + (0.4) = 1.0 -> 8 wins over the nearest neighbour
    assert label[0] == 8 and np.isclose(score[0], 1.0)
    assert label[1] == 9 and np.isclose(score[1], 0.2)  # the -1 padding never votes
    inliers = np.array([[140, 0, 3], [0, 0, 0]])
    label, score = soft_vote(scores, neighbours, train_labels, k=3, inliers=inliers, t=70)
    assert label[0] == 7 and np.isclose(score[0], 0.8 + 1.0)  # inliers capped at t: + 70 / 70
    assert soft_vote(scores, neighbours, train_labels, k=1)[0][0] == 7  # k = 1 is kNN top-1


def test_suppression_threshold():
    labels = np.array([1, 1, 1, 2, 3, -1])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.0])
    out = suppress_frequent(labels, scores, max_count=2)
    assert np.allclose(out[:3], -3) and np.allclose(out[3:], scores[3:])
    assert np.allclose(suppress_frequent(labels, scores, max_count=3), scores)  # "more than", not "at least"


def test_suppression_improves_gap_on_a_constructed_distractor_case():
    """Non-landmark queries all land on one attractor label with high similarity; suppression ranks them last."""
    train_labels = np.array([0, 1, 2, 3, 99])
    truth = {f"q{i}": [i % 4] for i in range(8)}
    truth.update({f"d{i}": [] for i in range(12)})  # distractor queries: any prediction is wrong
    queries = list(truth)
    nbr = np.array([[i % 4] for i in range(8)] + [[4]] * 12)
    sim = np.array([[0.6]] * 8 + [[0.9]] * 12)
    labels, scores = nearest_neighbour_labels(sim, nbr, train_labels)

    def gap(s: np.ndarray) -> float:
        return global_average_precision(pd.DataFrame({"id": queries, "landmark_id": labels, "score": s}), truth)

    before, after = gap(scores), gap(suppress_frequent(labels, scores, 5))
    assert before < 0.5 < after and np.isclose(after, 1.0)


def test_verified_vote_lets_a_far_neighbour_with_many_inliers_win():
    from landmark_kit.recognition import verified_vote

    train_labels = np.array([1, 2, 3, 4, 5])
    scores = np.array([[0.80, 0.78, 0.75, 0.60, 0.55]])
    neighbours = np.array([[0, 1, 2, 3, 4]])
    inliers = np.array([[5, 0, 2, 120, 0]])  # the 4th by global similarity is the verified one
    label, score = verified_vote(scores, neighbours, train_labels, inliers, k=3, t=70)
    assert label[0] == 4 and np.isclose(score[0], 2 * 0.60 - 1 + 1.0)
    assert soft_vote(scores, neighbours, train_labels, k=3)[0][0] == 1  # without verification: the nearest
    none = np.zeros_like(inliers)  # no inliers anywhere: plain soft-voting over the top k
    assert np.array_equal(verified_vote(scores, neighbours, train_labels, none, k=3)[0],
                          soft_vote(scores, neighbours, train_labels, k=3)[0])


def test_inlier_floor_removes_chance_matches():
    from landmark_kit.recognition import verified_vote

    train_labels = np.array([1, 2])
    scores = np.array([[0.80, 0.75]])
    neighbours = np.array([[0, 1]])
    inliers = np.array([[0, 9]])  # 9 chance inliers lift the wrong neighbour past the right one...
    assert verified_vote(scores, neighbours, train_labels, inliers, k=1, t=70)[0][0] == 2
    assert verified_vote(scores, neighbours, train_labels, inliers, k=1, t=70, floor=10)[0][0] == 1  # ...not now


def test_nonlandmark_penalty_sinks_queries_close_to_the_pool():
    scores = np.array([0.9, 0.8, 0.7])
    pool = np.array([[0.9, 0.7], [0.1, 0.0], [0.3, -3.4e38]])  # query 2 has one pool neighbour (padding)
    out = nonlandmark_penalty(scores, pool, weight=0.5)
    np.testing.assert_allclose(out, [0.9 - 0.4, 0.8 - 0.025, 0.7 - 0.15])
    # a constructed case: a distractor query with a high score but pool-like, above a true landmark query
    solution = {"a": [1], "b": []}
    before = pd.DataFrame({"id": ["a", "b"], "landmark_id": [1, 2], "score": [0.6, 0.7]})
    after = before.assign(score=nonlandmark_penalty(before["score"].to_numpy(), np.array([[0.1], [0.9]])))
    assert global_average_precision(before, solution) == 0.5 and global_average_precision(after, solution) == 1.0
