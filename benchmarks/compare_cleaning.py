"""Cleaning quality per local-feature backend: stage 01 run with each recipe on one synthetic competition,
scored against its injected noise (precision / recall of the removed images, share of clean images kept)
and timed on this machine.

    python benchmarks/compare_cleaning.py [--data-root runs/demo/synthetic] [--recipes R ...] [--record]

Each recipe runs as its own `stages/01_clean.py` process into ``--out-root/<recipe name>`` (fresh: earlier
outputs there are removed, so the time includes its local features). ``--record`` appends each row to
``benchmarks/results/cleaning.jsonl`` and renders ``cleaning.md`` (the table in docs/cleaning.md).
The DELG recipe needs its checkpoint first (`training/synthetic-lite0-delg.yaml`, see the recipe).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from landmark_kit import ledger
from landmark_kit.cleaning import CleanConfig
from landmark_kit.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ["cleaning/synthetic-sift.yaml", "cleaning/synthetic.yaml", "cleaning/synthetic-delg.yaml"]
COLUMNS = {
    "recipe": lambda r: f"`{r['recipe']}`", "local features": "local_features", "inliers >=": "inlier_threshold",
    "images": "images", "noise": "noise_images", "precision": "precision", "recall": "recall",
    "clean kept": "clean_kept", "seconds": "seconds",
}


def describe(cfg: CleanConfig) -> str:
    """The local-feature settings a reader compares: backend, keypoint cap, ASIFT tilts."""
    local = cfg.local
    text = f"{local.backend}, {local.max_keypoints} kp"
    if local.backend == "rootsift" and local.affine_tilts:
        text += f", ASIFT tilts {local.affine_tilts}"
    return text


def run(data_root: Path, recipe: str, out_root: Path) -> dict:
    """Stage 01 with ``recipe`` from scratch; its report's figures against the ground truth and its time."""
    cfg = load_recipe(CleanConfig, ROOT / recipe)
    name = Path(recipe).stem
    shutil.rmtree(out_root / name, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "stages" / "01_clean.py"), "--data-root", str(data_root),
                    "--recipe", str(ROOT / recipe), "--out-root", str(out_root), "--name", name],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    report = json.loads((out_root / name / "report.json").read_text())
    truth = report.get("against_ground_truth")
    if truth is None:
        raise SystemExit(f"{data_root} has no injected-noise ground truth: use a synthetic competition")
    return {"recipe": recipe, "local_features": describe(cfg), "inlier_threshold": cfg.inlier_threshold,
            "images": report["images"], "noise_images": truth["noise_images"],
            "precision": round(truth["precision"], 3),
            "recall": round(truth["recall"], 3), "clean_kept": round(truth["clean_kept"], 3),
            "seconds": round(seconds)}


TABLE = ledger.Table("cleaning", COLUMNS, "Targets: precision >= 0.95, recall >= 0.9, clean kept >= 0.9.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", default="runs/demo/synthetic")
    ap.add_argument("--recipes", nargs="+", default=RECIPES)
    ap.add_argument("--out-root", default="runs/compare-cleaning")
    args = ledger.parse_args(ap, TABLE)
    results = [run(Path(args.data_root), recipe, Path(args.out_root)) for recipe in args.recipes]
    ledger.publish(TABLE, results, args.record)


if __name__ == "__main__":
    main()
