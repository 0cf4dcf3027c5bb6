"""Ablation of stage 04: every step of both chains scored against solution CSVs, as tables shaped like
smlyaka 2019's Tables 3 (retrieval, mAP@100) and 4 (recognition, GAP), with Public / Private / All columns
and each step's queries per second. Every row but the first also has its All delta over the row above with a
95% paired-bootstrap interval over the test queries (``landmark_kit.intervals``): a step whose interval holds
zero has not shown it helps on this set.

With a multi-member run the tables start at the best single member (plain kNN on its own descriptors), then
the ensemble, then the post-processing steps of the recipe, each building on the row above. Each row's
submission CSV is kept under ``<out_dir>/<track>/`` and scored by the same code as ``stages/05_score.py``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import atomic_write_csv, write_text
from .ensemble import load_ensemble, load_features
from .intervals import Bootstrap, format_delta
from .ledger import machine
from .predict import PredictConfig, RunData, load_run, recognition_steps, retrieval_steps
from .recognition import nearest_neighbour_labels
from .retrieval import neighbour_lists
from .scoring import score_recognition, score_retrieval
from .search import knn
from .submission import Solution, read_solution, write_recognition, write_retrieval, write_submissions

TRACKS = {"recognition": "GAP", "retrieval": "mAP@100"}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60]


def member_rows(run: RunData, k_index: int) -> list[tuple[str, tuple, np.ndarray]]:
    """Plain kNN top-1 (labels, scores) and kNN index rows of every member of the run's ``ensemble.yaml``,
    each on its own descriptors."""
    recipe = run.workdir / "ensemble.yaml"
    members = load_ensemble(recipe).members if recipe.is_file() else []
    out = []
    for member in members:
        folder = run.workdir / "features" / member.name
        test = np.asarray(load_features(folder, "test")[0], np.float32)
        s, i = knn(test, load_features(folder, "train")[0], 1)
        _, rows = knn(test, load_features(folder, "index")[0], min(k_index, len(run.index_ids)))
        out.append((member.name, nearest_neighbour_labels(s, i, run.train_labels), rows))
    return out


class _Table:
    """Rows of one track: writes each row's submission, scores it, keeps the metric per Usage part."""

    def __init__(self, track: str, solution: Solution, out_dir: Path, run: RunData, boot: Bootstrap, k: int = 100
                 ) -> None:
        self.track, self.solution, self.out, self.run = track, solution, out_dir / track, run
        self.k = k  # retrieval list length, as the submission writes it
        self.boot = boot
        self.rows: list[dict] = []
        self.estimates: list = []

    def evaluate(self, name: str, prediction, path: Path, seconds: float | None = None) -> dict:
        """Write ``prediction`` (labels, scores) or index rows to ``path`` and score it."""
        if self.track == "recognition":
            write_recognition(path, self.run.test_ids, *prediction)
            scores = score_recognition(self.solution, path)
        else:
            write_retrieval(path, self.run.test_ids, neighbour_lists(prediction, self.run.index_ids, self.k))
            scores = score_retrieval(self.solution, path)
        metric = TRACKS[self.track]
        row = {"method": name, **{part: round(scores[part][metric], 4) for part in ("Public", "Private", "All")
                                  if part in scores}}
        row["queries_per_s"] = round(len(self.run.test_ids) / seconds, 1) if seconds else None
        if self.track == "recognition":
            row["estimate"] = self.boot.gap(*prediction)
        else:
            row["estimate"] = self.boot.map_at_100(prediction, self.run.index_ids, self.k)
        return row

    def _append(self, row: dict) -> None:
        estimate = row.pop("estimate")
        if self.estimates:
            delta = estimate - self.estimates[-1]
            row["delta_All"] = format_delta(delta)
            row["delta_low"], row["delta_high"] = (round(x, 4) for x in delta.interval())
        self.estimates.append(estimate)
        self.rows.append(row)

    def add(self, name: str, prediction, seconds: float | None = None) -> None:
        self._append(self.evaluate(name, prediction, self.out / f"{len(self.rows):02d}-{_slug(name)}.csv", seconds))

    def add_best_member(self, members: list[tuple[str, object]]) -> None:
        """The "single best model" row: every member scored (CSVs under ``members/``), the best kept."""
        rows = [self.evaluate(name, prediction, self.out / "members" / f"{name}.csv") for name, prediction in members]
        if rows:
            best = max(rows, key=lambda r: r["All"])
            self._append(dict(best, method=f"Single best model ({best['method']})"))

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


def _timed(steps):
    """Yield each step of a chain with the seconds it took; None for the first (read from stage 03's files)."""
    first = True
    while True:
        start = time.perf_counter()
        try:
            step = next(steps)
        except StopIteration:
            return
        yield (None if first else time.perf_counter() - start), step
        first = False


def ablate(data_root, workdir, cfg: PredictConfig, recognition_solution, retrieval_solution, out_dir,
           train_csv=None, submission_dir=None, resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Score every step of both chains of ``cfg`` on a finished stage-03 run; writes ``<track>.csv`` and
    ``<track>.md`` tables into ``out_dir`` and returns them.

    Args:
        data_root: the Kaggle-layout competition the run searched.
        workdir: the stage-03 run directory.
        cfg: the stage-04 recipe whose steps are scored one by one.
        recognition_solution: the recognition solution CSV; retrieval_solution: the retrieval one.
        out_dir: receives the tables.
        train_csv: labelled train list; default ``<data_root>/train.csv``.
        submission_dir: also write the last step of each chain there as the submission (what
            :func:`~landmark_kit.predict.predict` would write).
        resamples: paired-bootstrap resamples of the test queries; seed: their seed.
    """
    out_dir = Path(out_dir)
    run = load_run(data_root, workdir, train_csv)
    solutions = read_solution(recognition_solution), read_solution(retrieval_solution)
    boot = Bootstrap(*solutions, run.test_ids, resamples, seed)
    rec = _Table("recognition", solutions[0], out_dir, run, boot)
    ret = _Table("retrieval", solutions[1], out_dir, run, boot, cfg.retrieval_k)
    members = member_rows(run, cfg.retrieval_k)
    members = members if len(members) > 1 else []  # one member: its row is the ensemble row
    rec.add_best_member([(name, labels_scores) for name, labels_scores, _ in members])
    ret.add_best_member([(name, rows) for name, _, rows in members])
    labels = scores = None
    for seconds, (name, labels, scores) in _timed(recognition_steps(cfg, run, data_root)):
        rec.add(_ensemble_name(name, members), (labels, scores), seconds)
    for seconds, (name, rows) in _timed(retrieval_steps(cfg, run, data_root, labels, scores)):
        ret.add(_ensemble_name(name, members), rows, seconds)
    if submission_dir is not None:
        write_submissions(submission_dir, run.test_ids, labels, scores,
                          neighbour_lists(rows, run.index_ids, cfg.retrieval_k), run.index_ids)
    frames = {}
    for table in (rec, ret):
        frame = frames[table.track] = table.frame()
        atomic_write_csv(frame, out_dir / f"{table.track}.csv")
        write_text(out_dir / f"{table.track}.md", format_markdown(frame, table.track)
                   + f"\n{len(boot.queries)} test queries; deltas over the row above with 95% paired-bootstrap "
                     f"intervals; measured on {machine()}.\n")
    return frames


def _ensemble_name(step: str, members: list) -> str:
    """The first step of a chain on a multi-member run is the ensemble row of the paper's tables."""
    if members and not step.startswith("+"):
        return f"+ Ensemble {len(members)} models ({step})"
    return step


def format_markdown(frame: pd.DataFrame, track: str) -> str:
    """A markdown table: method, the track's metric per Usage part, the All delta over the row above with its
    95% bootstrap interval, queries/s of the step alone (blank for rows read from stage 03's search)."""
    parts = [c for c in ("Public", "Private", "All") if c in frame]
    lines = [f"| method | {' | '.join(f'{TRACKS[track]} {p}' for p in parts)} | delta All [95% CI] | queries/s |",
             "|" + "---|" * (len(parts) + 3)]
    for row in frame.to_dict("records"):
        qps = row["queries_per_s"]
        qps = "" if pd.isna(qps) else f"{qps:,.0f}" if qps >= 100 else f"{qps:.1f}"
        delta = row.get("delta_All")
        delta = "" if not isinstance(delta, str) else delta
        lines.append(f"| {row['method']} | {' | '.join(f'{row[p]:.4f}' for p in parts)} | {delta} | {qps} |")
    return "\n".join(lines) + "\n"
