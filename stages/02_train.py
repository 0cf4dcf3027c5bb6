#!/usr/bin/env python
"""Stage 02: train a backbone with GeM + FC/BN neck + ArcFace / CosFace / sub-center ArcFace / softmax head,
or a triplet / GE2E embedding loss on N landmarks x M images batches (--head triplet|ge2e, --per-class M), or
the label-free U-Net reconstruction baseline (--head reconstruction; its pooled bottleneck is the descriptor).

  python stages/02_train.py --data-root runs/demo/synthetic --workdir runs/train/lite0 [--recipe R.yaml]
                            [--model tf_efficientnet_lite0 --epochs 5 --image-size 224 ...]
  torchrun --nproc-per-node 4 stages/02_train.py ... (DistributedDataParallel; gloo on CPU, nccl on CUDA)

Every field of the recipe is also a flag; flags override the recipe. Re-running the same command resumes
from the last checkpoint and ends with exactly the tensors of an uninterrupted run.
"""

from __future__ import annotations

import argparse
import logging
import sys

from landmark_kit.data import DataError, require_inputs
from landmark_kit.recipes import RecipeError, add_recipe_flags, flag_overrides, load_recipe
from landmark_kit.train import TrainConfig, train


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic", help="Kaggle-layout competition folder")
    ap.add_argument("--workdir", default="runs/train/default", help="run directory (resumed if it exists)")
    ap.add_argument("--recipe", help="YAML training recipe (fields of TrainConfig)")
    add_recipe_flags(ap, TrainConfig)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        cfg = load_recipe(TrainConfig, args.recipe, flag_overrides(args, TrainConfig))
        require_inputs(args.data_root, ("train",), cfg.train_csv)  # before the run folder is made
        path = train(cfg, args.data_root, args.workdir)
    except (RecipeError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
