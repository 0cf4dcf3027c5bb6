"""The run report rendered from a tiny run of every stage: each section's figure exists and the
HTML references only files that exist; a slow test opens it in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import numpy as np
import pytest

from killrun import run_stage
from landmark_kit.report import build_report, markdown_to_html


@pytest.fixture(scope="module")
def tiny_run(tiny_competition, tmp_path_factory):
    """Stages 01, 02 and 03 + 04 (with verification) on the tiny competition, all under one workdir."""
    work = tmp_path_factory.mktemp("report-run")
    ensemble = work / "e.yaml"
    ensemble.write_text("members:\n  - {name: tiny, backbone: test_efficientnet, image_size: 64}\nworkers: 1\n")
    post = work / "p.yaml"
    post.write_text("k: 3\nverify_shortlist: 5\ninlier_floor: 5\nlocal: {max_keypoints: 300, workers: 1}\n"
                    "verify: {workers: 1}\n")
    run_stage("04_predict.py", "--data-root", tiny_competition, "--workdir", work / "ensemble", "--ensemble",
              ensemble, "--recipe", post, "--out-root", work / "submissions", "--ablate")
    clean = work / "c.yaml"
    clean.write_text(f"ensemble: {ensemble}\nk: 20\nmax_verify: 5\ninlier_threshold: 10\nt_frequency: 0\n"
                     "min_images_per_label: 2\nlocal: {max_keypoints: 300, workers: 1}\nverify: {workers: 1}\n")
    run_stage("01_clean.py", "--data-root", tiny_competition, "--recipe", clean, "--out-root", work / "cleaning",
              "--name", "tiny")
    run_stage("02_train.py", "--data-root", tiny_competition, "--workdir", work / "train" / "tiny", "--model",
              "test_efficientnet", "--weights", "none", "--epochs", "2", "--image-size", "64", "--batch-size", "16",
              "--workers", "0", "--dim", "16")
    return work


def test_report_has_every_section_and_only_existing_files(tiny_run, tiny_competition):
    index = build_report(tiny_run, data_root=tiny_competition)
    page = index.read_text()
    for title in ("Label cleaning (stage 01) tiny", "Training (stage 02) tiny",
                  "Retrieval examples: test queries drawn", "Retrieval examples: the test queries with the lowest", "Recognition pitfalls: non-landmark",
                  "Spatial verification: matched points", "Label cleaning examples (tiny)", "Descriptor map (t-SNE)",
                  "Stage 04 step by step, recognition (GAP)"):
        assert f">{title}" in page, title
    assert "val_gap" not in page and "validation GAP" not in page  # validation off: its columns left out
    assert not re.search(r"<td>\d+\.\d{5,}</td>", page)  # rounded like the docs tables
    assert "recognition" in page and "GAP" in page  # the --ablate tables
    sources = re.findall(r'src="([^"]+)"', page)
    assert len(sources) >= 9
    for src in sources:
        path = index.parent / src
        assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG", src
        assert not src.startswith(("http", "/")) and ".." not in src  # self-contained, offline
    import cv2

    grid = cv2.imread(str(index.parent / "queries-sampled.png"))
    assert grid.shape[0] > 100 and grid.std() > 20  # pictures, not a blank canvas
    matches = [cv2.imread(str(p)) for p in index.parent.glob("matches-*.png")]
    assert matches and all(m.shape[1] > 100 for m in matches)
    green = [(m[..., 1] > 200) & (m[..., 0] < 40) & (m[..., 2] < 40) for m in matches]
    assert max(int(g.sum()) for g in green) > 50  # inlier lines drawn


def test_markdown_tables_become_html_tables():
    out = markdown_to_html("# Title\n\n| a | b |\n|---|---|\n| 1 | <x> |\ntext\n<!-- generated -->\n")
    assert out == ("<p>Title</p><table><tr><th>a</th><th>b</th></tr><tr><td>1</td><td>&lt;x&gt;</td></tr>"
                   "</table><p>text</p>")


def test_cells_are_rounded_like_the_docs_tables_and_empty_columns_left_out():
    import pandas as pd

    from landmark_kit.report import frame_html, number

    assert [number(v) for v in (0.548123, 5.23456, 123.456, 12345.6, 2e-05, 3, 12000, None, float("nan"), "main")] \
        == ["0.5481", "5.2346", "123.5", "12,346", "2e-05", "3", "12,000", "", "", "main"]
    frame = pd.DataFrame({"epoch": [1, 2], "img_s": [150.25, 160.0], "val_gap": [float("nan")] * 2})
    assert frame_html(frame, {"img_s": "images/s"}) == ("<table><tr><th>epoch</th><th>images/s</th></tr>"
                                                       "<tr><td>1</td><td>150.2</td></tr>"
                                                       "<tr><td>2</td><td>160.0</td></tr></table>")
    assert "<th>b</th>" not in markdown_to_html("| a | b |\n|---|---|\n| 1 |  |\n")


def test_an_empty_workdir_still_gets_a_page(tmp_path):
    page = build_report(tmp_path).read_text()
    assert "Nothing to show" in page


@pytest.mark.slow
def test_the_report_renders_in_headless_chromium(tiny_run, tiny_competition, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium here: apt-get install chromium")
    index = build_report(tiny_run, data_root=tiny_competition)
    shot = tmp_path / "shot.png"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1300,2400",
                    f"--screenshot={shot}", index.as_uri()], check=True, capture_output=True, timeout=120)
    import cv2

    pixels = cv2.imread(str(shot))
    assert pixels is not None and pixels.shape[:2] == (2400, 1300)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, 3), axis=0)) > 500  # text and pictures


def test_the_report_has_a_umap_map_of_the_largest_landmarks(tiny_run, tiny_competition):
    index = build_report(tiny_run, data_root=tiny_competition)
    page = index.read_text()
    assert 'src="umap.png"' in page and "up to 50 images each" in page
    assert page.index("t-SNE") < page.index("UMAP")  # beside the t-SNE map, right after it
    assert (index.parent / "umap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import cv2

    pixels = cv2.imread(str(index.parent / "umap.png"))
    assert pixels.shape[0] >= 400 and pixels.shape[1] >= 500 and pixels.std() > 10  # points and a legend


def test_umap_sample_takes_up_to_50_images_of_the_10_largest_landmarks():
    from landmark_kit.report import umap_sample

    sizes = {label: 3 + 7 * label for label in range(14)}  # 3 .. 94 images; the largest are labels 4..13
    sizes[20] = sizes[4]  # a tie with label 4 for the last place: the smaller label wins
    labels = np.random.default_rng(1).permutation(np.repeat(list(sizes), list(sizes.values())))
    keep = umap_sample(labels, 10, 50, seed=0)
    chosen, counts = np.unique(labels[keep], return_counts=True)
    assert chosen.tolist() == list(range(4, 14))
    assert counts.tolist() == [min(50, sizes[label]) for label in range(4, 14)]
    assert len(set(keep.tolist())) == len(keep)  # no image twice
    assert np.array_equal(keep, umap_sample(labels, 10, 50, seed=0))  # seeded
    assert not np.array_equal(keep, umap_sample(labels, 10, 50, seed=1))
    assert len(umap_sample(labels[:0])) == 0
