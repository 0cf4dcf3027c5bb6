#!/usr/bin/env python
"""Stage 05: score a submission against a solution (GAP / mAP@100, Public / Private / All), or validate one.

  python stages/05_score.py --solution S.csv --submission P.csv [--json] [--data-root R]
                                                     (retrieval: index ids must be in R/index)
  python stages/05_score.py --validate P.csv --data-root R      (test/index ids from the Kaggle folder)
  python stages/05_score.py --validate P.csv --solution S.csv   (test ids from the solution)
  python stages/05_score.py --solution gnd_roxford5k.pkl --submission ranks.csv [--json] [--distractors LIST]
                                 (Revisited Oxford / Paris: mAP, mP@1/5/10 for Easy / Medium / Hard;
                                  ground truth .pkl or .mat, ranks.csv = id,images with database names)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from landmark_kit import revisited_metric
from landmark_kit.data import DataError, scan_split
from landmark_kit.scoring import format_report, score_files
from landmark_kit.submission import RETRIEVAL, detect_track, validate_against


def score_revisited(solution: str, submission: str, as_json: bool, distractors: str | None = None) -> str:
    """Revisited Oxford / Paris: the ground truth's three protocols, JSON fractions or a percent table;
    ``distractors`` lists the +1M images the ranks may name."""
    gt = revisited_metric.read_ground_truth(solution)
    if distractors:
        gt = revisited_metric.with_distractors(gt, revisited_metric.read_distractors(distractors), distractors)
    scores = revisited_metric.evaluate(gt, revisited_metric.read_ranks(submission, gt))
    if as_json:
        return json.dumps({p: {k: None if math.isnan(v) else v for k, v in row.items()} for p, row in scores.items()},
                          indent=2)
    return revisited_metric.format_report(scores, f"{Path(solution).name}: {submission}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solution", help="solution CSV (id,landmarks,Usage or id,images,Usage), or a Revisited "
                    "Oxford / Paris ground truth gnd_*.pkl / gnd_*.mat")
    ap.add_argument("--submission", help="submission CSV to score")
    ap.add_argument("--validate", metavar="CSV", help="check a submission's format instead of scoring it")
    ap.add_argument("--data-root", help="Kaggle-layout folder whose test/index ids the submission must use")
    ap.add_argument("--train-csv", help="with --validate: also check labels exist in this train CSV")
    ap.add_argument("--distractors", metavar="LIST", help="Revisited +1M: the distractor list (revisitop1m.txt) "
                    "whose names the ranks may hold")
    ap.add_argument("--json", action="store_true", help="print machine-readable JSON")
    args = ap.parse_args(argv)
    try:
        if args.validate:
            errors = validate_against(args.validate, args.data_root, args.solution, args.train_csv)
            if args.json:
                print(json.dumps({"valid": not errors, "errors": errors}, indent=2))
            else:
                print("\n".join(errors) if errors else f"{args.validate}: valid")
            return 1 if errors else 0
        if not (args.solution and args.submission):
            ap.error("give --solution and --submission (or --validate)")
        if Path(args.solution).suffix.lower() in (".pkl", ".mat"):
            print(score_revisited(args.solution, args.submission, args.json, args.distractors))
            return 0
        retrieval = args.data_root and detect_track(args.submission) == RETRIEVAL
        result = score_files(args.solution, args.submission, scan_split(args.data_root, "index") if retrieval else None)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
