"""Stage 03: extract global descriptors for every member of an ensemble recipe, concatenate, search.

Run-directory layout (``--workdir``)::

    ensemble.yaml                      the resolved recipe
    features/<member>/<split>.npy      L2-normalised descriptors (float16 by default, memory-mappable), rows = ids
    features/<member>/<split>.ids      one image id per line, the row order of the .npy
    features/<member>/<split>.failed.csv   images skipped as unreadable (id, reason)
    features/ensemble/<split>.npy      weighted concatenation, re-normalised
    neighbours/test_train.npz          kNN of test queries among train images (scores, indices)
    neighbours/test_index.npz          kNN of test queries among index images

Every file is written atomically; a split whose files exist for the same ids and member config is skipped,
and a split longer than ``shard_size`` images is extracted in pieces (``<split>.pieceNNNNNofMMMMM.*``, each
skipped once finished, combined at the end), so a killed run resumes where it stopped, losing at most a piece.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .artifacts import DamagedArtifact, atomic_path, atomic_write_csv, discard, load_npy, npy_shape, write_text
from .checkpoint import load_trained, resolve_device
from .data import ImageSource, split_ids
from .extract import DECODE_MODES, describe_split_members
from .models import Describer, GlobalDescriptor, create_backbone
from .recipes import RecipeError, config_digest, load_recipe, save_recipe, to_dict
from .search import knn

log = logging.getLogger(__name__)
SPLITS = ("train", "test", "index")


@dataclass
class MemberConfig:
    """One model of the ensemble: a trained checkpoint, or a backbone used zero-shot (GeM, no training)."""

    name: str
    checkpoint: str | None = None  # model.pt written by stage 02
    backbone: str | None = None  # timm name, for a zero-shot member
    weights: str | None = None  # with backbone: local file or "imagenet-lite"; None = random init (seeded)
    image_size: int = 224
    scales: list[float] = field(default_factory=lambda: [1.0])  # TTA: multiples of image_size, averaged
    flip: bool = False  # TTA: add the horizontally flipped image's descriptor
    aspect: bool = False  # keep aspect ratios (bucketed batches) instead of square resizes
    weight: float = 1.0  # multiplies the member's descriptor before concatenation
    whiten: bool = False  # PCA-whiten this member (learned on the ensemble's whiten_split) before concatenation
    seed: int = 0


@dataclass
class EnsembleConfig:
    """The members and how to run them; the list shape is what later issues extend (scales, TTA, PCA)."""

    members: list[MemberConfig] = field(default_factory=list)
    batch_size: int = 32
    workers: int = 2
    device: str = "auto"
    amp: bool = True  # float16 autocast for extraction on CUDA
    decode: str = "auto"  # JPEGs decoded by: cpu (loader workers), device (nvjpeg), auto (device on CUDA, < 8 workers)
    k_train: int = 20  # train neighbours kept per test query (recognition, verification shortlists)
    k_index: int = 100  # index neighbours kept per test query (retrieval)
    whiten: bool = False  # PCA-whitening of the concatenation, learned on whiten_split, applied to every split
    whiten_split: str = "index"
    whiten_dim: int | None = None  # output dimension; default min(D, images in whiten_split - 1)
    index: str = "Flat"  # faiss: exact "Flat", or a factory string such as "IVF1024,PQ64" for huge indexes
    nprobe: int = 16  # inverted lists visited per query (IVF indexes)
    rank: int = 0  # this process extracts images rank, rank + world_size, ... of every split (torchrun, SLURM)
    world_size: int = 1
    store_dtype: str = "float16"  # descriptor files: float16 halves disk and page cache (cosine error ~1e-3)
    shard_size: int = 50_000  # images per saved piece of a split: a killed extraction loses at most one piece


def require_checkpoints(cfg: EnsembleConfig) -> None:
    """Raise RecipeError naming every member whose checkpoint file is missing (before a run folder is made)."""
    missing = [f"{m.name} ({m.checkpoint})" for m in cfg.members if m.checkpoint and not Path(m.checkpoint).is_file()]
    if missing:
        raise RecipeError(f"checkpoint not found for member(s) {', '.join(missing)}")


def load_ensemble(path: str | os.PathLike | None, overrides: dict | None = None) -> EnsembleConfig:
    """Read and check an ensemble recipe: at least one member, unique names, checkpoint xor backbone."""
    cfg = load_recipe(EnsembleConfig, path, overrides)
    if not cfg.members:
        raise RecipeError(f"{path}: an ensemble needs at least one member")
    names = [m.name for m in cfg.members]
    if len(set(names)) != len(names) or "ensemble" in names:
        raise RecipeError(f"{path}: member names must be unique and not 'ensemble', found {names}")
    if cfg.decode not in DECODE_MODES:
        raise RecipeError(f"{path}: decode must be one of {', '.join(DECODE_MODES)}, found {cfg.decode!r}")
    for m in cfg.members:
        if (m.checkpoint is None) == (m.backbone is None):
            raise RecipeError(f"{path}: member {m.name} needs exactly one of checkpoint or backbone")
    return cfg


def build_member(member: MemberConfig, device: torch.device) -> torch.nn.Module:
    """The descriptor network of a member, in eval mode, returning L2-normalised rows."""
    if member.checkpoint is not None:
        model, _ = load_trained(member.checkpoint, device)
        return Describer(model).eval()
    torch.manual_seed(member.seed)
    return GlobalDescriptor(create_backbone(member.backbone, member.weights)).to(device).eval()


def input_group(member: MemberConfig) -> tuple[int, bool]:
    """Members with the same input side (image_size x largest scale) and aspect setting are decoded together."""
    return round(member.image_size * max(member.scales)), member.aspect




def load_features(folder: str | os.PathLike, split: str, mmap: bool = True) -> tuple[np.ndarray, list[str]]:
    """Descriptors and ids of one split from a features folder (memory-mapped by default); a truncated file, or
    ids that do not match the rows, raise :class:`DamagedArtifact` naming the file."""
    folder = Path(folder)
    feats = load_npy(folder / f"{split}.npy", mmap)
    text = (folder / f"{split}.ids").read_text()
    ids = text.split()
    if not text.endswith("\n") or len(ids) != len(feats):
        raise DamagedArtifact(folder / f"{split}.ids", "its last line is cut off" if not text.endswith("\n") else
                              f"{len(ids)} ids for the {len(feats)} rows of {split}.npy")
    return feats, ids


def save_features(folder: str | os.PathLike, split: str, feats: np.ndarray, ids: list[str],
                  dtype: str = "float32") -> None:
    """Write one split's descriptors (.npy of ``dtype``) and their ids, each atomically; :func:`load_features`
    reads them back (memory-mapped)."""
    if dtype not in ("float16", "float32"):
        raise RecipeError(f"store_dtype must be float16 or float32, found {dtype!r}")
    folder = Path(folder)
    with atomic_path(folder / f"{split}.npy") as tmp:
        np.save(tmp, np.asarray(feats, dtype=dtype))
    write_text(folder / f"{split}.ids", "\n".join(ids) + "\n")  # last: the ids mark the split complete


def skipped_images(workdir, splits=SPLITS) -> pd.DataFrame:
    """Every image of ``splits`` that a run directory's jobs could not read: ``split, id, step, reason`` (step =
    the member whose descriptors it lacks, or ``local:<cache>`` for local features), for reports beside outputs."""
    from .local import FeatureStore

    workdir, rows = Path(workdir), []
    for split in splits:
        for failed in sorted((workdir / "features").glob(f"*/{split}.failed.csv")):
            for image_id, reason in pd.read_csv(failed, dtype=str, keep_default_na=False).itertuples(index=False):
                rows.append((split, image_id, failed.parent.name, reason))
        for folder in sorted((workdir / "local").glob(f"*/{split}")):
            if folder.is_dir():
                rows += [(split, i, f"local:{folder.parent.name}", r)
                         for i, r in FeatureStore(folder).failures().items()]
    return pd.DataFrame(rows, columns=["split", "id", "step", "reason"])


def combine_pieces(folder: Path, split: str, ids: list[str], pieces: list[tuple[str, np.ndarray]]) -> None:
    """Write ``<split>`` from finished pieces ``(name, rows)`` (piece row i is split row ``rows[i]``) through a
    memory map, so the split is never held in memory twice; then remove the pieces."""
    first = np.load(folder / f"{pieces[0][0]}.npy", mmap_mode="r")
    with atomic_path(folder / f"{split}.npy") as tmp:
        merged = np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(len(ids), first.shape[1]))
        for name, rows in pieces:
            merged[rows] = np.load(folder / f"{name}.npy", mmap_mode="r")
        merged.flush()
        del merged
    failed = [pd.read_csv(folder / f"{name}.failed.csv", dtype=str) for name, _ in pieces]
    atomic_write_csv(pd.concat(failed, ignore_index=True), folder / f"{split}.failed.csv")
    write_text(folder / f"{split}.ids", "\n".join(ids) + "\n")
    for name, _ in pieces:
        for suffix in (".npy", ".ids", ".failed.csv"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)


def member_identity(member: MemberConfig) -> dict:
    """The member's config plus a digest of its checkpoint: descriptors are reusable only if both match."""
    # weight and whitening apply at concatenation: changing them re-uses the descriptors
    identity = {k: v for k, v in to_dict(member).items() if k not in ("weight", "whiten")}
    if member.checkpoint is not None:
        path = Path(member.checkpoint)
        if not path.is_file():
            raise RecipeError(f"member {member.name}: checkpoint not found: {path}")
        identity["checkpoint_sha1"] = hashlib.sha1(path.read_bytes()).hexdigest()
    return identity


def _is_done(folder: Path, split: str, ids: list[str]) -> bool:
    """A split is finished when its descriptors exist whole for exactly these ids (stale members were cleared);
    damaged files are removed (logged), so the split is extracted again."""
    npy, id_file = folder / f"{split}.npy", folder / f"{split}.ids"
    if not npy.is_file() or not id_file.is_file():
        return False
    try:
        return load_features(folder, split)[1] == ids
    except DamagedArtifact as damage:
        discard(damage, npy, id_file)
        return False


def _member_folder(member: MemberConfig, workdir) -> Path:
    """``features/<name>/`` with the member's identity written; descriptors of another identity are removed."""
    folder = Path(workdir) / "features" / member.name
    folder.mkdir(parents=True, exist_ok=True)
    meta = folder / "member.json"
    identity = member_identity(member)
    if not meta.is_file() or json.loads(meta.read_text()) != identity:
        for stale in folder.glob("*.npy"):  # unknown or changed member: old descriptors are not reusable
            stale.unlink()
    write_text(meta, json.dumps(identity, indent=2))
    return folder


def reuse_features(members: list[MemberConfig], workdir, sources, splits=SPLITS) -> dict[str, list[str]]:
    """Hard-link (or copy) finished descriptors of ``splits`` from other run directories ``sources`` into
    ``workdir`` for every member whose identity (config + checkpoint digest; name and checkpoint path aside)
    matches there, so an ensemble of members already extracted elsewhere costs no extraction. Returns the
    files taken per member."""
    def anonymous(identity: dict) -> dict:
        path_free = "checkpoint_sha1" in identity  # a moved checkpoint is the same checkpoint
        return {k: v for k, v in identity.items() if k != "name" and not (path_free and k == "checkpoint")}

    taken: dict[str, list[str]] = {}
    for member in members:
        wanted, dest = anonymous(member_identity(member)), _member_folder(member, workdir)
        for source in map(Path, sources):
            for meta in sorted((source / "features").glob("*/member.json")):
                if meta.parent.resolve() == dest.resolve() or anonymous(json.loads(meta.read_text())) != wanted:
                    continue
                folder = meta.parent
                for split in splits:
                    if not ((folder / f"{split}.npy").is_file() and (folder / f"{split}.ids").is_file()):
                        continue  # not finished there
                    if _is_done(dest, split, (folder / f"{split}.ids").read_text().split()):
                        continue
                    for suffix in (".ids", ".failed.csv", ".npy"):
                        src, out = folder / f"{split}{suffix}", dest / f"{split}{suffix}"
                        if src.is_file():
                            out.unlink(missing_ok=True)
                            try:
                                os.link(src, out)
                            except OSError:  # another file system
                                shutil.copy2(src, out)
                    taken.setdefault(member.name, []).append(str(folder / f"{split}.npy"))
    return taken


def extract_members(
    members: list[MemberConfig], cfg: EnsembleConfig, data_root, workdir, splits=SPLITS, train_csv=None,
    ids_by_split: dict[str, list[str]] | None = None, source: ImageSource | None = None,
) -> list[Path]:
    """Extract the members' descriptors for ``splits`` into ``features/<name>/`` (skipping finished splits).

    Members that share an input side (``image_size`` x largest scale) and ``aspect`` are extracted in one pass
    over the images, each image decoded once for all of them (same descriptors as one at a time).
    ``ids_by_split``: the splits' ids when the caller has them already (a folder scan of millions of files
    is not free); read from the data root otherwise. ``source``: the ids name files (and crop boxes) of an
    :class:`~landmark_kit.data.ImageSource` instead of the Kaggle layout (any split names then)."""
    folders = [_member_folder(m, workdir) for m in members]
    device, models = resolve_device(cfg.device), {}
    for split in splits:
        ids = ids_by_split[split] if ids_by_split else split_ids(data_root, split, train_csv)
        if not ids:  # an absent split: zero rows of each member's width, taken from a split it has
            for folder in folders:
                widths = [npy_shape(f)[1] for f in sorted(folder.glob("*.npy")) if f.stem != split]
                if not widths:
                    raise RuntimeError(f"{folder}: the {split} split is empty and no other split is extracted")
                save_features(folder, split, np.zeros((0, widths[0])), [], cfg.store_dtype)
            continue
        name, mine = split, ids
        if cfg.world_size > 1:  # this rank's slice goes to its own part file, merged once all parts exist
            name, mine = f"{split}.part{cfg.rank:03d}of{cfg.world_size:03d}", ids[cfg.rank:: cfg.world_size]
        done = {m.name for m, f in zip(members, folders) if _is_done(f, split, ids)}
        if done:
            log.info("%s already extracted for %s", split, sorted(done))
        todo = [(m, f) for m, f in zip(members, folders) if m.name not in done]
        groups: dict[tuple[int, bool], list[tuple[MemberConfig, Path]]] = {}
        for m, f in todo:
            if not _is_done(f, name, mine):
                groups.setdefault(input_group(m), []).append((m, f))
        step = max(cfg.shard_size, 1)
        starts = list(range(0, len(mine), step))
        pieces = [(name if len(starts) == 1 else f"{name}.piece{n:05d}of{len(starts):05d}", start)
                  for n, start in enumerate(starts)]
        for (_, aspect), group in groups.items():
            for m, _ in group:
                if m.name not in models:
                    models[m.name] = build_member(m, device)
            for piece, start in pieces:
                chunk = mine[start: start + step]
                if all(_is_done(folder, piece, chunk) for _, folder in group):
                    log.info("%s already extracted for %s", piece, [m.name for m, _ in group])
                    continue  # finished before a kill
                feats, failures = describe_split_members(
                    [(models[m.name], m.image_size, tuple(m.scales), m.flip) for m, _ in group], data_root, split,
                    chunk, cfg.batch_size, cfg.workers, str(device), cfg.amp, aspect, cfg.decode, source)
                failed = pd.DataFrame([(f.image_id, f.reason) for f in failures], columns=["id", "reason"])
                for (m, folder), member_feats in zip(group, feats):
                    atomic_write_csv(failed, folder / f"{piece}.failed.csv")
                    save_features(folder, piece, member_feats, chunk, cfg.store_dtype)
            if len(pieces) > 1:
                for _, folder in group:
                    combine_pieces(folder, name, mine, [(piece, np.arange(start, min(start + step, len(mine))))
                                                        for piece, start in pieces])
        if cfg.world_size > 1:
            for _, folder in todo:
                merge_parts(folder, split, ids, cfg.world_size)
    return folders


def extract_member(member: MemberConfig, cfg: EnsembleConfig, data_root, workdir, splits=SPLITS, train_csv=None,
                   ids_by_split: dict[str, list[str]] | None = None) -> Path:
    """:func:`extract_members` for one member; returns its features folder."""
    return extract_members([member], cfg, data_root, workdir, splits, train_csv, ids_by_split)[0]


def merge_parts(folder: Path, split: str, ids: list[str], world_size: int) -> bool:
    """Interleave the ranks' part files back into ``<split>.npy`` (row order of ``ids``) once all exist."""
    names = [f"{split}.part{r:03d}of{world_size:03d}" for r in range(world_size)]
    if not all(_is_done(folder, n, ids[r::world_size]) for r, n in enumerate(names)):
        return False
    combine_pieces(folder, split, ids, [(n, np.arange(r, len(ids), world_size)) for r, n in enumerate(names)])
    return True


def joined_features(members: list[MemberConfig], workdir, split: str, whiten_split: str = "index",
                    whitenings: dict[str, dict[str, np.ndarray]] | None = None,
                    rows: slice | None = None) -> tuple[np.ndarray, list[str]]:
    """Weighted concatenation of the members' descriptors of one split, L2-normalised; members with
    ``whiten`` are PCA-whitened first, as learned on their ``whiten_split`` descriptors. ``whitenings``: a
    dict the caller keeps across calls (same ``whiten_split``), so each member's whitening is fitted once.
    ``rows``: only these rows (a split too large for memory joined block by block); the ids stay the split's."""
    whitenings = {} if whitenings is None else whitenings
    parts, ids = [], None
    for m in members:
        folder = Path(workdir) / "features" / m.name
        feats, member_ids = load_features(folder, split)
        if ids is not None and member_ids != ids:
            raise RuntimeError(f"member {m.name} has different {split} ids from the others")
        ids = member_ids
        feats = np.asarray(feats if rows is None else feats[rows], dtype=np.float32)
        if m.whiten:
            if m.name not in whitenings:
                whitenings[m.name] = fit_whitening(np.asarray(load_features(folder, whiten_split)[0], np.float32))
            feats = apply_whitening(feats, whitenings[m.name])
        parts.append(m.weight * feats)
    joined = np.concatenate(parts, axis=1)
    return joined / np.maximum(np.linalg.norm(joined, axis=1, keepdims=True), 1e-12), ids


def fit_whitening(feats: np.ndarray, dim: int | None = None, shrink: float = 1e-3) -> dict[str, np.ndarray]:
    """PCA-whitening (mean, projection) learned on ``feats``: the top ``dim`` principal directions scaled by
    1 / sqrt(eigenvalue); ``shrink`` x the mean eigenvalue is added first so near-null directions stay tame."""
    dim = min(dim or feats.shape[1], feats.shape[1], max(len(feats) - 1, 1))
    mean = feats.mean(axis=0)
    centred = (feats - mean).astype(np.float64)
    values, vectors = np.linalg.eigh(centred.T @ centred / max(len(feats) - 1, 1))
    order = np.argsort(values)[::-1][:dim]
    values = values[order] + shrink * max(values.mean(), 1e-12)
    return {"mean": mean.astype(np.float32), "projection": (vectors[:, order] / np.sqrt(values)).astype(np.float32)}


def apply_whitening(feats: np.ndarray, whitening: dict[str, np.ndarray]) -> np.ndarray:
    out = (np.asarray(feats, np.float32) - whitening["mean"]) @ whitening["projection"]
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


def concatenate(members: list[MemberConfig], workdir, splits=SPLITS, dtype: str = "float32",
                whiten_split: str | None = None, whiten_dim: int | None = None,
                member_whiten_split: str = "index") -> Path:
    """Weighted concatenation of member descriptors, re-normalised, into ``features/ensemble/``; with
    ``whiten_split`` PCA-whitened as learned on that split (saved as ``whitening.npz``). Members with their
    own ``whiten`` are whitened before concatenation (on ``whiten_split``, default index)."""
    out = Path(workdir) / "features" / "ensemble"
    out.mkdir(parents=True, exist_ok=True)
    whitening, member_whitenings = None, {}
    if whiten_split is not None:
        whitening = fit_whitening(joined_features(members, workdir, whiten_split, member_whiten_split,
                                                  member_whitenings)[0], whiten_dim)
        with atomic_path(out / "whitening.npz") as tmp:
            np.savez(tmp, **whitening)
    for split in splits:
        joined, ids = joined_features(members, workdir, split, member_whiten_split, member_whitenings)
        if whitening is not None:
            joined = apply_whitening(joined, whitening)
        save_features(out, split, joined, ids, dtype)
    return out


def search_neighbours(workdir, k_train: int, k_index: int, index: str = "Flat", nprobe: int = 16) -> dict[str, Path]:
    """kNN of test descriptors among train and index descriptors, saved as ``neighbours/*.npz``."""
    feats = Path(workdir) / "features" / "ensemble"
    out = Path(workdir) / "neighbours"
    out.mkdir(parents=True, exist_ok=True)
    test, _ = load_features(feats, "test", mmap=False)
    paths = {}
    for db_split, k in (("train", k_train), ("index", k_index)):
        db, _ = load_features(feats, db_split)
        if len(db):
            scores, indices = knn(test, db, min(k, len(db)), index=index, nprobe=nprobe)
        else:  # no index split: no neighbours
            scores, indices = np.zeros((len(test), 0), np.float32), np.zeros((len(test), 0), np.int64)
        path = out / f"test_{db_split}.npz"
        with atomic_path(path) as tmp:
            np.savez(tmp, scores=scores, indices=indices)
        paths[db_split] = path
    return paths


RUNTIME = ("batch_size", "workers", "device", "amp", "decode", "rank", "world_size", "shard_size")  # no effect on results


def neighbours_key(cfg: EnsembleConfig) -> str:
    """Digest of everything the saved neighbours depend on: members (checkpoint digests included), their
    weights and whitening, concatenation and search settings; runtime settings aside."""
    members = [{**member_identity(m), "weight": m.weight, "whiten": m.whiten} for m in cfg.members]
    return config_digest({"members": members,
                          **{k: v for k, v in to_dict(cfg).items() if k != "members" and k not in RUNTIME}})


def note_run_folder(cfg: EnsembleConfig, workdir) -> None:
    """Say so when ``workdir`` was last searched for other members: descriptors stay per member (a member of
    another config or checkpoint is extracted again), the concatenation and neighbours are redone for ``cfg``."""
    saved_path = Path(workdir) / "ensemble.yaml"
    if not saved_path.is_file():
        return
    before, now = ([m.name for m in c.members] for c in (load_recipe(EnsembleConfig, saved_path), cfg))
    if before != now:
        log.warning("%s was searched for members %s (%s); concatenating and searching again for members %s",
                    workdir, ", ".join(before), saved_path, ", ".join(now))


def neighbours_ready(cfg: EnsembleConfig, workdir) -> bool:
    """True when ``workdir`` holds both neighbour files, searched for exactly this ensemble."""
    folder = Path(workdir) / "neighbours"
    if not all((folder / f"test_{s}.npz").is_file() for s in ("train", "index")) or not (folder / "key.json").is_file():
        return False
    return json.loads((folder / "key.json").read_text()).get("key") == neighbours_key(cfg)


def run_ensemble(cfg: EnsembleConfig, data_root, workdir, train_csv=None, reuse_from=()) -> dict[str, Path]:
    """The whole stage: extract every member, concatenate, search; returns the neighbour files.

    With ``world_size`` > 1 each rank extracts its slice; a rank that finds other ranks' parts still missing
    returns ``{}``, and the last one to finish merges, concatenates and searches.

    Args:
        cfg: the ensemble recipe (members, weights, search settings).
        data_root: a Kaggle-layout competition folder.
        workdir: the run directory (layout in this module's docstring).
        train_csv: labelled train list; default ``<data_root>/train.csv``.
        reuse_from: other run directories whose descriptors of identical members are taken instead of
            re-extracted (:func:`reuse_features`).
    """
    workdir = Path(workdir)
    require_checkpoints(cfg)
    note_run_folder(cfg, workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_recipe(cfg, workdir / "ensemble.yaml")
    (workdir / "neighbours" / "key.json").unlink(missing_ok=True)  # the neighbours are this ensemble's once searched
    for name, files in reuse_features(cfg.members, workdir, reuse_from).items():
        log.info("member %s: descriptors taken from %s", name, ", ".join(files))
    ids = {split: split_ids(data_root, split, train_csv) for split in SPLITS}  # once for every member
    extract_members(cfg.members, cfg, data_root, workdir, train_csv=train_csv, ids_by_split=ids)
    if not all(_is_done(workdir / "features" / m.name, split, ids[split]) for m in cfg.members for split in SPLITS):
        log.info("rank %d of %d done; the last rank to finish concatenates and searches", cfg.rank, cfg.world_size)
        return {}
    concatenate(cfg.members, workdir, dtype=cfg.store_dtype, whiten_split=cfg.whiten_split if cfg.whiten else None,
                whiten_dim=cfg.whiten_dim, member_whiten_split=cfg.whiten_split)
    paths = search_neighbours(workdir, cfg.k_train, cfg.k_index, cfg.index, cfg.nprobe)
    write_text(workdir / "neighbours" / "key.json", json.dumps({"key": neighbours_key(cfg)}))
    return paths
