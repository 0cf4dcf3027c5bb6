"""Offline scoring of a submission file against a solution file, Public / Private / All like Kaggle."""

from __future__ import annotations

import os
from typing import Any, Collection, Iterable, Mapping

import numpy as np

from .data import DataError
from .metrics import EncodedRetrieval, _hex_ids, recognition_parts, retrieval_per_query, summarise_retrieval
from .submission import (
    RECOGNITION,
    RETRIEVAL,
    Solution,
    detect_track,
    read_recognition,
    read_retrieval_encoded,
    read_solution,
    solution_columns,
)

PARTS = ("Public", "Private", "All")


def score_recognition(solution: Solution, submission_path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """GAP, GAP ignoring non-landmark images and top-1 per Usage part (predictions matched and ranked once)."""
    pred = read_recognition(submission_path, solution.ids)
    everything = solution.all
    pred = pred[pred["id"].isin(list(everything))]  # Ignored images take no part
    is_public = np.fromiter((q in solution.public for q in everything), dtype=bool, count=len(everything))
    return recognition_parts(pred, everything, {"Public": is_public, "Private": ~is_public,
                                                "All": np.ones_like(is_public)})


def score_retrieval(solution: Solution, submission_path: str | os.PathLike,
                    index_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """mAP@100, mean precision@1..10 and rank of the first hit per Usage part (ids factorised once).

    Every row is checked first (:func:`read_retrieval`); with ``index_ids`` an id outside them is an error too.
    """
    pred = read_retrieval_encoded(submission_path, solution.ids, index_ids)
    everything = solution.all
    is_public = np.fromiter((q in solution.public for q in everything), dtype=bool, count=len(everything))
    return _retrieval_scores(pred, everything, everything, is_public)


def _retrieval_scores(pred: EncodedRetrieval, scored: Collection[str], truth: Mapping[str, list] | EncodedRetrieval,
                      is_public: np.ndarray) -> dict[str, dict[str, Any]]:
    """The parts' figures given the submission, the queries ``scored`` (Public and Private), their ground truth
    in its order and which of them are Public."""
    pred = pred.select(np.fromiter((q in scored for q in pred.queries), dtype=bool, count=len(pred.queries)))
    per_query = retrieval_per_query(pred, truth)
    out = {}
    for part, rows in (("Public", is_public), ("Private", ~is_public), ("All", np.ones_like(is_public))):
        if rows.any():
            out[part] = {"queries": int(rows.sum()), **summarise_retrieval(per_query, rows)}
    return out


def _retrieval_truth(path: str | os.PathLike) -> tuple[set[str], EncodedRetrieval, np.ndarray] | None:
    """A retrieval solution of Kaggle ids (16 lowercase hex characters, single spaces) read without a Python
    string per index id: every query id (Ignored too), the Public then Private queries (the order of
    ``Solution.all``) with their ground truth as uint64, and which of them are Public. None for any other
    file and for one that breaks a rule: :func:`read_solution` reads it, or names the problem. Accepts
    exactly what its fast reader accepts, less the ids that are not Kaggle ids."""
    columns = solution_columns(path)
    if columns is None:
        return None
    ids, images, usage = columns
    usage = usage.to_numpy(dtype=object)
    public = np.flatnonzero(usage == "Public")
    order = np.concatenate([public, np.flatnonzero(usage == "Private")])
    texts = images.to_numpy(dtype=object)[order]
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts))
    if ((lengths > 0) & ((lengths + 1) % 17 != 0)).any():  # every id takes 16 characters and a space
        return None
    counts = (lengths + 1) // 17
    total = int(counts.sum())
    texts = texts[lengths > 0]
    tokens = _hex_ids(" ".join(texts.tolist()), total) if total else np.zeros(0, np.uint64)
    if tokens is None:
        return None
    names = ids.to_numpy(dtype=object)
    queries = names[order].tolist()
    return set(names.tolist()), EncodedRetrieval(queries, counts, tokens), np.arange(len(order)) < len(public)


def _score_retrieval_files(solution_path: str | os.PathLike, submission_path: str | os.PathLike,
                           index_ids: Iterable[str] | None) -> dict[str, dict[str, Any]]:
    """Retrieval scoring of two files; a solution of Kaggle ids is read by :func:`_retrieval_truth`, any
    other by :func:`read_solution`. Errors come in the order of the steps (solution, track, submission)."""
    truth = _retrieval_truth(solution_path)
    if truth is None:
        solution = read_solution(solution_path)
        _same_track(solution_path, RETRIEVAL, submission_path)
        return score_retrieval(solution, submission_path, index_ids)
    _same_track(solution_path, RETRIEVAL, submission_path)
    query_ids, gt, is_public = truth
    pred = read_retrieval_encoded(submission_path, query_ids, index_ids)
    return _retrieval_scores(pred, set(gt.queries), gt, is_public)


def _same_track(solution_path: str | os.PathLike, solution_track: str, submission_path: str | os.PathLike) -> str:
    track = detect_track(submission_path)
    if track != solution_track:
        raise DataError(f"{submission_path} is a {track} submission but {solution_path} is a {solution_track} solution")
    return track


def score_files(solution_path: str | os.PathLike, submission_path: str | os.PathLike,
                index_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Score any submission against a solution; the track is taken from the headers (they must agree).
    ``index_ids`` (retrieval): the index images a row may name."""
    if detect_track(solution_path) == RETRIEVAL:
        scores = _score_retrieval_files(solution_path, submission_path, index_ids)
        track = RETRIEVAL
    else:
        solution = read_solution(solution_path)
        track = _same_track(solution_path, solution.track, submission_path)
        scores = score_recognition(solution, submission_path)
    return {"track": track, "solution": str(solution_path), "submission": str(submission_path), "scores": scores}


def format_report(result: dict[str, Any]) -> str:
    """A fixed-width table of :func:`score_files` output."""
    scores = result["scores"]
    lines = [f"{result['track']}: {result['submission']}"]
    if result["track"] == RECOGNITION:
        lines.append(f"{'part':<8} {'images':>7} {'GAP':>8} {'GAP(lm)':>8} {'top-1':>8}")
        for part, s in scores.items():
            lines.append(
                f"{part:<8} {s['images']:>7d} {s['GAP']:>8.4f} {s['GAP_landmarks_only']:>8.4f} {s['top1']:>8.4f}"
            )
    else:
        lines.append(
            f"{'part':<8} {'queries':>7} {'mAP@100':>8} {'P@1':>6} {'P@5':>6} {'P@10':>6} {'1st hit mean/median':>20}"
        )
        for part, s in scores.items():
            p = s["precision@k"]
            lines.append(
                f"{part:<8} {s['queries']:>7d} {s['mAP@100']:>8.4f} {p[0]:>6.3f} {p[4]:>6.3f} {p[9]:>6.3f}"
                f" {s['mean_first_hit']:>12.2f} / {s['median_first_hit']:<5.1f}"
            )
    return "\n".join(lines)
