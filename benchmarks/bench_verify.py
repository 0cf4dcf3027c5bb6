"""Spatial-verification throughput: ``verify_pairs`` (joblib, W workers) against the bare per-pair calls.

The limit is measured in the same run: matching + RANSAC called in a plain loop in one process gives
seconds per pair; W workers can at best do W / that. Reported: pairs/s of both and their ratio (target
>= 0.8). With ``--device cuda`` matching is batched on the GPU and only RANSAC runs in the W
workers; its "ratio" is then the speed-up over that CPU limit. Uses the train split of a synthetic
competition (generated if missing).

    python benchmarks/bench_verify.py [--data runs/demo/synthetic --pairs 2000 --workers 2 --device cpu]

``--record`` appends the result to ``benchmarks/results/verify.jsonl`` and renders ``verify.md`` from it
(the table in docs/cleaning.md); ``--table`` only renders.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from landmark_kit import ledger
from landmark_kit.cleaning import CleanConfig
from landmark_kit.local import LocalConfig, extract_local
from landmark_kit.recipes import load_recipe
from landmark_kit.synthetic import SyntheticConfig, generate
from landmark_kit.verify import VerifyConfig, match_descriptors, ransac_inliers, verify_pairs


COLUMNS = {
    "settings": lambda r: (f"`{r['recipe']}`" if r.get("recipe") else "default RootSIFT")
    + (", same-label" if r.get("same_label") else ", random pairs"),
    "device": "device", "workers": "workers", "pairs": "pairs", "kp / image": "keypoints_per_image",
    "bare ms / pair": "bare_ms_per_pair", "limit pairs/s": "limit_pairs_per_s",
    "measured pairs/s": "verify_pairs_per_s", "ratio": "ratio",
}


TABLE = ledger.Table("verify", COLUMNS,
                     "Limit = workers x the bare single-core rate, measured in the same run (with `--device cuda` the "
                     "ratio is the speed-up over that CPU limit).")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="runs/demo/synthetic")
    ap.add_argument("--pairs", type=int, default=2000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--model", default="homography")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda for batched GPU matching")
    ap.add_argument("--recipe", help="take local-feature and verification settings from a cleaning recipe")
    ap.add_argument("--max-keypoints", type=int, help="override the local features' keypoint cap")
    ap.add_argument("--bare-pairs", type=int, help="time the bare loop on this many of the pairs (default all)")
    ap.add_argument("--same-label", action="store_true", help="pairs of same-label images (cleaning's pairs)")
    args = ledger.parse_args(ap, TABLE)
    data = Path(args.data)
    if not (data / "train.csv").is_file():
        generate(data, SyntheticConfig(), progress=False)
    train = pd.read_csv(data / "train.csv", dtype={"id": str})
    ids = train["id"].tolist()
    if args.recipe:
        recipe = load_recipe(CleanConfig, args.recipe)
        local, cfg = replace(recipe.local, workers=args.workers), replace(recipe.verify, workers=args.workers,
                                                                           device=args.device)
    else:
        local, cfg = LocalConfig(workers=args.workers), VerifyConfig(model=args.model, workers=args.workers,
                                                                     device=args.device)
    if args.max_keypoints:
        local = replace(local, max_keypoints=args.max_keypoints)
    tmp = tempfile.TemporaryDirectory()
    start = time.perf_counter()
    store = extract_local(local, data, "train", ids, tmp.name, progress=False)
    extract_s = time.perf_counter() - start
    feats = store.load_all()
    rng = np.random.default_rng(0)
    if args.same_label:
        labels = train["landmark_id"].to_numpy()
        same = [(a, b) for a in range(len(ids)) for b in np.flatnonzero(labels == labels[a]) if a < b]
        pick = rng.integers(0, len(same), args.pairs)
        pairs = [(ids[same[n][0]], ids[same[n][1]]) for n in pick]
    else:
        pairs = [(ids[i], ids[j]) for i, j in rng.integers(0, len(ids), (args.pairs, 2)) if i != j]
    torch.set_num_threads(1)

    start = time.perf_counter()
    with threadpool_limits(1):  # the bare loop uses one core, like each worker
        for a, b in pairs[: args.bare_pairs]:
            m = match_descriptors(feats[a].descriptors, feats[b].descriptors, cfg.ratio, cfg.mutual)
            if len(m) >= cfg.min_matches:
                ransac_inliers(feats[a].keypoints[m[:, 0], :2].astype(np.float64),
                               feats[b].keypoints[m[:, 1], :2].astype(np.float64), cfg)
    bare = time.perf_counter() - start
    start = time.perf_counter()
    verify_pairs(pairs, store, cfg)
    full = time.perf_counter() - start
    limit = args.workers * len(pairs[: args.bare_pairs]) / bare
    measured = len(pairs) / full
    result = {"pairs": len(pairs), "workers": args.workers, "model": cfg.model, "device": args.device,
              "recipe": args.recipe, "same_label": args.same_label,
              "keypoints_per_image": round(float(np.mean([len(f.keypoints) for f in feats.values()])), 1),
              "extract_img_per_s": round(len(ids) / extract_s, 2),
              "bare_ms_per_pair": round(1000 * bare / len(pairs[: args.bare_pairs]), 3),
              "limit_pairs_per_s": round(limit, 1), "verify_pairs_per_s": round(measured, 1),
              "ratio": round(measured / limit, 3)}
    ledger.publish(TABLE, [result], args.record)


if __name__ == "__main__":
    main()
