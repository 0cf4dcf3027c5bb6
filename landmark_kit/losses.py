"""Classification heads for metric learning: ArcFace (additive angular margin), CosFace (additive cosine
margin), sub-center ArcFace (k centres per class, the nearest one scored; GLR2020/2021 winners), and a plain
softmax (linear layer) baseline. Margins are one value, or per class from the class frequency (GLR2021 1st
place: ``n^-1/4`` mapped linearly into ``[margin_min, margin_max]``, rare classes get the largest).

Embedding losses on N-classes-by-M-images batches (no class weights): a triplet margin loss with batch-hard or
semi-hard mining (pytorch-metric-learning), and the generalized end-to-end (GE2E) loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

KINDS = ("arcface", "cosface", "subcenter", "softmax")
MINING = ("batch-hard", "semi-hard")


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


def batch_nn_correct(emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """How many embeddings have a same-label nearest neighbour (cosine) among the rest of the batch."""
    emb = F.normalize(emb.detach().float(), dim=1)
    sim = (emb @ emb.T).fill_diagonal_(-float("inf"))
    return (labels[sim.argmax(1)] == labels).sum()


class TripletHead(nn.Module):
    """Triplet margin loss on the batch's mined triplets (``batch-hard``: each anchor's hardest positive and
    negative; ``semi-hard``: negatives farther than the positive but within the margin); returns (loss, the
    number of images whose nearest batch neighbour shares their label)."""

    def __init__(self, margin: float = 0.1, mining: str = "batch-hard"):
        super().__init__()
        from pytorch_metric_learning import losses, miners

        if mining not in MINING:
            raise ValueError(f"unknown mining {mining!r}; choose one of {MINING}")
        self.loss = losses.TripletMarginLoss(margin=margin)
        self.miner = (miners.BatchHardMiner() if mining == "batch-hard"
                      else miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard"))

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        emb = emb.float()
        return self.loss(emb, labels, self.miner(emb, labels)), batch_nn_correct(emb, labels)


class GE2ELoss(nn.Module):
    """Generalized end-to-end loss (Wan et al. 2018): ``S[i, k] = w * cos(e_i, c_k) + b`` against every class
    centroid of the batch, the own centroid computed without ``e_i``, softmax cross-entropy over centroids;
    ``w`` (kept > 0) and ``b`` are learnt. Returns (loss, the number of images whose best centroid is their own)."""

    def __init__(self, init_w: float = 10.0, init_b: float = -5.0):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(float(init_w)))
        self.b = nn.Parameter(torch.tensor(float(init_b)))

    def scores(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K) scores against the batch's K classes (sorted label order) and each embedding's class index.
        A class with a single image in the batch has no leave-one-out centroid: its full one (itself) is used."""
        emb = F.normalize(emb.float(), dim=1)
        _, own, counts = torch.unique(labels, return_inverse=True, return_counts=True)
        sums = torch.zeros(len(counts), emb.shape[1], device=emb.device).index_add_(0, own, emb)
        cos = emb @ F.normalize(sums / counts[:, None], dim=1).T
        n_own = counts[own]
        excluded = (sums[own] - emb * (n_own > 1)[:, None]) / (n_own - 1).clamp(min=1)[:, None]
        cos_own = F.cosine_similarity(emb, excluded, dim=1, eps=1e-8)
        cos = cos.scatter(1, own[:, None], cos_own[:, None])
        return self.w.clamp(min=1e-6) * cos + self.b, own

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores, own = self.scores(emb, labels)
        return F.cross_entropy(scores, own), (scores.detach().argmax(1) == own).sum()


class WithAuxHead(nn.Module):
    """An embedding loss plus ``weight`` x the cross-entropy of a :class:`MarginHead` on the same embeddings;
    returns (combined loss, the embedding loss's hit count)."""

    def __init__(self, main: nn.Module, aux: MarginHead, weight: float):
        super().__init__()
        self.main, self.aux, self.weight = main, aux, weight

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, correct = self.main(emb, labels)
        return loss + self.weight * F.cross_entropy(self.aux(emb, labels), labels), correct
