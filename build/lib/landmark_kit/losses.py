"""Cosine-softmax heads with margins: ArcFace (additive angular) and CosFace (additive cosine)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("arcface", "cosface")


class MarginHead(nn.Module):
    """Class logits ``s * cos`` with the target logit penalised by a margin during training.

    ``(B, D)`` embeddings + ``(B,)`` labels -> ``(B, C)`` logits for cross-entropy. Without labels (eval)
    it returns plain scaled cosines.
    """

    def __init__(self, dim: int, classes: int, kind: str = "arcface", scale: float = 30.0, margin: float = 0.3):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown margin head {kind!r}; choose one of {KINDS}")
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)
        self.kind, self.scale, self.margin = kind, scale, margin

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        if labels is None:
            return self.scale * cos
        if self.kind == "cosface":
            target = cos - self.margin
        else:
            sin = torch.sqrt((1.0 - cos * cos).clamp(min=1e-7))
            target = cos * math.cos(self.margin) - sin * math.sin(self.margin)
            # past pi - m, cos(theta + m) stops decreasing: fall back to a linear penalty (as in ArcFace)
            target = torch.where(cos > math.cos(math.pi - self.margin), target,
                                 cos - math.sin(math.pi - self.margin) * self.margin)
        onehot = F.one_hot(labels, cos.shape[1]).bool()
        return self.scale * torch.where(onehot, target, cos)
