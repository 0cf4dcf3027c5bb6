"""Training heads by name: a registry, in the manner of timm's model registry, from a recipe's ``head`` to a
builder ``(cfg, counts, backbone) -> module`` and what the head asks of the batches and of the recipe.

A new head is one file and one line: a module ``landmark_kit/head_<name>.py`` (in the training row of
docs/architecture.md) whose builder is decorated ``@register_head("<name>")``; it is imported the first time a
recipe names it. The built-in heads are registered below.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Callable

import numpy as np
import torch.nn as nn

from .checkpoint import TrainConfig
from .losses import KINDS, MINING, GE2ELoss, MarginHead, TripletHead, dynamic_margins
from .reconstruction import RECONSTRUCTION, ReconstructionHead
from .recipes import RecipeError, add_plugin, find_plugin

Builder = Callable[[TrainConfig, np.ndarray, nn.Module], nn.Module]
BATCHES = ("plain", "balanced")  # plain: aspect-bucketed batches; balanced: N landmarks x M images (per_class)


@dataclass(frozen=True)
class Head:
    """A registered head: ``build(cfg, counts, backbone)`` makes its module (``counts``: images per class). A
    ``network`` head is called with ``(net, images, labels)`` and runs the network itself; any other with
    ``(embeddings, labels)``, returning (loss, hits), or it is a :class:`MarginHead` (logits, cross-entropy).
    ``check(cfg)`` refuses, with a RecipeError, a recipe the head cannot train."""

    name: str
    build: Builder
    batches: str = "plain"
    network: bool = False
    check: Callable[[TrainConfig], None] | None = None


HEADS: dict[str, Head] = {}


def register_head(name: str, batches: str = "plain", network: bool = False,
                  check: Callable[[TrainConfig], None] | None = None) -> Callable[[Builder], Builder]:
    """Decorator: the builder becomes training head ``name`` (``head: name`` in recipes, ``--head name``)."""
    if batches not in BATCHES:
        raise ValueError(f"batches {batches!r}: choose one of {BATCHES}")

    def add(build: Builder) -> Builder:
        add_plugin(HEADS, name, Head(name, build, batches, network, check), "training head")
        return build

    return add


def registered_head(name: str) -> Head:
    """The head registered as ``name``, importing ``landmark_kit.head_<name>`` first when it is not yet; an
    unknown name is a RecipeError listing the registered ones."""
    return find_plugin(HEADS, name, "head", f"{__package__}.head", RecipeError)


def margin_head(cfg: TrainConfig, kind: str, counts: np.ndarray) -> MarginHead:
    """A ``kind`` margin head over every class, with the recipe's scale, margins and sub-centres."""
    margins = dynamic_margins(counts, cfg.margin_min, cfg.margin_max) if cfg.dynamic_margin else None
    try:
        return MarginHead(cfg.dim, len(counts), kind, cfg.scale, cfg.margin, cfg.subcenters, margins)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def _margin(kind: str, cfg: TrainConfig, counts: np.ndarray, backbone: nn.Module) -> MarginHead:
    return margin_head(cfg, kind, counts)


for _kind in KINDS:  # arcface, cosface, subcenter, softmax: class logits under cross-entropy
    register_head(_kind)(partial(_margin, _kind))


def _known_mining(cfg: TrainConfig) -> None:
    if cfg.mining not in MINING:
        raise RecipeError(f"unknown mining {cfg.mining!r}; choose one of {MINING}")


@register_head("triplet", batches="balanced", check=_known_mining)
def triplet(cfg: TrainConfig, counts: np.ndarray, backbone: nn.Module) -> TripletHead:
    """Triplet margin loss on batch-hard or semi-hard mined triplets."""
    return TripletHead(cfg.triplet_margin, cfg.mining)


@register_head("ge2e", batches="balanced")
def ge2e(cfg: TrainConfig, counts: np.ndarray, backbone: nn.Module) -> GE2ELoss:
    """Generalized end-to-end loss against the batch's class centroids."""
    return GE2ELoss()


def _no_local_head(cfg: TrainConfig) -> None:
    if cfg.local_head:
        raise RecipeError("head reconstruction trains without labels; it cannot train the DELG local head (local_head)")


@register_head(RECONSTRUCTION, network=True, check=_no_local_head)
def reconstruction(cfg: TrainConfig, counts: np.ndarray, backbone: nn.Module) -> ReconstructionHead:
    """The label-free U-Net decoder on the backbone's feature pyramid."""
    return ReconstructionHead(backbone.feature_info, cfg.dim)
