#!/usr/bin/env python
"""Stage 03: extract descriptors for every ensemble member, concatenate them, search neighbours with faiss.

  python stages/03_ensemble.py --data-root R --workdir W --ensemble ensembles/imagenet-lite0.yaml

Outputs go to W (features/, neighbours/, ensemble.yaml); finished splits are skipped on a rerun, and
`--reuse-from W2` takes the descriptors of members already extracted in W2 (same member config and checkpoint).
Sharded: one process per rank (`torchrun --nproc-per-node 8 stages/03_ensemble.py ...`, a SLURM array with
--rank/--world-size, or RANK/WORLD_SIZE env vars) extracts every world_size-th image into part files; the
last rank to finish merges them, concatenates and searches.
"""

from __future__ import annotations

import argparse
import logging
import sys

from landmark_kit.data import DataError, require_inputs
from landmark_kit.ensemble import EnsembleConfig, load_ensemble, run_ensemble
from landmark_kit.recipes import RecipeError, add_recipe_flags, flag_overrides, launcher_rank


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--workdir", default="runs/ensemble/imagenet-lite0")
    ap.add_argument("--ensemble", default="ensembles/imagenet-lite0.yaml", help="ensemble recipe (YAML)")
    ap.add_argument("--train-csv", help="labelled train list (default <data-root>/train.csv)")
    ap.add_argument("--reuse-from", action="append", default=[], metavar="DIR",
                    help="another stage-03 workdir: identical members' descriptors are taken from it, not re-extracted")
    add_recipe_flags(ap, EnsembleConfig)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    overrides = launcher_rank(flag_overrides(args, EnsembleConfig))  # torchrun / SLURM / plain env vars
    try:
        cfg = load_ensemble(args.ensemble, overrides)
        require_inputs(args.data_root, ("train", "test"), args.train_csv)  # index/ is optional (recognition only)
        neighbours = run_ensemble(cfg, args.data_root, args.workdir, args.train_csv, args.reuse_from)
    except (RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not neighbours:
        print(f"rank {cfg.rank} of {cfg.world_size} done; waiting for the other ranks")
    for split, path in neighbours.items():
        print(f"test -> {split} neighbours: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
