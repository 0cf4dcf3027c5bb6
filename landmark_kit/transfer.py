"""Does a tuned recipe transfer? Tune on one labelled folder, apply to another, score there with intervals.

    python -m landmark_kit.transfer --tune-on V --apply-to R --workdir W [--ensemble E] [--search S]

Runs what ``stages/04_predict.py --tune-on V`` runs (tuning tables in ``W/tuning/``), then, on R: plain kNN of
every member alone (the best one per track is the yardstick, chosen on R itself, so the comparison is
strict), ``submissions/full.yaml`` (every step on) on the untuned ensemble, and the tuned ensemble + recipe.
Each row's GAP and mAP@100 on R get 95% paired-bootstrap intervals, and deltas over the best member and
over ``full.yaml``.
Writes ``W/transfer.md`` and ``W/transfer.csv`` and prints the table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from .artifacts import atomic_write_csv, write_text
from .ablation import member_rows
from .ensemble import load_ensemble, run_ensemble
from .intervals import Bootstrap, format_delta, format_interval
from .ledger import machine, markdown_table
from .predict import PredictConfig, load_run
from .recipes import load_recipe
from .submission import read_solution
from .tuning import load_space, score_recipe, tune

REPO = Path(__file__).resolve().parents[1]


def transfer(tune_root, apply_root, workdir, ensemble_path, search_path, full_recipe) -> pd.DataFrame:
    """Tune on ``tune_root``, then score members, ``full_recipe`` and the tuned choice on ``apply_root``."""
    workdir, apply_root = Path(workdir), Path(apply_root)
    ensemble = load_ensemble(ensemble_path)
    tuned = tune(ensemble, tune_root, workdir, load_space(search_path))
    target = workdir / "apply"
    run_ensemble(ensemble, apply_root, target)  # every member, untuned weights
    run = load_run(apply_root, target)
    boot = Bootstrap(read_solution(apply_root / "recognition_solution.csv"),
                     read_solution(apply_root / "retrieval_solution.csv"), run.test_ids)
    members = [(name, boot.gap(*labels_scores), boot.map_at_100(rows, run.index_ids))
               for name, labels_scores, rows in member_rows(run, 100)]
    best_gap = max(members, key=lambda m: m[1].value)
    best_map = max(members, key=lambda m: m[2].value)
    results = [(f"{name} alone, kNN", gap, mp) for name, gap, mp in members]
    full = load_recipe(PredictConfig, full_recipe)
    results.append((f"{Path(ensemble_path).stem} (all members, recipe weights) + {Path(full_recipe).name}",
                    *score_recipe(full, run, apply_root, boot)))
    run_ensemble(tuned.ensemble, apply_root, target)  # descriptors reused: concatenation and search only
    run = load_run(apply_root, target)
    kept = ", ".join(f"{m.name}={m.weight:g}" for m in tuned.ensemble.members)
    results.append((f"tuned on {Path(tune_root).name}: {kept} + tuned.yaml",
                    *score_recipe(tuned.recipe, run, apply_root, boot)))
    rows = []
    _, full_gap, full_map = results[-2]
    for name, gap, mp in results:
        rows.append({"method": name, "GAP": format_interval(gap),
                     f"delta GAP vs {best_gap[0]}": format_delta(gap - best_gap[1]),
                     "delta GAP vs full.yaml": format_delta(gap - full_gap), "mAP@100": format_interval(mp),
                     f"delta mAP@100 vs {best_map[0]}": format_delta(mp - best_map[2]),
                     "delta mAP@100 vs full.yaml": format_delta(mp - full_map)})
    frame = pd.DataFrame(rows)
    atomic_write_csv(frame, workdir / "transfer.csv")
    write_text(workdir / "transfer.md", f"Tuned on `{tune_root}`, scored on `{apply_root}` ({len(boot.queries)} "
                                        f"queries, 95% paired-bootstrap intervals); measured on {machine()}.\n\n"
                                        + markdown_table(rows))
    return frame


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tune-on", required=True, help="labelled Kaggle-layout folder to tune on")
    ap.add_argument("--apply-to", required=True, help="labelled Kaggle-layout folder to score the result on")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--ensemble", default=str(REPO / "ensembles" / "zero-shot.yaml"))
    ap.add_argument("--search", default=str(REPO / "submissions" / "search.yaml"))
    ap.add_argument("--full-recipe", default=str(REPO / "submissions" / "full.yaml"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    transfer(args.tune_on, args.apply_to, args.workdir, args.ensemble, args.search, args.full_recipe)
    print((Path(args.workdir) / "transfer.md").read_text())


if __name__ == "__main__":
    main()
