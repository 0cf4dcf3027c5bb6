"""Stage 01: automated label cleaning by spatial verification (smlyaka 2019, section 2.1).

For every train image: its k nearest neighbours in global-descriptor space; among them up to
``max_verify`` that carry the same label are spatially verified (local features + RANSAC); the image is
kept when more than ``t_frequency`` of them have at least ``inlier_threshold`` inliers. Labels left with
fewer than ``min_images_per_label`` images are dropped. Each unordered pair is verified once.

Output folder (``runs/cleaning/<name>/`` by default)::

    recipe.yaml  train_clean.csv  per_image.csv  per_label.csv  pairs.csv  skipped.csv  inliers.png  removed.png
    report.json
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from .artifacts import atomic_path, atomic_write_csv, intact, part_path, parts, read_chunks, save_part, write_text
from .data import read_train_csv
from .ensemble import extract_member, load_ensemble, load_features, member_identity, skipped_images
from .local import FeatureStore, LocalConfig, extract_local
from .recipes import config_digest, recipe_field, save_recipe, to_dict
from .search import knn
from .verify import VerifyConfig, verify_pairs

log = logging.getLogger(__name__)


@dataclass
class CleanConfig:
    """Cleaning recipe (``cleaning/*.yaml``); defaults are the paper's (k 1000, 100 verified, 30 / 2)."""

    ensemble: str = recipe_field("ensembles/imagenet-lite0.yaml")  # global descriptors (first member used)
    k: int = 1000
    max_verify: int = 100
    inlier_threshold: int = 30
    t_frequency: int = 2
    min_images_per_label: int = 2
    # images the rule cannot judge (no same-label neighbour to verify against, or no verified pair in their
    # label at all) are dropped by the paper's rule; True keeps them, for small or hard real-photo folders
    keep_unjudged: bool = False
    local: LocalConfig = field(default_factory=LocalConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    rank: int = 0  # this process verifies pairs rank, rank + world_size, ... (scale-out)
    world_size: int = 1


def candidate_pairs(neighbours: np.ndarray, labels: np.ndarray, max_verify: int, first_row: int = 0) -> np.ndarray:
    """Unordered pairs ``(i, j)``, i < j, of each image with its first ``max_verify`` same-label kNN
    (``neighbours`` row r belongs to image ``first_row + r``)."""
    rows = np.repeat(np.arange(first_row, first_row + len(neighbours)), neighbours.shape[1])
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
    pairs = np.sort(np.stack([rows[keep], cols[keep]], axis=1), axis=1).astype(np.int32)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2)


def all_candidate_pairs(feats: np.ndarray, labels: np.ndarray, k: int, max_verify: int,
                        chunk: int = 65_536) -> np.ndarray:
    """:func:`candidate_pairs` of every image, the kNN searched ``chunk`` queries at a time: the (N, k)
    neighbour matrix (19 GB for GLDv2's 1.6M images at k=1000) never exists, only int32 pairs do."""
    parts = [candidate_pairs(knn(feats[start: start + chunk], feats, min(k + 1, len(feats)))[1], labels, max_verify,
                             start) for start in range(0, len(feats), chunk)]
    pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int32)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def _verified_pairs(cfg: CleanConfig, pairs: np.ndarray, ids: list[str], store: FeatureStore, out: Path) -> Path:
    """Verify this rank's share of ``pairs`` into ``<rank folder>/part_NNNNN.npz`` (i, j, inliers for the
    ``verify.save_every`` pairs of chunk NNNNN, written atomically, so a kill loses at most one chunk), then
    mark the rank complete. The folder remembers a digest of its pairs and ids: other pairs start it afresh."""
    import hashlib

    folder = _rank_folder(cfg, out, cfg.rank)
    folder.mkdir(parents=True, exist_ok=True)
    mine = np.ascontiguousarray(pairs[cfg.rank:: cfg.world_size], dtype=np.int32)
    digest = hashlib.sha1(mine.tobytes() + "\n".join(ids).encode()).hexdigest()
    meta = {"pairs": int(len(mine)), "sha1": digest, "save_every": cfg.verify.save_every}
    if not (folder / "pairs.json").is_file() or json.loads((folder / "pairs.json").read_text()) != meta:
        for stale in [*parts(folder), folder / "complete.json"]:
            stale.unlink(missing_ok=True)
        write_text(folder / "pairs.json", json.dumps(meta))
    starts = range(0, len(mine), cfg.verify.save_every)
    finished = {n for n in range(len(starts)) if intact(part_path(folder, n))}  # a damaged chunk is removed, redone
    done = sum(min(cfg.verify.save_every, len(mine) - s) for n, s in enumerate(starts) if n in finished)
    with tqdm(total=len(mine), initial=done, desc="verify train pairs", unit="pair") as bar:
        for number, start in enumerate(starts):
            if number in finished:
                continue  # finished before a kill
            chunk = mine[start: start + cfg.verify.save_every]
            inliers = verify_pairs([(ids[i], ids[j]) for i, j in chunk], store, cfg.verify)
            save_part(folder, number, i=chunk[:, 0], j=chunk[:, 1], inliers=inliers.astype(np.int32))
            bar.update(len(chunk))
    write_text(folder / "complete.json", json.dumps({"pairs": int(len(mine))}))
    return folder


def _rank_folder(cfg: CleanConfig, out: Path, rank: int) -> Path:
    """Pair results of one rank, named by the local-feature + verification settings that produced them."""
    runtime = ("workers", "device", "shard_size", "gpu_batch", "save_every")  # settings that do not change the results
    member = member_identity(load_ensemble(cfg.ensemble).members[0])  # what it is, not where its recipe lies
    settings = {"ensemble": member, "k": cfg.k, "max_verify": cfg.max_verify,
                **{f"local.{k}": v for k, v in cfg.local.cache_key().items()},
                **{f"verify.{k}": v for k, v in to_dict(cfg.verify).items() if k not in runtime}}
    digest = config_digest(settings)
    return out / f"pairs_{digest}_rank{rank:03d}of{cfg.world_size:03d}"


def pair_parts(cfg: CleanConfig, out: Path) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Every rank's verified chunks, one ``(i, j, inliers)`` at a time (never all pairs at once); a damaged chunk
    is removed (logged) and left out, so the count falls short and its rank's rerun verifies it again."""
    for rank in range(cfg.world_size):
        for z in read_chunks(parts(_rank_folder(cfg, out, rank))):
            yield z["i"], z["j"], z["inliers"]


def pair_counts(n: int, i: np.ndarray, j: np.ndarray, inliers: np.ndarray, threshold: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Per image of ``n``: candidate pairs it is in, and those with at least ``threshold`` inliers."""
    both = np.concatenate([i, j])
    verified = np.concatenate([inliers, inliers]) >= threshold
    return np.bincount(both, minlength=n), np.bincount(both[verified], minlength=n)


def decide(train: pd.DataFrame, candidates: np.ndarray, verified: np.ndarray, cfg: CleanConfig) -> pd.DataFrame:
    """Per image (``train`` order): candidate pairs, verified neighbours, kept, and the ``reason`` in words;
    images the rule cannot judge are kept with ``keep_unjudged``; then rare labels are dropped."""
    per_image = train.copy()
    per_image["candidates"] = np.asarray(candidates, np.int64)
    per_image["verified"] = np.asarray(verified, np.int64)
    label = per_image.groupby("landmark_id")
    alone = label["id"].transform("size").to_numpy() < 2
    no_candidate = per_image["candidates"].to_numpy() == 0
    label_unverified = label["verified"].transform("max").to_numpy() == 0
    unjudged = alone | no_candidate | label_unverified
    passed = per_image["verified"].to_numpy() > cfg.t_frequency
    kept = passed | (unjudged & cfg.keep_unjudged)
    reason = np.select(
        [passed, alone, no_candidate, label_unverified],
        [f"more than {cfg.t_frequency} verified neighbour(s)", "only image of its label: cannot be verified",
         "no same-label image among its global neighbours: cannot be verified",
         "no pair of its label verified: cannot judge which images are wrong"],
        f"at most {cfg.t_frequency} verified neighbour(s) while others of its label verify")
    reason = np.where(~passed & unjudged, np.where(kept, "kept, ", "dropped, ") + reason, reason)
    label_size = pd.Series(kept).groupby(per_image["landmark_id"].to_numpy()).transform("sum").to_numpy()
    small = label_size < cfg.min_images_per_label
    per_image["kept"] = kept & ~small
    per_image["dropped_rare_label"] = kept & small
    per_image["reason"] = np.where(kept & small, f"label has fewer than {cfg.min_images_per_label} kept image(s)",
                                   reason)
    return per_image


def evaluate(per_image: pd.DataFrame, ground_truth: Path) -> dict | None:
    """Noise-removal precision / recall and clean images kept, against a synthetic set's ground truth (a
    ``ground_truth.csv`` with a ``noise`` column per train id); None for any other ``ground_truth.csv``."""
    gt = pd.read_csv(ground_truth, dtype={"id": str})
    if not {"id", "noise"} <= set(gt.columns) or not per_image["id"].isin(gt["id"]).all():
        return None
    gt = gt.drop_duplicates("id").set_index("id")
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


def _report_plots(per_image: pd.DataFrame, histogram: np.ndarray, cfg: CleanConfig, data_root, out: Path) -> None:
    """``inliers.png`` from ``histogram`` (pairs per inlier count 0..200, the last bin = 200 or more) and a
    montage of removed images."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.arange(len(histogram)), bins=50, range=(0, 200), weights=histogram, color="#4477aa")
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
    """Removed images, six a row, captioned with their label and verified-neighbour count."""
    from .montage import grid, thumbnail

    tiles = [thumbnail(data_root, "train", row.id, tile, caption=f"{row.landmark_id} v{row.verified}")
             for row in removed.itertuples()] or [np.full((tile, tile, 3), 255, np.uint8)]
    grid([tiles[i: i + 6] for i in range(0, len(tiles), 6)], tile, path)


def clean(cfg: CleanConfig, data_root, out_dir, workdir=None, train_csv=None) -> dict:
    """Run the whole cleaning into ``out_dir``; returns the report (also ``report.json``).

    With ``world_size`` > 1 each rank verifies every world_size-th pair into its own resumable
    ``pairs_<digest>_rank*/`` folder; whichever rank finds all of them complete merges and decides.

    Args:
        cfg: the cleaning recipe (ensemble, k, verification and keep thresholds).
        data_root: a Kaggle-layout competition folder.
        out_dir: receives ``train_clean.csv``, the per-image / per-label tables, plots and ``report.json``.
        workdir: the reusable intermediates in the stage-03 layout (``features/<member>/``, ``local/``);
            default ``out_dir/work``; a stage-03 run directory of the same member lends its train descriptors.
        train_csv: the list to clean; default ``<data_root>/train.csv``.
    """
    out = Path(out_dir)
    work = Path(workdir) if workdir else out / "work"
    train = read_train_csv(train_csv or Path(data_root) / "train.csv")  # inputs checked before anything is written
    ids = train["id"].tolist()
    labels = train["landmark_id"].to_numpy()
    ens = load_ensemble(cfg.ensemble)
    member = ens.members[0]
    out.mkdir(parents=True, exist_ok=True)
    save_recipe(cfg, out / "recipe.yaml")

    extract_member(member, ens, data_root, work, splits=("train",), train_csv=train_csv)
    feats, feat_ids = load_features(work / "features" / member.name, "train")  # memory-mapped
    if feat_ids != ids:
        raise RuntimeError("global descriptors do not match the train list; delete the work folder")
    pairs = all_candidate_pairs(feats, labels, cfg.k, cfg.max_verify)
    store = extract_local(cfg.local, data_root, "train", ids, work / "local")
    _verified_pairs(cfg, pairs, ids, store, out)
    if not all((_rank_folder(cfg, out, r) / "complete.json").is_file() for r in range(cfg.world_size)):
        return {"status": f"rank {cfg.rank} done; waiting for the other ranks before merging"}
    candidates, verified = np.zeros(len(ids), np.int64), np.zeros(len(ids), np.int64)
    histogram, total, over = np.zeros(201, np.int64), 0, 0
    id_array = np.asarray(ids, dtype=object)
    with atomic_path(out / "pairs.csv") as tmp, open(tmp, "w", newline="") as fh:
        fh.write("a,b,inliers\n")
        for i, j, inliers in pair_parts(cfg, out):  # streamed: counts, histogram and pairs.csv chunk by chunk
            c, v = pair_counts(len(ids), i, j, inliers, cfg.inlier_threshold)
            candidates, verified = candidates + c, verified + v
            histogram += np.bincount(np.clip(inliers, 0, 200), minlength=201)
            total, over = total + len(i), over + int((inliers >= cfg.inlier_threshold).sum())
            pd.DataFrame({"a": id_array[i], "b": id_array[j], "inliers": inliers}).to_csv(fh, header=False,
                                                                                         index=False)
    if total < len(pairs):
        return {"status": f"{total} of {len(pairs)} pairs verified; rerun the missing ranks"}
    skipped = skipped_images(work, ("train",))
    atomic_write_csv(skipped, out / "skipped.csv")  # unreadable: no descriptor / features, so never kept
    per_image = decide(train, candidates, verified, cfg)
    atomic_write_csv(per_image, out / "per_image.csv")
    atomic_write_csv(per_image[per_image["kept"]][["id", "landmark_id"]], out / "train_clean.csv")
    per_label = per_image.groupby("landmark_id").agg(images=("id", "size"), kept=("kept", "sum"))
    atomic_write_csv(per_label.reset_index(), out / "per_label.csv")
    _report_plots(per_image, histogram, cfg, data_root, out)
    report = {
        "images": len(per_image), "kept": int(per_image["kept"].sum()),
        "labels": int(per_image["landmark_id"].nunique()),
        "labels_kept": int(per_image.loc[per_image["kept"], "landmark_id"].nunique()),
        "pairs_verified": total,
        "unreadable_images": int(skipped["id"].nunique()),
        "pairs_over_threshold": over,
        "kept_unjudged": int((per_image["kept"] & per_image["reason"].str.startswith("kept, ")).sum()),
        "reasons": {k: int(v) for k, v in per_image["reason"].value_counts().items()},
    }
    gt = Path(data_root) / "ground_truth.csv"
    truth = evaluate(per_image, gt) if gt.is_file() else None
    if truth is not None:
        report["against_ground_truth"] = truth
    write_text(out / "report.json", json.dumps(report, indent=2))
    return report
