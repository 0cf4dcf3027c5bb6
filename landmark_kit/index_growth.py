"""mAP@100 as the retrieval index grows with distractors (as in the GE2E / ArcFace landmark-retrieval study), on a synthetic competition.

Every index positive stays; the index distractors (known from ``ground_truth.csv``) are added in growing,
nested random subsets, and each subset is searched and scored exactly like a submission. Writes
``index_growth.csv``, ``index_growth.md`` and ``index_growth.png`` into the run directory.

    python -m landmark_kit.index_growth --data-root runs/growth/synthetic --workdir runs/growth/zs \\
        [--ensemble ensembles/calibration-lite0.yaml --steps 6]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import atomic_write_csv, write_text
from .ensemble import load_ensemble, load_features, run_ensemble
from .ledger import machine
from .metrics import retrieval_metrics
from .search import knn
from .submission import read_solution


def map_vs_index_size(data_root: str | os.PathLike, workdir: str | os.PathLike, steps: int = 6,
                      seed: int = 0) -> pd.DataFrame:
    """One row per index size: distractors added, index size, mAP@100 and P@1 over all scored queries."""
    feats = Path(workdir) / "features" / "ensemble"
    test, test_ids = load_features(feats, "test", mmap=False)
    index, index_ids = load_features(feats, "index", mmap=False)
    truth = pd.read_csv(Path(data_root) / "ground_truth.csv", dtype={"id": str}).set_index("id")
    distractor = truth.loc[index_ids, "distractor"].to_numpy(bool)
    positives = np.flatnonzero(~distractor)
    pool = np.random.default_rng(seed).permutation(np.flatnonzero(distractor))
    solution = read_solution(Path(data_root) / "retrieval_solution.csv").all
    scored = np.array([q in solution for q in test_ids])  # non-landmark queries are not scored
    test, test_ids = test[scored], [q for q, s in zip(test_ids, scored) if s]
    rows = []
    for n in np.unique(np.linspace(0, len(pool), steps).round().astype(int)):
        subset = np.concatenate([positives, pool[:n]])
        _, nbrs = knn(test, index[subset], min(100, len(subset)))
        predictions = {q: [index_ids[subset[j]] for j in row if j >= 0] for q, row in zip(test_ids, nbrs)}
        scores = retrieval_metrics(predictions, solution)
        rows.append({"distractors": int(n), "index_size": len(subset), "mAP@100": scores["mAP@100"],
                     "P@1": scores["precision@k"][0]})
    return pd.DataFrame(rows)


def write_report(table: pd.DataFrame, out: Path, title: str, intro: str = "") -> None:
    """The table as CSV and markdown (after ``intro``: what made it), and the curve as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    atomic_write_csv(table, out / "index_growth.csv")
    lines = [intro, ""] if intro else []
    lines += ["| distractors | index size | mAP@100 | P@1 |", "|---|---|---|---|"]
    lines += [f"| {r.distractors} | {r.index_size} | {r._3:.4f} | {r._4:.3f} |" for r in table.itertuples()]
    write_text(out / "index_growth.md", "\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(table["index_size"], table["mAP@100"], marker="o", label="mAP@100")
    ax.plot(table["index_size"], table["P@1"], marker="s", label="P@1")
    ax.set_xlabel("index size (positives + distractors)")
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "index_growth.png", dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--workdir", default="runs/index-growth")
    ap.add_argument("--ensemble", default="ensembles/calibration-lite0.yaml")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    workdir = Path(args.workdir)
    run_ensemble(load_ensemble(args.ensemble), args.data_root, workdir)
    table = map_vs_index_size(args.data_root, workdir, args.steps, args.seed)
    command = (f"python -m landmark_kit.index_growth --data-root {args.data_root} --workdir {args.workdir} "
               f"--ensemble {args.ensemble}")
    write_report(table, workdir, f"{Path(args.ensemble).stem} on {Path(args.data_root).name}",
                 f"`{command}` on {machine()}:")
    print((workdir / "index_growth.md").read_text(), end="")


if __name__ == "__main__":
    main()
