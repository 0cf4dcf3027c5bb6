"""Margin heads: the target logit is s*cos(theta+m) (ArcFace) or s*(cos-m) (CosFace), the rest s*cos."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from landmark_kit.losses import MarginHead


def _setup(kind: str):
    torch.manual_seed(0)
    head = MarginHead(8, 5, kind, scale=30.0, margin=0.3)
    emb = torch.randn(4, 8)
    labels = torch.tensor([0, 1, 2, 3])
    cos = F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T
    return head, emb, labels, cos


def test_arcface_adds_angular_margin_to_target_only():
    head, emb, labels, cos = _setup("arcface")
    logits = head(emb, labels)
    theta = torch.acos(cos[torch.arange(4), labels].clamp(-1, 1))
    expected = torch.where(theta + 0.3 < math.pi, torch.cos(theta + 0.3),
                           cos[torch.arange(4), labels] - math.sin(math.pi - 0.3) * 0.3)
    assert torch.allclose(logits[torch.arange(4), labels], 30 * expected, atol=1e-4)
    mask = torch.ones_like(cos, dtype=torch.bool)
    mask[torch.arange(4), labels] = False
    assert torch.allclose(logits[mask], 30 * cos[mask], atol=1e-5)


def test_cosface_subtracts_margin_and_eval_has_none():
    head, emb, labels, cos = _setup("cosface")
    logits = head(emb, labels)
    assert torch.allclose(logits[torch.arange(4), labels], 30 * (cos[torch.arange(4), labels] - 0.3), atol=1e-5)
    assert torch.allclose(head(emb), 30 * cos, atol=1e-5)


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="unknown margin head"):
        MarginHead(4, 2, "sphereface")


def test_subcenter_scores_the_nearest_of_k_centres():
    torch.manual_seed(0)
    head = MarginHead(8, 5, "subcenter", scale=30.0, margin=0.3, subcenters=3)
    assert head.weight.shape == (15, 8)
    emb = torch.randn(4, 8)
    all_cos = F.normalize(emb, dim=1) @ F.normalize(head.weight, dim=1).T
    best = all_cos.view(4, 5, 3).amax(2)
    assert torch.allclose(head(emb), 30 * best, atol=1e-5)
    labels = torch.tensor([0, 1, 2, 3])
    # the same margin maths as ArcFace on the nearest sub-centre's cosine
    theta = torch.acos(best[torch.arange(4), labels].clamp(-1, 1))
    expected = torch.where(theta + 0.3 < math.pi, torch.cos(theta + 0.3),
                           best[torch.arange(4), labels] - math.sin(math.pi - 0.3) * 0.3)
    assert torch.allclose(head(emb, labels)[torch.arange(4), labels], 30 * expected, atol=1e-4)


def test_dynamic_margins_per_class():
    from landmark_kit.losses import dynamic_margins

    margins = dynamic_margins([1, 16, 256], 0.05, 0.5)
    assert torch.allclose(margins, torch.tensor([0.5, 0.05 + 0.45 * (0.5 - 0.25) / (1 - 0.25), 0.05]), atol=1e-6)
    assert torch.allclose(dynamic_margins([7, 7]), torch.tensor([0.5, 0.5]))
    with pytest.raises(ValueError, match="positive"):
        dynamic_margins([0, 3])
    torch.manual_seed(0)
    head = MarginHead(8, 3, "cosface", scale=10.0, margins=margins)
    emb, labels = torch.randn(3, 8), torch.tensor([0, 1, 2])
    cos = head(emb) / 10.0
    got = head(emb, labels)[torch.arange(3), labels] / 10.0
    assert torch.allclose(got, cos[torch.arange(3), labels] - margins, atol=1e-5)


def test_softmax_is_a_linear_layer():
    torch.manual_seed(0)
    head = MarginHead(8, 5, "softmax")
    with torch.no_grad():
        head.bias.fill_(0.5)
    emb = torch.randn(4, 8)
    assert torch.allclose(head(emb, torch.tensor([0, 1, 2, 3])), emb @ head.weight.T + 0.5, atol=1e-5)
