"""Paired bootstrap intervals for GAP and mAP@100 over a labelled validation set's queries.

A difference measured on ~100 queries is mostly noise. Queries are resampled
with replacement ``resamples`` times (seeded); every recipe scored with the same :class:`Bootstrap` sees the
same resamples, so the difference of two recipes has a paired interval: keep a step only when the 2.5th
percentile of its gain is above zero.

GAP is recomputed exactly on each resample (a query drawn twice is two predictions with equal scores, adjacent
in the ranking, as the reference metric would rank them); mAP@100 is the mean of per-query APs. Both tracks
share one resample of the test queries, so a combined objective (their mean) has a paired interval too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .metrics import retrieval_per_query
from .retrieval import neighbour_lists
from .submission import Solution, read_recognition, read_retrieval


@dataclass
class Estimate:
    """A metric on the full validation set (``value``) and on each bootstrap resample (``samples``)."""

    value: float
    samples: np.ndarray

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        tail = 100 * (1 - level) / 2
        lo, hi = np.percentile(self.samples, [tail, 100 - tail])
        return float(lo), float(hi)

    def __sub__(self, other: "Estimate") -> "Estimate":
        """The paired difference (same resamples)."""
        return Estimate(self.value - other.value, self.samples - other.samples)

    def __add__(self, other: "Estimate") -> "Estimate":
        return Estimate(self.value + other.value, self.samples + other.samples)

    def scale(self, factor: float) -> "Estimate":
        return Estimate(self.value * factor, self.samples * factor)

    def wins(self, level: float = 0.95) -> bool:
        """True when this (a difference) is positive with the interval's lower bound above zero."""
        return self.interval(level)[0] > 0


def format_interval(est: Estimate, level: float = 0.95) -> str:
    """``0.8439 [0.7758, 0.9007]``: an estimate with its interval."""
    lo, hi = est.interval(level)
    return f"{est.value:.4f} [{lo:.4f}, {hi:.4f}]"


def format_delta(delta: Estimate, level: float = 0.95) -> str:
    """``+0.0123 [+0.0040, +0.0210]``: a difference with its interval."""
    lo, hi = delta.interval(level)
    return f"{delta.value:+.4f} [{lo:+.4f}, {hi:+.4f}]"


class Bootstrap:
    """Scores recognition and retrieval predictions of ``test_ids`` against two solutions, with ``resamples``
    seeded resamples of the scored queries (the union of both solutions' Public + Private rows). ``strata``
    (one group per test id, e.g. the folder of a pooled tuning set): each resample draws every group's own
    number of queries from that group, so a small folder keeps its share."""

    def __init__(self, recognition: Solution, retrieval: Solution, test_ids: Sequence[str], resamples: int = 1000,
                 seed: int = 0, chunk: int = 64, strata: Sequence[int] | None = None) -> None:
        if resamples < 1:
            raise ValueError(f"resamples must be >= 1, found {resamples}")
        rec, ret = recognition.all, retrieval.all
        position = {image_id: i for i, image_id in enumerate(test_ids)}
        queries = sorted(set(rec) | set(ret))
        missing = [q for q in queries if q not in position]
        if missing:
            raise ValueError(f"{len(missing)} solution id(s) are not test images of the run, e.g. {missing[0]}")
        self.queries = queries
        self.position = {q: i for i, q in enumerate(queries)}  # query -> its index in ``queries``
        self.rows = np.array([position[q] for q in queries], np.int64)  # query -> row of the run's test arrays
        self.rec_solution, self.ret_solution = rec, ret
        self.is_rec = np.array([q in rec for q in queries])
        self.is_landmark = np.array([len(rec.get(q, ())) > 0 for q in queries])
        self.is_ret = np.array([q in ret for q in queries])
        self.chunk = chunk
        rng = np.random.default_rng(seed)
        if strata is None:
            self.resamples = rng.integers(0, len(queries), size=(resamples, len(queries)), dtype=np.int64)
            return
        group = np.asarray(strata)[self.rows]
        self.resamples = np.empty((resamples, len(queries)), np.int64)
        for g in np.unique(group):
            members = np.flatnonzero(group == g)
            self.resamples[:, members] = members[rng.integers(0, len(members), size=(resamples, len(members)))]

    def gap(self, labels: np.ndarray, scores: np.ndarray) -> Estimate:
        """GAP (All) of one label and score per test image (label < 0: no prediction)."""
        labels = np.asarray(labels)[self.rows]
        scores = np.asarray(scores, np.float64)[self.rows]
        predicted = self.is_rec & (labels >= 0)
        correct = np.array([predicted[i] and int(labels[i]) in self.rec_solution[q]
                            for i, q in enumerate(self.queries)])
        # global rank of each prediction: score descending, then id ascending (queries are sorted by id)
        order = np.lexsort((np.arange(len(scores)), -np.where(predicted, scores, -np.inf)))
        order = order[predicted[order]]
        rank = np.full(len(scores), len(scores), np.int64)  # unpredicted queries rank after every prediction
        rank[order] = np.arange(len(order))
        rel_at = np.zeros(len(scores) + 1)
        rel_at[: len(order)] = correct[order]
        identity = np.arange(len(scores))[None]
        value = self._gap_rows(identity, rank, rel_at)[0]
        samples = np.concatenate([self._gap_rows(self.resamples[i: i + self.chunk], rank, rel_at)
                                  for i in range(0, len(self.resamples), self.chunk)])
        return Estimate(float(value), samples)

    def _gap_rows(self, idx: np.ndarray, rank: np.ndarray, rel_at: np.ndarray) -> np.ndarray:
        positives = (self.is_landmark[idx]).sum(axis=1)
        rel = rel_at[np.sort(rank[idx], axis=1)]
        precision = np.cumsum(rel, axis=1) / np.arange(1, idx.shape[1] + 1)
        return (precision * rel).sum(axis=1) / np.maximum(positives, 1)

    def map_at_100(self, rows, index_ids: Sequence[str], k: int = 100) -> Estimate:
        """mAP@100 (All) of ranked index rows (positions into ``index_ids``) per test image."""
        return self.map_ranked(neighbour_lists(rows, index_ids, k))

    def map_ranked(self, ranked: Sequence[Sequence[str]]) -> Estimate:
        """mAP@100 (All) of one ranked list of index ids per test image."""
        return self._map({q: ranked[self.rows[self.position[q]]] for q in self.ret_solution})

    def submissions(self, recognition_csv, retrieval_csv) -> tuple[Estimate, Estimate]:
        """GAP and mAP@100 (All) of two submission files, read as the scorer reads them (stage 05), so any
        two submissions of the same test set get paired intervals."""
        rec = read_recognition(recognition_csv).set_index("id")
        test_ids = np.empty(int(self.rows.max()) + 1, dtype=object)
        test_ids[self.rows] = self.queries
        labels = rec["landmark_id"].reindex(test_ids, fill_value=-1).to_numpy()
        scores = rec["score"].reindex(test_ids, fill_value=0.0).to_numpy()
        retrieved = read_retrieval(retrieval_csv)
        return self.gap(labels, scores), self._map({q: retrieved.get(q, "") for q in self.ret_solution})

    def _map(self, predictions: dict) -> Estimate:
        ap = np.zeros(len(self.queries))
        ap[[self.position[q] for q in self.ret_solution]] = retrieval_per_query(predictions, self.ret_solution)["ap"]
        return self._mean(ap, self.is_ret)

    def _mean(self, values: np.ndarray, mask: np.ndarray) -> Estimate:
        weights = mask.astype(np.float64)
        value = float((values * weights).sum() / max(weights.sum(), 1))
        counts = weights[self.resamples].sum(axis=1)
        samples = (values * weights)[self.resamples].sum(axis=1) / np.maximum(counts, 1)
        return Estimate(value, samples)
