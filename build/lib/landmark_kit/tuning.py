"""Validation-driven choice of ensemble weights and stage-04 steps (``stages/04_predict.py --tune-on V``).

Winners keep a step only when it wins on a local validation set that mirrors the test (design.md,
"Choosing steps"). Given a labelled Kaggle-layout folder V, :func:`tune` extracts V with the ensemble, then

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from .artifacts import write_text
from .data import atomic_write_csv
from .ensemble import EnsembleConfig, joined_features, run_ensemble
from .intervals import Bootstrap, Estimate
from .predict import PredictConfig, RunData, check_config, load_run, recognition_steps, retrieval_steps
from .readme import machine, markdown_table
from .recipes import RecipeError, from_dict, load_recipe, save_recipe, to_dict
from .recognition import nearest_neighbour_labels
from .search import knn
from .submission import read_solution

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


def _interval(est: Estimate, level: float) -> str:
    lo, hi = est.interval(level)
    return f"{est.value:.4f} [{lo:.4f}, {hi:.4f}]"


def _delta(est: Estimate, level: float) -> str:
    lo, hi = est.interval(level)
    return f"{est.value:+.4f} [{lo:+.4f}, {hi:+.4f}]"


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
        row = {"stage": stage, "candidate": candidate, "judged on": judged, "GAP": _interval(gap, self.level),
               "mAP@100": _interval(mp, self.level),
               "delta GAP": _delta(deltas[0], self.level) if deltas else "",
               "delta mAP@100": _delta(deltas[1], self.level) if deltas else "",
               "gain": _delta(gain, self.level) if gain is not None else "", "kept": kept}
        self.rows.append(row)
        return row

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)

    def markdown(self) -> str:
        return markdown_table([dict(row, kept="**yes**" if row["kept"] else "") for row in self.rows])


def _header(tune_root, space: SearchSpace) -> str:
    return (f"On `{tune_root}`, {space.resamples} paired-bootstrap resamples (seed {space.seed}), "
            f"{space.level:.0%} intervals; measured on {machine()}.\n\n")


def _accept(deltas: tuple[Estimate, Estimate], judged: int, level: float) -> bool:
    """A change is kept when its gain on the judged track has a lower bound > 0 and the other track's
    interval is not wholly below zero."""
    return deltas[judged].wins(level) and deltas[1 - judged].interval(level)[1] >= 0


def tune_weights(ensemble: EnsembleConfig, workdir: Path, run: RunData, boot: Bootstrap, space: SearchSpace,
                 table: Tables) -> EnsembleConfig:
    """Member weights chosen on V: the best member alone, then coordinate steps on ``space.member_weights``
    and, with ``space.member_whitening``, per-member PCA-whitening switched on, each kept only when the mean
    of GAP and mAP@100 (plain kNN) wins. Members ending at weight 0 are dropped."""
    members = ensemble.members
    memo: dict[tuple, tuple[Estimate, Estimate, Estimate]] = {}
    whitenings: dict = {}  # each member's whitening fitted once for the whole search

    def evaluate(state: tuple):  # state: ((weight, whiten), ...) per member
        if state not in memo:
            chosen = [replace(m, weight=w, whiten=wh) for m, (w, wh) in zip(members, state) if w > 0]
            feats = {split: joined_features(chosen, workdir, split, ensemble.whiten_split, whitenings)[0]
                     for split in ("test", "train", "index")}
            scores, rows = knn(feats["test"], feats["train"], 1)
            labels, conf = nearest_neighbour_labels(scores, rows, run.train_labels)
            _, index_rows = knn(feats["test"], feats["index"], min(ensemble.k_index, len(feats["index"])))
            gap, mp = boot.gap(labels, conf), boot.map_at_100(index_rows, run.index_ids)
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


def tune_recipe(run: RunData, data_root, boot: Bootstrap, space: SearchSpace, table: Tables,
                base: PredictConfig | None = None) -> PredictConfig:
    """Coordinate search over ``space.options`` from ``base`` (default ``space.base``): per option, the
    candidate with the largest kept gain on its track replaces the current value."""
    memo: dict[str, tuple[Estimate, Estimate]] = {}

    def evaluate(cfg: PredictConfig) -> tuple[Estimate, Estimate]:
        key = repr(to_dict(cfg))
        if key not in memo:
            memo[key] = score_recipe(cfg, run, data_root, boot)
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


def tune(ensemble: EnsembleConfig, tune_root, workdir, space: SearchSpace, base: PredictConfig | None = None
         ) -> Tuned:
    """Extract the labelled folder ``tune_root`` into ``workdir/tune`` with ``ensemble``, tune the member
    weights and the stage-04 recipe on it, write ``workdir/tuned.yaml`` (a recipe for ``--recipe``),
    ``workdir/tuned-ensemble.yaml`` (for ``--ensemble``) and the tables under ``workdir/tuning/``."""
    tune_root, workdir = Path(tune_root), Path(workdir)
    for name in ("recognition_solution.csv", "retrieval_solution.csv", "train.csv"):
        if not (tune_root / name).is_file():
            raise FileNotFoundError(f"--tune-on {tune_root}: no {name}; a labelled Kaggle-layout folder is needed")
    vdir = workdir / "tune"
    run_ensemble(ensemble, tune_root, vdir)
    run = load_run(tune_root, vdir)
    boot = Bootstrap(read_solution(tune_root / "recognition_solution.csv"),
                     read_solution(tune_root / "retrieval_solution.csv"), run.test_ids, space.resamples, space.seed)
    out = workdir / "tuning"
    weights_table = Tables(space.level)
    if len(ensemble.members) > 1:
        tuned_ensemble = tune_weights(ensemble, vdir, run, boot, space, weights_table)
        if tuned_ensemble != ensemble:
            run_ensemble(tuned_ensemble, tune_root, vdir)  # descriptors reused: concatenation and search only
            run = load_run(tune_root, vdir)
    else:
        tuned_ensemble = ensemble
    recipe_table = Tables(space.level)
    recipe = tune_recipe(run, tune_root, boot, space, recipe_table, base)
    tables = {}
    for name, table in (("weights", weights_table), ("recipe", recipe_table)):
        if table.rows:
            atomic_write_csv(table.frame(), out / f"{name}.csv")
            tables[name] = write_text(out / f"{name}.md", _header(tune_root, space) + table.markdown())
    recipe_path = save_recipe(recipe, workdir / "tuned.yaml")
    ensemble_path = save_recipe(tuned_ensemble, workdir / "tuned-ensemble.yaml")
    return Tuned(tuned_ensemble, recipe, recipe_path, ensemble_path, tables)


def tune_ensemble_weights(ensemble: EnsembleConfig, tune_root, workdir, space: SearchSpace) -> tuple[EnsembleConfig, Path]:
    """Only the weight search of :func:`tune` (every member alone, then mixes) on ``tune_root``: how a set
    of candidate members compares; table in ``workdir/tuning/weights.md``."""
    vdir = Path(workdir) / "tune"
    run_ensemble(ensemble, tune_root, vdir)
    run = load_run(tune_root, vdir)
    boot = Bootstrap(read_solution(Path(tune_root) / "recognition_solution.csv"),
                     read_solution(Path(tune_root) / "retrieval_solution.csv"), run.test_ids, space.resamples,
                     space.seed)
    table = Tables(space.level)
    tuned = tune_weights(ensemble, vdir, run, boot, space, table)
    atomic_write_csv(table.frame(), Path(workdir) / "tuning" / "weights.csv")
    return tuned, write_text(Path(workdir) / "tuning" / "weights.md", _header(tune_root, space) + table.markdown())


def main(argv: list[str] | None = None) -> None:
    """``python -m landmark_kit.tuning --tune-on V --workdir W --ensemble E``: the member-weight table alone."""
    import argparse

    from .ensemble import load_ensemble

    ap = argparse.ArgumentParser(description=tune_ensemble_weights.__doc__)
    ap.add_argument("--tune-on", required=True, help="labelled Kaggle-layout folder")
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
