"""Ensemble extraction: multi-scale / flip test-time augmentation and what invalidates cached descriptors."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from landmark_kit.ensemble import load_ensemble, run_ensemble
from landmark_kit.extract import MultiScale
from landmark_kit.models import GlobalDescriptor, create_backbone


def test_multiscale_flip_is_the_normalised_sum_of_each_view():
    torch.manual_seed(0)
    model = GlobalDescriptor(create_backbone("test_efficientnet")).eval()
    x = torch.rand(2, 3, 80, 80)
    with torch.no_grad():
        got = MultiScale(model, 64, scales=(0.75, 1.25), flip=True)(x)
        views = []
        for side in (48, 80):
            xs = x if side == 80 else F.interpolate(x, size=(side, side), mode="bilinear", antialias=True)
            views += [model(xs), model(xs.flip(3))]
        plain = MultiScale(model, 80)(x)
    assert torch.allclose(got, F.normalize(sum(views), dim=1), atol=1e-6)
    assert torch.allclose(plain, model(x), atol=1e-6)  # one scale, no flip: the model itself
    assert not torch.allclose(got, plain, atol=1e-3)
    assert MultiScale(model, 64, scales=(0.75, 1.25)).input_size() == 80


def test_tta_member_end_to_end_and_weight_changes_do_not_re_extract(tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    member = "{name: z, backbone: test_efficientnet, image_size: 48, scales: [0.75, 1.0, 1.25], flip: true"
    recipe.write_text(f"members:\n  - {member}, weight: 1.0}}\nworkers: 0\n")
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    feats = tmp_path / "w" / "features" / "z" / "test.npy"
    test = np.load(feats)
    assert np.allclose(np.linalg.norm(test, axis=1), 1, atol=1e-5)
    stamp = feats.stat().st_mtime_ns
    recipe.write_text(f"members:\n  - {member}, weight: 0.5}}\nworkers: 0\n")
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    assert feats.stat().st_mtime_ns == stamp  # the weight applies at concatenation only
    recipe.write_text(f"members:\n  - {member.replace('flip: true', 'flip: false')}}}\nworkers: 0\n")
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    assert not np.allclose(np.load(feats), test, atol=1e-4)  # TTA changed: extracted again


def test_float16_store_round_trip(tmp_path):
    from landmark_kit.ensemble import load_features, save_features
    from landmark_kit.recipes import RecipeError

    rng = np.random.default_rng(0)
    feats = rng.standard_normal((50, 64)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    ids = [f"{i:016x}" for i in range(50)]
    save_features(tmp_path, "test", feats, ids, "float16")
    back, back_ids = load_features(tmp_path, "test")
    assert back.dtype == np.float16 and isinstance(back, np.memmap) and back_ids == ids
    assert (tmp_path / "test.npy").stat().st_size < 50 * 64 * 2 + 200
    assert np.abs(back.astype(np.float32) - feats).max() < 1e-3
    cosine = (back.astype(np.float32) @ back.astype(np.float32).T)
    assert np.abs(cosine - feats @ feats.T).max() < 2e-3
    with pytest.raises(RecipeError, match="store_dtype"):
        save_features(tmp_path, "test", feats, ids, "int8")


def test_pca_whitening_decorrelates_the_fit_split_and_applies_to_all(trained_like_features):
    from landmark_kit.ensemble import apply_whitening, fit_whitening

    fit, other = trained_like_features
    w = fit_whitening(fit, dim=8, shrink=0.0)
    projected = (fit - w["mean"]) @ w["projection"]
    assert projected.shape == (len(fit), 8)
    assert np.allclose(np.cov(projected, rowvar=False), np.eye(8), atol=1e-3)
    out = apply_whitening(other, w)
    assert out.shape == (len(other), 8) and np.allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    assert fit_whitening(fit[:5])["projection"].shape[1] == 4  # never more directions than images - 1


@pytest.fixture
def trained_like_features():
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((16, 16)).astype(np.float32)  # correlated dimensions
    return (rng.standard_normal((400, 16)).astype(np.float32) @ mix,
            rng.standard_normal((30, 16)).astype(np.float32) @ mix)


def test_whitened_ensemble_through_the_stage(tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    recipe.write_text("members:\n  - {name: z, backbone: test_efficientnet, image_size: 48}\n"
                      "whiten: true\nwhiten_split: train\nwhiten_dim: 16\nworkers: 0\n")
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    ens = tmp_path / "w" / "features" / "ensemble"
    assert np.load(ens / "test.npy").shape[1] == 16 and (ens / "whitening.npz").is_file()


def test_member_whitening_applies_before_concatenation_and_reuses_descriptors(trained_like_features, tmp_path):
    from landmark_kit.ensemble import (MemberConfig, apply_whitening, fit_whitening, joined_features, member_identity,
                                       save_features)

    fit, other = trained_like_features
    for name, shift in (("a", 0.0), ("b", 1.0)):
        save_features(tmp_path / "features" / name, "index", fit + shift, [f"{i:016x}" for i in range(len(fit))])
        save_features(tmp_path / "features" / name, "test", other + shift, [f"{i:016x}" for i in range(len(other))])
    a, b = MemberConfig("a", backbone="x", whiten=True), MemberConfig("b", backbone="x", weight=0.5)
    joined, _ = joined_features([a, b], tmp_path, "test", whiten_split="index")
    expected = np.concatenate([apply_whitening(other, fit_whitening(fit)), 0.5 * (other + 1.0)], axis=1)
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.allclose(joined, expected, atol=1e-4)
    assert member_identity(a) == member_identity(MemberConfig("a", backbone="x"))  # no re-extraction


def test_sharded_extraction_equals_single_process(tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    recipe.write_text("members:\n  - {name: z, backbone: test_efficientnet, image_size: 48}\nworkers: 0\n")
    single = run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "one")
    assert load_ensemble(recipe, {"rank": 0, "world_size": 2}).world_size == 2
    assert run_ensemble(load_ensemble(recipe, {"rank": 1, "world_size": 2}), tiny_competition, tmp_path / "two") == {}
    parts = sorted(p.name for p in (tmp_path / "two" / "features" / "z").glob("*.part*.npy"))
    assert parts == ["index.part001of002.npy", "test.part001of002.npy", "train.part001of002.npy"]
    sharded = run_ensemble(load_ensemble(recipe, {"rank": 0, "world_size": 2}), tiny_competition, tmp_path / "two")
    assert not list((tmp_path / "two" / "features" / "z").glob("*.part*"))  # merged and cleaned up
    for split in ("train", "test", "index"):
        a = np.load(tmp_path / "one" / "features" / "z" / f"{split}.npy").astype(np.float32)
        b = np.load(tmp_path / "two" / "features" / "z" / f"{split}.npy").astype(np.float32)
        assert np.allclose(a, b, atol=2e-3)
        ids = (tmp_path / "one" / "features" / "z" / f"{split}.ids").read_text()
        assert ids == (tmp_path / "two" / "features" / "z" / f"{split}.ids").read_text()
    assert np.array_equal(np.load(single["index"])["indices"][:, :5], np.load(sharded["index"])["indices"][:, :5])


def test_aspect_buckets_shapes_batches_and_exif(tmp_path):
    from PIL import Image

    from landmark_kit.data import upright_size
    from landmark_kit.extract import aspect_bucket, bucket_batches, bucket_shape

    assert bucket_shape(aspect_bucket(500, 500), 224) == (224, 224)
    h, w = bucket_shape(aspect_bucket(640, 480), 224)
    assert w > h and h % 32 == 0 and w % 32 == 0 and abs(h * w - 224 * 224) < 0.15 * 224 * 224
    h, w = bucket_shape(aspect_bucket(300, 900), 224)  # very tall: the 1:2 bucket
    assert (h, w) == (320, 160)
    buckets = [3, 4, 3, 3, 0, 4, 3]
    batches = bucket_batches(buckets, 2)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert all(len(b) <= 2 and len({buckets[i] for i in b}) == 1 for b in batches)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: the stored 60x40 is shown 40x60
    Image.new("RGB", (60, 40)).save(tmp_path / "r.jpg", exif=exif)
    assert upright_size(tmp_path / "r.jpg") == (40, 60)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    assert upright_size(tmp_path / "bad.jpg") is None


def test_aspect_member_end_to_end(tiny_competition, tmp_path):
    recipe = tmp_path / "e.yaml"
    recipe.write_text("members:\n  - {name: z, backbone: test_efficientnet, image_size: 64, aspect: true,"
                      " scales: [0.5, 1.0]}\nworkers: 0\nbatch_size: 4\n")
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "w")
    feats = np.load(tmp_path / "w" / "features" / "z" / "train.npy").astype(np.float32)
    assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=2e-3)


def _odd_images(root):
    """One split of awkward files: plain RGB / grayscale JPEGs, CMYK, EXIF-rotated, PNG behind .jpg, truncated."""
    import io

    from PIL import Image

    from landmark_kit.data import image_path

    rng = np.random.default_rng(0)
    base = np.kron(rng.integers(0, 255, (6, 8, 3)), np.ones((16, 16, 1))).astype(np.uint8)  # 96 x 128 blocks
    rgb = Image.fromarray(base)

    def jpeg(img, **kw) -> bytes:
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=95, **kw)
        return buf.getvalue()

    exif = Image.Exif()
    exif[0x0112] = 6
    png = io.BytesIO()
    rgb.save(png, "PNG")
    files = {"a" * 16: jpeg(rgb), "b" * 16: jpeg(rgb.convert("L")), "c" * 16: jpeg(rgb.convert("CMYK")),
             "d" * 16: jpeg(rgb, exif=exif.tobytes()), "e" * 16: png.getvalue(), "f" * 16: jpeg(rgb)[:400],
             "0" * 16: b"not an image"}
    for image_id, data in files.items():
        path = image_path(root, "test", image_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def test_device_decoding_matches_worker_decoding_and_reports_the_same_failures(tmp_path):
    from landmark_kit.extract import _gpu_decodable, describe_split

    files = _odd_images(tmp_path)
    assert [_gpu_decodable(d) for d in files.values()] == [True, True, False, False, False, False, False]
    torch.manual_seed(0)
    model = GlobalDescriptor(create_backbone("test_efficientnet")).eval()
    ids = list(files)
    for aspect in (False, True):
        cpu, cpu_bad = describe_split(model, tmp_path, "test", ids, 64, 4, 0, "cpu", aspect=aspect, decode="cpu")
        dev, dev_bad = describe_split(model, tmp_path, "test", ids, 64, 4, 0, "cpu", aspect=aspect, decode="device")
        assert sorted(f.image_id for f in dev_bad) == sorted(f.image_id for f in cpu_bad) == ["0" * 16, "f" * 16]
        good = np.abs(cpu).sum(1) > 0
        assert good.sum() == 5 and np.array_equal(good, np.abs(dev).sum(1) > 0)
        assert (cpu[good] * dev[good]).sum(1).min() > 0.99  # same filters; decoders differ in rounding


def test_members_sharing_an_input_side_are_decoded_once_with_the_same_descriptors(tiny_competition, tmp_path,
                                                                                    monkeypatch):
    import landmark_kit.ensemble as ensemble

    members = ("  - {name: a, backbone: test_efficientnet, image_size: 48, scales: [0.75, 1.0], seed: 1}\n"
               "  - {name: b, backbone: test_efficientnet, image_size: 48, flip: true, seed: 2}\n"
               "  - {name: c, backbone: test_efficientnet, image_size: 40, seed: 3}\n")
    recipe = tmp_path / "e.yaml"
    recipe.write_text(f"members:\n{members}workers: 0\n")
    calls = []
    real = ensemble.describe_split_members
    monkeypatch.setattr(ensemble, "describe_split_members",
                        lambda group, *a, **k: calls.append(len(group)) or real(group, *a, **k))
    run_ensemble(load_ensemble(recipe), tiny_competition, tmp_path / "together")
    assert calls == [2, 1] * 3  # a and b share 48 px: one pass per split; c (40 px) its own
    for name in "abc":  # each member alone gives the same rows
        alone = tmp_path / f"alone-{name}.yaml"
        alone.write_text("members:\n" + next(line for line in members.splitlines(keepends=True)
                                              if f"name: {name}," in line) + "workers: 0\n")
        run_ensemble(load_ensemble(alone), tiny_competition, tmp_path / f"alone-{name}")
        for split in ("train", "test", "index"):
            got = np.load(tmp_path / "together" / "features" / name / f"{split}.npy")
            assert np.array_equal(got, np.load(tmp_path / f"alone-{name}" / "features" / name / f"{split}.npy"))


def test_reuse_from_takes_identical_members_and_extracts_the_others(tiny_competition, tmp_path, monkeypatch):
    import landmark_kit.ensemble as ensemble

    single, pair = tmp_path / "single.yaml", tmp_path / "pair.yaml"
    a = "{name: a, backbone: test_efficientnet, image_size: 48"
    single.write_text(f"members:\n  - {a}}}\nworkers: 0\n")
    pair.write_text(f"members:\n  - {{name: renamed{a[8:]}, weight: 2.0}}\n"
                    "  - {name: b, backbone: test_efficientnet, image_size: 48, seed: 3}\nworkers: 0\n")
    run_ensemble(load_ensemble(single), tiny_competition, tmp_path / "one")
    extracted = []
    real = ensemble.describe_split_members
    monkeypatch.setattr(ensemble, "describe_split_members",
                        lambda members, *a, **k: extracted.append(len(members)) or real(members, *a, **k))
    run_ensemble(load_ensemble(pair), tiny_competition, tmp_path / "two", reuse_from=[tmp_path / "one"])
    assert extracted == [1, 1, 1]  # member b only, once per split
    for split in ("train", "test", "index"):
        got = np.load(tmp_path / "two" / "features" / "renamed" / f"{split}.npy")
        assert np.array_equal(got, np.load(tmp_path / "one" / "features" / "a" / f"{split}.npy"))
    # a different checkpoint, seed or side is another member: nothing is taken
    other = tmp_path / "other.yaml"
    other.write_text(f"members:\n  - {a[:-2]}64}}\nworkers: 0\n")
    assert ensemble.reuse_features(load_ensemble(other).members, tmp_path / "three", [tmp_path / "one"]) == {}


def test_a_competition_without_index_predicts_recognition_and_empty_retrieval(tiny_competition, tmp_path):
    import shutil

    from landmark_kit.data import DataError, scan_split
    from landmark_kit.predict import PredictConfig, predict
    from landmark_kit.scoring import score_files

    data = tmp_path / "no-index"
    shutil.copytree(tiny_competition, data, ignore=shutil.ignore_patterns("index"))
    recipe = tmp_path / "e.yaml"
    recipe.write_text("members:\n  - {name: z, backbone: test_efficientnet, image_size: 48}\nworkers: 0\n")
    run_ensemble(load_ensemble(recipe), data, tmp_path / "w")
    assert np.load(tmp_path / "w" / "features" / "ensemble" / "index.npy").shape[0] == 0
    cfg = PredictConfig(k=3, dba_k=2, qe_k=2, rerank=True)
    rec, ret = predict(data, tmp_path / "w", tmp_path / "sub", cfg=cfg)
    assert score_files(data / "recognition_solution.csv", rec)["scores"]["All"]["GAP"] > 0
    rows = pd.read_csv(ret, dtype=str, keep_default_na=False)
    assert sorted(rows["id"]) == scan_split(data, "test") and (rows["images"] == "").all()
    with pytest.raises(DataError, match="nonlandmark_pool 'index' is empty"):
        predict(data, tmp_path / "w", tmp_path / "sub2", cfg=PredictConfig(nonlandmark_pool="index"))
