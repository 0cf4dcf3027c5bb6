"""Validation-driven tuning: search-space checks, a constructed competition where one step truly helps and
another only moves noise, and the ``--tune-on`` contract of stage 04 on the tiny synthetic set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from landmark_kit.intervals import Bootstrap
from landmark_kit.predict import PredictConfig, RunData
from landmark_kit.recipes import RecipeError
from landmark_kit.submission import RECOGNITION, RETRIEVAL, Solution
from landmark_kit.tuning import SearchOption, SearchSpace, Tables, apply_overrides, load_space, tune_recipe
from test_stages import ROOT, stage, tiny_recipe, trained  # noqa: F401  (module fixture reused)


def test_apply_overrides_reaches_nested_settings_and_refuses_unknown_keys():
    cfg = apply_overrides(PredictConfig(), {"k": 3, "local.max_keypoints": 2000, "verify": {"ratio": 0.8}})
    assert cfg.k == 3 and cfg.local.max_keypoints == 2000 and cfg.verify.ratio == 0.8
    assert cfg.verify.model == "homography"  # a nested mapping updates, it does not replace
    with pytest.raises(RecipeError, match="does not name"):
        apply_overrides(PredictConfig(), {"local.no_such_thing": 1})
    with pytest.raises(RecipeError, match="expected int"):
        apply_overrides(PredictConfig(), {"k": "three"})


def test_the_tracked_search_space_loads_and_bad_spaces_are_refused(tmp_path):
    space = load_space(ROOT / "submissions" / "search.yaml")
    assert space.resamples >= 1000 and {o.track for o in space.options} == {"recognition", "retrieval"}
    bad = tmp_path / "bad.yaml"
    bad.write_text("options:\n  - {name: x, track: ranking, values: [{k: 3}]}\n")
    with pytest.raises(RecipeError, match="track must be"):
        load_space(bad)
    bad.write_text("options:\n  - {name: x, values: [{verify_aggregate: mean}]}\n")
    with pytest.raises(Exception, match="verify_aggregate"):
        load_space(bad)


def _constructed_run(tmp_path: Path) -> tuple[RunData, Bootstrap]:
    """300 landmark queries of 50 labels (3 train images each) plus 60 non-landmark queries; rows of 5 train
    neighbours built so that soft-voting over 3 fixes 180 top-1 errors, while widening it to 5 turns 10
    right answers wrong and 10 wrong answers right (noise)."""
    rng = np.random.default_rng(0)
    n_landmark, labels = 300, 50
    truth = np.concatenate([rng.integers(0, labels, n_landmark), -np.ones(60, np.int64)])
    train_labels = np.repeat(np.arange(labels), 3)

    def image(label: int, j: int = 0) -> int:
        return 3 * (label % labels) + j

    rows, sims = [], []
    for q, t in enumerate(truth):
        w = [int(t + d) % labels if t >= 0 else int(d) % labels for d in (1, 2, 3, 4)]
        r = int(t) if t >= 0 else 5
        if q < 180:  # A: top-1 wrong, two of the top 3 right
            row, s = [image(w[0]), image(r, 0), image(r, 1), image(w[1]), image(w[2])], [.82, .81, .80, .6, .5]
        elif q < 190:  # C: k=5 lets two close wrong neighbours outvote the right one
            row, s = [image(r), image(w[1]), image(w[2]), image(w[0], 0), image(w[0], 1)], [.8, .78, .77, .76, .76]
        elif q < 200:  # D: k=5 lets the right label's three votes win
            row, s = [image(w[0]), image(r, 0), image(w[1]), image(r, 1), image(r, 2)], [.8, .7, .7, .7, .7]
        else:  # B and non-landmarks: plain rows
            row, s = [image(r), image(w[0]), image(w[1]), image(w[2]), image(w[3])], [.9, .5, .4, .3, .2]
        rows.append(row)
        sims.append(s)
    order = np.argsort(-np.array(sims), axis=1, kind="stable")
    train_neighbours = np.take_along_axis(np.array(rows), order, axis=1)
    train_scores = np.take_along_axis(np.array(sims, np.float32), order, axis=1)
    ids = [f"{q:016x}" for q in range(len(truth))]
    index_ids = [f"{10_000 + i:016x}" for i in range(labels)]
    index_rows = np.tile(np.arange(labels), (len(truth), 1))
    run = RunData(tmp_path, ids, [f"{20_000 + i:016x}" for i in range(len(train_labels))], index_ids, train_labels,
                  train_scores, train_neighbours, np.ones(index_rows.shape, np.float32), index_rows)
    rec = {i: ([int(t)] if t >= 0 else []) for i, t in zip(ids, truth)}
    ret = {i: [index_ids[int(t)]] for i, t in zip(ids, truth) if t >= 0}
    boot = Bootstrap(Solution(RECOGNITION, rec), Solution(RETRIEVAL, ret), ids, resamples=1000, seed=0)
    return run, boot


def test_tuning_keeps_a_step_that_helps_and_refuses_noise(tmp_path):
    run, boot = _constructed_run(tmp_path)
    space = SearchSpace(options=[SearchOption("soft-voting", "recognition", [{"k": 3}]),
                                 SearchOption("wider vote", "recognition", [{"k": 5}])], rounds=1)
    table = Tables(space.level)
    tuned = tune_recipe(run, tmp_path, boot, space, table)
    assert tuned.k == 3
    rows = {r["stage"].split(",")[0]: r for r in table.rows}
    assert rows["soft-voting"]["kept"] and not rows["wider vote"]["kept"]
    low = float(rows["wider vote"]["delta GAP"].split("[")[1].split(",")[0])
    high = float(rows["wider vote"]["delta GAP"].split(",")[1].strip(" ]"))
    assert low < 0 < high  # the noise step's interval straddles zero
    assert rows["soft-voting"]["delta mAP@100"].startswith("+0.0000")  # k does not touch retrieval here
    assert "| soft-voting, round 1 |" in table.markdown()


def _blind_copy(src: Path, dst: Path, solutions: bool = False) -> Path:
    """The data root a Kaggle user sees: images and train.csv (optionally wrong solutions beside them)."""
    dst.mkdir()
    for split in ("train", "test", "index"):
        (dst / split).symlink_to(src / split)
    shutil.copy(src / "train.csv", dst / "train.csv")
    if solutions:  # deliberately wrong: every landmark query labelled 0, every retrieval list one image
        rec = (src / "recognition_solution.csv").read_text().splitlines()
        (dst / "recognition_solution.csv").write_text(
            "\n".join([rec[0]] + [f"{r.split(',')[0]},0,{r.split(',')[2]}" for r in rec[1:]]) + "\n")
        ret = (src / "retrieval_solution.csv").read_text().splitlines()
        first_index = sorted((src / "index").rglob("*.jpg"))[0].stem
        (dst / "retrieval_solution.csv").write_text(
            "\n".join([ret[0]] + [f"{r.split(',')[0]},{first_index},{r.split(',')[2]}" for r in ret[1:]]) + "\n")
    return dst


TINY_SPACE = """resamples: 1000
rounds: 1
member_weights: [0.0, 1.0]
weight_rounds: 1
base: {local: {max_keypoints: 300, workers: 0}, verify: {workers: 1}}
options:
  - {name: soft-voting k, track: recognition, values: [{k: 3}]}
  - {name: verification, track: recognition, values: [{verify_shortlist: 5, inlier_floor: 5}]}
  - {name: suppression, track: recognition, values: [{suppress_fraction: 0.05}]}
  - {name: label re-ranking, track: retrieval, values: [{rerank: true}, {soft_rerank: true}]}
  - {name: local re-ranking, track: retrieval, values: [{local_rerank: 5}, {local_rerank: 5, rerank_first: true}]}
"""


def test_tune_on_contract_and_no_read_of_data_root_solutions(trained, tiny_competition, tmp_path):
    recipe = tiny_recipe(tmp_path, trained, "  - name: random\n    backbone: tf_efficientnet_lite0\n    image_size: 64\n")
    space = tmp_path / "space.yaml"
    space.write_text(TINY_SPACE)
    outputs = []
    for name, solutions in (("blind", False), ("wrong", True)):
        root = _blind_copy(tiny_competition, tmp_path / name, solutions)
        out = stage("04_predict.py", "--data-root", root, "--workdir", tmp_path / f"w-{name}", "--ensemble", recipe,
                    "--out-root", tmp_path / f"subs-{name}", "--tune-on", tiny_competition, "--search", space)
        lines = out.stdout.strip().splitlines()
        assert all(Path(p).suffix == ".csv" and Path(p).is_file() for p in lines[-2:])
        outputs.append([Path(p).read_text() for p in lines[-2:]])
        work = tmp_path / f"w-{name}"
        assert (work / "tuned.yaml").is_file() and (work / "tuned-ensemble.yaml").is_file()
        weights = (work / "tuning" / "weights.md").read_text()
        assert "| member alone | tiny=1 |" in weights and "| member alone | random=1 |" in weights
        assert "verification, round 1" in (work / "tuning" / "recipe.md").read_text()
    assert outputs[0] == outputs[1]  # solutions under --data-root never change what is predicted
    valid = stage("05_score.py", "--validate", lines[-2], "--data-root", tiny_competition)
    assert valid.returncode == 0


def _run_with_top1(tmp_path: Path, top1: np.ndarray) -> RunData:
    """A run whose test queries' nearest train image has label ``top1[q]`` (one train image per label)."""
    n = len(top1)
    labels = np.arange(top1.max() + 1)
    ids = [f"{q:016x}" for q in range(n)]
    return RunData(tmp_path, ids, [f"{10_000 + i:016x}" for i in labels], ids[:1], labels,
                   np.linspace(0.9, 0.5, n, dtype=np.float32)[:, None], top1[:, None], np.ones((n, 1), np.float32),
                   np.zeros((n, 1), np.int64))


def test_suppression_threshold_is_a_fraction_of_the_queries(tmp_path):
    from landmark_kit.predict import recognition_steps

    top1 = np.array([0] * 12 + [1] * 8 + list(range(2, 82)))  # 100 queries: label 0 x12, label 1 x8
    cfg = PredictConfig(suppress_fraction=0.1)
    *_, (name, _, scores) = recognition_steps(cfg, _run_with_top1(tmp_path, top1), tmp_path)
    assert name.endswith("(> 0.1 of queries = 10)")
    assert (scores[:12] == -12).all() and (scores[12:] > 0).all()
    doubled = np.concatenate([top1, top1])  # twice the queries, same shares: the same labels are suppressed
    *_, (name, _, scores) = recognition_steps(cfg, _run_with_top1(tmp_path, doubled), tmp_path)
    assert name.endswith("= 20)") and (scores[doubled == 0] == -24).all() and (scores[doubled != 0] > 0).all()
    with pytest.raises(Exception, match="fraction"):
        list(recognition_steps(PredictConfig(suppress_fraction=8), _run_with_top1(tmp_path, top1), tmp_path))


def test_verified_pairs_are_kept_on_disk_and_not_verified_again(trained, tiny_competition, tmp_path, monkeypatch):
    import landmark_kit.predict as predict

    recipe = tiny_recipe(tmp_path, trained)
    from landmark_kit.ensemble import load_ensemble, run_ensemble

    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    run = predict.load_run(tiny_competition, tmp_path / "w")
    cfg = apply_overrides(PredictConfig(), {"verify_shortlist": 3, "local": {"max_keypoints": 200, "workers": 0},
                                            "verify": {"workers": 1}})
    first = predict.shortlist_inliers(cfg, tiny_competition, run.workdir, run.test_ids, run.train_ids,
                                      run.train_neighbours[:, :3])
    assert list((tmp_path / "w" / "local" / "pairs").glob("test-train-*/part_*.npz"))
    calls = []
    monkeypatch.setattr(predict, "verify_pairs", lambda pairs, *a, **k: calls.append(len(pairs)) or np.zeros(len(pairs)))
    again = predict.shortlist_inliers(cfg, tiny_competition, run.workdir, run.test_ids, run.train_ids,
                                      run.train_neighbours[:, :4])  # one more column: only the new pairs
    assert np.array_equal(again[:, :3], first) and calls == [int((run.train_neighbours[:, 3] >= 0).sum())]
