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
        MarginHead(4, 2, "softmax")
