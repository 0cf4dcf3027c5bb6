"""Metrics against the design-note reference case and a slow, literal re-implementation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from landmark_kit.metrics import global_average_precision, retrieval_metrics, top1_accuracy


def _frame(preds: dict) -> pd.DataFrame:
    return pd.DataFrame(
        {"id": list(preds), "landmark_id": [v[0] for v in preds.values()], "score": [v[1] for v in preds.values()]}
    )


SOLUTION = {"A": [0, 12], "B": [100, 200, 300], "C": [1], "D": [], "E": []}
PREDICTIONS = {"B": (0, 0.01), "C": (1, 10.0), "D": (150, 15.0)}


def test_reference_case_from_design_notes():
    pred = _frame(PREDICTIONS)
    assert global_average_precision(pred, SOLUTION) == pytest.approx(0.166667, abs=1e-6)
    assert global_average_precision(pred, SOLUTION, ignore_non_landmarks=True) == pytest.approx(0.333333, abs=1e-6)
    assert top1_accuracy(pred, SOLUTION) == pytest.approx(0.333333, abs=1e-6)


def test_gap_ties_broken_by_id_then_label():
    solution = {"a": [1], "b": [2]}
    # equal scores: "a" ranks first by id, so a wrong "a" costs the right "b" half its precision
    pred = _frame({"b": (2, 1.0), "a": (9, 1.0)})
    assert global_average_precision(pred, solution) == pytest.approx(0.5 / 2)
    pred = _frame({"b": (2, 1.0), "a": (1, 1.0)})
    assert global_average_precision(pred, solution) == pytest.approx(1.0)


def test_gap_rejects_unknown_ids_and_nan():
    with pytest.raises(ValueError, match="not in the solution"):
        global_average_precision(_frame({"Z": (1, 1.0)}), SOLUTION)
    with pytest.raises(ValueError, match="NaN"):
        global_average_precision(_frame({"A": (0, float("nan"))}), SOLUTION)


def test_map_hand_case_duplicates_skipped_rank_advances():
    solution = {"q1": ["a", "b"], "q2": ["c"], "q3": ["d"]}
    predictions = {"q1": ["a", "a", "x", "b"], "q2": ["y", "c"]}  # q3 has no prediction -> 0
    # q1: a@1 -> 1/1, duplicate a@2 skipped, b@4 -> 2/4; AP = 1.5/2. q2: c@2 -> 1/2.
    result = retrieval_metrics(predictions, solution)
    assert result["mAP@100"] == pytest.approx((0.75 + 0.5 + 0.0) / 3)
    assert result["precision@k"][0] == pytest.approx(1 / 3)
    assert result["mean_first_hit"] == pytest.approx((1 + 2 + 101) / 3)
    assert result["median_first_hit"] == 2


def test_map_only_first_100_count_and_gt_capped_at_100():
    gt = [f"g{i}" for i in range(150)]
    preds = [f"g{i}" for i in range(99)] + ["junk", "g120"]
    result = retrieval_metrics({"q": preds}, {"q": gt})
    assert result["mAP@100"] == pytest.approx(99 / 100)


# ---------------------------------------------------------------------------- brute force, read literally


def brute_gap(predictions: dict, solution: dict, ignore: bool = False) -> float:
    positives = sum(1 for v in solution.values() if v)
    items = sorted(predictions.items(), key=lambda kv: (kv[0], kv[1][0]))
    items = sorted(items, key=lambda kv: kv[1][1], reverse=True)
    gap, total, correct = 0.0, 0, 0
    for key, (label, _) in items:
        if ignore and not solution[key]:
            continue
        total += 1
        if label in solution[key]:
            correct += 1
            gap += correct / total
    return gap / positives if positives else 0.0


def brute_map(predictions: dict, solution: dict, k: int = 100) -> float:
    total = 0.0
    for key, pred in predictions.items():
        seen, ap, hits = set(), 0.0, 0
        for i in range(min(len(pred), k)):
            if pred[i] not in seen:
                if pred[i] in solution[key]:
                    hits += 1
                    ap += hits / (i + 1)
                seen.add(pred[i])
        total += ap / min(len(solution[key]), k)
    return total / len(solution)


ids = st.sampled_from([f"{i:016x}" for i in range(12)])
labels = st.integers(0, 5)


@settings(max_examples=200, deadline=None)
@given(
    solution=st.dictionaries(ids, st.lists(labels, max_size=3, unique=True), min_size=1),
    data=st.data(),
)
def test_gap_matches_brute_force(solution, data):
    keys = sorted(solution)
    chosen = data.draw(st.lists(st.sampled_from(keys), unique=True))
    preds = {k: (data.draw(labels), data.draw(st.sampled_from([0.0, 0.5, 1.0, 2.5]))) for k in chosen}
    frame = _frame(preds) if preds else pd.DataFrame({"id": [], "landmark_id": [], "score": []})
    for ignore in (False, True):
        assert global_average_precision(frame, solution, ignore) == pytest.approx(brute_gap(preds, solution, ignore))


index_ids = st.sampled_from([f"i{i}" for i in range(15)])


@settings(max_examples=200, deadline=None)
@given(
    solution=st.dictionaries(st.sampled_from([f"q{i}" for i in range(8)]),
                             st.lists(index_ids, min_size=1, max_size=6, unique=True), min_size=1),
    data=st.data(),
    k=st.sampled_from([3, 5, 100]),
)
def test_map_matches_brute_force(solution, data, k):
    chosen = data.draw(st.lists(st.sampled_from(sorted(solution)), unique=True))
    preds = {q: data.draw(st.lists(index_ids, max_size=8)) for q in chosen}
    result = retrieval_metrics(preds, solution, max_predictions=k, precision_at=min(k, 3))
    assert result[f"mAP@{k}"] == pytest.approx(brute_map(preds, solution, k))


def test_vectorised_map_on_random_large_case():
    rng = np.random.default_rng(0)
    pool = [f"{i:016x}" for i in range(300)]
    solution = {f"q{i}": list(rng.choice(pool, rng.integers(1, 20), replace=False)) for i in range(200)}
    preds = {q: list(rng.choice(pool, 100)) for q in list(solution)[:180]}
    assert retrieval_metrics(preds, solution)["mAP@100"] == pytest.approx(brute_map(preds, solution))


def test_hex_fast_path_and_text_fallback_agree():
    rng = np.random.default_rng(1)
    pool = [f"{i:016x}" for i in range(50)]
    solution = {f"q{i}": list(rng.choice(pool, 5, replace=False)) for i in range(30)}
    preds = {q: list(rng.choice(pool, 20)) for q in solution}
    expected = brute_map(preds, solution)
    assert retrieval_metrics(preds, solution)["mAP@100"] == pytest.approx(expected)
    preds["q0"] = preds["q0"] + ["NOT-A-HEX-ID"]  # one odd token sends everything down the text path
    assert retrieval_metrics(preds, solution)["mAP@100"] == pytest.approx(brute_map(preds, solution))


def test_ids_sharing_low_bits_with_ground_truth_are_not_hits():
    """The hex path's low-bit table only pre-filters: ids equal to a positive in their low 22+ bits but not in
    the high ones must not count, and the positives behind them still score at their ranks."""
    rng = np.random.default_rng(2)
    high = rng.integers(1, 2**20, 40)
    pool = [f"{(h << 40) | 0xABCDE:016x}" for h in high]  # every id: the same low 40 bits
    solution = {f"q{i}": list(rng.choice(pool[:20], 3, replace=False)) for i in range(25)}
    preds = {q: list(rng.choice(pool, 30, replace=False)) for q in solution}
    assert retrieval_metrics(preds, solution)["mAP@100"] == pytest.approx(brute_map(preds, solution))
    misses = {q: pool[20:] for q in solution}
    assert retrieval_metrics(misses, solution)["mAP@100"] == 0.0


def test_encoded_truth_and_two_thread_filter_match_the_mapping_path():
    """12,000 queries: the hashed filter runs in two halves (threads); a solution given as uint64 rows (what
    the scorer reads) scores exactly as the same solution given as lists."""
    from landmark_kit.metrics import EncodedRetrieval, retrieval_per_query

    rng = np.random.default_rng(2)
    pool = rng.integers(0, 2**63, 5000).astype(np.uint64)
    text = np.char.mod("%016x", pool).astype(object)
    solution = {f"{i:016x}": list(text[rng.integers(0, len(pool), rng.integers(0, 12))]) for i in range(12_000)}
    preds = {q: list(text[rng.integers(0, len(pool), 30)]) + gt[:2] for q, gt in solution.items() if q[-1] != "7"}
    sizes = np.array([len(v) for v in solution.values()])
    truth = EncodedRetrieval(list(solution), sizes, np.array([int(t, 16) for v in solution.values() for t in v],
                                                               dtype=np.uint64))
    lists, encoded = retrieval_per_query(preds, solution), retrieval_per_query(preds, truth)
    assert all(np.array_equal(lists[key], encoded[key]) for key in lists)
    some = {q: gt for q, gt in list(solution.items())[:300] if gt}  # brute_map divides by |gt|
    assert retrieval_metrics({q: preds[q] for q in some if q in preds}, some)["mAP@100"] == pytest.approx(
        brute_map({q: preds[q] for q in some if q in preds}, some))


def test_average_precision_sums_only_the_hits_bit_for_bit():
    from landmark_kit.metrics import _sum_at_hits

    rng = np.random.default_rng(3)
    rel = rng.random((4000, 100)) < rng.choice([0.0, 0.01, 0.05, 0.3], (4000, 1))
    precision = np.cumsum(rel, axis=1) / np.arange(1, 101)
    assert np.array_equal(_sum_at_hits(rel, precision), np.where(rel, precision, 0.0).sum(axis=1))
