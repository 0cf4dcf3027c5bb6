#!/usr/bin/env python
"""Stage 05: score a submission against a solution (GAP / mAP@100, Public / Private / All), or validate one.

  python stages/05_score.py --solution S.csv --submission P.csv [--json]
  python stages/05_score.py --validate P.csv --data-root R      (test/index ids from the Kaggle folder)
  python stages/05_score.py --validate P.csv --solution S.csv   (test ids from the solution)
"""

from __future__ import annotations

import argparse
import json
import sys

from landmark_kit.data import DataError
from landmark_kit.scoring import format_report, score_files
from landmark_kit.submission import validate_against


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--solution", help="solution CSV (id,landmarks,Usage or id,images,Usage)")
    ap.add_argument("--submission", help="submission CSV to score")
    ap.add_argument("--validate", metavar="CSV", help="check a submission's format instead of scoring it")
    ap.add_argument("--data-root", help="Kaggle-layout folder whose test/index ids the submission must use")
    ap.add_argument("--train-csv", help="with --validate: also check labels exist in this train CSV")
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
        result = score_files(args.solution, args.submission)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
