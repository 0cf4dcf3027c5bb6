"""Revisited Oxford / Paris end to end on a tiny set in the benchmark's layout: the command, its files, the crop,
the distractors, the label-free recipe steps, and the image sources it adds to the extraction code."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from landmark_kit import ledger
from landmark_kit.data import ImageDataset, ImageSource
from landmark_kit.extract import EncodedDataset, describe_split_members
from landmark_kit.models import GlobalDescriptor, create_backbone
from landmark_kit.readme import REPO
from landmark_kit.revisited import TABLE, gather, layout_from_folder, search
from landmark_kit.revisited_metric import read_ground_truth
from landmark_kit.search import knn

MEMBER = "members:\n  - {name: z, backbone: test_efficientnet, image_size: 64, aspect: true}\nworkers: 0\n"


def box_of(size: tuple[int, int]) -> list[float]:
    """The upper-left 60% of an image: a patch distinct from the whole image."""
    return [0.0, 0.0, 0.6 * size[0], 0.6 * size[1]]


@pytest.fixture(scope="module")
def revisited(tiny_competition, tmp_path_factory):
    """``root/roxford5k`` (6 queries, about 30 database images with easy / hard / junk, boxed queries) and
    ``root/revisitop1m`` (10 distractors in sub-folders), from the synthetic competition's photos."""
    base = tmp_path_factory.mktemp("revisited")
    src, root = base / "photos", base / "root"
    train = pd.read_csv(tiny_competition / "train.csv", dtype=str)
    for label, group in train.groupby("landmark_id"):
        for image_id in group["id"][:5]:
            dst = src / label / f"{image_id}.jpg"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(tiny_competition / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", dst)
    solution = pd.read_csv(tiny_competition / "recognition_solution.csv", dtype=str, keep_default_na=False)
    non_landmarks = solution.loc[solution["landmarks"] == "", "id"].tolist()
    for image_id in non_landmarks[:6]:
        dst = src / "distractors" / f"{image_id}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_competition / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg", dst)
    summary = layout_from_folder(src, root, "roxford5k")
    gnd_path = root / "roxford5k" / "gnd_roxford5k.pkl"
    with open(gnd_path, "rb") as fh:
        raw = pickle.load(fh)
    distractor_rows = [n for n, name in enumerate(raw["imlist"]) if name.startswith("distractors__")]
    for q, entry in zip(raw["qimlist"], raw["gnd"]):  # easy / hard halves, one junk image, a box
        positives = entry["easy"]
        entry["easy"], entry["hard"] = positives[: len(positives) // 2 + 1], positives[len(positives) // 2 + 1:]
        entry["junk"] = distractor_rows[:1]
        entry["bbx"] = box_of(Image.open(root / "roxford5k" / "jpg" / f"{q}.jpg").size)
    with open(gnd_path, "wb") as fh:
        pickle.dump(raw, fh)
    names = []
    for n, image_id in enumerate(non_landmarks[6:16]):
        name = f"{n % 2:02d}/{image_id}.jpg"
        (root / "revisitop1m" / "jpg" / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(tiny_competition / "test" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg",
                    root / "revisitop1m" / "jpg" / name)
        names.append(name)
    (root / "revisitop1m" / "revisitop1m.txt").write_text("\n".join(names) + "\n")
    recipe = base / "member.yaml"
    recipe.write_text(MEMBER)
    return {"root": root, "recipe": recipe, "base": base, "summary": summary, "distractors": names}


def run(revisited, workdir, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "landmark_kit.revisited", "--data-root", str(revisited["root"]), "--dataset",
           "roxford5k", "--ensemble", str(revisited["recipe"]), "--workdir", str(workdir), *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def score_with_stage05(revisited, ranks, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "stages/05_score.py", "--solution",
                           str(revisited["root"] / "roxford5k" / "gnd_roxford5k.pkl"), "--submission", str(ranks),
                           "--json", *extra], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def plain_run(revisited):
    """The protocol's run (cropped queries, no distractors, no recipe): its folder, output and scores."""
    workdir = revisited["base"] / "work"
    done = run(revisited, workdir)
    return workdir, done, json.loads((workdir / "roxford5k" / "scores.json").read_text())


def test_layout_from_folder_boxes_queries_and_lists_positives(revisited):
    gt = read_ground_truth(revisited["root"] / "roxford5k" / "gnd_roxford5k.pkl")
    assert revisited["summary"]["queries"] == len(gt.qimlist) == 6 and revisited["summary"]["distractors"] == 6
    assert not set(gt.qimlist) & set(gt.imlist)
    for query, entry in zip(gt.qimlist, gt.gnd):  # a query's positives are its landmark's other photos
        label = query.split("__")[0]
        assert {gt.imlist[i].split("__")[0] for i in [*entry["easy"], *entry["hard"]]} == {label}
        assert sum(name.startswith(label + "__") for name in gt.imlist) == len(entry["easy"]) + len(entry["hard"])


def test_end_to_end_scores_are_stage05_of_its_own_ranks_and_a_rerun_extracts_nothing(revisited, plain_run):
    workdir, done, _ = plain_run
    out = workdir / "roxford5k"
    assert "cropped to their boxes (the protocol)" in done.stdout and "mAP" in done.stdout
    assert json.loads((out / "scores.json").read_text()) == score_with_stage05(revisited, out / "ranks.csv")
    gt = read_ground_truth(revisited["root"] / "roxford5k" / "gnd_roxford5k.pkl")
    ranks = pd.read_csv(out / "ranks.csv", dtype=str)
    assert ranks["id"].tolist() == gt.qimlist
    assert all(sorted(row.split()) == sorted(gt.imlist) for row in ranks["images"])  # the full ranking by default
    features = sorted((out / "features").rglob("*.npy"))
    stamps = {p: p.stat().st_mtime_ns for p in features if p.parent.name == "z"}
    again = run(revisited, workdir)
    assert "db already extracted" in again.stderr and "query already extracted" in again.stderr
    assert "extract db" not in again.stderr and "extract query" not in again.stderr
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    text = (out / "scores.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


def test_no_crop_gives_other_query_descriptors_and_says_so(revisited, plain_run):
    workdir, _, _ = plain_run
    done = run(revisited, workdir, "--no-crop")
    assert "whole images (--no-crop variant, not the protocol)" in done.stdout
    assert "db already extracted" in done.stderr  # the database is shared by both variants
    folder = workdir / "roxford5k" / "features" / "z"
    cropped, whole = np.load(folder / "query.npy"), np.load(folder / "query-uncropped.npy")
    assert (folder / "query.ids").read_text() == (folder / "query-uncropped.ids").read_text()
    assert np.all((cropped.astype(np.float32) * whole.astype(np.float32)).sum(1) < 0.9999)
    assert json.loads((workdir / "roxford5k" / "run.json").read_text())["crop"] is False


def test_distractors_are_ranked_and_scores_do_not_rise(revisited, plain_run):
    workdir, _, plain = plain_run
    done = run(revisited, workdir, "--distractors", "revisitop1m")
    assert "roxford5k + revisitop1m" in done.stdout
    out = workdir / "roxford5k"
    ranked = {name for row in pd.read_csv(out / "ranks.csv", dtype=str)["images"] for name in row.split()}
    assert ranked & set(revisited["distractors"])
    assert (workdir / "revisitop1m" / "features" / "z" / "db.npy").is_file()
    assert (out / "features" / "ensemble" / "revisitop1m.npy").is_file()
    scores = json.loads((out / "scores.json").read_text())
    for protocol in ("easy", "medium", "hard"):
        assert scores[protocol]["map"] <= plain[protocol]["map"] + 1e-12
    assert json.loads((out / "run.json").read_text())["distractor_count"] == len(revisited["distractors"])
    listing = str(revisited["root"] / "revisitop1m" / "revisitop1m.txt")
    assert score_with_stage05(revisited, out / "ranks.csv", "--distractors", listing) == scores
    again = run(revisited, workdir, "--distractors", "revisitop1m")
    assert "extract db" not in again.stderr and (out / "scores.json").read_text() == json.dumps(scores, indent=2) + "\n"


def test_dba_qe_and_local_rerank_recipe_runs(revisited, plain_run):
    workdir, _, _ = plain_run
    recipe = revisited["base"] / "steps.yaml"
    recipe.write_text("dba_k: 2\nqe_k: 2\nlocal_rerank: 5\nlocal: {max_keypoints: 200, workers: 0}\n"
                      "verify: {workers: 1}\nrerank: true\n")
    done = run(revisited, workdir, "--recipe", str(recipe), "--distractors", "revisitop1m")
    assert "skipped here: rerank" in done.stderr
    steps = [s["step"] for s in json.loads((workdir / "roxford5k" / "run.json").read_text())["steps"]]
    assert steps == ["kNN (exact)", "+ DBA (k=2), alpha-QE (k=2) (alpha=3)",
                     "+ local-feature re-ranking (rootsift, top 5)"]
    assert any((workdir / "roxford5k" / "local").glob("*/query/shard_*"))
    assert any((workdir / "roxford5k" / "local" / "pairs").glob("query-db-*"))
    out = workdir / "roxford5k" / "ranks.csv"
    assert {n for row in pd.read_csv(out, dtype=str)["images"] for n in row.split()} & set(revisited["distractors"])


def test_search_over_parts_is_one_search_and_gather_reads_rows_across_parts():
    rng = np.random.default_rng(0)
    db = rng.standard_normal((50, 8)).astype(np.float32)
    queries = rng.standard_normal((4, 8)).astype(np.float32)
    scores, rows = search(queries, [db[:20], db[20:20], db[20:]], 7)
    want_scores, want_rows = knn(queries, db, 7)
    assert np.array_equal(rows, want_rows) and np.allclose(scores, want_scores)
    assert np.array_equal(gather([db[:20], db[20:]], np.array([3, 45, 20])), db[[3, 45, 20]])


def test_an_image_source_names_files_and_crops_after_exif_rotation(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red left quarter
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees clockwise: 20 x 40 upright, red on top
    img.save(tmp_path / "a b.jpg", exif=exif, quality=95)
    source = ImageSource({"a b": tmp_path / "a b.jpg", "whole": tmp_path / "a b.jpg"}, {"a b": (0, 0, 20, 10)})
    dataset = ImageDataset(tmp_path, "db", ["a b", "whole"], source=source, max_side=16)
    crop, _, failure = dataset[0]
    assert failure is None and crop.size == dataset.size(0) == (20, 10)
    assert np.asarray(crop)[..., 0].mean() > 200 and dataset.size(1) == (20, 40)
    assert EncodedDataset(dataset)[0][0].size == (20, 10)  # a cropped image is decoded by the worker
    with pytest.raises(Exception, match="without a file"):
        ImageDataset(tmp_path, "db", ["other"], source=source)
    tiny = ImageSource({"a b": tmp_path / "a b.jpg"}, {"a b": (0, 0, 3, 3)})
    assert "crop box" in ImageDataset(tmp_path, "db", ["a b"], source=tiny)[0][2].reason


def test_boxed_descriptors_match_between_cpu_and_device_decoding(revisited):
    gt = read_ground_truth(revisited["root"] / "roxford5k" / "gnd_roxford5k.pkl")
    folder = revisited["root"] / "roxford5k" / "jpg"
    ids = gt.qimlist + gt.imlist[:4]
    source = ImageSource({i: folder / f"{i}.jpg" for i in ids}, {q: g["bbx"] for q, g in zip(gt.qimlist, gt.gnd)})
    model = GlobalDescriptor(create_backbone("test_efficientnet")).eval()
    for aspect in (False, True):
        (cpu,), _ = describe_split_members([(model, 64, (1.0,), False)], folder, "query", ids, 4, 0, "cpu", True,
                                           aspect, "cpu", source)
        (dev,), _ = describe_split_members([(model, 64, (1.0,), False)], folder, "query", ids, 4, 0, "cpu", True,
                                           aspect, "device", source)
        assert (cpu * dev).sum(1).min() > 0.99


def test_committed_revisited_table_is_rendered_from_its_ledger(tmp_path):
    folder = tmp_path / "results"
    shutil.copytree(ledger.LEDGER, folder)
    path = TABLE.render(folder)
    assert path.read_text() == (ledger.LEDGER / "revisited.md").read_text()
    published = [row for row in ledger.entries("revisited") if row.get("source")]
    assert {row["method"].split(" (")[0] for row in published} >= {"smlyaka 2019 six-model ensemble"}


@pytest.mark.parametrize("backend", ["rootsift", "kornia-sift"])
def test_local_features_read_an_image_source_with_its_boxes(revisited, tmp_path, backend):
    from landmark_kit.local import LocalConfig, extract_local

    gt = read_ground_truth(revisited["root"] / "roxford5k" / "gnd_roxford5k.pkl")
    folder, query = revisited["root"] / "roxford5k" / "jpg", gt.qimlist[0]
    box = (4.0, 6.0, 164.0, 126.0)
    source = ImageSource({query: folder / f"{query}.jpg", "missing": folder / "missing.jpg"}, {query: box})
    store = extract_local(LocalConfig(backend=backend, max_keypoints=100, workers=0), folder, "query",
                          [query, "missing"], tmp_path, progress=False, source=source)
    feats = store.get([query])[query]
    assert feats.size == (160, 120) and len(feats.keypoints) and store.failures().keys() == {"missing"}
