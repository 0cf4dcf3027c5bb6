"""What a training run hands to inference: its recipe (:class:`TrainConfig`), ``model.pt`` loaded, the device.

Stages 03-05, local features, verification and the estimator import this module, never :mod:`landmark_kit.train`,
so predicting does not load the trainer, its losses or its augmentation.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .artifacts import DamagedArtifact
from .models import LandmarkNet, create_backbone
from .recipes import from_dict


@dataclass
class TrainConfig:
    """A training recipe (YAML under ``training/``); every field is also a stage-02 flag."""

    model: str = "tf_efficientnet_lite0"
    weights: str | None = "imagenet-lite"  # local file, "imagenet-lite", or None (random init / hub)
    pretrained: bool = False  # with weights None: download from timm's hub (online only)
    dim: int = 512
    gem_p: float = 3.0
    head: str = "arcface"  # arcface | cosface | subcenter (sub-center ArcFace) | softmax | triplet | ge2e | reconstruction
    scale: float = 30.0
    margin: float = 0.3
    subcenters: int = 3  # k, for head subcenter
    dynamic_margin: bool = False  # per-class margins: n^-1/4 of the class's image count into [margin_min, max]
    margin_min: float = 0.05
    margin_max: float = 0.5
    per_class: int = 4  # M images per landmark in the N x M batches of triplet / ge2e (N = batch_size / M)
    triplet_margin: float = 0.1
    mining: str = "batch-hard"  # triplet mining: batch-hard | semi-hard
    aux_head: str | None = None  # with triplet / ge2e: also a margin head (arcface, ...) on the same embeddings
    aux_weight: float = 0.5  # its cross-entropy's weight in the loss
    image_size: int = 128  # square side when ``sides`` is empty
    sides: list[int] = field(default_factory=list)  # aspect buckets, e.g. [352, 384, 448, 512]; one value = square
    epochs: int = 12
    final_epochs: int = 0  # then this many epochs at final_sides with every BatchNorm frozen
    final_sides: list[int] = field(default_factory=list)  # e.g. [544, 608, 704, 800]
    batch_size: int = 32  # per process
    lr: float = 2e-2
    head_lr_mult: float = 10.0  # the freshly initialised neck and head learn faster than the backbone
    momentum: float = 0.9
    weight_decay: float = 1e-5
    warmup_epochs: float = 1.0  # linear LR warm-up before the cosine decay (over all epochs, final included)
    grad_clip: float = 5.0  # max gradient norm (0 = off); keeps high-LR fine-tuning from diverging
    freeze_stages: int = 0  # stem + this many backbone stages keep their ImageNet weights and BN statistics
    local_head: bool = False  # also train a DELG attention + autoencoder local head (local backend "delg")
    local_dim: int = 128
    attention_weight: float = 1.0  # DELG's loss weights: attention cross-entropy, autoencoder reconstruction
    reconstruction_weight: float = 10.0
    augment: str = "soft"  # soft: crop/scale + light colour | hard: + shear, stronger colour | none
    val_queries: int = 0  # hold out one image of this many labels (>= 3 images) and score GAP / mAP@100 each epoch
    val_database: int = 5000  # at most this many remaining train images searched by the validation queries
    val_distractors: int = 0  # also query this many non-landmark test images (<data_root>/recognition_solution.csv)
    train_csv: str | None = None  # default <data_root>/train.csv (e.g. a cleaned CSV from stage 01)
    workers: int = 2
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision on CUDA
    checkpoint_every: int = 200  # steps between resumable checkpoints (plus every epoch end)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


CHECKPOINT_HINT = "rerun stage 02 on its run directory (it writes model.pt again from last.pt) or copy it again"


@contextlib.contextmanager
def checkpoint_errors(path: str | os.PathLike, hint: str = "") -> Iterator[None]:
    """Around ``torch.load``: a truncated or corrupt file raises :class:`DamagedArtifact` naming it (a pickle that
    ``weights_only`` refuses stays an ``UnpicklingError``)."""
    try:
        yield
    except (RuntimeError, EOFError) as exc:
        raise DamagedArtifact(path, str(exc).split(". ")[0] or type(exc).__name__, "checkpoint", hint) from None


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LandmarkNet, TrainConfig]:
    """A trained LandmarkNet from ``model.pt`` (``weights_only=True``), in eval mode, with its config; a damaged
    file is refused naming it (:class:`DamagedArtifact`).

    Args:
        path: the ``model.pt`` stage 02 wrote (weights, class list, resolved recipe).
        device: where the model goes (``resolve_device`` turns ``auto`` into one).
    """
    with checkpoint_errors(path, CHECKPOINT_HINT):
        state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(TrainConfig, state["config"], str(path))
    local_classes = len(state["classes"]) if cfg.local_head else 0
    model = LandmarkNet(create_backbone(cfg.model), cfg.dim, cfg.gem_p, local_classes, cfg.local_dim)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
