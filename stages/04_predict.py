#!/usr/bin/env python
"""Stage 04: recognition and retrieval CSVs from a run directory's neighbours (running stage 03 if needed).

  python stages/04_predict.py --data-root R --workdir W --ensemble ensembles/imagenet-lite0.yaml [--name N]
                             [--recipe submissions/soft-vote.yaml] [--k 3 --suppress-over 30]
                             [--ablate [--solution-dir D]]

Writes submissions/<name>/recognition.csv and retrieval.csv (validated) and prints their paths as the last
two lines, so scripts can pick them up. ``--ablate`` also scores every step of the recipe against the solution
CSVs (``recognition_solution.csv``, ``retrieval_solution.csv`` in --solution-dir, default the data root) and
writes the tables to WORKDIR/ablation/<name>/{recognition,retrieval}.{md,csv}, printing them first.
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--workdir", default="runs/ensemble/imagenet-lite0")
    ap.add_argument("--ensemble", default="ensembles/imagenet-lite0.yaml",
                    help="recipe used to run stage 03 when the workdir has no neighbours yet")
    ap.add_argument("--name", help="submission name (default: the ensemble recipe's file name)")
    ap.add_argument("--out-root", default="submissions", help="submissions are written to OUT_ROOT/NAME/")
    ap.add_argument("--train-csv", help="labelled train list (default <data-root>/train.csv)")
    ap.add_argument("--recipe", help="post-processing recipe (submissions/*.yaml); default plain kNN top-1")
    ap.add_argument("--ablate", action="store_true", help="score every step of both chains (tables like seed 003)")
    ap.add_argument("--solution-dir", help="folder with the solution CSVs for --ablate (default --data-root)")
    add_recipe_flags(ap, PredictConfig)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if not neighbours_ready(args.workdir):
            run_ensemble(load_ensemble(args.ensemble), args.data_root, args.workdir, args.train_csv)
        cfg = load_recipe(PredictConfig, args.recipe, flag_overrides(args, PredictConfig))
        name = args.name or Path(args.ensemble).stem
        out = Path(args.out_root) / name
        if args.ablate:
            solutions = Path(args.solution_dir or args.data_root)
            tables = Path(args.workdir) / "ablation" / (Path(args.recipe).stem if args.recipe else "default")
            ablate(args.data_root, args.workdir, cfg, solutions / "recognition_solution.csv",
                   solutions / "retrieval_solution.csv", tables, args.train_csv, out)
            for track in ("recognition", "retrieval"):
                print(f"{track} ({tables / track}.md):\n{(tables / f'{track}.md').read_text()}")
            rec, ret = out / "recognition.csv", out / "retrieval.csv"
        else:
            rec, ret = predict(args.data_root, args.workdir, out, args.train_csv, cfg)
    except (RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(rec)
    print(ret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
