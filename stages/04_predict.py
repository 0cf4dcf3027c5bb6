#!/usr/bin/env python
"""Stage 04: recognition and retrieval CSVs from a run directory's neighbours (running stage 03 if needed).

  python stages/04_predict.py --data-root R --workdir W [--ensemble ensembles/zero-shot.yaml] [--name N]
                             [--recipe submissions/soft-vote.yaml] [--k 3 --suppress-fraction 0.01]
                             [--tune-on V [V2 ...] [--search submissions/search.yaml]] [--ablate [--solution-dir D]]

Writes WORKDIR/submissions/<name>/recognition.csv and retrieval.csv (validated) and prints their paths as the
last two lines, so scripts can pick them up. Neighbours are keyed by the ensemble they were searched for:
without --ensemble the one that made the workdir is used; another ensemble (other members, weights, search
settings) gets its members' descriptors extracted where missing and the concatenation and search redone.
``--ablate`` also scores every step of the recipe against the solution CSVs (``recognition_solution.csv``,
``retrieval_solution.csv`` in --solution-dir, default the data root) and writes the tables to
WORKDIR/ablation/<name>/{recognition,retrieval}.{md,csv}, printing them first.

``--tune-on V`` (a labelled photo folder: one folder per landmark plus distractors/, or flat
<label>__<name> files, tuned every photo a query, each photo's own image left out; or a labelled Kaggle-layout
folder: train/ test/ index/ train.csv and both solution CSVs) extracts V with the ensemble into WORKDIR/tune,
chooses member weights and the post-processing recipe on V (paired bootstrap, a change kept only when its 95%
lower bound is above zero; tables in WORKDIR/tuning/), writes WORKDIR/tuned.yaml and
WORKDIR/tuned-ensemble.yaml, then predicts --data-root with them. Several folders (``--tune-on V1 V2``) are
pooled, the bootstrap resampling each folder's queries. A --recipe given with it is the search's starting
point. V = --data-root is warned about (optimistic tables) and its descriptors are extracted once. Solutions
under --data-root are never read (only --ablate reads solutions, from --solution-dir).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from landmark_kit.ablation import ablate
from landmark_kit.data import DataError, require_inputs
from landmark_kit.ensemble import load_ensemble, neighbours_ready, run_ensemble
from landmark_kit.predict import PredictConfig, predict
from landmark_kit.recipes import RecipeError, add_recipe_flags, flag_overrides, load_recipe
from landmark_kit.tuning import load_space, tune

DEFAULT_ENSEMBLE = "ensembles/zero-shot.yaml"
log = logging.getLogger("stage04")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--workdir", default="runs/ensemble/zero-shot")
    ap.add_argument("--ensemble", help=f"ensemble recipe for stage 03 (and --tune-on); default: the one that made "
                                       f"--workdir (its ensemble.yaml), else {DEFAULT_ENSEMBLE}")
    ap.add_argument("--name", help="submission name (default: the ensemble recipe's file name)")
    ap.add_argument("--out-root", help="submissions are written to OUT_ROOT/NAME/ (default WORKDIR/submissions)")
    ap.add_argument("--train-csv", help="labelled train list (default <data-root>/train.csv)")
    ap.add_argument("--recipe", help="post-processing recipe (submissions/*.yaml); default plain kNN top-1")
    ap.add_argument("--ablate", action="store_true", help="score every step of both chains (tables like smlyaka 2019)")
    ap.add_argument("--solution-dir", help="folder with the solution CSVs for --ablate (default --data-root)")
    ap.add_argument("--tune-on", nargs="+", help="labelled folder(s) to choose weights and recipe on: photos (one "
                                                 "folder per landmark, or <label>__<name> files) or Kaggle layout")
    ap.add_argument("--search", default="submissions/search.yaml", help="the recipe space searched by --tune-on")
    add_recipe_flags(ap, PredictConfig)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    workdir = Path(args.workdir)
    try:
        require_inputs(args.data_root, ("train", "test"), args.train_csv)  # no index/: recognition only
        overrides = flag_overrides(args, PredictConfig)
        own = workdir / "ensemble.yaml"
        recipe = args.ensemble or (own if own.is_file() else DEFAULT_ENSEMBLE)
        ensemble = load_ensemble(recipe)
        if args.tune_on:
            same = [Path(v).resolve() == Path(args.data_root).resolve() for v in args.tune_on]
            if any(same):
                log.warning("--tune-on is --data-root: the tuning tables then score the data being predicted, so "
                            "their figures are optimistic; tune on a folder of other photos for honest ones")
            base = load_recipe(PredictConfig, args.recipe, overrides) if args.recipe or overrides else None
            tuned = tune(ensemble, args.tune_on, workdir, load_space(args.search), base)
            for table in tuned.tables.values():
                print(f"{table}:\n{table.read_text()}")
            print(f"tuned recipe: {tuned.recipe_path}\ntuned ensemble: {tuned.ensemble_path}")
            reuse = [f.vdir for f, s in zip(tuned.folders, same) if s and not f.every_photo]
            run_ensemble(tuned.ensemble, args.data_root, workdir, args.train_csv,
                         reuse_from=reuse)  # same images: descriptors taken, not redone
            cfg = tuned.recipe
        else:
            if not neighbours_ready(ensemble, workdir):
                run_ensemble(ensemble, args.data_root, workdir, args.train_csv)
            cfg = load_recipe(PredictConfig, args.recipe, overrides)
        name = args.name or Path(recipe).stem + ("-tuned" if args.tune_on else "")
        out = Path(args.out_root or workdir / "submissions") / name
        if args.ablate:
            solutions = Path(args.solution_dir or args.data_root)
            recipe_name = "tuned" if args.tune_on else Path(args.recipe).stem if args.recipe else "default"
            tables = workdir / "ablation" / recipe_name
            ablate(args.data_root, workdir, cfg, solutions / "recognition_solution.csv",
                   solutions / "retrieval_solution.csv", tables, args.train_csv, out)
            for track in ("recognition", "retrieval"):
                print(f"{track} ({tables / track}.md):\n{(tables / f'{track}.md').read_text()}")
            rec, ret = out / "recognition.csv", out / "retrieval.csv"
        else:
            rec, ret = predict(args.data_root, workdir, out, args.train_csv, cfg)
    except (RecipeError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(rec)
    print(ret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
