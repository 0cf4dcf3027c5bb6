"""Paired bootstrap intervals: exact GAP / mAP on every resample, pairing, and constructed win / noise cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from landmark_kit.intervals import Bootstrap, Estimate, format_delta
from landmark_kit.metrics import global_average_precision, retrieval_metrics
from landmark_kit.submission import RECOGNITION, RETRIEVAL, Solution


def _case(n: int = 60, seed: int = 0):
    """n test images: two thirds landmarks (labels 0..4), the rest non-landmarks; index of 20 images, 4 per
    label; retrieval queries are the landmark images."""
    rng = np.random.default_rng(seed)
    ids = [f"{i:016x}" for i in range(n)]
    truth = np.where(np.arange(n) % 3 == 2, -1, rng.integers(0, 5, n))
    index_ids = [f"{1000 + i:016x}" for i in range(20)]
    index_labels = np.arange(20) % 5
    rec = {i: ([int(t)] if t >= 0 else []) for i, t in zip(ids, truth)}
    ret = {i: [index_ids[j] for j in np.flatnonzero(index_labels == t)] for i, t in zip(ids, truth) if t >= 0}
    half = n // 2
    recognition = Solution(RECOGNITION, dict(list(rec.items())[:half]), dict(list(rec.items())[half:]))
    retrieval = Solution(RETRIEVAL, {k: v for k, v in ret.items() if int(k, 16) < half},
                         {k: v for k, v in ret.items() if int(k, 16) >= half},
                         {i for i, t in zip(ids, truth) if t < 0})
    return ids, truth, index_ids, index_labels, recognition, retrieval


def test_point_values_equal_the_competition_metrics():
    ids, truth, index_ids, index_labels, rec, ret = _case()
    rng = np.random.default_rng(1)
    labels = np.where(rng.random(len(ids)) < 0.6, np.maximum(truth, 0), rng.integers(0, 5, len(ids)))
    labels[::7] = -1  # some queries without a prediction
    scores = rng.random(len(ids))
    boot = Bootstrap(rec, ret, ids, resamples=50, seed=0)
    keep = labels >= 0
    frame = pd.DataFrame({"id": np.array(ids)[keep], "landmark_id": labels[keep], "score": scores[keep]})
    assert boot.gap(labels, scores).value == pytest.approx(global_average_precision(frame, rec.all))
    rows = np.stack([rng.permutation(20) for _ in ids])
    lists = {q: [index_ids[j] for j in rows[i]] for i, q in enumerate(ids) if q in ret.all}
    assert boot.map_at_100(rows, index_ids).value == pytest.approx(retrieval_metrics(lists, ret.all)["mAP@100"])


def test_each_resample_is_the_metric_of_the_resampled_queries():
    """A literal reference: the resampled queries renamed apart, scored by the competition GAP."""
    ids, truth, index_ids, _, rec, ret = _case(30)
    rng = np.random.default_rng(2)
    labels = np.where(rng.random(len(ids)) < 0.5, np.maximum(truth, 0), 4)
    scores = rng.permutation(len(ids)) / len(ids)  # distinct: renaming cannot change the ranking
    boot = Bootstrap(rec, ret, ids, resamples=5, seed=3)
    estimate = boot.gap(labels, scores)
    position = {q: i for i, q in enumerate(ids)}
    for b, draw in enumerate(boot.resamples):
        queries = [boot.queries[j] for j in draw]
        names = [f"{q}-{n}" for n, q in enumerate(queries)]
        solution = {name: rec.all[q] for name, q in zip(names, queries)}
        frame = pd.DataFrame({"id": names, "landmark_id": [labels[position[q]] for q in queries],
                              "score": [scores[position[q]] for q in queries]})
        assert estimate.samples[b] == pytest.approx(global_average_precision(frame, solution))


def test_a_true_gain_wins_and_noise_does_not():
    ids, truth, index_ids, _, rec, ret = _case(300)
    boot = Bootstrap(rec, ret, ids, resamples=1000, seed=0)
    rng = np.random.default_rng(4)
    base = np.where(rng.random(len(ids)) < 0.5, np.maximum(truth, 0), 4)
    better = np.where(rng.random(len(ids)) < 0.5, np.maximum(truth, 0), base)  # fixes about half the errors
    scores = rng.random(len(ids))
    gain = boot.gap(better, scores) - boot.gap(base, scores)
    assert gain.value > 0 and gain.wins()
    flip = rng.random(len(ids)) < 0.03  # a few queries changed at random, right or wrong
    noisy = np.where(flip, np.where(rng.random(len(ids)) < 0.5, np.maximum(truth, 0), 3), base)
    assert not (boot.gap(noisy, scores) - boot.gap(base, scores)).wins()
    same = boot.gap(base, scores) - boot.gap(base, scores)
    assert same.interval() == (0.0, 0.0) and not same.wins()


def test_resamples_are_seeded_and_paired():
    ids, truth, index_ids, _, rec, ret = _case()
    a = Bootstrap(rec, ret, ids, resamples=200, seed=7)
    b = Bootstrap(rec, ret, ids, resamples=200, seed=7)
    assert np.array_equal(a.resamples, b.resamples)
    rows = np.tile(np.arange(20), (len(ids), 1))
    assert np.array_equal(a.map_at_100(rows, index_ids).samples, b.map_at_100(rows, index_ids).samples)
    assert format_delta(Estimate(0.01, np.array([0.0, 0.02]))).startswith("+0.0100 [+0.0")


def test_unknown_solution_ids_are_refused():
    ids, _, _, _, rec, ret = _case()
    with pytest.raises(ValueError, match="not test images"):
        Bootstrap(rec, ret, ids[:-5])


def test_submission_files_score_as_the_scorer_reads_them(tmp_path):
    from landmark_kit.scoring import score_files
    from landmark_kit.submission import read_solution, write_competition_files, write_submissions

    ids, truth, index_ids, index_labels, _, _ = _case()
    write_competition_files(tmp_path, pd.DataFrame({"id": ids, "landmark_id": truth}),
                            pd.DataFrame({"id": index_ids, "landmark_id": index_labels}),
                            ["Public" if i % 2 else "Private" for i in range(len(ids))])
    rec, ret = (read_solution(tmp_path / f"{t}_solution.csv") for t in ("recognition", "retrieval"))
    rng = np.random.default_rng(4)
    labels = np.where(rng.random(len(ids)) < 0.6, np.maximum(truth, 0), rng.integers(0, 5, len(ids)))
    labels[::5] = -1
    scores = rng.random(len(ids))
    lists = [[index_ids[j] for j in rng.permutation(20)] for _ in ids]
    rec_csv, ret_csv = write_submissions(tmp_path / "sub", ids, labels, scores, lists, index_ids)
    boot = Bootstrap(rec, ret, ids, resamples=200, seed=0)
    gap, mp = boot.submissions(rec_csv, ret_csv)
    assert gap.value == pytest.approx(score_files(tmp_path / "recognition_solution.csv", rec_csv)["scores"]["All"]["GAP"])
    assert mp.value == pytest.approx(score_files(tmp_path / "retrieval_solution.csv", ret_csv)["scores"]["All"]["mAP@100"])
    worse = write_submissions(tmp_path / "worse", ids, np.full(len(ids), -1), scores, [[] for _ in ids], index_ids)
    worse_gap, worse_map = boot.submissions(*worse)
    assert worse_gap.value == 0 and worse_map.value == 0
    assert (gap - worse_gap).wins() and (mp - worse_map).wins()
