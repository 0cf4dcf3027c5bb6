"""The demo job: synthetic competition -> baseline submissions -> scores, printed as one table.

    python -m landmark_kit.demo [--workdir runs/demo] [--landmarks 40 --seed 0]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from .baselines import run_histogram_baseline
from .scoring import format_report, score_files
from .synthetic import SyntheticConfig, generate


def ensure_synthetic(root: Path, cfg: SyntheticConfig) -> None:
    """Generate the competition unless ``root`` already holds one made with the same config."""
    meta = root / "synthetic.json"
    if meta.is_file() and json.loads(meta.read_text()).get("config") == json.loads(json.dumps(asdict(cfg))):
        print(f"synthetic competition already in {root}")
        return
    summary = generate(root, cfg)
    print(f"generated {summary['images']} images of {summary['landmarks']} landmarks in {summary['seconds']} s")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="runs/demo")
    ap.add_argument("--landmarks", type=int, default=SyntheticConfig.landmarks)
    ap.add_argument("--seed", type=int, default=SyntheticConfig.seed)
    args = ap.parse_args(argv)
    work = Path(args.workdir)
    data = work / "synthetic"
    ensure_synthetic(data, SyntheticConfig(landmarks=args.landmarks, seed=args.seed))
    rec, ret = run_histogram_baseline(data, work / "submissions" / "histogram-knn")
    print()
    print("baseline: nearest neighbour on colour histograms (no learning)")
    for solution, sub in ((data / "recognition_solution.csv", rec), (data / "retrieval_solution.csv", ret)):
        print(format_report(score_files(solution, sub)))
        print()


if __name__ == "__main__":
    main()
