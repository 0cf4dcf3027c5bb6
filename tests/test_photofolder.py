"""Every photo a query: leave-one-out searches on constructed descriptors, the working copy of a labelled photo
folder in both layouts, clear errors, and ``04_predict.py --tune-on <photo folder>`` (one folder and pooled)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from landmark_kit.data import DataError, image_path
from landmark_kit.intervals import Bootstrap
from landmark_kit.photofolder import (LeaveOneOutDBA, augmented_leave_one_out_knn, drop_own, leave_one_out_expand,
                                      leave_one_out_knn, leave_one_out_votes, own_rows, working_copy)
from landmark_kit.recognition import soft_vote
from landmark_kit.retrieval import (database_augment, discriminative_rerank, partition_rerank, query_expand,
                                    soft_rerank)
from landmark_kit.search import knn
from landmark_kit.submission import RECOGNITION, RETRIEVAL, Solution, read_solution
from landmark_kit.tuning import tune_folders
from test_stages import stage
from test_tuning import _blind_copy


def _unit(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_own_image_is_left_out_by_id_even_behind_a_duplicate():
    db = _unit(np.random.default_rng(0), 6)
    db[4] = db[1]  # photo 4 duplicates photo 1: it must still be found by photo 1, itself not
    queries = db[[1, 2]]
    scores, rows = leave_one_out_knn(queries, db, 3, np.array([1, -1]))
    assert rows.shape == (2, 3) and 1 not in rows[0] and rows[0, 0] == 4 and np.isclose(scores[0, 0], 1.0)
    assert rows[1, 0] == 2  # a query whose image is not in the database keeps its best match
    own_first = np.array([[1, 4, 0]]), np.array([[1.0, 1.0, 0.5]])
    s, r = drop_own(own_first[1], own_first[0], np.array([4]))  # the own image ranks second (a tie): dropped
    assert r.tolist() == [[1, 0]] and s.tolist() == [[1.0, 0.5]]
    assert own_rows(["b", "z", "a"], ["a", "b", "c"]).tolist() == [1, -1, 0]


def test_dba_leave_one_out_equals_augmenting_the_index_without_the_query():
    rng = np.random.default_rng(1)
    db = _unit(rng, 12)
    own = np.array([0, 5, 11, -1])
    queries = np.concatenate([db[own[:3]], _unit(rng, 1)])
    scores, rows = augmented_leave_one_out_knn(queries, db, 5, own, dba_k=2, alpha=3.0)
    for q, o in enumerate(own):
        keep = np.flatnonzero(np.arange(len(db)) != o)
        augmented = database_augment(db[keep], 2, 3.0)
        want_s, want_r = knn(queries[q: q + 1], augmented, 5)
        assert keep[want_r[0]].tolist() == rows[q].tolist()
        assert np.allclose(want_s[0], scores[q], atol=1e-5)
    plain_s, plain_r = augmented_leave_one_out_knn(queries, db, 5, own, dba_k=0, alpha=3.0)
    loo_s, loo_r = leave_one_out_knn(queries, db, 5, own)
    assert (plain_r == loo_r).all() and np.allclose(plain_s, loo_s, atol=1e-5)


def test_query_expansion_after_dba_leaves_the_query_out_of_its_neighbours_descriptors():
    rng = np.random.default_rng(2)
    db = _unit(rng, 14)
    db[3] = db[0] + 0.05 * _unit(rng, 1)[0]  # photo 3 sits next to photo 0: its DBA holds a share of 0
    db[3] /= np.linalg.norm(db[3])
    own = np.array([0, 7, -1])
    queries = np.concatenate([db[own[:2]], _unit(rng, 1)])
    dba = LeaveOneOutDBA(db, 2, 3.0)
    scores, rows = dba.search(queries, 6, own)
    got_s, got_r = dba.search(leave_one_out_expand(queries, dba, scores, rows, 2, 3.0, own), 6, own)
    for q, o in enumerate(own):
        keep = np.flatnonzero(np.arange(len(db)) != o)
        augmented = database_augment(db[keep], 2, 3.0)
        s, r = knn(queries[q: q + 1], augmented, 6)
        want_s, want_r = knn(query_expand(queries[q: q + 1], augmented, s, r, 2, 3.0), augmented, 6)
        assert keep[want_r[0]].tolist() == got_r[q].tolist()
        assert np.allclose(want_s[0], got_s[q], atol=1e-5)
    leaky = query_expand(queries, database_augment(db, 2, 3.0), scores, rows, 2, 3.0)
    assert not np.allclose(leaky[0], leave_one_out_expand(queries, dba, scores, rows, 2, 3.0, own)[0], atol=1e-4)


def test_index_labels_are_voted_without_the_query_photo_nor_the_image_itself():
    rng = np.random.default_rng(3)
    train = _unit(rng, 10)
    train_labels = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2, 1])
    index = np.concatenate([train[[1, 4]], _unit(rng, 3)])  # two index images are train photos themselves
    own_index = np.array([1, 4, -1, -1, -1])
    query_train = np.array([0, 2, 6, -1])  # each query's own train photo (-1: a distractor query)
    k = 3
    s, r = leave_one_out_knn(index, train, k + 1, own_index)
    labels, confidence = leave_one_out_votes(s, r, train_labels, k, query_train)
    assert labels.shape == confidence.shape == (4, 5)
    for q, mine in enumerate(query_train):
        for j in range(5):
            keep = np.flatnonzero((np.arange(10) != mine) & (np.arange(10) != own_index[j]))
            ws, wr = knn(index[j: j + 1], train[keep], k)
            want_label, want_conf = soft_vote(ws, keep[wr], train_labels, k)
            assert labels[q, j] == want_label[0] and np.isclose(confidence[q, j], want_conf[0], atol=1e-5)


def test_label_rerankers_read_per_query_tables():
    rows, scores = np.array([[0, 1, 2], [0, 1, 2]]), np.array([[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]])
    table = np.array([[5, 5, 6], [6, 5, 6]])  # image 0's label differs by query
    out, _ = partition_rerank(rows, scores, np.array([6, 6]), table)
    assert out.tolist() == [[2, 0, 1], [0, 2, 1]]
    out, _ = soft_rerank(rows, scores, np.array([6, 6]), table, np.ones((2, 3)), up=1.0, down=0.0)
    assert out.tolist() == [[2, 0, 1], [0, 2, 1]]
    appended = discriminative_rerank(rows[:, :1], np.array([6, 6]), table, np.array([[1, 1, 0.5], [0.2, 1, 0.9]]),
                                     k=3)
    assert [a.tolist() for a in appended] == [[2, 0], [0, 2]]


def test_appended_positives_never_bring_back_the_query_itself():
    index_labels = np.array([0, 0, 0, 1, 1])
    rows = np.array([[3, 1], [3, 4]])
    out = discriminative_rerank(rows, np.array([0, 1]), index_labels, np.ones(5), k=5, append=True,
                                own=np.array([0, 4]))
    assert 0 not in out[0] and sorted(out[0][:2].tolist()) == [1, 2] and 4 not in out[1][:1]


def test_stratified_bootstrap_keeps_each_folders_share():
    ids = [f"{i:016x}" for i in range(12)]
    rec = Solution(RECOGNITION, {i: [0] for i in ids})
    boot = Bootstrap(rec, Solution(RETRIEVAL), ids, resamples=200, seed=0, strata=[0] * 10 + [1] * 2)
    assert (boot.resamples[:, :10] < 10).all() and (boot.resamples[:, 10:] >= 10).all()


def _photo(path: Path, colour: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (40, 30), (colour, 255 - colour, 90)).save(path, fmt)


def test_working_copy_of_both_layouts(tmp_path):
    nested = tmp_path / "nested"
    for label, n in (("arch", 3), ("dome", 2), ("distractors", 2)):
        for i in range(n):
            _photo(nested / label / f"p{i}.jpg", 40 * i)
    (nested / "README.md").write_text("notes\n")
    flat = tmp_path / "flat"
    for name in ("arch__a.jpg", "arch__b.jpg", "dome__c.jpg", "dome__d.jpg", "distractor__e.jpg"):
        _photo(flat / name, len(name))
    _photo(flat / "dome__f.png", 7, "PNG")
    (flat / "manifest.csv").write_text("file,source\n")
    for src, photos, labelled in ((nested, 7, 5), (flat, 6, 5)):
        out = tmp_path / f"copy-{src.name}"
        plan = working_copy(src, out)
        assert len(plan) == photos and json.loads((out / "folders.json").read_text())["labelled"] == labelled
        train = pd.read_csv(out / "train.csv", dtype={"id": str})
        assert len(train) == labelled and set(train["id"]) < set(plan["id"])
        rec, ret = read_solution(out / "recognition_solution.csv"), read_solution(out / "retrieval_solution.csv")
        assert len(rec.all) == photos and sum(not v for v in rec.all.values()) == photos - labelled
        for query, positives in ret.all.items():  # the other photos of its landmark, never itself
            assert query not in positives and positives
            assert {int(train.set_index("id").loc[p, "landmark_id"]) for p in positives} == set(rec.all[query])
        first = plan["id"].iloc[0]
        assert image_path(out, "train", first).is_file() and image_path(out, "index", first).is_file()
        assert working_copy(src, out).equals(plan)  # rerun: nothing to redo, same plan
    png = plan[plan["file"] == "dome__f.png"]["id"].item()
    assert not image_path(out, "test", png).is_symlink() and image_path(out, "test", png).read_bytes()[:3] == \
        b"\xff\xd8\xff"
    jpeg = plan[plan["file"] == "arch__a.jpg"]["id"].item()
    assert image_path(out, "test", jpeg).is_symlink()  # JPEGs are linked, not copied


def test_folders_without_two_labelled_landmarks_are_refused(tmp_path):
    only = tmp_path / "only-distractors"
    _photo(only / "distractor__a.jpg", 1)
    with pytest.raises(DataError, match="only-distractors: no labelled photos"):
        working_copy(only, tmp_path / "c1")
    one = tmp_path / "one-label"
    _photo(one / "arch__a.jpg", 1)
    _photo(one / "arch__b.jpg", 2)
    with pytest.raises(DataError, match="one label only \\(arch\\)"):
        working_copy(one, tmp_path / "c2")
    with pytest.raises(DataError, match="one label only"):
        tune_folders([one], tmp_path / "w")  # what --tune-on reads: the same clear error, exit status 2
    blind = tmp_path / "blind"
    for split in ("train", "test"):
        (blind / split).mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="blind: a Kaggle layout without its labels"):
        tune_folders([blind], tmp_path / "w")


def _photo_folders(competition: Path, out: Path) -> tuple[Path, Path]:
    """Two labelled photo folders from the tiny competition's train photos and non-landmark test images: one
    folder per landmark (the first three landmarks) and flat ``<label>__<name>`` files (the others)."""
    train = pd.read_csv(competition / "train.csv", dtype={"id": str})
    rec = read_solution(competition / "recognition_solution.csv")
    distractors = sorted(i for i, v in rec.all.items() if not v)
    nested, flat = out / "nested", out / "flat"
    for rank, (label, group) in enumerate(train.groupby("landmark_id")):
        for n, image_id in enumerate(group["id"].head(4)):
            src = image_path(competition, "train", image_id)
            dst = nested / f"lm{label}" / f"{n}.jpg" if rank < 3 else flat / f"lm{label}__{n}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.symlink_to(src)
    for n, image_id in enumerate(distractors[:6]):
        dst = nested / "distractors" / f"{n}.jpg" if n < 3 else flat / f"distractor__{n}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(image_path(competition, "test", image_id))
    (flat / "README.md").write_text("not a photo\n")
    return nested, flat


ZERO_SHOT = """members:
  - {name: a, backbone: tf_efficientnet_lite0, image_size: 64, seed: 0}
  - {name: b, backbone: tf_efficientnet_lite0, image_size: 64, seed: 1}
workers: 0
"""

SPACE = """resamples: 1000
rounds: 1
member_weights: [0.0, 1.0]
weight_rounds: 1
base: {local: {max_keypoints: 200, workers: 0}, verify: {workers: 1}}
options:
  - {name: soft-voting k, track: recognition, values: [{k: 3}]}
  - {name: verification, track: recognition, values: [{verify_shortlist: 3}]}
  - {name: non-landmark penalty, track: recognition, values: [{nonlandmark_pool: index}]}
  - {name: DBA / QE, track: retrieval, values: [{dba_k: 1, qe_k: 1}]}
  - {name: label re-ranking, track: retrieval, values: [{rerank: true}]}
  - {name: local re-ranking, track: retrieval, values: [{local_rerank: 3}]}
"""


@pytest.mark.slow
def test_tune_on_photo_folders_every_photo_a_query_and_pooled(tiny_competition, tmp_path):
    nested, flat = _photo_folders(tiny_competition, tmp_path / "photos")
    ensemble, space = tmp_path / "e.yaml", tmp_path / "space.yaml"
    ensemble.write_text(ZERO_SHOT)
    space.write_text(SPACE)
    blind = _blind_copy(tiny_competition, tmp_path / "blind")
    work = tmp_path / "w"
    out = stage("04_predict.py", "--data-root", blind, "--workdir", work, "--ensemble", ensemble,
                "--tune-on", nested, "--search", space)
    lines = out.stdout.strip().splitlines()
    assert all(Path(p).suffix == ".csv" and Path(p).is_file() for p in lines[-2:])
    recipe = (work / "tuning" / "recipe.md").read_text()
    assert "(every photo a query: 15 recognition, 12 retrieval queries)" in recipe and "DBA / QE, round 1" in recipe
    vdir = work / "tune"
    test_ids = (vdir / "features" / "ensemble" / "test.ids").read_text().split()
    train_ids = (vdir / "features" / "ensemble" / "train.ids").read_text().split()
    assert len(test_ids) == 15 and len(train_ids) == 12
    rows = np.load(vdir / "neighbours" / "test_train.npz")["indices"]
    assert not (np.asarray(train_ids)[rows] == np.asarray(test_ids)[:, None]).any()  # never its own image
    local = {p.name for p in (vdir / "local").glob("*/*") if p.is_dir() and p.parent.name != "pairs"}
    pairs = {p.name.split("-")[:2] == ["test", "test"] for p in (vdir / "local" / "pairs").iterdir()}
    assert local == {"test"} and pairs == {True}  # each photo's local features once, a pair verified once

    pooled = stage("04_predict.py", "--data-root", blind, "--workdir", tmp_path / "w2", "--ensemble", ensemble,
                   "--tune-on", nested, flat, "--search", space)
    assert Path(pooled.stdout.strip().splitlines()[-1]).is_file()
    header = (tmp_path / "w2" / "tuning" / "weights.md").read_text().splitlines()[0]
    assert "(every photo a query: 15 recognition, 12 retrieval queries)" in header
    assert "(every photo a query: 15 recognition, 12 retrieval queries); resampled within each folder" in header
    assert (tmp_path / "w2" / "tune" / "2" / "photos" / "train.csv").is_file()
