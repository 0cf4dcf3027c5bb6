"""Offline scoring of a submission file against a solution file, Public / Private / All like Kaggle."""

from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from .data import DataError
from .metrics import global_average_precision, retrieval_per_query, summarise_retrieval, top1_accuracy
from .submission import (
    RECOGNITION,
    Solution,
    detect_track,
    read_recognition,
    read_retrieval_encoded,
    read_solution,
)

PARTS = ("Public", "Private", "All")


def _parts(solution: Solution) -> dict[str, dict[str, list]]:
    return {"Public": solution.public, "Private": solution.private, "All": solution.all}


def score_recognition(solution: Solution, submission_path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """GAP, GAP ignoring non-landmark images and top-1 per Usage part."""
    pred = read_recognition(submission_path, solution.ids)
    out = {}
    for part, sol in _parts(solution).items():
        p = pred[pred["id"].isin(sol.keys())]
        out[part] = {
            "images": len(sol),
            "landmark_images": sum(1 for v in sol.values() if v),
            "GAP": global_average_precision(p, sol),
            "GAP_landmarks_only": global_average_precision(p, sol, ignore_non_landmarks=True),
            "top1": top1_accuracy(p, sol),
        }
    return out


def score_retrieval(solution: Solution, submission_path: str | os.PathLike,
                    index_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """mAP@100, mean precision@1..10 and rank of the first hit per Usage part (ids factorised once).

    Every row is checked first (:func:`read_retrieval`); with ``index_ids`` an id outside them is an error too.
    """
    pred = read_retrieval_encoded(submission_path, solution.ids, index_ids)
    everything = solution.all
    pred = pred.select(np.fromiter((q in everything for q in pred.queries), dtype=bool, count=len(pred.queries)))
    per_query = retrieval_per_query(pred, everything)
    is_public = np.fromiter((q in solution.public for q in everything), dtype=bool, count=len(everything))
    out = {}
    for part, rows in (("Public", is_public), ("Private", ~is_public), ("All", np.ones_like(is_public))):
        if rows.any():
            out[part] = {"queries": int(rows.sum()), **summarise_retrieval(per_query, rows)}
    return out


def score_files(solution_path: str | os.PathLike, submission_path: str | os.PathLike,
                index_ids: Iterable[str] | None = None) -> dict[str, Any]:
    """Score any submission against a solution; the track is taken from the headers (they must agree).
    ``index_ids`` (retrieval): the index images a row may name."""
    solution = read_solution(solution_path)
    track = detect_track(submission_path)
    if track != solution.track:
        raise DataError(f"{submission_path} is a {track} submission but {solution_path} is a {solution.track} solution")
    scores = score_recognition(solution, submission_path) if track == RECOGNITION else score_retrieval(
        solution, submission_path, index_ids
    )
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
