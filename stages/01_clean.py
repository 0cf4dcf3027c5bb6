#!/usr/bin/env python
"""Stage 01: automated label cleaning (global kNN -> local features + RANSAC -> verified-neighbour vote).

  python stages/01_clean.py --data-root runs/demo/synthetic --recipe cleaning/synthetic.yaml [--name synthetic]

Writes runs/cleaning/<name>/train_clean.csv (train.csv format) and a report (per-label counts, inlier
histogram, removed samples, report.json). Scale-out: run one process per rank with --rank/--world-size
(e.g. a SLURM array: --rank $SLURM_ARRAY_TASK_ID --world-size $SLURM_ARRAY_TASK_COUNT); each writes its own
resumable pair file, and the last one to finish merges.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from landmark_kit.cleaning import CleanConfig, clean
from landmark_kit.data import DataError, require_inputs
from landmark_kit.recipes import RecipeError, add_recipe_flags, flag_overrides, launcher_rank, load_recipe


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--recipe", default="cleaning/synthetic.yaml")
    ap.add_argument("--name", help="output name (default: the recipe's file name)")
    ap.add_argument("--out-root", default="runs/cleaning", help="outputs go to OUT_ROOT/NAME/")
    ap.add_argument("--workdir", help="intermediates (default OUT_ROOT/NAME/work)")
    ap.add_argument("--train-csv", help="labelled train list (default <data-root>/train.csv)")
    add_recipe_flags(ap, CleanConfig)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    overrides = launcher_rank(flag_overrides(args, CleanConfig))  # torchrun / SLURM / plain env vars
    try:
        require_inputs(args.data_root, ("train",), args.train_csv)
        cfg = load_recipe(CleanConfig, args.recipe, overrides)
        out = Path(args.out_root) / (args.name or Path(args.recipe).stem)
        report = clean(cfg, args.data_root, out, args.workdir, args.train_csv)
    except (RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
