"""Classification heads for metric learning: ArcFace (additive angular margin), CosFace (additive cosine
margin), sub-center ArcFace (k centres per class, the nearest one scored; GLR2020/2021 winners), and a plain
softmax (linear layer) baseline. Margins are one value, or per class from the class frequency (GLR2021 1st
place: ``n^-1/4`` mapped linearly into ``[margin_min, margin_max]``, rare classes get the largest).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("arcface", "cosface", "subcenter", "softmax")


def dynamic_margins(counts, margin_min: float = 0.05, margin_max: float = 0.5) -> torch.Tensor:
    """Per-class margins from per-class image counts: ``n^-1/4`` scaled into ``[margin_min, margin_max]``
    (the largest margin for the rarest class). Equal counts give ``margin_max`` everywhere."""
    counts = torch.as_tensor(counts, dtype=torch.float64)
    if (counts <= 0).any():
        raise ValueError("dynamic margins need a positive image count for every class")
    tmp = counts.pow(-0.25)
    span = tmp.max() - tmp.min()
    scaled = (tmp - tmp.min()) / span if span > 0 else torch.ones_like(tmp)
    return (margin_min + scaled * (margin_max - margin_min)).float()


class MarginHead(nn.Module):
    """Class logits for cross-entropy from ``(B, D)`` embeddings and ``(B,)`` labels.

    Cosine kinds give ``scale * cos`` with the target logit penalised by its class's margin during training
    (no labels: plain scaled cosines); ``subcenter`` takes, per class, the best of ``subcenters`` centres;
    ``softmax`` is a linear layer with bias (no normalisation, no margin). ``margins``: one value per class
    (see :func:`dynamic_margins`) instead of ``margin``.
    """

    def __init__(self, dim: int, classes: int, kind: str = "arcface", scale: float = 30.0, margin: float = 0.3,
                 subcenters: int = 3, margins: torch.Tensor | None = None):
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown margin head {kind!r}; choose one of {KINDS}")
        self.kind, self.scale, self.classes = kind, scale, classes
        self.k = subcenters if kind == "subcenter" else 1
        if self.k < 1:
            raise ValueError(f"subcenters must be >= 1, found {subcenters}")
        self.weight = nn.Parameter(torch.empty(classes * self.k, dim))
        nn.init.xavier_uniform_(self.weight)
        self.bias = nn.Parameter(torch.zeros(classes)) if kind == "softmax" else None
        if margins is not None and len(margins) != classes:
            raise ValueError(f"{len(margins)} margins for {classes} classes")
        self.register_buffer("margins", torch.full((classes,), float(margin)) if margins is None
                             else torch.as_tensor(margins, dtype=torch.float32).clone())

    def cosines(self, emb: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine to each class (the nearest sub-centre for ``subcenter``)."""
        cos = F.linear(F.normalize(emb.float(), dim=1), F.normalize(self.weight.float(), dim=1))
        return cos.view(len(emb), self.classes, self.k).amax(dim=2) if self.k > 1 else cos

    def forward(self, emb: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.kind == "softmax":
            return F.linear(emb.float(), self.weight.float(), self.bias.float())
        cos = self.cosines(emb)
        if labels is None:
            return self.scale * cos
        m = self.margins[labels].unsqueeze(1)  # (B, 1): each sample's class margin
        target = cos.gather(1, labels.unsqueeze(1))
        if self.kind == "cosface":
            penalised = target - m
        else:
            sin = torch.sqrt((1.0 - target * target).clamp(min=1e-7))
            penalised = target * torch.cos(m) - sin * torch.sin(m)
            # past pi - m, cos(theta + m) stops decreasing: fall back to a linear penalty (as in ArcFace)
            penalised = torch.where(target > torch.cos(math.pi - m), penalised, target - torch.sin(math.pi - m) * m)
        return self.scale * cos.scatter(1, labels.unsqueeze(1), penalised)
