"""Stage 01: automated label cleaning by spatial verification (smlyaka 2019, section 2.1).

For every train image: its k nearest neighbours in global-descriptor space; among them up to
``max_verify`` that carry the same label are spatially verified (local features + RANSAC); the image is
kept when more than ``t_frequency`` of them have at least ``inlier_threshold`` inliers. Labels left with
fewer than ``min_images_per_label`` images are dropped. Each unordered pair is verified once.

Output folder (``cleaning/<name>/`` by default)::

    recipe.yaml  train_clean.csv  per_image.csv  per_label.csv  pairs.csv  skipped.csv  inliers.png  removed.png
    report.json
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .artifacts import atomic_path, write_text
from .data import atomic_write_csv, read_train_csv
from .ensemble import extract_member, load_ensemble, load_features, skipped_images
from .local import FeatureStore, LocalConfig, extract_local
from .recipes import config_digest, save_recipe, to_dict
from .search import knn
from .verify import VerifyConfig, verify_pairs

log = logging.getLogger(__name__)


@dataclass
class CleanConfig:
    """Cleaning recipe (``cleaning/*.yaml``); defaults are the paper's (k 1000, 100 verified, 30 / 2)."""

    ensemble: str = "ensembles/imagenet-lite0.yaml"  # global descriptors for the kNN (first member used)
    k: int = 1000
    max_verify: int = 100
    inlier_threshold: int = 30
    t_frequency: int = 2
    min_images_per_label: int = 2
    local: LocalConfig = field(default_factory=LocalConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    rank: int = 0  # this process verifies pairs rank, rank + world_size, ... (scale-out)
    world_size: int = 1


def candidate_pairs(neighbours: np.ndarray, labels: np.ndarray, max_verify: int) -> np.ndarray:
    """Unordered pairs ``(i, j)``, i < j, of each image with its first ``max_verify`` same-label kNN."""
    rows = np.repeat(np.arange(len(neighbours)), neighbours.shape[1])
    cols = neighbours.ravel()
    valid = (cols >= 0) & (cols != rows)
    rows, cols = rows[valid], cols[valid]
    same = labels[rows] == labels[cols]
    rows, cols = rows[same], cols[same]
    rank_in_row = np.zeros(len(rows), np.int64)
    if len(rows):  # position among the same-label neighbours of each image (rows are sorted)
        starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
        rank_in_row = np.arange(len(rows)) - np.repeat(starts, np.diff(np.r_[starts, len(rows)]))
    keep = rank_in_row < max_verify
    pairs = np.sort(np.stack([rows[keep], cols[keep]], axis=1), axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def _verified_pairs(cfg: CleanConfig, pairs: np.ndarray, ids: list[str], store: FeatureStore, out: Path) -> Path:
    """Verify this rank's share of ``pairs`` into ``<rank folder>/part_NNNNN.npz`` (a, b, inliers; one file
    per ``verify.save_every`` pairs, written atomically, so a kill loses at most one chunk), then mark the
    rank complete. A rerun verifies only the pairs no part holds."""
    folder = _rank_folder(cfg, out, cfg.rank)
    folder.mkdir(parents=True, exist_ok=True)
    mine = pairs[cfg.rank:: cfg.world_size]
    done = _read_parts(folder)
    done_keys = set(zip(done["a"], done["b"]))
    todo = [(ids[i], ids[j]) for i, j in mine if (ids[i], ids[j]) not in done_keys]
    with tqdm(total=len(mine), initial=len(mine) - len(todo), desc="verify train pairs", unit="pair") as bar:
        for start in range(0, len(todo), cfg.verify.save_every):
            batch = todo[start: start + cfg.verify.save_every]
            inliers = verify_pairs(batch, store, cfg.verify)
            with atomic_path(folder / f"part_{len(list(folder.glob('part_*.npz'))):05d}.npz") as tmp:
                np.savez(tmp, a=np.array([a for a, _ in batch], dtype=str),
                         b=np.array([b for _, b in batch], dtype=str), inliers=inliers.astype(np.int64))
            bar.update(len(batch))
    write_text(folder / "complete.json", json.dumps({"pairs": int(len(mine))}))
    return folder


def _read_parts(folder: Path) -> pd.DataFrame:
    """Every finished chunk of one rank's results."""
    frames = []
    for path in sorted(folder.glob("part_*.npz")):
        with np.load(path) as z:
            frames.append(pd.DataFrame({"a": z["a"].astype(object), "b": z["b"].astype(object),
                                        "inliers": z["inliers"]}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        {"a": pd.Series(dtype=object), "b": pd.Series(dtype=object), "inliers": pd.Series(dtype=np.int64)})


def _rank_folder(cfg: CleanConfig, out: Path, rank: int) -> Path:
    """Pair results of one rank, named by the local-feature + verification settings that produced them."""
    runtime = ("workers", "device", "shard_size", "gpu_batch", "save_every")  # settings that do not change the results
    settings = {"ensemble": cfg.ensemble, "k": cfg.k, "max_verify": cfg.max_verify,
                **{f"local.{k}": v for k, v in cfg.local.cache_key().items()},
                **{f"verify.{k}": v for k, v in to_dict(cfg.verify).items() if k not in runtime}}
    digest = config_digest(settings)
    return out / f"pairs_{digest}_rank{rank:03d}of{cfg.world_size:03d}"


def merge_pair_results(cfg: CleanConfig, out: Path) -> pd.DataFrame:
    """All ranks' pair results in one frame (each unordered pair once)."""
    frames = [_read_parts(_rank_folder(cfg, out, r)) for r in range(cfg.world_size)]
    return pd.concat(frames, ignore_index=True).drop_duplicates(["a", "b"])


def decide(train: pd.DataFrame, pairs: pd.DataFrame, cfg: CleanConfig) -> pd.DataFrame:
    """Per image: candidates, verified neighbours, kept; then rare labels dropped."""
    verified = pairs[pairs["inliers"] >= cfg.inlier_threshold]
    count = pd.concat([verified["a"], verified["b"]]).value_counts()
    candidates = pd.concat([pairs["a"], pairs["b"]]).value_counts()
    per_image = train.copy()
    per_image["candidates"] = per_image["id"].map(candidates).fillna(0).astype(int)
    per_image["verified"] = per_image["id"].map(count).fillna(0).astype(int)
    per_image["kept"] = per_image["verified"] > cfg.t_frequency
    label_size = per_image[per_image["kept"]].groupby("landmark_id").size()
    small = per_image["landmark_id"].map(label_size).fillna(0) < cfg.min_images_per_label
    per_image["dropped_rare_label"] = per_image["kept"] & small
    per_image["kept"] &= ~small
    return per_image


def evaluate(per_image: pd.DataFrame, ground_truth: Path) -> dict:
    """Noise-removal precision / recall and clean images kept, against a synthetic ground truth."""
    gt = pd.read_csv(ground_truth, dtype={"id": str}).set_index("id")
    noise = gt.loc[per_image["id"], "noise"].to_numpy(bool)
    removed = ~per_image["kept"].to_numpy(bool)
    small = per_image.groupby("landmark_id")["id"].transform("size").to_numpy() <= 2
    return {
        "clean_removed_in_labels_of_1_2": int((~noise & removed & small).sum()),  # cannot, or barely, be verified
        "clean_removed_other": int((~noise & removed & ~small).sum()),
        "noise_kept": int((noise & ~removed).sum()),
        "noise_images": int(noise.sum()),
        "removed": int(removed.sum()),
        "precision": float((noise & removed).sum() / max(removed.sum(), 1)),
        "recall": float((noise & removed).sum() / max(noise.sum(), 1)),
        "clean_kept": float((~noise & ~removed).sum() / max((~noise).sum(), 1)),
    }


def _report_plots(per_image: pd.DataFrame, pairs: pd.DataFrame, cfg: CleanConfig, data_root, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.clip(pairs["inliers"], 0, 200), bins=50, color="#4477aa")
    ax.axvline(cfg.inlier_threshold, color="#cc3311", label=f"threshold {cfg.inlier_threshold}")
    ax.set_xlabel("RANSAC inliers (same-label pairs, clipped at 200)")
    ax.set_ylabel("pairs")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "inliers.png", dpi=100)
    plt.close(fig)
    _removed_montage(per_image[~per_image["kept"]].head(24), data_root, out / "removed.png")


def _removed_montage(removed: pd.DataFrame, data_root, path: Path, tile: int = 128) -> None:
    import cv2

    from .data import ImageLoadError, image_path, load_image

    tiles = []
    for row in removed.itertuples():
        try:
            img = np.asarray(load_image(image_path(data_root, "train", row.id), row.id, tile * 2))
            img = cv2.resize(img, (tile, tile))
        except ImageLoadError:
            img = np.zeros((tile, tile, 3), np.uint8)
        cv2.putText(img, f"{row.landmark_id} v{row.verified}", (2, 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                    (255, 255, 0), 1)
        tiles.append(img)
    if not tiles:
        tiles = [np.zeros((tile, tile, 3), np.uint8)]
    while len(tiles) % 6:
        tiles.append(np.zeros((tile, tile, 3), np.uint8))
    grid = np.vstack([np.hstack(tiles[i: i + 6]) for i in range(0, len(tiles), 6)])
    cv2.imwrite(str(path), cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def clean(cfg: CleanConfig, data_root, out_dir, workdir=None, train_csv=None) -> dict:
    """Run the whole cleaning into ``out_dir``; returns the report (also ``report.json``).

    ``workdir`` holds the reusable intermediates in the stage-03 layout (``features/<member>/``, plus
    ``local/``); default ``out_dir/work``. Pointing it at a stage-03 run directory of the same member reuses
    that run's train descriptors. With ``world_size`` > 1 each rank verifies every world_size-th pair into its own
    resumable ``pairs_<digest>_rank*/`` folder; whichever rank finds all of them complete merges and decides.
    """
    out = Path(out_dir)
    work = Path(workdir) if workdir else out / "work"
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(cfg, out / "recipe.yaml")
    train = read_train_csv(train_csv or Path(data_root) / "train.csv")
    ids = train["id"].tolist()
    labels = train["landmark_id"].to_numpy()

    ens = load_ensemble(cfg.ensemble)
    member = ens.members[0]
    extract_member(member, ens, data_root, work, splits=("train",), train_csv=train_csv)
    feats, feat_ids = load_features(work / "features" / member.name, "train", mmap=False)
    if feat_ids != ids:
        raise RuntimeError("global descriptors do not match the train list; delete the work folder")
    _, neighbours = knn(feats, feats, min(cfg.k + 1, len(ids)))
    pairs = candidate_pairs(neighbours, labels, cfg.max_verify)
    store = extract_local(cfg.local, data_root, "train", ids, work / "local")
    _verified_pairs(cfg, pairs, ids, store, out)
    if not all((_rank_folder(cfg, out, r) / "complete.json").is_file() for r in range(cfg.world_size)):
        return {"status": f"rank {cfg.rank} done; waiting for the other ranks before merging"}
    results = merge_pair_results(cfg, out)
    if len(results) < len(pairs):
        return {"status": f"{len(results)} of {len(pairs)} pairs verified; rerun the missing ranks"}
    atomic_write_csv(results, out / "pairs.csv")
    skipped = skipped_images(work, ("train",))
    atomic_write_csv(skipped, out / "skipped.csv")  # unreadable: no descriptor / features, so never kept
    per_image = decide(train, results, cfg)
    atomic_write_csv(per_image, out / "per_image.csv")
    atomic_write_csv(per_image[per_image["kept"]][["id", "landmark_id"]], out / "train_clean.csv")
    per_label = per_image.groupby("landmark_id").agg(images=("id", "size"), kept=("kept", "sum"))
    atomic_write_csv(per_label.reset_index(), out / "per_label.csv")
    _report_plots(per_image, results, cfg, data_root, out)
    report = {
        "images": len(per_image), "kept": int(per_image["kept"].sum()),
        "labels": int(per_image["landmark_id"].nunique()),
        "labels_kept": int(per_image.loc[per_image["kept"], "landmark_id"].nunique()),
        "pairs_verified": len(results),
        "unreadable_images": int(skipped["id"].nunique()),
        "pairs_over_threshold": int((results["inliers"] >= cfg.inlier_threshold).sum()),
    }
    gt = Path(data_root) / "ground_truth.csv"
    if gt.is_file():
        report["against_ground_truth"] = evaluate(per_image, gt)
    write_text(out / "report.json", json.dumps(report, indent=2))
    return report
