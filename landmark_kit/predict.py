"""Stage 04: recognition and retrieval submissions from the neighbours stage 03 saved in a run directory.

Both tracks are chains of switchable steps (:func:`recognition_steps`, :func:`retrieval_steps`); a submission
is the last link of each chain, and ``landmark_kit.ablation`` scores every link.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .artifacts import DamagedArtifact, append_part, atomic_write_csv, discard, load_npz, parts, read_chunks
from .data import DataError, ImageSource, read_train_csv
from .ensemble import load_ensemble, load_features, run_ensemble, skipped_images
from .local import LocalConfig, extract_local
from .photofolder import (LeaveOneOutDBA, leave_one_out_expand, leave_one_out_knn, leave_one_out_votes,
                          own_rows)
from .recognition import nearest_neighbour_labels, nonlandmark_penalty, soft_vote, suppress_frequent, verified_vote
from .recipes import config_digest, to_dict
from .reranking import diffusion_rerank, kreciprocal_rerank, superglobal_rerank
from .retrieval import (database_augment, discriminative_rerank, local_rerank, neighbour_lists, partition_rerank,
                        query_expand, soft_rerank)
from .search import knn
from .submission import write_submissions
from .verify import VerifyConfig, verify_pairs

log = logging.getLogger(__name__)


@dataclass
class PredictConfig:
    """Stage 04 recipe (``submissions/*.yaml``); the defaults are plain kNN top-1 recognition and kNN retrieval."""

    k: int = 1  # train neighbours that vote: 1 = nearest neighbour; > 1 = smlyaka 2019 soft-voting
    # labels predicted for more than this fraction of the test queries score -frequency (0 = off); the paper's
    # "more than 30 of ~118k test images" is 30 / 117,577 = 0.000255
    suppress_fraction: float = 0.0
    nonlandmark_pool: str | None = None  # a split of the run ("index") used as non-landmark pool (GLR2020)
    nonlandmark_k: int = 10  # pool neighbours whose mean similarity is subtracted
    nonlandmark_weight: float = 1.0
    verify_shortlist: int = 0  # > 0: RANSAC-verify this many train neighbours per query, then vote (k best)
    inlier_cap: float = 70.0  # t in min(t, inliers - floor) / t
    inlier_floor: float = 0.0  # chance-level inliers subtracted first (0 in the paper)
    verify_aggregate: str = "sum"  # per label: "sum" of the k best verified votes, or "max" (best single one)
    local: LocalConfig = field(default_factory=LocalConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    retrieval_k: int = 100
    dba_k: int = 0  # > 0: database-side augmentation, each index descriptor averaged with its dba_k neighbours
    qe_k: int = 0  # > 0: alpha-query expansion with the query's qe_k best index neighbours
    qe_alpha: float = 3.0  # neighbour weights similarity^alpha (DBA and QE)
    # > 0: the first N index neighbours re-sorted by similarity x sqrt(inliers), as in the blog post "Metric
    # Learning for Landmark Image Recognition"
    local_rerank: int = 0
    local_fusion: float = 0.0  # > 0: ... by similarity + local_fusion x inliers / (inliers + local_half) instead
    local_half: float = 10.0  # inliers at which the fused bonus is half of local_fusion
    kreciprocal: int = 0  # > 0: k-reciprocal re-ranking of the first N (Zhong et al., CVPR 2017)
    kreciprocal_k1: int = 10
    kreciprocal_lambda: float = 0.3  # weight of the original distance beside the Jaccard distance
    superglobal: int = 0  # > 0: SuperGlobal re-ranking (MDescAug) of the first N (Shao et al., ICCV 2023)
    superglobal_k: int = 9
    superglobal_beta: float = 0.15
    diffusion: int = 0  # > 0: diffusion re-ranking of the first N (Iscen et al., CVPR 2017)
    diffusion_k: int = 10  # reciprocal nearest neighbours in the graph of the query and its first N
    diffusion_alpha: float = 0.99  # share of each step's relevance passed on to neighbours (0 < alpha < 1)
    soft_rerank: bool = False  # GLR2021 soft up/down: similarity +up x confidence (same label), -down x (other)
    rerank_up: float = 1.0
    rerank_down: float = 1.0
    rerank: bool = False  # discriminative re-ranking: index images of the query's predicted label move ahead
    append_positives: bool = True  # with rerank: then add that label's index images not yet retrieved
    rerank_first: bool = False  # discriminative / soft re-ranking before local-feature re-ranking (default after)
    rerank_confident: float = 1.0  # re-rank only this fraction of the queries, those with the best label scores


AGGREGATES = ("sum", "max")
HANDFUL = 5  # a count-based cut-off below this many queries is warned about: it suppresses real landmarks


def check_config(cfg: PredictConfig) -> PredictConfig:
    """Refuse values no step can use, before any work is done."""
    if cfg.nonlandmark_pool and cfg.nonlandmark_pool not in ("index", "test", "train"):
        raise DataError(f"nonlandmark_pool must name a split of the run (index, test, train), found "
                        f"{cfg.nonlandmark_pool!r}")
    if cfg.verify_aggregate not in AGGREGATES:
        raise DataError(f"verify_aggregate must be one of {AGGREGATES}, found {cfg.verify_aggregate!r}")
    for name in ("suppress_fraction", "rerank_confident"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise DataError(f"{name} is a fraction of the test queries (0..1), found {getattr(cfg, name)!r}")
    if not 0.0 <= cfg.kreciprocal_lambda <= 1.0:
        raise DataError(f"kreciprocal_lambda weighs the original distance (0..1), found {cfg.kreciprocal_lambda!r}")
    for name in ("local_fusion", "local_half", "superglobal_beta", "kreciprocal_k1", "superglobal_k"):
        if getattr(cfg, name) < 0:
            raise DataError(f"{name} must be >= 0, found {getattr(cfg, name)!r}")
    if not 0.0 < cfg.diffusion_alpha < 1.0:
        raise DataError(f"diffusion_alpha is the share of relevance passed on each step (strictly between 0 and 1), "
                        f"found {cfg.diffusion_alpha!r}")
    if cfg.diffusion_k < 1:
        raise DataError(f"diffusion_k counts the nearest neighbours of the graph (>= 1), found {cfg.diffusion_k!r}")
    return cfg


@dataclass
class RunData:
    """What stage 04 reads from a stage-03 run directory: ids, train labels, the saved neighbours."""

    workdir: Path
    test_ids: list[str]
    train_ids: list[str]
    index_ids: list[str]
    train_labels: np.ndarray
    train_scores: np.ndarray  # (Q, k_train) test -> train similarities, best first
    train_neighbours: np.ndarray
    index_scores: np.ndarray  # (Q, k_index) test -> index
    index_neighbours: np.ndarray
    cache: dict = field(default_factory=dict)  # in-memory results reused across recipes (tuning)
    # every-photo-a-query runs (landmark_kit.photofolder): per split, the row of each test query's own image
    # there (-1 none), left out of every search; and the split whose files every split's images are
    own: dict[str, np.ndarray] = field(default_factory=dict)
    photo_split: str | None = None

    @property
    def features(self) -> Path:
        return self.workdir / "features" / "ensemble"

    def search(self, queries: np.ndarray, split: str, database: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """kNN of the test queries among ``database`` (descriptors of ``split``), each query's own image left
        out in every-photo runs."""
        if split in self.own:
            return leave_one_out_knn(queries, database, k, self.own[split])
        return knn(queries, database, min(k, len(database)))

    def local_splits(self, db_split: str) -> tuple[str, str]:
        """The splits whose local features verify test -> ``db_split`` pairs: in every-photo runs one split for
        all, so each photo is extracted once and a pair verified once for both tracks."""
        return (self.photo_split, self.photo_split) if self.photo_split else ("test", db_split)


def load_run(data_root, workdir, train_csv=None) -> RunData:
    """Ids, labels and neighbour files of a run directory (stage 03 must have finished). A damaged descriptor or
    neighbour file is removed (logged) and stage 03 run again from the folder's ``ensemble.yaml``: it redoes
    only what is missing, so the run reads as if nothing had happened."""
    workdir = Path(workdir)
    try:
        return _read_run(data_root, workdir, train_csv)
    except DamagedArtifact as damage:
        if not (workdir / "ensemble.yaml").is_file():
            raise
        discard(damage, then="running stage 03 again for it")
    run_ensemble(load_ensemble(workdir / "ensemble.yaml"), data_root, workdir, train_csv)
    return _read_run(data_root, workdir, train_csv)


def _read_run(data_root, workdir: Path, train_csv=None) -> RunData:
    """:func:`load_run` without the repair: every file read once, damage raised."""
    feats = workdir / "features" / "ensemble"
    ids = {split: load_features(feats, split)[1] for split in ("test", "train", "index")}
    train = read_train_csv(train_csv or Path(data_root) / "train.csv").set_index("id")
    missing = [i for i in ids["train"] if i not in train.index]
    if missing:
        raise DataError(f"{workdir}: {len(missing)} train descriptor id(s) not in the train CSV, e.g. {missing[0]}")
    rec = load_npz(workdir / "neighbours" / "test_train.npz")
    ret = load_npz(workdir / "neighbours" / "test_index.npz")
    return RunData(workdir, ids["test"], ids["train"], ids["index"],
                   train.loc[ids["train"], "landmark_id"].to_numpy(dtype=np.int64),
                   rec["scores"], rec["indices"], ret["scores"], ret["indices"])


def shortlist_inliers(cfg: PredictConfig, data_root, workdir, test_ids: list[str], db_ids: list[str],
                      neighbours: np.ndarray, db_split: str = "train", cache: dict | None = None,
                      progress: bool = True, query_split: str = "test", query_source: ImageSource | None = None,
                      db_source: ImageSource | None = None) -> np.ndarray:
    """RANSAC inliers between each test query and its shortlisted ``db_split`` neighbours ``(Q, S)``. Local
    features of both splits are cached (resumable) under ``workdir/local`` and read per chunk of pairs; the inlier
    counts go to ``local/pairs/test-<split>-<settings digest>/part_NNNNN.npz``, one file per
    ``verify.save_every`` pairs, so a killed run loses at most one chunk and a pair is verified once per setting across
    reruns and tuning candidates. ``cache``: a dict kept by the caller, so those counts are read once. Queries of
    another split name, or images named by :class:`ImageSource` s (files, crop boxes), go through ``query_split``,
    ``query_source`` and ``db_source``."""
    rows, cols = np.nonzero(neighbours >= 0)
    pairs = [(test_ids[q], db_ids[neighbours[q, j]]) for q, j in zip(rows, cols)]
    digest = f"{config_digest(cfg.local.cache_key())}-{config_digest(_matching_key(cfg.verify))}"
    store = Path(workdir) / "local" / "pairs" / f"{query_split}-{db_split}-{digest}"
    cache = {} if cache is None else cache
    if store not in cache:
        cache[store] = _read_pairs(store)
    known = cache[store]
    todo = sorted({p for p in pairs if p not in known})
    if todo:
        queries = extract_local(cfg.local, data_root, query_split, sorted({a for a, _ in todo}),
                                Path(workdir) / "local", source=query_source)
        database = extract_local(cfg.local, data_root, db_split, sorted({b for _, b in todo}),
                                 Path(workdir) / "local", source=db_source)
        with tqdm(total=len(todo), desc=f"verify {query_split}-{db_split}", unit="pair", disable=not progress) as bar:
            for start in range(0, len(todo), cfg.verify.save_every):
                chunk = todo[start: start + cfg.verify.save_every]
                inliers = verify_pairs(chunk, queries, cfg.verify, db_feats=database)
                _write_pairs(store, chunk, inliers)
                known.update(zip(chunk, inliers.tolist()))
                bar.update(len(chunk))
    inliers = np.zeros(neighbours.shape, np.int64)
    inliers[rows, cols] = [known[p] for p in pairs]
    return inliers


def _read_pairs(folder: Path) -> dict[tuple[str, str], int]:
    """Every finished chunk of a pair cache (and the single file of the former layout, ``<folder>.npz``); a
    damaged chunk is removed (logged), so its pairs are verified again."""
    known: dict[tuple[str, str], int] = {}
    for z in read_chunks([folder.with_suffix(".npz"), *parts(folder)]):
        known.update(zip(zip(z["query"].tolist(), z["database"].tolist()), z["inliers"].tolist()))
    return known


def _write_pairs(folder: Path, pairs: list[tuple[str, str]], inliers: np.ndarray) -> Path:
    """One more chunk of the pair cache, written atomically."""
    return append_part(folder, query=np.array([a for a, _ in pairs], dtype=str),
                       database=np.array([b for _, b in pairs], dtype=str), inliers=np.asarray(inliers, np.int64))


def _matching_key(cfg: VerifyConfig) -> dict:
    """The matching settings that change inlier counts (workers, devices and batch sizes do not)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in ("workers", "device", "gpu_batch", "save_every")}


def index_predictions(run: RunData, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted label and confidence of every index image from its train neighbours (soft-voting over k);
    the index -> train search is kept in ``run.cache`` for the widest k asked so far. Every-photo runs give
    (queries, index images) tables instead: an image's vote leaves out its own photo and the query's, as if
    neither were a train image (:func:`~landmark_kit.photofolder.leave_one_out_votes`)."""
    k = max(k, 1)
    if "train" in run.own:
        key = ("index_train_loo", k)
        if key not in run.cache:
            index, _ = load_features(run.features, "index")
            train, _ = load_features(run.features, "train")
            s, r = leave_one_out_knn(index, train, k + 1, own_rows(run.index_ids, run.train_ids))
            run.cache[key] = leave_one_out_votes(s, r, run.train_labels, k, run.own["train"])
        return run.cache[key]
    cached = run.cache.get("index_train")
    if cached is None or cached[0].shape[1] < min(k, len(run.train_ids)):
        index, _ = load_features(run.features, "index")
        train, _ = load_features(run.features, "train")
        cached = run.cache["index_train"] = knn(index, train, min(max(k, 20), len(train)))
    return soft_vote(cached[0], cached[1], run.train_labels, k)


def pool_similarities(run: RunData, pool: str, k: int) -> np.ndarray:
    """Similarities of each test query to its ``k`` nearest images of the run's split ``pool`` (cached)."""
    key = ("pool", pool, k)
    if key not in run.cache:
        pool_feats = load_features(run.features, pool)[0]
        if not len(pool_feats):
            raise DataError(f"nonlandmark_pool {pool!r} is empty in {run.workdir} (no {pool}/ folder?); "
                            f"use another split of the run, e.g. test")
        queries = load_features(run.features, "test")[0]
        run.cache[key] = run.search(queries, pool, pool_feats, k)[0]
    return run.cache[key]


def confident_queries(scores: np.ndarray, fraction: float) -> np.ndarray:
    """Mask of the ``fraction`` of queries with the highest label scores (ties broken by position)."""
    if fraction >= 1.0:
        return np.ones(len(scores), bool)
    keep = int(round(fraction * len(scores)))
    mask = np.zeros(len(scores), bool)
    mask[np.argsort(-np.asarray(scores, np.float64), kind="stable")[:keep]] = True
    return mask


def recognition_steps(cfg: PredictConfig, run: RunData, data_root) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """The recognition chain, one ``(step name, labels, scores)`` per step switched on in ``cfg``, each
    building on the previous: kNN top-1, soft-voting, spatial verification of a shortlist, non-landmark
    penalty, suppression. A bad value fails here, before any verification work."""
    check_config(cfg)
    labels, scores = nearest_neighbour_labels(run.train_scores, run.train_neighbours, run.train_labels)
    yield "kNN top-1", labels, scores
    if cfg.k > 1:
        labels, scores = soft_vote(run.train_scores, run.train_neighbours, run.train_labels, cfg.k)
        yield f"+ soft-voting (k={cfg.k})", labels, scores
    if cfg.verify_shortlist > 0:
        if cfg.verify_shortlist > run.train_neighbours.shape[1]:
            log.warning("verify_shortlist %d > the %d train neighbours stage 03 kept (k_train): verifying %d",
                        cfg.verify_shortlist, run.train_neighbours.shape[1], run.train_neighbours.shape[1])
        shortlist = run.train_neighbours[:, : cfg.verify_shortlist]
        query_split, db_split = run.local_splits("train")
        inliers = shortlist_inliers(cfg, data_root, run.workdir, run.test_ids, run.train_ids, shortlist, db_split,
                                    cache=run.cache, query_split=query_split)
        voters = cfg.k if cfg.verify_aggregate == "sum" else 1
        labels, scores = verified_vote(run.train_scores[:, : cfg.verify_shortlist], shortlist, run.train_labels,
                                       inliers, voters, cfg.inlier_cap, cfg.inlier_floor)
        how = f"sum of {voters}" if cfg.verify_aggregate == "sum" else "best single"
        yield (f"+ spatial verification ({cfg.local.backend}, shortlist {cfg.verify_shortlist}, {how})", labels,
               scores)
    if cfg.nonlandmark_pool:
        similarities = pool_similarities(run, cfg.nonlandmark_pool, cfg.nonlandmark_k)
        scores = nonlandmark_penalty(scores, similarities, cfg.nonlandmark_weight)
        yield f"+ non-landmark penalty ({cfg.nonlandmark_pool}, k={cfg.nonlandmark_k})", labels, scores
    if cfg.suppress_fraction > 0:
        limit = cfg.suppress_fraction * len(run.test_ids)
        if limit < HANDFUL:
            log.warning("distractor suppression: suppress_fraction %g of %d test queries lets a label be predicted "
                        "only %g time(s) before it is suppressed; on so few queries true landmarks repeat that "
                        "often (choose it with --tune-on, or leave it off)", cfg.suppress_fraction,
                        len(run.test_ids), limit)
        yield (f"+ distractor suppression (> {cfg.suppress_fraction:g} of queries = {limit:g})", labels,
               suppress_frequent(labels, scores, limit))


def retrieval_steps(cfg: PredictConfig, run: RunData, data_root, query_labels: np.ndarray,
                    query_scores: np.ndarray | None = None) -> Iterator[tuple[str, list[np.ndarray] | np.ndarray]]:
    """The retrieval chain, one ``(step name, index rows)`` per step switched on in ``cfg``: kNN, DBA/QE
    (a new search), training-free global re-ranking (k-reciprocal, SuperGlobal, diffusion), then local-feature
    re-ranking of the first rows and label re-ranking (soft up/down and/or the hard partition of
    discriminative re-ranking, with the queries' recognised labels ``query_labels``; only the
    ``rerank_confident`` fraction with the best ``query_scores``) in the order ``rerank_first`` says, then
    appended positives."""
    check_config(cfg)
    rows, scores = run.index_neighbours, run.index_scores
    yield "kNN", rows
    if cfg.dba_k > 0 or cfg.qe_k > 0:
        index = np.asarray(load_features(run.features, "index")[0], np.float32)
        queries = np.asarray(load_features(run.features, "test")[0], np.float32)
        k = min(max(cfg.retrieval_k, run.index_neighbours.shape[1]), len(index))
        if "index" in run.own:  # leave-one-out: the query's own image is not in the index, nor in its DBA
            own = run.own["index"]
            dba = LeaveOneOutDBA(index, cfg.dba_k, cfg.qe_alpha)
            scores, rows = dba.search(queries, k, own)
            if cfg.qe_k > 0:
                expanded = leave_one_out_expand(queries, dba, scores, rows, cfg.qe_k, cfg.qe_alpha, own)
                scores, rows = dba.search(expanded, k, own)
        else:
            if cfg.dba_k > 0:
                index = database_augment(index, cfg.dba_k, cfg.qe_alpha)
            scores, rows = knn(queries, index, k)
            if cfg.qe_k > 0:
                scores, rows = knn(query_expand(queries, index, scores, rows, cfg.qe_k, cfg.qe_alpha), index, k)
        names = [f"DBA (k={cfg.dba_k})"] * (cfg.dba_k > 0) + [f"alpha-QE (k={cfg.qe_k})"] * (cfg.qe_k > 0)
        yield f"+ {', '.join(names)} (alpha={cfg.qe_alpha:g})", rows
    if cfg.kreciprocal > 0 or cfg.superglobal > 0 or cfg.diffusion > 0:
        index = load_features(run.features, "index")[0]
        queries = load_features(run.features, "test")[0]
        if cfg.kreciprocal > 0:
            rows, scores = kreciprocal_rerank(rows, scores, queries, index, cfg.kreciprocal, cfg.kreciprocal_k1,
                                              cfg.kreciprocal_lambda)
            yield f"+ k-reciprocal re-ranking (top {cfg.kreciprocal}, k1={cfg.kreciprocal_k1})", rows
        if cfg.superglobal > 0:
            rows, scores = superglobal_rerank(rows, scores, queries, index, cfg.superglobal, cfg.superglobal_k,
                                              cfg.superglobal_beta)
            yield f"+ SuperGlobal re-ranking (top {cfg.superglobal}, k={cfg.superglobal_k})", rows
        if cfg.diffusion > 0:
            rows, scores = diffusion_rerank(rows, scores, queries, index, cfg.diffusion, cfg.diffusion_k,
                                            cfg.diffusion_alpha)
            yield f"+ diffusion re-ranking (top {cfg.diffusion}, k={cfg.diffusion_k})", rows
    labels = np.asarray(query_labels)
    if cfg.rerank_confident < 1.0 and query_scores is not None:
        labels = np.where(confident_queries(query_scores, cfg.rerank_confident), labels, -1)
    index_labels = confidence = None
    if cfg.soft_rerank or cfg.rerank:
        index_labels, confidence = index_predictions(run, cfg.k)
    confident = f", top {cfg.rerank_confident:g} of queries" if cfg.rerank_confident < 1.0 else ""
    for stage in (("label", "local") if cfg.rerank_first else ("local", "label")):
        if stage == "local" and cfg.local_rerank > 0:
            if cfg.local_rerank > rows.shape[1]:
                log.warning("local_rerank %d > the %d index neighbours searched (k_index): re-ranking %d",
                            cfg.local_rerank, rows.shape[1], rows.shape[1])
            top = rows[:, : cfg.local_rerank]
            query_split, db_split = run.local_splits("index")
            inliers = shortlist_inliers(cfg, data_root, run.workdir, run.test_ids, run.index_ids, top, db_split,
                                        cache=run.cache, query_split=query_split)
            rows, scores = local_rerank(rows, scores, inliers, cfg.local_fusion, cfg.local_half)
            how = f", fused {cfg.local_fusion:g} x saturating inliers" if cfg.local_fusion > 0 else ""
            yield f"+ local-feature re-ranking ({cfg.local.backend}, top {cfg.local_rerank}{how})", rows
        if stage == "label" and cfg.soft_rerank:
            rows, scores = soft_rerank(rows, scores, labels, index_labels, confidence / max(cfg.k, 1), cfg.rerank_up,
                                       cfg.rerank_down)
            yield f"+ soft up/down re-ranking (up {cfg.rerank_up:g}, down {cfg.rerank_down:g}{confident})", rows
        if stage == "label" and cfg.rerank:
            rows, scores = partition_rerank(rows, scores, labels, index_labels)
            yield f"+ discriminative re-ranking{confident}", rows
    if cfg.rerank and cfg.append_positives:
        yield "+ appended positives", discriminative_rerank(rows, labels, index_labels, confidence, cfg.retrieval_k,
                                                            append=True, own=run.own.get("index"))


def predict(
    data_root: str | os.PathLike, workdir: str | os.PathLike, out_dir: str | os.PathLike, train_csv=None,
    cfg: PredictConfig | None = None,
) -> tuple[Path, Path]:
    """Both CSVs from the last step of each chain in ``cfg``, written to ``out_dir`` and validated.

    Args:
        data_root: the Kaggle-layout competition folder (test / index / train images, ``train.csv``).
        workdir: stage 03's run directory (its features and saved neighbours are read, never recomputed here).
        out_dir: where ``recognition.csv``, ``retrieval.csv`` and ``skipped.csv`` are written (atomically).
        train_csv: the train list whose labels are voted (default ``<data_root>/train.csv``).
        cfg: the post-processing recipe (default: plain kNN top-1 and the ranked index list).

    Returns:
        The paths of the recognition and retrieval CSVs.
    """
    cfg = cfg or PredictConfig()
    run = load_run(data_root, workdir, train_csv)
    *_, (_, labels, scores) = recognition_steps(cfg, run, data_root)
    *_, (_, rows) = retrieval_steps(cfg, run, data_root, labels, scores)
    retrieved = neighbour_lists(rows, run.index_ids, cfg.retrieval_k)
    paths = write_submissions(out_dir, run.test_ids, labels, scores, retrieved, run.index_ids)
    skipped = skipped_images(workdir)
    atomic_write_csv(skipped, Path(out_dir) / "skipped.csv")
    if len(skipped):
        log.warning("%d unreadable image(s) went without descriptors or local features (every test id still has "
                    "a row): listed in %s", skipped["id"].nunique(), Path(out_dir) / "skipped.csv")
    return paths
