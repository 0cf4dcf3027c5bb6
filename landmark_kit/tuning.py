"""Validation-driven choice of ensemble weights and stage-04 steps (``stages/04_predict.py --tune-on V``).

Winners keep a step only when it wins on a local validation set that mirrors the test. Given labelled
folders V (Kaggle layout, or photo folders tuned every photo a query by
:mod:`landmark_kit.photofolder`; several are pooled, resampled by folder), :func:`tune` extracts V with the
ensemble, then

1. weights: every member alone, then a coordinate search over each member's weight on a grid (0 drops it),
   judged by the mean of GAP and mAP@100 with plain kNN, so the tuned ensemble is never below its best member
   on V;
2. recipe: a coordinate search over the options of a search space (``submissions/search.yaml``), each judged
   on its track (GAP or mAP@100) against the recipe without it.

A change is kept only when its paired-bootstrap gain has a 95% lower bound above zero and the other track's
interval is not wholly below zero. Every candidate tried goes into the tuning tables with its intervals.
Candidates cost only stage-04 work: descriptors are extracted once, verified pairs are kept in memory (and
local features on disk) across candidates.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .artifacts import atomic_write_csv, write_text
from .data import DataError
from .ensemble import EnsembleConfig, joined_features, run_ensemble
from .intervals import Bootstrap, Estimate, format_delta, format_interval
from .photofolder import PHOTO_SPLIT, extract_every_photo, is_kaggle_layout, own_rows, working_copy
from .predict import PredictConfig, RunData, check_config, load_run, recognition_steps, retrieval_steps
from .ledger import machine, markdown_table
from .recipes import RecipeError, from_dict, load_recipe, save_recipe, to_dict
from .recognition import nearest_neighbour_labels
from .retrieval import neighbour_lists
from .submission import RECOGNITION, RETRIEVAL, Solution, read_solution

log = logging.getLogger(__name__)
TRACKS = ("recognition", "retrieval")


@dataclass
class SearchOption:
    """One coordinate of the search: candidate recipe changes (dotted keys reach nested settings, e.g.
    ``local.max_keypoints``), judged on ``track``."""

    name: str
    track: str = "recognition"
    values: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class SearchSpace:
    """What ``--tune-on`` searches and how strictly (``submissions/search.yaml``)."""

    base: dict[str, Any] = field(default_factory=dict)  # the starting recipe (plain kNN when empty)
    options: list[SearchOption] = field(default_factory=list)
    rounds: int = 2  # passes over the options; stops early when a pass changes nothing
    member_weights: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    weight_rounds: int = 2
    member_whitening: bool = True  # also try PCA-whitening each kept member (learned on the ensemble's whiten_split)
    resamples: int = 1000  # paired bootstrap over V's queries
    seed: int = 0
    level: float = 0.95


def apply_overrides(cfg: PredictConfig, overrides: dict[str, Any], where: str = "search space") -> PredictConfig:
    """``cfg`` with ``overrides`` applied (``a.b`` keys and nested mappings reach nested settings), type-checked."""
    data = to_dict(cfg)
    for key, value in overrides.items():
        target, parts = data, key.split(".")
        for part in parts[:-1]:
            if not isinstance(target.get(part), dict):
                raise RecipeError(f"{where}: {key!r} does not name a setting of PredictConfig")
            target = target[part]
        if parts[-1] not in target:
            raise RecipeError(f"{where}: {key!r} does not name a setting of PredictConfig")
        if isinstance(value, dict) and isinstance(target[parts[-1]], dict):
            target[parts[-1]] = {**target[parts[-1]], **value}
        else:
            target[parts[-1]] = value
    return from_dict(PredictConfig, data, where)


def load_space(path: str | os.PathLike | None) -> SearchSpace:
    """Read and check a search space: known tracks, every candidate a valid change of the recipe."""
    space = load_recipe(SearchSpace, path)
    if space.resamples < 1000:
        log.warning("%s: %d bootstrap resamples; intervals need >= 1000 to be stable", path, space.resamples)
    base = apply_overrides(PredictConfig(), space.base, f"{path}: base")
    for option in space.options:
        if option.track not in TRACKS:
            raise RecipeError(f"{path}: option {option.name!r}: track must be one of {TRACKS}, found {option.track!r}")
        for value in option.values:
            check_config(apply_overrides(base, value, f"{path}: option {option.name!r}"))
    if not space.member_weights or min(space.member_weights) < 0:
        raise RecipeError(f"{path}: member_weights must be a non-empty list of weights >= 0")
    return space


def _describe(overrides: dict[str, Any]) -> str:
    def flat(prefix: str, value: Any):
        if isinstance(value, dict):
            for k, v in value.items():
                yield from flat(f"{prefix}.{k}" if prefix else k, v)
        else:
            yield f"{prefix}={value}"
    return ", ".join(item for k, v in overrides.items() for item in flat(k, v)) or "(none)"


class Tables:
    """Rows of a tuning table: every candidate with its scores, deltas and whether it was kept."""

    def __init__(self, level: float) -> None:
        self.level, self.rows = level, []

    def add(self, stage: str, candidate: str, scores: tuple[Estimate, Estimate], deltas=None, judged: str = "",
            gain: Estimate | None = None, kept: bool = False) -> dict:
        """One candidate: its scores on V, its paired deltas against the current choice, the gain it was
        judged by (one of the deltas, or their mean for ensemble weights)."""
        gap, mp = scores
        row = {"stage": stage, "candidate": candidate, "judged on": judged, "GAP": format_interval(gap, self.level),
               "mAP@100": format_interval(mp, self.level),
               "delta GAP": format_delta(deltas[0], self.level) if deltas else "",
               "delta mAP@100": format_delta(deltas[1], self.level) if deltas else "",
               "gain": format_delta(gain, self.level) if gain is not None else "", "kept": kept}
        self.rows.append(row)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def markdown(self) -> str:
        return markdown_table([dict(row, kept="**yes**" if row["kept"] else "") for row in self.rows])


@dataclass
class TuneFolder:
    """One ``--tune-on`` folder: as given, its Kaggle-layout root (itself, or its every-photo working copy),
    its run directory, the loaded run, its label offset and id prefix in the pooled set, its query counts."""

    source: Path
    root: Path
    vdir: Path
    every_photo: bool
    run: RunData | None = None
    offset: int = 0
    prefix: str = ""
    queries: tuple[int, int] = (0, 0)  # recognition, retrieval

    @property
    def mode(self) -> str:
        return "every photo a query" if self.every_photo else "Kaggle layout"


def tune_folders(sources: str | os.PathLike | Sequence[str | os.PathLike], workdir) -> list[TuneFolder]:
    """Each ``--tune-on`` folder with its run directory (``workdir/tune``, or ``workdir/tune/<n>`` for
    several): a labelled Kaggle layout is used as it is, any other folder is read as a labelled photo folder
    and its every-photo working copy written (``<run directory>/photos``)."""
    sources = [Path(sources)] if isinstance(sources, (str, os.PathLike)) else [Path(s) for s in sources]
    if not sources:
        raise DataError("--tune-on needs at least one folder")
    folders = []
    for n, src in enumerate(sources):
        vdir = Path(workdir) / "tune" / (f"{n + 1}" if len(sources) > 1 else "")
        if is_kaggle_layout(src):
            folders.append(TuneFolder(src, src, vdir, False))
        elif (src / "train.csv").is_file() or all((src / split).is_dir() for split in ("train", "test")):
            raise FileNotFoundError(f"--tune-on {src}: a Kaggle layout without its labels; it needs train.csv, "
                                    f"recognition_solution.csv and retrieval_solution.csv")
        else:
            working_copy(src, vdir / "photos")
            folders.append(TuneFolder(src, vdir / "photos", vdir, True))
    return folders


def prepare(folder: TuneFolder, ensemble: EnsembleConfig) -> RunData:
    """Stage 03 on one tuning folder (every-photo folders: each photo extracted once, searched leaving itself
    out) and its run loaded."""
    if not folder.every_photo:
        run_ensemble(ensemble, folder.root, folder.vdir)
        folder.run = load_run(folder.root, folder.vdir)
        return folder.run
    extract_every_photo(ensemble, folder.root, folder.vdir)
    run = load_run(folder.root, folder.vdir)
    run.own = {split: own_rows(run.test_ids, ids)
               for split, ids in (("train", run.train_ids), ("index", run.index_ids), ("test", run.test_ids))}
    run.photo_split = PHOTO_SPLIT
    folder.run = run
    return run


def pooled_bootstrap(folders: list[TuneFolder], space: SearchSpace) -> Bootstrap:
    """One bootstrap over every folder's queries, stratified by folder; with several folders, ids are prefixed
    ``<n>/`` and labels offset so that folders never share a landmark. Sets each folder's query counts."""
    rec, ret, ids, strata, offset = Solution(RECOGNITION), Solution(RETRIEVAL), [], [], 0
    for n, folder in enumerate(folders):
        folder.prefix, folder.offset = (f"{n + 1}/" if len(folders) > 1 else ""), offset
        r, t = (read_solution(folder.root / f"{track}_solution.csv") for track in TRACKS)
        for mine, pooled in ((r.public, rec.public), (r.private, rec.private)):
            pooled.update({folder.prefix + q: [x + offset for x in v] for q, v in mine.items()})
        for mine, pooled in ((t.public, ret.public), (t.private, ret.private)):
            pooled.update({folder.prefix + q: [folder.prefix + x for x in v] for q, v in mine.items()})
        folder.queries = (len(r.all), len(t.all))
        ids += [folder.prefix + q for q in folder.run.test_ids]
        strata += [n] * len(folder.run.test_ids)
        labels = [x for v in r.all.values() for x in v] + folder.run.train_labels.tolist()
        offset += max(labels, default=-1) + 1
    return Bootstrap(rec, ret, ids, space.resamples, space.seed, strata=strata if len(folders) > 1 else None)


def _header(folders: list[TuneFolder], space: SearchSpace) -> str:
    where = ", ".join(f"`{f.source}` ({f.mode}: {f.queries[0]} recognition, {f.queries[1]} retrieval queries)"
                      for f in folders)
    pooled = "; resampled within each folder" if len(folders) > 1 else ""
    return (f"On {where}{pooled}; {space.resamples} paired-bootstrap resamples (seed {space.seed}), "
            f"{space.level:.0%} intervals; measured on {machine()}.\n\n")


def _pooled(folders: list[TuneFolder], boot: Bootstrap, labels: list[np.ndarray], scores: list[np.ndarray],
            rows: list, k: int = 100) -> tuple[Estimate, Estimate]:
    """GAP and mAP@100 of every folder's predictions (labels offset, index ids prefixed) on the pooled set."""
    ranked = [ranked for f, r in zip(folders, rows)
              for ranked in neighbour_lists(r, [f.prefix + i for i in f.run.index_ids], k)]
    offset = np.concatenate([np.where(lab >= 0, lab + f.offset, -1) for f, lab in zip(folders, labels)])
    return boot.gap(offset, np.concatenate(scores)), boot.map_ranked(ranked)


def _accept(deltas: tuple[Estimate, Estimate], judged: int, level: float) -> bool:
    """A change is kept when its gain on the judged track has a lower bound > 0 and the other track's
    interval is not wholly below zero."""
    return deltas[judged].wins(level) and deltas[1 - judged].interval(level)[1] >= 0


def tune_weights(ensemble: EnsembleConfig, folders: list[TuneFolder], boot: Bootstrap, space: SearchSpace,
                 table: Tables) -> EnsembleConfig:
    """Member weights chosen on V: the best member alone, then coordinate steps on ``space.member_weights``
    and, with ``space.member_whitening``, per-member PCA-whitening switched on, each kept only when the mean
    of GAP and mAP@100 (plain kNN) wins. Members ending at weight 0 are dropped."""
    members = ensemble.members
    memo: dict[tuple, tuple[Estimate, Estimate, Estimate]] = {}
    whitenings: dict = {}  # each member's whitening fitted once per folder for the whole search

    def knn_top1(chosen: list, n: int, folder: TuneFolder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        run = folder.run
        feats = {split: joined_features(chosen, folder.vdir, split, ensemble.whiten_split,
                                        whitenings.setdefault(n, {}))[0] for split in ("test", "train", "index")}
        labels, conf = nearest_neighbour_labels(*run.search(feats["test"], "train", feats["train"], 1),
                                                run.train_labels)
        return labels, conf, run.search(feats["test"], "index", feats["index"], ensemble.k_index)[1]

    def evaluate(state: tuple):  # state: ((weight, whiten), ...) per member
        if state not in memo:
            chosen = [replace(m, weight=w, whiten=wh) for m, (w, wh) in zip(members, state) if w > 0]
            labels, conf, rows = zip(*(knn_top1(chosen, n, f) for n, f in enumerate(folders)))
            gap, mp = _pooled(folders, boot, list(labels), list(conf), list(rows))
            memo[state] = (gap, mp, (gap + mp).scale(0.5))
        return memo[state]

    def name(state: tuple) -> str:
        return ", ".join(f"{m.name}={w:g}" + (" whitened" if wh else "") for m, (w, wh) in zip(members, state)
                         if w > 0)

    def step(stage: str, current: tuple, candidates: list[tuple]) -> tuple:
        """Try ``candidates`` against ``current``; the one with the largest winning mean gain replaces it."""
        best, best_gain, best_row = current, 0.0, None
        base = evaluate(current)
        for state in candidates:
            gap, mp, mean = evaluate(state)
            gain = mean - base[2]
            row = table.add(stage, name(state), (gap, mp), (gap - base[0], mp - base[1]), "mean", gain)
            if gain.wins(space.level) and gain.value > best_gain:
                best, best_gain, best_row = state, gain.value, row
        if best_row is not None:
            best_row["kept"] = True
        return best

    alone = [tuple((float(i == j), False) for j in range(len(members))) for i in range(len(members))]
    for state in alone:
        gap, mp, _ = evaluate(state)
        table.add("member alone", name(state), (gap, mp), judged="mean")
    current = max(alone, key=lambda s: evaluate(s)[2].value)
    table.rows[alone.index(current)]["kept"] = True
    for round_ in range(space.weight_rounds):
        before = current
        for i in range(len(members)):
            candidates = [current[:i] + ((float(w), current[i][1]),) + current[i + 1:] for w in space.member_weights]
            candidates = [s for s in candidates if s != current and sum(w > 0 for w, _ in s) >= 2]
            current = step(f"weights, round {round_ + 1}", current, candidates)
        if current == before:
            break
    if space.member_whitening:
        for i, (w, whiten) in enumerate(current):
            if w > 0 and not whiten:
                current = step("per-member PCA-whitening", current, [current[:i] + ((w, True),) + current[i + 1:]])
    kept = [replace(m, weight=w, whiten=wh) for m, (w, wh) in zip(members, current) if w > 0]
    log.info("tuned weights: %s", name(current))
    return replace(ensemble, members=kept)


def score_recipe(cfg: PredictConfig, run: RunData, data_root, boot: Bootstrap) -> tuple[Estimate, Estimate]:
    """GAP and mAP@100 (with their bootstrap samples) of the last step of both chains of ``cfg``."""
    *_, (_, labels, scores) = recognition_steps(cfg, run, data_root)
    *_, (_, rows) = retrieval_steps(cfg, run, data_root, labels, scores)
    return boot.gap(labels, scores), boot.map_at_100(rows, run.index_ids, cfg.retrieval_k)


def score_folders(cfg: PredictConfig, folders: list[TuneFolder], boot: Bootstrap) -> tuple[Estimate, Estimate]:
    """:func:`score_recipe` on a pooled tuning set (:func:`pooled_bootstrap`)."""
    labels, scores, rows = [], [], []
    for folder in folders:
        *_, (_, lab, sc) = recognition_steps(cfg, folder.run, folder.root)
        *_, (_, ranked) = retrieval_steps(cfg, folder.run, folder.root, lab, sc)
        labels.append(lab)
        scores.append(sc)
        rows.append(ranked)
    return _pooled(folders, boot, labels, scores, rows, cfg.retrieval_k)


def tune_recipe(run: RunData, data_root, boot: Bootstrap, space: SearchSpace, table: Tables,
                base: PredictConfig | None = None,
                score: Callable[[PredictConfig], tuple[Estimate, Estimate]] | None = None) -> PredictConfig:
    """Coordinate search over ``space.options`` from ``base`` (default ``space.base``): per option, the
    candidate with the largest kept gain on its track replaces the current value. ``score``: how a recipe is
    scored (default :func:`score_recipe` on ``run``; a pooled set passes :func:`score_folders`)."""
    memo: dict[str, tuple[Estimate, Estimate]] = {}
    score = score or (lambda cfg: score_recipe(cfg, run, data_root, boot))

    def evaluate(cfg: PredictConfig) -> tuple[Estimate, Estimate]:
        key = repr(to_dict(cfg))
        if key not in memo:
            memo[key] = score(cfg)
        return memo[key]

    current = base or apply_overrides(PredictConfig(), space.base)
    start = "the given --recipe" if base is not None else _describe(space.base)
    table.add("recipe start", start, evaluate(current), kept=True)
    for round_ in range(space.rounds):
        changed = False
        for option in space.options:
            judged = TRACKS.index(option.track)
            best, best_gain, best_row = None, 0.0, None
            for value in option.values:
                candidate = apply_overrides(current, value)
                if candidate == current:
                    continue
                scores, base_scores = evaluate(candidate), evaluate(current)
                deltas = (scores[0] - base_scores[0], scores[1] - base_scores[1])
                row = table.add(f"{option.name}, round {round_ + 1}", _describe(value), scores, deltas,
                                ("GAP", "mAP@100")[judged], deltas[judged])
                log.info("%s %s: %s %s", option.name, row["candidate"], row["delta GAP"], row["delta mAP@100"])
                if _accept(deltas, judged, space.level) and deltas[judged].value > best_gain:
                    best, best_gain, best_row = candidate, deltas[judged].value, row
            if best is not None:
                current, changed, best_row["kept"] = best, True, True
        if not changed:
            break
    return current


@dataclass
class Tuned:
    """What :func:`tune` chose and where it wrote it."""

    ensemble: EnsembleConfig
    recipe: PredictConfig
    recipe_path: Path
    ensemble_path: Path
    tables: dict[str, Path]
    folders: list[TuneFolder] = field(default_factory=list)


def tune(ensemble: EnsembleConfig, tune_on, workdir, space: SearchSpace, base: PredictConfig | None = None
         ) -> Tuned:
    """Extract the labelled folder(s) ``tune_on`` (:func:`tune_folders`) with ``ensemble`` into
    ``workdir/tune``, tune the member weights and the stage-04 recipe on them (pooled), write
    ``workdir/tuned.yaml`` (a recipe for ``--recipe``), ``workdir/tuned-ensemble.yaml`` (for ``--ensemble``)
    and the tables under ``workdir/tuning/``."""
    workdir = Path(workdir)
    folders = tune_folders(tune_on, workdir)
    for folder in folders:
        prepare(folder, ensemble)
    boot = pooled_bootstrap(folders, space)
    weights_table = Tables(space.level)
    tuned_ensemble = ensemble
    if len(ensemble.members) > 1:
        tuned_ensemble = tune_weights(ensemble, folders, boot, space, weights_table)
        if tuned_ensemble != ensemble:
            for folder in folders:  # descriptors reused: concatenation and search only
                prepare(folder, tuned_ensemble)
    recipe_table = Tables(space.level)
    recipe = tune_recipe(folders[0].run, folders[0].root, boot, space, recipe_table, base,
                         score=lambda cfg: score_folders(cfg, folders, boot))
    tables = {}
    for name, table in (("weights", weights_table), ("recipe", recipe_table)):
        if table.rows:
            atomic_write_csv(table.frame(), workdir / "tuning" / f"{name}.csv")
            tables[name] = write_text(workdir / "tuning" / f"{name}.md", _header(folders, space) + table.markdown())
    recipe_path = save_recipe(recipe, workdir / "tuned.yaml")
    ensemble_path = save_recipe(tuned_ensemble, workdir / "tuned-ensemble.yaml")
    return Tuned(tuned_ensemble, recipe, recipe_path, ensemble_path, tables, folders)


def tune_ensemble_weights(ensemble: EnsembleConfig, tune_on, workdir, space: SearchSpace
                          ) -> tuple[EnsembleConfig, Path]:
    """Only the weight search of :func:`tune` (every member alone, then mixes) on ``tune_on``: how a set
    of candidate members compares; table in ``workdir/tuning/weights.md``."""
    folders = tune_folders(tune_on, workdir)
    for folder in folders:
        prepare(folder, ensemble)
    boot = pooled_bootstrap(folders, space)
    table = Tables(space.level)
    tuned = tune_weights(ensemble, folders, boot, space, table)
    atomic_write_csv(table.frame(), Path(workdir) / "tuning" / "weights.csv")
    return tuned, write_text(Path(workdir) / "tuning" / "weights.md", _header(folders, space) + table.markdown())


def main(argv: list[str] | None = None) -> None:
    """``python -m landmark_kit.tuning --tune-on V --workdir W --ensemble E``: the member-weight table alone."""
    import argparse

    from .ensemble import load_ensemble

    ap = argparse.ArgumentParser(description=tune_ensemble_weights.__doc__)
    ap.add_argument("--tune-on", required=True, nargs="+",
                    help="labelled folder(s): Kaggle layout, or photos (one folder per landmark, or <label>__<name>)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--ensemble", default="ensembles/zero-shot-candidates.yaml")
    ap.add_argument("--search", default="submissions/search.yaml", help="weights grid, resamples, seed")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    tuned, table = tune_ensemble_weights(load_ensemble(args.ensemble), args.tune_on, args.workdir,
                                         load_space(args.search))
    print(table.read_text())
    print("tuned:", ", ".join(f"{m.name}={m.weight:g}" for m in tuned.members))


if __name__ == "__main__":
    main()
