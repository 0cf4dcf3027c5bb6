"""Will smlyaka 2019's six-member ensemble fit a Kaggle kernel? ``kaggle estimate`` for the 2019 / 2020 / 2021
competition sizes from one rates file, as the tables in kernels/README.md and docs/kaggle.md.

    python benchmarks/kaggle_estimates.py [--rates benchmarks/results/rates-smlyaka2019-shape-2core.yaml]
    python benchmarks/kaggle_estimates.py --ensemble ensembles/zero-shot.yaml --dim 0 \
        --rates benchmarks/results/rates-zero-shot-2core.yaml --name kaggle-estimates-zero-shot

The rates file is a run file: ``python -m landmark_kit.kaggle estimate ... --save-rates`` wrote it on the
machine it names (measure again there, or on a GPU box, and point ``--rates`` at the new file). Writes
``benchmarks/results/<name>.md`` (every step) and ``<name>-summary.md`` (one row a case).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from landmark_kit.artifacts import write_text
from landmark_kit.ensemble import load_ensemble
from landmark_kit.estimate import ensemble_dim, estimate, load_rates, steps_table
from landmark_kit.ledger import markdown_table
from landmark_kit.predict import PredictConfig, check_config
from landmark_kit.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
# name, flags as typed, test, index, train, limit hours, bundled splits
CASES = [
    ("2019: both tracks, nothing bundled", "--test 117577 --index 761757 --train 1580470", 117_577, 761_757,
     1_580_470, 12, ()),
    ("2019, train and index descriptors bundled", "... --bundled train index", 117_577, 761_757, 1_580_470, 12,
     ("train", "index")),
    ("2020 recognition: 117,577 test (stand-in), train bundled",
     "--test 117577 --train 1580470 --bundled train --limit-hours 9", 117_577, 0, 1_580_470, 9, ("train",)),
    ("2021 recognition: 117,577 test (stand-in), 100,000 train extracted",
     "--test 117577 --train 100000 --limit-hours 12", 117_577, 0, 100_000, 12, ()),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default=str(OUT / "rates-smlyaka2019-shape-2core.yaml"))
    ap.add_argument("--ensemble", default="ensembles/smlyaka2019-shape.yaml")
    ap.add_argument("--recipe", default="submissions/full.yaml")
    ap.add_argument("--dim", type=int, default=3072, help="descriptor width searched (0: the ensemble's)")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", default="kaggle-estimates")
    args = ap.parse_args()
    ensemble = load_ensemble(ROOT / args.ensemble)
    recipe = check_config(load_recipe(PredictConfig, ROOT / args.recipe))
    rates = load_rates(args.rates)
    dim = args.dim or ensemble_dim(ensemble)
    rates_name = Path(args.rates).resolve()
    rates_name = rates_name.relative_to(ROOT) if rates_name.is_relative_to(ROOT) else rates_name
    full, summary = [], []
    for name, flags, test, index, train, limit, bundled in CASES:
        rows = estimate(ensemble, recipe, rates, test, index, train, dim, limit, bundled)
        full.append(f"{name}, `{flags}`:\n\n{steps_table(rows)}")
        extract = sum(r["hours"] for r in rows if r["step"].startswith("extract"))
        summary.append({"sizes": name, "limit": f"{limit} h", "extraction": f"{extract:,.0f} h",
                        "total": f"{rows[-1]['hours']:,.0f} h"})
    head = (f"Rates measured on {rates.machine} (`{rates_name}`), `--ensemble {args.ensemble} --recipe "
            f"{args.recipe} --dim {dim}`; written by `python benchmarks/kaggle_estimates.py`.\n\n")
    out = Path(args.out)
    write_text(out / f"{args.name}.md", head + "\n".join(full))
    write_text(out / f"{args.name}-summary.md", head + markdown_table(summary))
    print(out / f"{args.name}.md", out / f"{args.name}-summary.md", sep="\n")


if __name__ == "__main__":
    main()
