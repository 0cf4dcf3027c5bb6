"""Every photo a query: tuning on a labelled photo folder (``--tune-on <folder>``) without halving it.

A folder in a layout :mod:`landmark_kit.folders` reads (one folder per landmark plus ``distractors/``, or flat
``<label>__<name>`` files; other files such as a README or a manifest are ignored) becomes a Kaggle-layout
working copy in which every photo is a test query, the labelled photos are the train set and every photo is
in the index. Each query's own image is left out of its neighbour lists by id (never by score), so a labelled
photo is recognised against all the others and retrieves the rest; distractors are non-landmark queries and
index clutter. N labelled photos give N queries per track instead of the half a train / test split leaves.
JPEGs are linked, not copied; descriptors are extracted once per photo (the train and index splits are row
subsets of the test split) and local features once per photo (every split reads the test split's files).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .artifacts import atomic_path, atomic_write_csv, write_text
from .data import DataError, image_path
from .ensemble import EnsembleConfig, concatenate, extract_members, load_features, require_checkpoints, save_features
from .folders import collect, photo_id, write_jpeg
from .recognition import soft_vote
from .search import knn
from .submission import write_recognition, write_retrieval

log = logging.getLogger(__name__)
KAGGLE_FILES = ("train.csv", "recognition_solution.csv", "retrieval_solution.csv")
PHOTO_SPLIT = "test"  # the split whose files every split of the working copy reads
JPEG_MAGIC = b"\xff\xd8\xff"


def is_kaggle_layout(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is a labelled Kaggle-layout competition (train.csv and both solution CSVs)."""
    return all((Path(folder) / name).is_file() for name in KAGGLE_FILES)


def plan(src: str | os.PathLike) -> pd.DataFrame:
    """One row per photo of ``src``: file, id, landmark name ('' for distractors), landmark_id (-1 for them).
    Refuses a folder without two labelled landmarks, naming it."""
    items = collect(src)
    frame = pd.DataFrame(items, columns=["file", "landmark"])
    frame["id"] = [photo_id(f) for f in frame["file"]]
    if frame["id"].duplicated().any():
        clash = frame[frame["id"].duplicated(keep=False)]["file"].tolist()
        raise DataError(f"{src}: photos {clash[:2]} share an id (sha1 prefix collision); rename one")
    labels = sorted(x for x in frame["landmark"].unique() if x)
    if not labels:
        raise DataError(f"--tune-on {src}: no labelled photos, only distractors; name photos '<landmark>__<name>' "
                        f"or put them in one folder per landmark")
    if len(labels) < 2:
        raise DataError(f"--tune-on {src}: one label only ({labels[0]}); recognition needs photos of at least two "
                        f"landmarks")
    label_of = {name: i for i, name in enumerate(labels)}
    frame["landmark_id"] = frame["landmark"].map(label_of).fillna(-1).astype(np.int64)
    single = frame[frame["landmark_id"] >= 0]["landmark"].value_counts()
    if (single == 1).any():
        log.warning("%s: %d landmark(s) with one photo (e.g. %s): their photo is a recognition query no other photo "
                    "can answer, and no retrieval query", src, int((single == 1).sum()), single[single == 1].index[0])
    return frame.sort_values("id", ignore_index=True)


def _link_photo(src: Path, dst: Path) -> None:
    """``dst`` names ``src``: a symbolic link for a JPEG (no bytes copied), a re-encoded JPEG for other formats;
    a finished ``dst`` is kept (resumable)."""
    if dst.is_symlink() and Path(os.readlink(dst)) == src:
        return
    if dst.is_file() and not dst.is_symlink():
        return
    with src.open("rb") as handle:
        is_jpeg = handle.read(3) == JPEG_MAGIC
    if not is_jpeg:
        write_jpeg(src, dst)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(src)


def working_copy(src: str | os.PathLike, out: str | os.PathLike) -> pd.DataFrame:
    """Write the every-photo working copy of ``src`` into ``out``: ``test/`` (every photo; ``train`` and
    ``index`` link to it), ``train.csv`` (the labelled photos) and both solutions, where a labelled photo's
    retrieval ground truth is the other photos of its landmark. Returns :func:`plan`'s frame."""
    src, out = Path(src).resolve(), Path(out)
    photos = plan(src)
    for file, image_id in zip(photos["file"], photos["id"]):
        _link_photo(src / file, image_path(out, PHOTO_SPLIT, image_id))
    for split in ("train", "index"):
        if not (out / split).is_symlink():
            (out / split).symlink_to(PHOTO_SPLIT, target_is_directory=True)
    labelled = photos[photos["landmark_id"] >= 0]
    atomic_write_csv(labelled[["id", "landmark_id"]], out / "train.csv")
    ids, labels = photos["id"].tolist(), photos["landmark_id"].to_numpy()
    usage = ["Public" if i % 2 == 0 else "Private" for i in range(len(ids))]
    atomic_write_csv(pd.DataFrame({"id": ids, "landmarks": [str(x) if x >= 0 else "" for x in labels],
                                   "Usage": usage}), out / "recognition_solution.csv")
    members = labelled.groupby("landmark_id")["id"].apply(list)
    images = [" ".join(i for i in members.get(x, []) if i != q) if x >= 0 else "" for q, x in zip(ids, labels)]
    atomic_write_csv(pd.DataFrame({"id": ids, "images": images,
                                   "Usage": [u if im else "Ignored" for u, im in zip(usage, images)]}),
                     out / "retrieval_solution.csv")
    write_recognition(out / "recognition_sample_submission.csv", ids, [None] * len(ids), [0.0] * len(ids))
    write_retrieval(out / "retrieval_sample_submission.csv", ids, [[] for _ in ids])
    write_text(out / "folders.json", json.dumps({"source": str(src), "mode": "every photo a query",
                                                 "photos": len(photos), "labelled": len(labelled),
                                                 "landmarks": int(labels.max()) + 1}, indent=2))
    return photos


def own_rows(query_ids: list[str], db_ids: list[str]) -> np.ndarray:
    """Row of each query's own image among ``db_ids`` (-1 when it is not there)."""
    return pd.Index(db_ids).get_indexer(query_ids).astype(np.int64)


def drop_own(scores: np.ndarray, rows: np.ndarray, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Neighbour lists without each query's own image (``own``: its row, -1 none), one column narrower: the
    own image's entry is removed wherever it ranks, else the last column."""
    if rows.shape[1] == 0:
        return scores, rows
    drop = rows == own[:, None]
    drop[:, -1] |= ~drop.any(axis=1)
    keep = np.argsort(drop, axis=1, kind="stable")[:, :-1]
    return np.take_along_axis(scores, keep, axis=1), np.take_along_axis(rows, keep, axis=1)


def leave_one_out_knn(queries: np.ndarray, database: np.ndarray, k: int, own: np.ndarray
                      ) -> tuple[np.ndarray, np.ndarray]:
    """kNN of ``queries`` among ``database`` without each query's own image (``own``: its database row, -1
    none): ``k + 1`` are searched and the own image dropped by id, so a duplicate photo still counts."""
    if not len(database):
        return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
    scores, rows = knn(queries, database, min(k + 1, len(database)))
    return drop_own(scores, rows, own)


class LeaveOneOutDBA:
    """alpha-DBA (:func:`~landmark_kit.retrieval.database_augment`) of a database as if each query's own image
    were not in it: where the own image is one of an image's ``dba_k`` neighbours, its share is replaced by the
    next neighbour's, pair by pair. Dense (queries x database): photo folders are small."""

    def __init__(self, database: np.ndarray, dba_k: int, alpha: float) -> None:
        db = self.db = np.asarray(database, np.float32)
        n = len(db)
        self.weights = np.zeros((n, n), np.float32)  # each image's neighbours' weights in its augmented sum
        self.nxt, self.w_nxt = np.zeros(n, np.int64), np.zeros(n, np.float32)  # the next neighbour after them
        if dba_k > 0 and n > 1:
            s, r = knn(db, db, min(dba_k + 2, n))
            w = np.where((r == np.arange(n)[:, None]) | (r < 0), 0.0, np.maximum(s, 0.0) ** alpha).astype(np.float32)
            head = min(dba_k + 1, n)
            np.add.at(self.weights, (np.repeat(np.arange(n), head), np.maximum(r[:, :head], 0).ravel()),
                      w[:, :head].ravel())
            if r.shape[1] > head:
                self.nxt, self.w_nxt = np.maximum(r[:, head], 0), w[:, head]
        self.summed = db + self.weights @ db  # unnormalised augmented descriptors

    def _shares(self, own: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per query and image: the own image's weight in that image's sum, the weight of the neighbour taking
        its place, and the own image's row (clipped)."""
        mine = np.maximum(own, 0)
        share = np.where((own >= 0)[:, None], self.weights[:, mine].T, 0.0)
        return share, np.where(share > 0, self.w_nxt[None], 0.0), mine

    def search(self, queries: np.ndarray, k: int, own: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """kNN of ``queries`` among the augmented descriptors, each query's own image (``own``: its row, -1
        none) out of every sum and of its list."""
        q, db, summed = np.asarray(queries, np.float32), self.db, self.summed
        has = own >= 0
        share, swap, mine = self._shares(own)
        x_own, x_nxt = db[mine], db[self.nxt]
        numerator = q @ summed.T - share * (q * x_own).sum(axis=1, keepdims=True) + swap * (q @ x_nxt.T)
        norm2 = ((summed * summed).sum(axis=1)[None] + share ** 2 * (x_own * x_own).sum(axis=1, keepdims=True)
                 + swap ** 2 * (x_nxt * x_nxt).sum(axis=1)[None] - 2 * share * (x_own @ summed.T)
                 + 2 * swap * (x_nxt * summed).sum(axis=1)[None] - 2 * share * swap * (x_own @ x_nxt.T))
        scores = numerator / np.sqrt(np.maximum(norm2, 1e-24))
        scores[np.flatnonzero(has), mine[has]] = -np.inf
        width = min(k, len(db) - int(has.any()))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :width]
        return np.take_along_axis(scores, order, axis=1).astype(np.float32), order.astype(np.int64)

    def descriptors(self, rows: np.ndarray, own: np.ndarray) -> np.ndarray:
        """The augmented, L2-normalised descriptors ``(Q, K, D)`` of each query's ``rows`` as if its own image
        (``own``) were not in the database: what query expansion after DBA may use."""
        share, swap, mine = self._shares(own)
        idx = np.maximum(rows, 0)
        take = np.take_along_axis
        out = (self.summed[idx] - take(share, idx, axis=1)[..., None] * self.db[mine][:, None]
               + take(swap, idx, axis=1)[..., None] * self.db[self.nxt[idx]])
        return out / np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)


def augmented_leave_one_out_knn(queries: np.ndarray, database: np.ndarray, k: int, own: np.ndarray, dba_k: int,
                                alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """kNN among alpha-DBA-augmented database descriptors as if each query's own image were not in the
    database (:class:`LeaveOneOutDBA`); its own row dropped too."""
    return LeaveOneOutDBA(database, dba_k, alpha).search(queries, k, own)


def leave_one_out_expand(queries: np.ndarray, dba: LeaveOneOutDBA, scores: np.ndarray, rows: np.ndarray, k: int,
                         alpha: float, own: np.ndarray) -> np.ndarray:
    """alpha-query expansion (:func:`~landmark_kit.retrieval.query_expand`) with the query's ``k`` best
    neighbours' augmented descriptors taken without its own image's share."""
    rows, scores = rows[:, :k], scores[:, :k]
    weights = np.where(rows >= 0, np.maximum(scores, 0.0) ** alpha, 0.0).astype(np.float32)
    summed = np.asarray(queries, np.float32) + np.einsum("nk,nkd->nd", weights, dba.descriptors(rows, own))
    return summed / np.maximum(np.linalg.norm(summed, axis=1, keepdims=True), 1e-12)


def leave_one_out_votes(scores: np.ndarray, rows: np.ndarray, train_labels: np.ndarray, k: int,
                        query_train: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each index image's soft-voted label and confidence (:func:`~landmark_kit.recognition.soft_vote` over
    ``k``) for each query, as if the query's photo were not a train image: ``scores`` / ``rows`` hold each index
    image's ``k + 1`` nearest train images (its own photo already left out), ``query_train`` each query's train
    row (-1 none). Where the query's photo is among an image's ``k`` voters, the ``k + 1``-th votes in its
    place. Returns two (queries, index images) tables; dense, like :class:`LeaveOneOutDBA`."""
    n, k = len(rows), max(1, k)
    pad = max(0, k + 1 - rows.shape[1])
    rows = np.pad(rows[:, : k + 1], ((0, 0), (0, pad)), constant_values=-1)
    scores = np.pad(scores[:, : k + 1], ((0, 0), (0, pad)))
    # voter sets: row p < k leaves out column p (the (k+1)-th steps in), the last row is the first k columns
    cols = np.array([[c for c in range(k + 1) if c != p] for p in range(k)] + [list(range(k))])
    labels, confidence = soft_vote(scores[:, cols].reshape(-1, k), rows[:, cols].reshape(-1, k), train_labels, k)
    labels, confidence = labels.reshape(n, k + 1), confidence.reshape(n, k + 1)
    position = np.full((n, len(train_labels)), k)  # each train image's place among an index image's voters
    voter, slot = np.nonzero(rows[:, :k] >= 0)
    position[voter, rows[voter, slot]] = slot
    has = query_train >= 0
    pick = np.where(has[:, None], position[:, np.maximum(query_train, 0)].T, k)  # (Q, N)
    images = np.arange(n)[None, :]
    return labels[images, pick], confidence[images, pick]


def photo_ids(root: str | os.PathLike) -> tuple[list[str], list[str]]:
    """Every photo's id and the labelled photos' ids of a working copy (from its solutions and train.csv)."""
    every = pd.read_csv(Path(root) / "recognition_solution.csv", dtype=str)["id"].tolist()
    labelled = pd.read_csv(Path(root) / "train.csv", dtype=str)["id"].tolist()
    return every, labelled


def extract_every_photo(cfg: EnsembleConfig, root: str | os.PathLike, workdir: str | os.PathLike) -> dict[str, Path]:
    """Stage 03 on a working copy: each member extracts every photo once (the test split), the train and index
    splits are written as its row subsets, then concatenation and a leave-one-out search
    (``neighbours/test_{train,index}.npz``, as stage 03 writes them)."""
    workdir = Path(workdir)
    require_checkpoints(cfg)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "ensemble.yaml").unlink(missing_ok=True)  # a repair by stage 03 would search without leaving out
    every, labelled = photo_ids(root)
    folders = extract_members(cfg.members, cfg, root, workdir, splits=(PHOTO_SPLIT,),
                              ids_by_split={PHOTO_SPLIT: every})
    for folder in folders:
        feats, ids = load_features(folder, PHOTO_SPLIT, mmap=False)
        for split, wanted in (("train", labelled), ("index", every)):
            save_features(folder, split, feats[own_rows(wanted, ids)], wanted, cfg.store_dtype)
    concatenate(cfg.members, workdir, dtype=cfg.store_dtype, whiten_split=cfg.whiten_split if cfg.whiten else None,
                whiten_dim=cfg.whiten_dim, member_whiten_split=cfg.whiten_split)
    feats = workdir / "features" / "ensemble"
    test, test_ids = load_features(feats, "test", mmap=False)
    paths = {}
    for split, k in (("train", cfg.k_train), ("index", cfg.k_index)):
        db, db_ids = load_features(feats, split)
        scores, rows = leave_one_out_knn(test, db, k, own_rows(test_ids, db_ids))
        path = paths[split] = workdir / "neighbours" / f"test_{split}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            np.savez(tmp, scores=scores, indices=rows)
    return paths
