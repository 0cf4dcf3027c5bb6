#!/usr/bin/env python
"""Stage 04: recognition and retrieval CSVs from a run directory's neighbours (running stage 03 if needed).

  python stages/04_predict.py --data-root R --workdir W [--ensemble ensembles/zero-shot.yaml] [--name N]
                             [--recipe submissions/soft-vote.yaml] [--k 3 --suppress-fraction 0.01]
                             [--tune-on V [--search submissions/search.yaml]] [--ablate [--solution-dir D]]

Writes submissions/<name>/recognition.csv and retrieval.csv (validated) and prints their paths as the last
two lines, so scripts can pick them up. ``--ablate`` also scores every step of the recipe against the solution
CSVs (``recognition_solution.csv``, ``retrieval_solution.csv`` in --solution-dir, default the data root) and
writes the tables to WORKDIR/ablation/<name>/{recognition,retrieval}.{md,csv}, printing them first.

``--tune-on V`` (a labelled Kaggle-layout folder: train/ test/ index/ train.csv and both solution CSVs)
extracts V with the ensemble into WORKDIR/tune, chooses member weights and the post-processing recipe on V
(paired bootstrap, a change kept only when its 95% lower bound is above zero; tables in WORKDIR/tuning/),
writes WORKDIR/tuned.yaml and WORKDIR/tuned-ensemble.yaml, then predicts --data-root with them. A --recipe
given with it is the search's starting point. Solutions under --data-root are never read (only --ablate
reads solutions, from --solution-dir).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from landmark_kit.ablation import ablate
from landmark_kit.data import DataError
from landmark_kit.ensemble import load_ensemble, run_ensemble
from landmark_kit.predict import PredictConfig, neighbours_ready, predict
from landmark_kit.recipes import RecipeError, add_recipe_flags, flag_overrides, load_recipe
from landmark_kit.tuning import load_space, tune


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--workdir", default="runs/ensemble/zero-shot")
    ap.add_argument("--ensemble", default="ensembles/zero-shot.yaml",
                    help="recipe used to run stage 03 when the workdir has no neighbours yet (and with --tune-on)")
    ap.add_argument("--name", help="submission name (default: the ensemble recipe's file name)")
    ap.add_argument("--out-root", default="submissions", help="submissions are written to OUT_ROOT/NAME/")
    ap.add_argument("--train-csv", help="labelled train list (default <data-root>/train.csv)")
    ap.add_argument("--recipe", help="post-processing recipe (submissions/*.yaml); default plain kNN top-1")
    ap.add_argument("--ablate", action="store_true", help="score every step of both chains (tables like seed 003)")
    ap.add_argument("--solution-dir", help="folder with the solution CSVs for --ablate (default --data-root)")
    ap.add_argument("--tune-on", help="labelled Kaggle-layout folder to choose weights and recipe on")
    ap.add_argument("--search", default="submissions/search.yaml", help="the recipe space searched by --tune-on")
    add_recipe_flags(ap, PredictConfig)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        overrides = flag_overrides(args, PredictConfig)
        if args.tune_on:
            base = load_recipe(PredictConfig, args.recipe, overrides) if args.recipe or overrides else None
            tuned = tune(load_ensemble(args.ensemble), args.tune_on, args.workdir, load_space(args.search), base)
            for table in tuned.tables.values():
                print(f"{table}:\n{table.read_text()}")
            print(f"tuned recipe: {tuned.recipe_path}\ntuned ensemble: {tuned.ensemble_path}")
            run_ensemble(tuned.ensemble, args.data_root, args.workdir, args.train_csv)
            cfg = tuned.recipe
        else:
            if not neighbours_ready(args.workdir):
                run_ensemble(load_ensemble(args.ensemble), args.data_root, args.workdir, args.train_csv)
            cfg = load_recipe(PredictConfig, args.recipe, overrides)
        name = args.name or Path(args.ensemble).stem + ("-tuned" if args.tune_on else "")
        out = Path(args.out_root) / name
        if args.ablate:
            solutions = Path(args.solution_dir or args.data_root)
            recipe_name = "tuned" if args.tune_on else Path(args.recipe).stem if args.recipe else "default"
            tables = Path(args.workdir) / "ablation" / recipe_name
            ablate(args.data_root, args.workdir, cfg, solutions / "recognition_solution.csv",
                   solutions / "retrieval_solution.csv", tables, args.train_csv, out)
            for track in ("recognition", "retrieval"):
                print(f"{track} ({tables / track}.md):\n{(tables / f'{track}.md').read_text()}")
            rec, ret = out / "recognition.csv", out / "retrieval.csv"
        else:
            rec, ret = predict(args.data_root, args.workdir, out, args.train_csv, cfg)
    except (RecipeError, DataError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(rec)
    print(ret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
