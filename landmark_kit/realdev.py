"""Turn a real-photo dev set (a flat folder named with ``--src``) into a Kaggle-layout competition folder: the
flat layout of :mod:`landmark_kit.folders` (``stages/00_data.py from-folders``) with its default split.

File names are ``<landmark>__<photo>.<ext>``; ``distractor`` means no landmark. The split follows the set's
README: per landmark the first half of its photos (sorted by name, at least one) are train and the rest test
queries; distractors alternate test / index; the index holds the train photos plus the index distractors;
ids are the first 16 hex chars of sha1(file name); Public / Private alternate by sorted id.

``--half second`` builds the complementary split from the same photos: per landmark the photos that were test
queries become the labelled train / index photos and the first-half photos become the queries; distractors
swap test and index. Tuning on one split and scoring on the other measures what transfers.

    python -m landmark_kit.realdev --src PHOTOS --out data/realdev [--half second]
"""

from __future__ import annotations

import argparse
import json

from .folders import HALVES, build, photo_id, plan_split

__all__ = ["build", "photo_id", "plan_split"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, help="folder of <landmark>__<photo> files")
    ap.add_argument("--out", default="data/realdev", help="Kaggle-layout output folder")
    ap.add_argument("--half", default="first", choices=HALVES, help="the README's split or its complement")
    args = ap.parse_args(argv)
    print(json.dumps(build(args.src, args.out, args.half)))


if __name__ == "__main__":
    main()
