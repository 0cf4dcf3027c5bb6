"""Same seed, same outputs on CPU, stage by stage. Where another test already compares two runs
from scratch, it is named here instead of run twice:

- synthetic data: tests/test_synthetic.py::test_deterministic_across_worker_counts (1 vs 2 workers);
- 00 from-folders: below (two builds, byte-identical trees);
- 01 clean: tests/test_resume.py::test_cleaning_resumes_local_features_and_verification (two runs from
  scratch, one killed twice on the way; every output file byte-identical), tests/test_cleaning.py (2 ranks
  = 1 process);
- 02 train: tests/test_train.py::test_killed_run_resumes_to_the_same_tensors and the torchrun test (every
  tensor of model.pt and last.pt equal between two runs from scratch);
- 03 ensemble and 04 predict: below, with every post-processing step on (two fresh run directories,
  byte-identical neighbours and submissions), and tests/test_resume.py for their resumes.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from killrun import run_stage
from test_folders import _tree


def _digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_from_folders_builds_the_same_competition_twice(tmp_path):
    src = _tree(tmp_path / "photos")
    for name in ("a", "b"):
        run_stage("00_data.py", "from-folders", src, "--out", tmp_path / name, "--seed", "3")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert a == b and any(k.startswith("test/") for k in a) and "train.csv" in a


def test_ensemble_and_every_prediction_step_are_deterministic(tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    recipe.write_text("members:\n  - {name: a, backbone: test_efficientnet, image_size: 64}\n"
                      "  - {name: b, backbone: test_efficientnet, image_size: 96, seed: 1, scales: [0.75, 1.0], "
                      "flip: true}\nworkers: 1\n")
    post = tmp_path / "p.yaml"
    post.write_text("k: 3\nverify_shortlist: 5\ninlier_floor: 5\nnonlandmark_pool: index\nsuppress_fraction: 0.01\n"
                    "dba_k: 1\nqe_k: 1\nkreciprocal: 10\nsuperglobal: 10\ndiffusion: 10\nlocal_rerank: 5\nrerank: true\n"
                    "local: {max_keypoints: 200, workers: 1}\nverify: {workers: 2}\n")
    for name in ("a", "b"):
        run_stage("04_predict.py", "--data-root", tiny_competition, "--workdir", tmp_path / f"w{name}", "--ensemble",
                  recipe, "--recipe", post, "--out-root", tmp_path / "subs", "--name", name)
    for pattern in ("neighbours", "features/ensemble"):
        assert _digests(tmp_path / "wa" / pattern) == _digests(tmp_path / "wb" / pattern)
    assert _digests(tmp_path / "subs" / "a") == _digests(tmp_path / "subs" / "b")
    assert len(_digests(tmp_path / "subs" / "a")) >= 3
