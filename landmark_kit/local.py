"""Local features with one interface: keypoints ``(N, 4)`` = x, y, scale, angle and descriptors ``(N, D)``.

Backends: ``rootsift`` (OpenCV SIFT + RootSIFT, optionally ASIFT; no training, the default),
``kornia-sift`` (kornia's SIFT on GPU tensors when CUDA is present) and ``delg`` (the learned attention +
autoencoder head of a ``02_train.py`` checkpoint trained with ``local_head: true``). Features of a split are cached
in shards of ``shard_size`` images (``<dir>/<split>/shard_00000/``), each renamed into place whole: a killed run
loses at most one shard of work and continues where it stopped; readers memory-map the shards and take only the
images they need.

Backends are a registry (:func:`register_backend`): a new one is a function decorated with its name, here or in a
module ``landmark_kit/local_<name>.py``, which is imported the first time a recipe names it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
import pandas as pd
from PIL import Image
from torch.utils.data import DataLoader
from tqdm import tqdm

from .artifacts import DamagedArtifact, discard, load_npy, load_npz, write_text
from .recipes import add_plugin, config_digest, find_plugin
from .data import ImageDataset, ImageSource

log = logging.getLogger(__name__)


@dataclass
class LocalConfig:
    """Which local features, how many, at what resolution."""

    backend: str = "rootsift"
    max_keypoints: int = 1000
    contrast_threshold: float = 0.04  # OpenCV SIFT's; lower finds more keypoints on small or flat images
    max_side: int = 800  # images are downscaled so their long side is at most this
    affine_tilts: int = 0  # > 0: ASIFT (OpenCV AffineFeature) simulating this many tilts; survives grazing views
    shard_size: int = 256
    workers: int = 2
    device: str = "auto"  # kornia-sift and delg
    checkpoint: str | None = None  # delg: model.pt of a run trained with local_head: true
    scales: tuple[float, ...] = (0.7071, 1.0, 1.4142)  # delg: image pyramid

    def cache_key(self) -> dict:
        """The settings that change this backend's features (runtime knobs and other backends' options left
        out, so adding an option elsewhere keeps existing caches valid); a delg checkpoint by content."""
        key = {"backend": self.backend, "max_keypoints": self.max_keypoints, "max_side": self.max_side}
        return {**key, **backend(self.backend).key(self)}


Extractor = Callable[..., "FeatureStore"]


@dataclass(frozen=True)
class Backend:
    """A registered backend: ``extract(cfg, data_root, split, todo, store, progress, source)`` adds the features of
    the ids ``todo`` to ``store``; ``key(cfg)`` returns the settings that change them (they name the cache)."""

    extract: Extractor
    key: Callable[[LocalConfig], dict]


BACKENDS: dict[str, Backend] = {}


def register_backend(name: str, key: Callable[[LocalConfig], dict] = lambda cfg: {}
                     ) -> Callable[[Extractor], Extractor]:
    """Decorator: the function becomes local-feature backend ``name`` (``local.backend: name`` in recipes)."""
    def add(extract: Extractor) -> Extractor:
        add_plugin(BACKENDS, name, Backend(extract, key), "local-feature backend")
        return extract

    return add


def backend(name: str) -> Backend:
    """The backend registered as ``name``, importing ``landmark_kit.local_<name>`` first when it is not yet;
    an unknown name is refused with the registered ones."""
    return find_plugin(BACKENDS, name, "local-feature backend", f"{__package__}.local")


def _rootsift_key(cfg: LocalConfig) -> dict:
    tilts = {"affine_tilts": cfg.affine_tilts} if cfg.affine_tilts else {}
    return {"contrast_threshold": cfg.contrast_threshold, **tilts}


def _kornia_key(cfg: LocalConfig) -> dict:
    if cfg.affine_tilts:
        raise ValueError("affine_tilts (ASIFT) is a rootsift option; kornia-sift has no affine simulation")
    return {}


def _delg_key(cfg: LocalConfig) -> dict:
    if not cfg.checkpoint or not Path(cfg.checkpoint).is_file():
        raise ValueError(f"the delg backend needs local.checkpoint = a model.pt trained with local_head: "
                         f"true (got {cfg.checkpoint!r})")
    return {"scales": list(cfg.scales), "checkpoint_sha1": hashlib.sha1(Path(cfg.checkpoint).read_bytes()).hexdigest()}


@dataclass
class Features:
    """Local features of one image; ``size`` is (width, height) of the image they were extracted from."""

    keypoints: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]

    @classmethod
    def empty(cls, dim: int = 128, size: tuple[int, int] = (0, 0)) -> "Features":
        """No keypoints: a featureless or unreadable image (it verifies against nothing)."""
        return cls(np.zeros((0, 4), np.float32), np.zeros((0, dim), np.float32), size)


def _grey(img: Image.Image, max_side: int) -> np.ndarray:
    grey = np.asarray(img.convert("L"))
    scale = max_side / max(grey.shape)
    if scale < 1:
        grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return grey


def rootsift(
    img: Image.Image, max_keypoints: int = 1000, max_side: int = 800, contrast_threshold: float = 0.04,
    affine_tilts: int = 0,
) -> Features:
    """OpenCV SIFT keypoints with RootSIFT descriptors (L1-normalise, square root: Hellinger kernel).

    With ``affine_tilts`` the detector runs on affine-warped copies of the image (ASIFT, OpenCV's
    AffineFeature), which finds matches between views 50-70 degrees apart; the strongest ``max_keypoints``
    of all copies are kept.
    """
    grey = _grey(img, max_side)
    if affine_tilts > 0:
        sift = cv2.AffineFeature_create(cv2.SIFT_create(contrastThreshold=contrast_threshold), maxTilt=affine_tilts)
    else:
        sift = cv2.SIFT_create(nfeatures=max_keypoints, contrastThreshold=contrast_threshold)
    kps, desc = sift.detectAndCompute(grey, None)
    if desc is None or not kps:
        return Features.empty(size=(grey.shape[1], grey.shape[0]))
    order = np.argsort([-k.response for k in kps], kind="stable")[:max_keypoints]  # OpenCV may return ties
    desc = desc[order]
    desc = np.sqrt(desc / np.maximum(desc.sum(axis=1, keepdims=True), 1e-12)).astype(np.float32)
    kp = np.array([(kps[i].pt[0], kps[i].pt[1], kps[i].size, kps[i].angle) for i in order], np.float32)
    return Features(kp, desc, (grey.shape[1], grey.shape[0]))


class RootSiftTransform:
    """Picklable Dataset transform: PIL image -> Features (runs inside DataLoader workers)."""

    def __init__(self, cfg: LocalConfig) -> None:
        self.cfg = cfg

    def __call__(self, img: Image.Image) -> Features:
        return rootsift(img, self.cfg.max_keypoints, self.cfg.max_side, self.cfg.contrast_threshold,
                        self.cfg.affine_tilts)


def kornia_sift_batch(images: list[np.ndarray], max_keypoints: int, device: str) -> list[Features]:
    """kornia SIFT (scale pyramid, orientation, SIFT descriptor with RootSIFT) on grey images, one image
    at a time on ``device`` (kornia's detector takes a batch of one size; photos differ in size)."""
    import kornia.feature as KF
    import torch

    detector = KF.SIFTFeature(num_features=max_keypoints, upright=False, rootsift=True, device=torch.device(device))
    out = []
    with torch.inference_mode():
        for grey in images:
            t = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32) / 255)[None, None].to(device)
            lafs, _, desc = detector(t)
            centre = KF.get_laf_center(lafs)[0]
            scale = KF.get_laf_scale(lafs)[0].reshape(-1, 1)
            angle = KF.get_laf_orientation(lafs)[0].reshape(-1, 1)
            kp = torch.cat([centre, scale, angle], dim=1).cpu().numpy().astype(np.float32)
            out.append(Features(kp, desc[0].cpu().numpy().astype(np.float32), (grey.shape[1], grey.shape[0])))
    return out


SHARD_ARRAYS = ("ids", "offsets", "keypoints", "descriptors", "sizes")


class FeatureStore:
    """Sharded, resumable cache of local features for one split, read back by image id.

    A shard is a folder ``shard_NNNNN/`` of ``.npy`` arrays (ids, offsets, keypoints, float16 descriptors,
    sizes) written under a temporary name and renamed into place, so it is complete or absent. Reads memory-map
    the arrays and copy out only the images asked for: memory follows the ids read, not the store's size.
    Shards of the earlier single-file format (``shard_NNNNN.npz``) are still read."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._index: tuple[tuple[Path, ...], np.ndarray, np.ndarray, np.ndarray] | None = None

    def shards(self) -> list[Path]:
        return sorted(p for p in self.folder.glob("shard_*") if p.suffix == ".npz" or p.is_dir())

    def done_ids(self) -> set[str]:
        return set(self._locate()[1].tolist())

    def _locate(self) -> tuple[tuple[Path, ...], np.ndarray, np.ndarray, np.ndarray]:
        """(shards, ids sorted, shard number and row of each): rebuilt when shards were added; damaged ones are
        removed."""
        shards = tuple(self.shards())
        if self._index is None or self._index[0] != shards:
            shards = tuple(s for s in shards if _readable(s))
            ids = [np.asarray(_shard(s)["ids"]).astype(str) for s in shards]
            flat = np.concatenate(ids) if ids else np.zeros(0, str)
            shard_of = np.repeat(np.arange(len(ids)), [len(i) for i in ids])
            rows = np.concatenate([np.arange(len(i)) for i in ids]) if ids else np.zeros(0, np.int64)
            order = np.argsort(flat, kind="stable")
            self._index = shards, flat[order], shard_of[order], rows[order]
        return self._index

    def get(self, ids: Iterable[str]) -> dict[str, Features]:
        """Features of ``ids`` (each read from its shard's memory map); an id not in the store is a KeyError."""
        wanted = np.unique(np.asarray(list(ids), dtype=str))
        shards, flat, shard_of, rows = self._locate()
        at = np.minimum(np.searchsorted(flat, wanted), max(len(flat) - 1, 0))
        missing = wanted[flat[at] != wanted] if len(flat) else wanted
        if len(missing):
            raise KeyError(f"{self.folder}: no local features for {', '.join(missing[:5])}")
        out: dict[str, Features] = {}
        for shard in np.unique(shard_of[at]):
            arrays = _shard(shards[shard])
            offsets, kp, desc, sizes = (arrays[k] for k in SHARD_ARRAYS[1:])
            for position in np.flatnonzero(shard_of[at] == shard):
                row = rows[at[position]]
                lo, hi = int(offsets[row]), int(offsets[row + 1])
                out[str(wanted[position])] = Features(np.array(kp[lo:hi]), desc[lo:hi].astype(np.float32),
                                                      tuple(int(v) for v in sizes[row]))
        return out

    def failures(self) -> dict[str, str]:
        """Images stored without features because they could not be read: id -> reason."""
        out: dict[str, str] = {}
        for shard in self.shards():
            if (shard / "failed.csv").is_file():
                failed = pd.read_csv(shard / "failed.csv", dtype=str, keep_default_na=False)
                out.update(zip(failed["id"], failed["reason"]))
        return out

    def write_shard(self, ids: list[str], feats: list[Features], failed: dict[str, str] | None = None) -> Path:
        """One shard of concatenated keypoints/descriptors with per-image offsets, renamed into place whole;
        ``failed``: id -> reason of the images among ``ids`` that could not be read (``failed.csv``)."""
        import shutil
        import tempfile

        done = self.shards()  # numbered after the last: a damaged shard removed leaves a gap, never a clash
        path = self.folder / f"shard_{int(done[-1].stem.removeprefix('shard_')) + 1 if done else 0:05d}"
        counts = np.array([len(f.keypoints) for f in feats], np.int64)
        arrays = {
            "ids": np.array(ids, dtype=str),
            "offsets": np.concatenate([[0], np.cumsum(counts)]),
            "keypoints": np.concatenate([f.keypoints for f in feats]) if feats else np.zeros((0, 4), np.float32),
            "descriptors": (np.concatenate([f.descriptors for f in feats]) if feats
                            else np.zeros((0, 128), np.float32)).astype(np.float16),
            "sizes": np.array([f.size for f in feats], np.int32).reshape(-1, 2),
        }
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=self.folder))
        try:
            for name, array in arrays.items():
                np.save(tmp / f"{name}.npy", array)
            if failed:
                pd.DataFrame(sorted(failed.items()), columns=["id", "reason"]).to_csv(tmp / "failed.csv", index=False)
            os.rename(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @contextmanager
    def writer(self, shard_size: int):
        """``add(image_id, features, reason="")`` buffers (a reason marks an unreadable image, stored without
        features); a shard is written every ``shard_size`` images and at exit."""
        ids: list[str] = []
        feats: list[Features] = []
        failed: dict[str, str] = {}

        def add(image_id: str, features: Features, reason: str = "") -> None:
            ids.append(image_id)
            feats.append(features)
            if reason:
                failed[image_id] = reason
            if len(feats) >= shard_size:
                self.write_shard(ids, feats, failed)
                ids.clear()
                feats.clear()
                failed.clear()

        yield add
        if feats:
            self.write_shard(ids, feats, failed)

    def load_all(self) -> dict[str, Features]:
        """Every image of the split in memory (small sets, tests); :meth:`get` reads only what a job needs."""
        return self.get(self._locate()[1].tolist())


def _readable(path: Path) -> bool:
    """True when the shard at ``path`` is whole; a damaged one is removed (logged), so its images are extracted
    again."""
    try:
        _shard(path)
    except DamagedArtifact as damage:
        discard(damage, path)
        return False
    return True


def _shard(path: Path) -> dict[str, np.ndarray]:
    """The arrays of the shard at ``path``, cached by path, inode and ctime: a store deleted and written again in the
    same process is never served from the old maps."""
    stat = os.stat(path)
    return _shard_arrays(str(path), (stat.st_ino, stat.st_ctime_ns))


@lru_cache(maxsize=64)
def _shard_arrays(path: str, identity: tuple[int, int]) -> dict[str, np.ndarray]:
    """A shard's arrays: memory maps of a shard folder, or the arrays of a former ``.npz`` shard; each file's
    size and the arrays' lengths are checked (:class:`DamagedArtifact` otherwise)."""
    if path.endswith(".npz"):
        arrays = load_npz(path)
    else:
        missing = [k for k in SHARD_ARRAYS if not (Path(path) / f"{k}.npy").is_file()]
        if missing:
            raise DamagedArtifact(path, f"no {', '.join(missing)} array")
        arrays = {k: load_npy(Path(path) / f"{k}.npy") for k in SHARD_ARRAYS}
    images, offsets = len(arrays["ids"]), arrays["offsets"]
    if (len(offsets) != images + 1 or len(arrays["sizes"]) != images
            or not len(arrays["keypoints"]) == len(arrays["descriptors"]) == int(offsets[-1])):
        raise DamagedArtifact(path, "its arrays disagree on the number of images or keypoints")
    return {k: arrays[k] for k in SHARD_ARRAYS}


def extract_local(
    cfg: LocalConfig, data_root, split: str, ids: Iterable[str], out_dir, progress: bool = True,
    source: ImageSource | None = None,
) -> FeatureStore:
    """Extract (or finish extracting) local features of ``ids`` into ``out_dir/<backend>-<digest>/<split>/``.

    The folder is named by the digest of :meth:`LocalConfig.cache_key`: changing a setting that changes the
    features starts a fresh cache.

    Args:
        cfg: backend and its settings (keypoints, image side, workers, device).
        data_root: a Kaggle-layout competition folder.
        split: ``train``, ``test`` or ``index``.
        ids: the images to describe.
        out_dir: the cache root (``<run>/local``).
        progress: show a progress bar.
        source: the ids name files (with crop boxes) of an :class:`~landmark_kit.data.ImageSource` instead of
            the Kaggle layout under ``data_root``.
    """
    keyed = cfg.cache_key()
    store = FeatureStore(Path(out_dir) / f"{cfg.backend}-{config_digest(keyed)}" / split)
    write_text(store.folder.parent / "config.json", json.dumps(keyed, indent=2))
    done = store.done_ids()
    todo = [i for i in ids if i not in done]
    if not todo:
        return store
    return backend(cfg.backend).extract(cfg, data_root, split, todo, store, progress, source)


@register_backend("rootsift", _rootsift_key)
def _extract_rootsift(cfg: LocalConfig, data_root, split, todo, store, progress, source=None) -> FeatureStore:
    """OpenCV SIFT (+ ASIFT tilts) with RootSIFT descriptors, decoded and described in DataLoader workers."""
    dataset = ImageDataset(data_root, split, todo, RootSiftTransform(cfg), max_side=cfg.max_side, source=source)
    loader = DataLoader(dataset, batch_size=16, num_workers=cfg.workers, collate_fn=list)
    with tqdm(total=len(todo), desc=f"local features {split}", unit="img", disable=not progress) as bar, \
            store.writer(cfg.shard_size) as add:
        for batch in loader:
            for feats, position, failure in batch:
                if failure is not None:
                    log.warning("skipped %s image %s: %s", split, failure.image_id, failure.reason)
                    feats = Features.empty()
                add(todo[position], feats, failure.reason if failure is not None else "")
            bar.update(len(batch))
    return store


class TensorTransform:
    """Picklable Dataset transform: PIL image -> normalised ``(3, H, W)`` tensor, long side at most ``max_side``."""

    def __init__(self, max_side: int, mean, std) -> None:
        self.max_side, self.mean, self.std = max_side, mean, std

    def __call__(self, img: Image.Image):
        import torchvision.transforms.functional as TF

        scale = self.max_side / max(img.size)
        if scale < 1:
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        return TF.normalize(TF.to_tensor(img), self.mean, self.std)


@register_backend("delg", _delg_key)
def _extract_delg(cfg: LocalConfig, data_root, split, todo, store, progress, source=None) -> FeatureStore:
    """DELG keypoints/descriptors: DataLoader workers decode, the model runs one image (all scales) at a time."""
    from .checkpoint import load_trained, resolve_device
    from .delg import extract_delg
    from .models import input_normalisation

    device = str(resolve_device(cfg.device))
    model, _ = load_trained(cfg.checkpoint, device)
    if model.local is None:
        raise ValueError(f"{cfg.checkpoint} has no local head; train it with local_head: true")
    dataset = ImageDataset(data_root, split, todo, TensorTransform(cfg.max_side, *input_normalisation(model.backbone)),
                           max_side=cfg.max_side, source=source)
    loader = DataLoader(dataset, batch_size=None, num_workers=cfg.workers, pin_memory=device == "cuda")
    dim = model.local.encoder.out_channels
    with store.writer(cfg.shard_size) as add:
        for image, position, failure in tqdm(loader, desc=f"delg {split}", unit="img", disable=not progress):
            if failure is not None:
                log.warning("skipped %s image %s: %s", split, failure.image_id, failure.reason)
                add(todo[position], Features.empty(dim), failure.reason)
                continue
            kp, desc = extract_delg(model.backbone, model.local, model.local_level, image[None].to(device),
                                    cfg.scales, cfg.max_keypoints)
            add(todo[position], Features(kp, desc, (image.shape[2], image.shape[1])))
    return store


@register_backend("kornia-sift", _kornia_key)
def _extract_kornia(cfg: LocalConfig, data_root, split, todo, store, progress, source=None) -> FeatureStore:
    """kornia's SIFT on device tensors, one shard of images at a time."""
    from .checkpoint import resolve_device

    device = str(resolve_device(cfg.device))
    for start in tqdm(range(0, len(todo), cfg.shard_size), desc=f"kornia sift {split}", disable=not progress):
        chunk = todo[start: start + cfg.shard_size]
        greys, failed = {}, {}
        dataset = ImageDataset(data_root, split, chunk, max_side=cfg.max_side, source=source)
        for img, position, failure in map(dataset.__getitem__, range(len(dataset))):
            if failure is None:
                greys[chunk[position]] = _grey(img, cfg.max_side)
            else:  # not sent to kornia: its pyramid fails on a placeholder image
                log.warning("skipped %s image %s: %s", split, failure.image_id, failure.reason)
                failed[failure.image_id] = failure.reason
        feats = dict(zip(greys, kornia_sift_batch(list(greys.values()), cfg.max_keypoints, device)))
        store.write_shard(chunk, [feats.get(i, Features.empty()) for i in chunk], failed)
    return store
