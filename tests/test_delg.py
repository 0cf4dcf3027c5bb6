"""DELG-style learned local features: stop-gradient training, geometry of keypoints, training + cache path."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from landmark_kit.checkpoint import TrainConfig, load_trained
from landmark_kit.delg import extract_delg
from landmark_kit.local import Features, LocalConfig, TensorTransform, extract_local
from landmark_kit.models import LandmarkNet, create_backbone, input_normalisation
from landmark_kit.train import train
from landmark_kit.verify import VerifyConfig, verify_pair
from test_verify import H, _texture


def test_local_losses_leave_the_backbone_gradients_alone():
    torch.manual_seed(0)
    net = LandmarkNet(create_backbone("test_efficientnet"), 16, local_classes=3).train()
    x, labels = torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 2, 0])
    embedding, fmap = net.forward_with_local(x)
    embedding.square().sum().backward(retain_graph=True)
    global_only = [p.grad.clone() for p in net.backbone.parameters() if p.grad is not None]
    attention, reconstruction = net.local.losses(fmap, labels)
    (attention + 10 * reconstruction).backward()
    both = [p.grad for p in net.backbone.parameters() if p.grad is not None]
    assert len(global_only) == len(both) and all(torch.equal(a, b) for a, b in zip(global_only, both))
    assert net.local.encoder.weight.grad.abs().sum() > 0 and net.local.attention[0].weight.grad.abs().sum() > 0
    assert torch.allclose(embedding, net(x))  # forward_with_local's embedding is the plain forward's


def _delg(net: LandmarkNet, img: np.ndarray) -> Features:
    tensor = TensorTransform(800, *input_normalisation(net.backbone))(Image.fromarray(img))
    kp, desc = extract_delg(net.backbone, net.local, net.local_level, tensor[None], max_keypoints=500)
    return Features(kp, desc, (img.shape[1], img.shape[0]))


def test_delg_keypoints_verify_a_known_homography():
    """ImageNet lite0 stride-16 features through an (untrained) head already localise well enough for RANSAC."""
    torch.manual_seed(0)
    net = LandmarkNet(create_backbone("tf_efficientnet_lite0", "imagenet-lite"), 64, local_classes=5).eval()
    a = _texture(0, (240, 320))
    fa, fb = _delg(net, a), _delg(net, cv2.warpPerspective(a, H, (320, 240)))
    fo = _delg(net, _texture(1, (240, 320)))
    assert fa.keypoints.shape == (500, 4) and fa.descriptors.shape == (500, 128)
    assert np.allclose(np.linalg.norm(fa.descriptors, axis=1), 1, atol=1e-4)
    assert (fa.keypoints[:, 0] >= 0).all() and (fa.keypoints[:, 0] < 320).all() and (fa.keypoints[:, 1] < 240).all()
    cfg = VerifyConfig(threshold_px=8, device="cpu")
    assert verify_pair(fa, fb, cfg) >= 60 and verify_pair(fa, fo, cfg) < 15


def test_train_with_local_head_then_extract_through_the_cache(tiny_competition, tmp_path):
    cfg = TrainConfig(model="test_efficientnet", weights=None, epochs=1, image_size=64, batch_size=16, workers=0,
                      dim=32, local_head=True)
    checkpoint = train(cfg, tiny_competition, tmp_path / "run", progress=False)
    model, loaded = load_trained(checkpoint)
    assert loaded.local_head and model.local is not None
    ids = pd.read_csv(tiny_competition / "train.csv", dtype={"id": str})["id"].tolist()[:3]
    local = LocalConfig(backend="delg", checkpoint=str(checkpoint), max_keypoints=50, max_side=128, workers=0,
                        device="cpu")
    feats = extract_local(local, tiny_competition, "train", ids, tmp_path / "local", progress=False).load_all()
    assert set(feats) == set(ids)
    for f in feats.values():
        assert f.keypoints.shape == (50, 4) and f.descriptors.shape == (50, 128)
        assert (f.keypoints[:, :2] >= 0).all() and (f.keypoints[:, 0] <= f.size[0]).all()

    plain = train(TrainConfig(**{**cfg.__dict__, "local_head": False}), tiny_competition, tmp_path / "plain",
                  progress=False)
    with pytest.raises(ValueError, match="no local head"):
        extract_local(LocalConfig(backend="delg", checkpoint=str(plain), workers=0), tiny_competition, "train", ids,
                      tmp_path / "local2", progress=False)
    with pytest.raises(ValueError, match="needs local.checkpoint"):
        extract_local(LocalConfig(backend="delg"), tiny_competition, "train", ids, tmp_path / "local3")
