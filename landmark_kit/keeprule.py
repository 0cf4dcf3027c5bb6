"""The keep rule measured by transfer: how often does a rule keep a step that hurts elsewhere, or reject one
that clearly helps?

A labelled photo folder is cut into two halves of different photos (per landmark the first half of its photos
and the rest, distractors alternating; :func:`landmark_kit.folders.plan_items`), each tuned every photo a query
(:mod:`landmark_kit.photofolder`). Every candidate of the search space is scored on both halves against the
space's starting recipe, one at a time, on its own track, with paired-bootstrap intervals. A rule decides on
one half; the other half is the truth: a *false keep* is a kept step whose gain there is below zero, a *false
rejection* a rejected step whose gain there has a 95% lower bound above zero. Both directions are counted.

    python -m landmark_kit.keeprule --folder ../shared/realdev --workdir runs/keeprule
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import pandas as pd

from .artifacts import atomic_write_csv, write_text
from .ensemble import EnsembleConfig, load_ensemble
from .folders import DISTRACTOR, collect, plan_items
from .intervals import Estimate
from .predict import PredictConfig
from .ledger import machine, markdown_table
from .tuning import (TRACKS, SearchSpace, apply_overrides, load_space, pooled_bootstrap, prepare, score_folders,
                     tune_folders)

log = logging.getLogger(__name__)
RULES = {"95% lower bound > 0": 0.95, "90% lower bound > 0": 0.90, "80% lower bound > 0": 0.80,
         "point estimate > 0": None}


def halves(src: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path]:
    """Two flat photo folders of links under ``out`` (``a``, ``b``) holding different photos of ``src``: per
    landmark its first half of photos and the rest, distractors alternating."""
    plan = plan_items(collect(src)).drop_duplicates("file")
    first = (plan["split"] == "train") | ((plan["landmark"] == "") & (plan["split"] == "test"))
    folders = (Path(out) / "a", Path(out) / "b")
    for folder, rows in zip(folders, (plan[first], plan[~first])):
        folder.mkdir(parents=True, exist_ok=True)
        for file, label in zip(rows["file"], rows["landmark"]):
            link = folder / f"{label or DISTRACTOR}__{file.replace('/', '_').split('__', 1)[-1]}"
            if not link.is_symlink():
                link.symlink_to((Path(src) / file).resolve())
    return folders


def candidate_deltas(ensemble: EnsembleConfig, folder: Path, workdir: Path, space: SearchSpace
                     ) -> dict[tuple[str, str], Estimate]:
    """Each search-space candidate's paired gain over the space's starting recipe on its own track, on
    ``folder`` tuned every photo a query; candidates that change nothing are left out."""
    folders = tune_folders([folder], workdir)
    prepare(folders[0], ensemble)
    boot = pooled_bootstrap(folders, space)
    base = apply_overrides(PredictConfig(), space.base)
    base_scores = score_folders(base, folders, boot)
    deltas = {}
    for option in space.options:
        for value in option.values:
            candidate = apply_overrides(base, value)
            if candidate != base:
                judged = TRACKS.index(option.track)
                scores = score_folders(candidate, folders, boot)
                deltas[(option.name, _name(value))] = scores[judged] - base_scores[judged]
    return deltas


def _name(value: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in value.items())


def _kept(delta: Estimate, level: float | None) -> bool:
    return delta.value > 0 if level is None else delta.wins(level)


def rule_table(a: dict, b: dict) -> pd.DataFrame:
    """False keeps and false rejections of each rule, deciding on one half and checked on the other (both
    directions), over the candidates scored on both."""
    rows = []
    for rule, level in RULES.items():
        keeps = false_keeps = false_rejections = 0
        for decide, truth in ((a, b), (b, a)):
            for key in decide.keys() & truth.keys():
                kept = _kept(decide[key], level)
                keeps += kept
                false_keeps += kept and truth[key].value < 0
                false_rejections += (not kept) and truth[key].wins(0.95)
        rows.append({"rule (decide on one half)": rule, "kept": keeps, "false keeps": false_keeps,
                     "false rejections": false_rejections, "errors": false_keeps + false_rejections})
    return pd.DataFrame(rows)


def _delta(est: Estimate) -> str:
    lo, hi = est.interval(0.95)
    return f"{est.value:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def measure(folder, workdir, ensemble: EnsembleConfig, space: SearchSpace) -> Path:
    """Both halves scored, the candidate and rule tables written to ``workdir/keeprule.{md,csv}``."""
    workdir = Path(workdir)
    a_dir, b_dir = halves(folder, workdir / "halves")
    a = candidate_deltas(ensemble, a_dir, workdir / "a", space)
    b = candidate_deltas(ensemble, b_dir, workdir / "b", space)
    rules = rule_table(a, b)
    candidates = pd.DataFrame([{"option": o, "candidate": c, "gain on half a": _delta(a[(o, c)]),
                                "gain on half b": _delta(b[(o, c)])} for o, c in a if (o, c) in b])
    atomic_write_csv(rules, workdir / "keeprule.csv")
    atomic_write_csv(candidates, workdir / "candidates.csv")
    header = (f"`{folder}` cut into two halves of different photos, each tuned every photo a query; every "
              f"candidate of the search space against its starting recipe, one at a time ({len(candidates)} "
              f"that change something), {space.resamples} paired-bootstrap resamples; a false keep is kept on "
              f"one half and below zero on the other, a false rejection rejected on one half with a 95% lower "
              f"bound above zero on the other (both directions); measured on {machine()}.\n\n")
    write_text(workdir / "candidates.md", header + markdown_table(candidates.to_dict("records")))
    return write_text(workdir / "keeprule.md", header + markdown_table(rules.to_dict("records")))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="labelled photo folder (either layout of from-folders)")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--ensemble", default="ensembles/zero-shot.yaml")
    ap.add_argument("--search", default="submissions/search.yaml")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    table = measure(args.folder, args.workdir, load_ensemble(args.ensemble), load_space(args.search))
    print(table.read_text())


if __name__ == "__main__":
    main()
