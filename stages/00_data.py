#!/usr/bin/env python
"""Stage 00: data in. ``from-folders``: any labelled photo folder as a Kaggle-layout competition;
``kaggle``: a Kaggle competition's files through the kaggle CLI, unzipped and checked.

  python stages/00_data.py from-folders SRC --out DIR [--seed S] [--half second]
  python stages/00_data.py kaggle landmark-recognition-2021 --out DIR

SRC holds one folder per landmark (folder name = label) plus an optional distractors/ folder, or flat files
named <label>__<name> with `distractor` as the non-landmark label (as ../shared/realdev). DIR gets train/,
test/, index/ (a/b/c/<id>.jpg), train.csv, both solution CSVs (Public / Private, Ignored rows for
non-landmark retrieval queries), sample submissions and ground_truth.csv; the split rule is in
landmark_kit/folders.py. Downloading GLDv2 shards (issue 14) is not built yet.
"""

from __future__ import annotations

import argparse
import json
import sys

from landmark_kit.data import DataError
from landmark_kit.folders import HALVES, build
from landmark_kit.kaggle import download_competition


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    f = sub.add_parser("from-folders", help="a labelled photo folder as a Kaggle-layout competition")
    f.add_argument("src", help="one folder per landmark (+ distractors/), or flat <label>__<name> files")
    f.add_argument("--out", required=True, help="the competition folder to write")
    f.add_argument("--seed", type=int, help="shuffle each landmark's photos before the first-half rule "
                                           "(default: sorted by path)")
    f.add_argument("--half", default="first", choices=HALVES, help="the split or its complement (halves swapped)")
    k = sub.add_parser("kaggle", help="download a competition with the kaggle CLI into a Kaggle-layout folder")
    k.add_argument("competition", help="competition slug, e.g. landmark-recognition-2021")
    k.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        if args.command == "kaggle":
            summary = download_competition(args.competition, args.out)
        else:
            summary = build(args.src, args.out, args.half, args.seed)
    except (DataError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
