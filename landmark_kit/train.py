"""Metric-learning training: timm backbone + GeM + FC/BN neck + margin head (smlyaka 2019, GLR2020/21).

Batches are grouped by aspect ratio (bucket shapes from ``sides``: long side ``max(sides)``, short side any of
``sides``; one side = square), augmented on the device (:mod:`landmark_kit.augment`); an optional final stage
trains ``final_epochs`` more at ``final_sides`` with every BatchNorm frozen (eval mode: no running-stat
updates). Runs under ``torchrun`` (DistributedDataParallel; gloo on CPU, nccl on CUDA), each process taking
every world-th batch. The embedding heads (``triplet``, ``ge2e``) train on class-balanced batches instead:
N landmarks x M images (``per_class``), every batch within one aspect bucket.

One run directory holds everything: ``config.yaml`` (the resolved recipe), ``last.pt`` (written atomically
every ``checkpoint_every`` steps and at each epoch end: model, head, optimizer, scheduler, scaler, position in
the epoch's batch list, every process's RNG states, the log so far), ``model.pt`` (final weights + the class
list + the config), ``log.csv`` and ``curves.png``. Re-running the same command on the same directory resumes
and ends with exactly the tensors of an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import random
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .artifacts import DamagedArtifact, atomic_path, discard, intact, read_chunks
from .augment import DeviceAugment
from .data import ImageDataset, collate_skip_bad, image_path, read_train_csv, upright_size
from .extract import ShapedDataset
from .losses import EMBEDDING_KINDS, KINDS, MINING, GE2ELoss, MarginHead, TripletHead, WithAuxHead, dynamic_margins
from .models import LandmarkNet, create_backbone, input_normalisation
from .recipes import RecipeError, from_dict, load_recipe, save_recipe, to_dict

log = logging.getLogger(__name__)
LOG_COLUMNS = ["epoch", "stage", "loss", "accuracy", "img_s", "lr", "val_gap", "val_map100"]


@dataclass
class TrainConfig:
    """A training recipe (YAML under ``training/``); every field is also a stage-02 flag."""

    model: str = "tf_efficientnet_lite0"
    weights: str | None = "imagenet-lite"  # local file, "imagenet-lite", or None (random init / hub)
    pretrained: bool = False  # with weights None: download from timm's hub (online only)
    dim: int = 512
    gem_p: float = 3.0
    head: str = "arcface"  # arcface | cosface | subcenter (sub-center ArcFace) | softmax | triplet | ge2e
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def check_config(cfg: TrainConfig) -> TrainConfig:
    """Refuse contradictory recipes before any work."""
    if cfg.final_epochs > 0 and not cfg.final_sides:
        raise RecipeError("final_epochs > 0 needs final_sides (e.g. [544, 608, 704, 800])")
    if any(s < 32 for s in cfg.sides + cfg.final_sides):
        raise RecipeError(f"sides must be >= 32 px, found {cfg.sides + cfg.final_sides}")
    if cfg.epochs + cfg.final_epochs < 1:
        raise RecipeError("nothing to train: epochs + final_epochs < 1")
    if cfg.batch_size < 2:
        raise RecipeError("batch_size must be >= 2 (BatchNorm)")
    if cfg.head in EMBEDDING_KINDS:
        if cfg.per_class < 2 or cfg.batch_size % cfg.per_class or cfg.batch_size // cfg.per_class < 2:
            raise RecipeError(f"head {cfg.head} needs batch_size = N x per_class with N >= 2 landmarks and "
                              f"per_class >= 2; found batch_size {cfg.batch_size}, per_class {cfg.per_class}")
        if cfg.head == "triplet" and cfg.mining not in MINING:
            raise RecipeError(f"unknown mining {cfg.mining!r}; choose one of {MINING}")
    if cfg.aux_head is not None and (cfg.head not in EMBEDDING_KINDS or cfg.aux_head not in KINDS):
        raise RecipeError(f"aux_head is a margin head ({', '.join(KINDS)}) beside a triplet or ge2e head; found "
                          f"aux_head {cfg.aux_head!r} with head {cfg.head!r}")
    return cfg


# ------------------------------------------------------------------------------------------- batches


def bucket_shapes(sides: list[int]) -> list[tuple[int, int]]:
    """(height, width) of every bucket: the long side ``max(sides)``, the short side any of ``sides``."""
    long = max(sides)
    shorts = sorted(set(sides))
    return [(long, s) for s in shorts] + [(s, long) for s in reversed(shorts) if s != long]


def assign_buckets(sizes: np.ndarray, sides: list[int]) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Each image's bucket (nearest aspect ratio in log space) for ``(N, 2)`` (width, height) sizes."""
    shapes = bucket_shapes(sides)
    aspects = np.log(np.array([w / h for h, w in shapes]))
    image_aspects = np.log(np.maximum(sizes[:, 0], 1) / np.maximum(sizes[:, 1], 1))
    return np.abs(image_aspects[:, None] - aspects[None, :]).argmin(axis=1), shapes


def epoch_batches(buckets: np.ndarray, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: shuffled positions grouped by bucket, cut into batches, batches shuffled.
    A pure function of (seed, epoch), so a resumed run replays it and every process agrees on it."""
    rng = np.random.default_rng([seed, epoch])
    order = rng.permutation(len(buckets))
    batches = []
    for bucket in np.unique(buckets):
        members = order[buckets[order] == bucket]
        batches += [members[i:i + batch_size].tolist() for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def balanced_batches(buckets: np.ndarray, labels: np.ndarray, per_class: int, classes: int, seed: int,
                     epoch: int) -> list[list[int]]:
    """One epoch's class-balanced batches: per aspect bucket, about (its images / batch size) batches (at least
    one) of ``classes`` distinct labels drawn uniformly (all of the bucket's when fewer; a bucket with one label
    gives none) x ``per_class`` images each, drawn with replacement only when the label has fewer in the bucket;
    batches shuffled. A pure function of (seed, epoch), like :func:`epoch_batches`."""
    rng = np.random.default_rng([seed, epoch, 26])
    batches = []
    for bucket in np.unique(buckets):
        members = np.flatnonzero(buckets == bucket)
        members = members[np.argsort(labels[members], kind="stable")]  # grouped by label: O(n log n), no label loop
        pools = np.split(members, np.flatnonzero(np.diff(labels[members])) + 1)
        if len(pools) < 2:
            continue
        for _ in range(max(1, round(len(members) / (classes * per_class)))):
            chosen = rng.choice(len(pools), min(classes, len(pools)), replace=False)
            batches.append([int(i) for c in chosen for i in rng.choice(pools[c], per_class,
                                                                      replace=len(pools[c]) < per_class)])
    return [batches[i] for i in rng.permutation(len(batches))]


def make_batches(cfg: TrainConfig, buckets: np.ndarray, labels: np.ndarray, epoch: int) -> list[list[int]]:
    """The epoch's batches for the configured head: N x M class-balanced for triplet / ge2e, plain otherwise."""
    if cfg.head in EMBEDDING_KINDS:
        return balanced_batches(buckets, labels, cfg.per_class, cfg.batch_size // cfg.per_class, cfg.seed, epoch)
    return epoch_batches(buckets, cfg.batch_size, cfg.seed, epoch)


def image_sizes(root, ids: list[str], cache: Path, write: bool = True) -> np.ndarray:
    """(width, height) after EXIF rotation of every train image, from file headers; cached in the run
    (written by one process only, ``write``)."""
    saved = next(read_chunks([cache]), None)  # a damaged cache is removed (logged) and measured again
    if saved is not None and saved["ids"].tolist() == ids:
        return saved["sizes"]
    sizes = np.array([upright_size(image_path(root, "train", i)) or (1, 1) for i in
                      tqdm(ids, desc="image sizes", unit="img", mininterval=5)], dtype=np.int64).reshape(-1, 2)
    if write:
        with atomic_path(cache) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, ids=np.array(ids), sizes=sizes)
    return sizes


# ------------------------------------------------------------------------------------------- model


def build_model(cfg: TrainConfig, counts: np.ndarray) -> tuple[LandmarkNet, nn.Module]:
    """Backbone + neck and the head: a :class:`MarginHead` (margins per class when ``dynamic_margin``), or an
    embedding loss (``triplet``, ``ge2e``) without class weights, with a weighted margin head when ``aux_head``."""
    backbone = create_backbone(cfg.model, cfg.weights, cfg.pretrained)
    net = LandmarkNet(backbone, cfg.dim, cfg.gem_p, len(counts) if cfg.local_head else 0, cfg.local_dim)
    if cfg.head not in EMBEDDING_KINDS:
        return net, margin_head(cfg, cfg.head, counts)
    head = TripletHead(cfg.triplet_margin, cfg.mining) if cfg.head == "triplet" else GE2ELoss()
    if cfg.aux_head is None:
        return net, head
    return net, WithAuxHead(head, margin_head(cfg, cfg.aux_head, counts), cfg.aux_weight)


def margin_head(cfg: TrainConfig, kind: str, counts: np.ndarray) -> MarginHead:
    """A ``kind`` margin head over every class, with the recipe's scale, margins and sub-centres."""
    margins = dynamic_margins(counts, cfg.margin_min, cfg.margin_max) if cfg.dynamic_margin else None
    try:
        return MarginHead(cfg.dim, len(counts), kind, cfg.scale, cfg.margin, cfg.subcenters, margins)
    except ValueError as exc:
        raise RecipeError(str(exc)) from None


def freeze_stages(backbone: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the stem and the first ``stages`` stages of a timm backbone (timm's coarse parameter groups);
    returns the frozen modules, which the training loop keeps in eval mode so their BN statistics stay put.
    The early, high-resolution layers cost most of a backward pass and change least when fine-tuning."""
    if stages <= 0:
        return []
    from timm.models import group_modules

    if not hasattr(backbone, "group_matcher"):
        raise RecipeError(f"freeze_stages needs a timm backbone with group_matcher; {type(backbone).__name__} has none")
    groups = group_modules(backbone, backbone.group_matcher(coarse=True))
    if stages >= len(groups) - 1:
        raise RecipeError(f"freeze_stages {stages} would freeze the whole backbone ({len(groups) - 1} stages + stem)")
    modules = [backbone.get_submodule(name) for gid in sorted(groups)[: stages + 1] for name in groups[gid]]
    for module in modules:
        module.requires_grad_(False)
    return modules


class Trainable(nn.Module):
    """Network + head + device augmentation as one module (what DistributedDataParallel wraps):
    uint8 images and labels in, (loss, number of images classified right) out."""

    def __init__(self, net: LandmarkNet, head: nn.Module, augment: DeviceAugment, cfg: TrainConfig) -> None:
        super().__init__()
        self.net, self.head, self.augment, self.cfg = net, head, augment, cfg
        self.criterion = nn.CrossEntropyLoss()

    def objective(self, embedding: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's loss and hit count (embedding heads: their own; margin heads: cross-entropy, argmax)."""
        if not isinstance(self.head, MarginHead):
            return self.head(embedding, labels)
        logits = self.head(embedding, labels)
        return self.criterion(logits, labels), (logits.argmax(1) == labels).sum()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.augment(images)
        if self.net.local is None:
            return self.objective(self.net(x), labels)
        embedding, fmap = self.net.forward_with_local(x)
        loss, correct = self.objective(embedding, labels)
        attention, reconstruction = self.net.local.losses(fmap, labels)
        return loss + self.cfg.attention_weight * attention + self.cfg.reconstruction_weight * reconstruction, correct


CHECKPOINT_HINT = "rerun stage 02 on its run directory (it writes model.pt again from last.pt) or copy it again"


@contextlib.contextmanager
def checkpoint_errors(path: str | os.PathLike, hint: str = "") -> Iterator[None]:
    """Around ``torch.load``: a truncated or corrupt file raises :class:`DamagedArtifact` naming it (a pickle that
    ``weights_only`` refuses stays an ``UnpicklingError``)."""
    try:
        yield
    except (RuntimeError, EOFError) as exc:
        raise DamagedArtifact(path, str(exc).split(". ")[0] or type(exc).__name__, "checkpoint", hint) from None


def _resume_state(last: Path) -> dict | None:
    """The resume checkpoint ``last.pt``, None without one; a damaged one is removed (logged) and training starts
    again from scratch, which ends with the same tensors (same seed)."""
    if not last.is_file():
        return None
    try:
        with checkpoint_errors(last):
            return torch.load(last, map_location="cpu", weights_only=True)
    except DamagedArtifact as damage:
        discard(damage, then="training starts again from scratch")
        return None


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine annealing to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def rng_state() -> dict:
    """Every RNG the training process draws from (kornia uses torch's global generator)."""
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    keys, pos, has_gauss, gauss = np.random.get_state()[1:]
    state["numpy"] = (torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- distributed


@dataclass
class World:
    """This process's place under torchrun (rank 0 of 1 otherwise)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


def init_world(device_name: str) -> tuple[World, torch.device]:
    """Join the torchrun process group when WORLD_SIZE > 1 (nccl on CUDA, gloo on CPU); pick the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    device = resolve_device(device_name)
    if size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
        device = torch.device("cuda", world.local_rank)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", size))))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


# ------------------------------------------------------------------------------------------- validation


def split_validation(labels: np.ndarray, queries: int, seed: int) -> np.ndarray:
    """Positions held out as validation queries: one image of up to ``queries`` labels with >= 3 images."""
    if queries <= 0:
        return np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng([seed, 7])
    values, counts = np.unique(labels, return_counts=True)
    eligible = values[counts >= 3]
    chosen = rng.permutation(eligible)[:queries]
    return np.sort(np.array([rng.choice(np.flatnonzero(labels == c)) for c in chosen], dtype=np.int64))


def validation_distractors(root, count: int, seed: int) -> list[str]:
    """Up to ``count`` test ids the data root's ``recognition_solution.csv`` marks as non-landmark (empty
    landmarks): validation queries that should get low scores. None when the file is absent (e.g. on Kaggle).
    They only monitor training (no epoch is chosen by them), so a test solution used here leaks nothing."""
    from .submission import read_solution

    path = Path(root) / "recognition_solution.csv"
    if count <= 0 or not path.is_file():
        if count > 0:
            log.warning("val_distractors: %s not found; validating without distractors", path)
        return []
    pool = sorted(i for i, labels in read_solution(path).all.items() if not labels)
    return sorted(np.random.default_rng([seed, 13]).permutation(pool)[:count].tolist())


def validate(net: LandmarkNet, cfg: TrainConfig, root, ids: list[str], labels: np.ndarray,
             query_pos: np.ndarray, device: torch.device, sides: list[int],
             distractors: list[str] = ()) -> dict[str, float]:
    """kNN GAP and mAP@100 of the held-out queries against (a capped sample of) the training images, at the
    current stage's ``sides`` (square at the largest, or aspect buckets). Non-landmark ``distractors`` (test
    ids) are queried too: their predictions count against GAP as in the competition; mAP skips them."""
    import pandas as pd

    from .extract import describe_split
    from .metrics import global_average_precision, retrieval_metrics
    from .models import Describer
    from .recognition import nearest_neighbour_labels
    from .retrieval import neighbour_lists
    from .search import knn

    rest = np.setdiff1d(np.arange(len(ids)), query_pos)
    same = rest[np.isin(labels[rest], labels[query_pos])]
    others = np.setdiff1d(rest, same)
    room = max(cfg.val_database - len(same), 0)
    others = np.random.default_rng([cfg.seed, 11]).permutation(others)[:room]
    database = np.sort(np.concatenate([same, others]))
    describer = Describer(net).eval()
    options = dict(size=max(sides), batch_size=cfg.batch_size, workers=cfg.workers, device=str(device), amp=cfg.amp,
                   aspect=len(set(sides)) > 1)
    feats, _ = describe_split(describer, root, "train", [ids[i] for i in np.concatenate([query_pos, database])],
                              **options)
    q, db = feats[: len(query_pos)], feats[len(query_pos):]
    if len(distractors):
        q = np.concatenate([q, describe_split(describer, root, "test", list(distractors), **options)[0]])
    scores, nn_idx = knn(q, db, min(100, len(database)))
    qids = [ids[i] for i in query_pos]
    db_ids, db_labels = np.asarray(ids, dtype=object)[database], labels[database]
    top_labels, top_scores = nearest_neighbour_labels(scores, nn_idx, db_labels)
    pred = pd.DataFrame({"id": qids + list(distractors), "landmark_id": top_labels, "score": top_scores})
    solution = {i: [int(labels[p])] for i, p in zip(qids, query_pos)} | {i: [] for i in distractors}
    gap = global_average_precision(pred, solution)
    ranked = dict(zip(qids, neighbour_lists(nn_idx[: len(qids)], db_ids)))
    of_label = {label: db_ids[db_labels == label].tolist() for label in np.unique(labels[query_pos])}
    truth = {i: of_label[labels[p]] for i, p in zip(qids, query_pos)}
    return {"val_gap": round(gap, 4), "val_map100": round(retrieval_metrics(ranked, truth)["mAP@100"], 4)}


def write_log(history: list[dict], workdir: Path) -> None:
    """``log.csv`` and ``curves.png`` from the whole history (rewritten, so a resumed run never duplicates)."""
    with atomic_path(workdir / "log.csv") as tmp:
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, LOG_COLUMNS)
            writer.writeheader()
            writer.writerows(history)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(epochs, [r["loss"] for r in history], "o-", label="loss")
    left.set_xlabel("epoch")
    left.set_ylabel("loss")
    right.plot(epochs, [r["accuracy"] for r in history], "o-", label="train accuracy")
    for key, name in (("val_gap", "val GAP"), ("val_map100", "val mAP@100")):
        if any(r[key] != "" for r in history):
            right.plot(epochs, [r[key] if r[key] != "" else np.nan for r in history], "o-", label=name)
    right.set_xlabel("epoch")
    right.set_ylim(0, 1)
    right.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(workdir / "curves.png") as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)


# ------------------------------------------------------------------------------------------- the loop


def train(cfg: TrainConfig, data_root: str | os.PathLike, workdir: str | os.PathLike, progress: bool = True) -> Path:
    """Train (or resume) a model in ``workdir``; returns the path of ``model.pt``."""
    check_config(cfg)
    workdir = Path(workdir)
    world, device = init_world(cfg.device)
    final = workdir / "model.pt"
    saved_cfg = workdir / "config.yaml"
    if saved_cfg.is_file():
        previous = load_recipe(TrainConfig, saved_cfg)
        if to_dict(previous) != to_dict(cfg):
            raise RecipeError(f"{workdir} holds a run with a different config ({saved_cfg}); use a new --workdir")
    if intact(final):  # a damaged model.pt is removed and written again from last.pt
        log.info("%s already trained", final)
        return final
    workdir.mkdir(parents=True, exist_ok=True)
    if world.main:
        save_recipe(cfg, saved_cfg)
    seed_everything(cfg.seed)

    train_df = read_train_csv(cfg.train_csv or Path(data_root) / "train.csv")
    classes, targets_np, counts = np.unique(train_df["landmark_id"].to_numpy(), return_inverse=True,
                                            return_counts=True)
    ids = train_df["id"].tolist()
    val_pos = split_validation(targets_np, cfg.val_queries, cfg.seed)
    val_distractors = validation_distractors(data_root, cfg.val_distractors, cfg.seed) if len(val_pos) else []
    train_pos = np.setdiff1d(np.arange(len(ids)), val_pos)
    targets = torch.as_tensor(targets_np)
    net, head = build_model(cfg, counts)
    frozen = freeze_stages(net.backbone, cfg.freeze_stages)
    augment = DeviceAugment(cfg.augment, *input_normalisation(net.backbone))
    module = Trainable(net, head, augment, cfg).to(device)
    net.to(memory_format=torch.channels_last)  # NHWC: faster convolutions

    stage_sides = [cfg.sides or [cfg.image_size]] * cfg.epochs + [cfg.final_sides] * cfg.final_epochs
    square = all(len(set(s)) == 1 for s in stage_sides)
    sizes = np.ones((len(ids), 2), np.int64) if square else image_sizes(data_root, ids, workdir / "image_sizes.npz",
                                                                                  world.main)
    max_side = 2 * max(max(s) for s in stage_sides)
    base = ImageDataset(data_root, "train", [ids[i] for i in train_pos], max_side=max_side)
    sizes = sizes[train_pos]

    neck = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.SGD(
        [{"params": [p for p in net.backbone.parameters() if p.requires_grad], "lr": cfg.lr},
         {"params": neck + list(head.parameters()), "lr": cfg.lr * cfg.head_lr_mult}],
        momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )
    train_labels = targets_np[train_pos]
    per_epoch = [len(make_batches(cfg, assign_buckets(sizes, s)[0], train_labels, e)) // world.size
                 for e, s in enumerate(stage_sides)]
    if min(per_epoch) < 1:
        raise RecipeError(f"{len(train_pos)} train images give no batch per process ({world.size} processes)")
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=int(cfg.warmup_epochs * per_epoch[0]), total=sum(per_epoch)))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model = module
    if world.size > 1:
        model = nn.parallel.DistributedDataParallel(
            module, device_ids=[device.index] if device.type == "cuda" else None)

    epoch, step, acc, history, skipped = 0, 0, {"seen": 0, "loss": 0.0, "correct": 0, "seconds": 0.0}, [], set()
    last = workdir / "last.pt"
    resumed_rng, state = None, _resume_state(last)
    if state is not None:
        if len(state["rng"]) != world.size:
            raise RecipeError(f"{last} was written by {len(state['rng'])} processes; resume with as many, not "
                              f"{world.size}")
        module.load_state_dict(state["module"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        epoch, step, acc, history = state["epoch"], state["step"], state["acc"], state["history"]
        skipped = set(state["skipped"])
        resumed_rng = state["rng"][world.rank]
        log.info("resuming %s at epoch %d step %d", workdir, epoch, step)

    def checkpoint() -> None:
        rngs = [rng_state()]
        if world.size > 1:
            rngs = [None] * world.size
            dist.all_gather_object(rngs, rng_state())
        if world.main:
            _atomic_save({"module": module.state_dict(), "optimizer": optimizer.state_dict(),
                          "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch,
                          "step": step, "acc": acc, "history": history, "skipped": sorted(skipped),
                          "rng": rngs}, last)
        world.barrier()

    seed_everything(cfg.seed + 7919 * world.rank)  # augmentation draws: its own stream per process
    if resumed_rng is not None:
        set_rng_state(resumed_rng)
    while epoch < len(stage_sides):
        final_stage = epoch >= cfg.epochs
        buckets, shapes = assign_buckets(sizes, stage_sides[epoch])
        dataset = ShapedDataset(base, [shapes[b] for b in buckets])
        batches = make_batches(cfg, buckets, train_labels, epoch)
        mine = batches[world.rank::world.size][: per_epoch[epoch]]
        loader = DataLoader(dataset, batch_sampler=mine[step:], num_workers=cfg.workers,
                            collate_fn=collate_skip_bad, pin_memory=device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        module.train()
        for m in frozen:
            m.eval()
        if final_stage:
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{len(stage_sides)}" + (" (final, BN frozen)" if final_stage
                                                                            else ""),
                   unit="batch", disable=not (progress and world.main), initial=step, total=per_epoch[epoch])
        tick = time.perf_counter()
        for images, positions, bad in bar:
            skipped.update(f.image_id for f in bad)
            step += 1
            usable = torch.tensor([images is not None and len(images) >= 2], dtype=torch.int32)
            if world.size > 1:  # every process skips together, or DDP would wait forever
                dist.all_reduce(usable, op=dist.ReduceOp.MIN)
            if usable.item():
                images = images.to(device, non_blocking=True)
                labels = targets[train_pos[positions.numpy()]].to(device)
                with torch.autocast(device.type, enabled=use_amp):
                    loss, correct = model(images, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                   cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                acc["seen"] += len(images)
                acc["loss"] += float(loss.detach()) * len(images)
                acc["correct"] += int(correct)
            scheduler.step()
            now = time.perf_counter()
            acc["seconds"] += now - tick
            tick = now
            if acc["seen"]:
                bar.set_postfix(loss=f"{acc['loss'] / acc['seen']:.3f}", acc=f"{acc['correct'] / acc['seen']:.3f}",
                                img_s=f"{acc['seen'] / max(acc['seconds'], 1e-9):.1f}")
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < per_epoch[epoch]:
                checkpoint()
        bar.close()
        row = {"epoch": epoch + 1, "stage": "final" if final_stage else "main",
               "loss": round(acc["loss"] / max(acc["seen"], 1), 4),
               "accuracy": round(acc["correct"] / max(acc["seen"], 1), 4),
               "img_s": round(acc["seen"] * world.size / max(acc["seconds"], 1e-9), 2),
               "lr": optimizer.param_groups[0]["lr"], "val_gap": "", "val_map100": ""}
        if world.main and len(val_pos):
            row.update(validate(net, cfg, data_root, ids, targets_np, val_pos, device, stage_sides[epoch],
                                val_distractors))
            module.train()
        history.append(row)
        if world.main:
            write_log(history, workdir)
        epoch, step, acc = epoch + 1, 0, {"seen": 0, "loss": 0.0, "correct": 0, "seconds": 0.0}
        checkpoint()
    if world.main:
        for image_id in sorted(skipped):
            log.warning("skipped unreadable train image %s", image_id)
        _atomic_save({"model": net.state_dict(), "classes": torch.as_tensor(classes),
                      "config": to_dict(cfg), "skipped": sorted(skipped)}, final)
    world.barrier()
    return final


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LandmarkNet, TrainConfig]:
    """A trained LandmarkNet from ``model.pt`` (``weights_only=True``), in eval mode, with its config; a damaged
    file is refused naming it (:class:`DamagedArtifact`)."""
    with checkpoint_errors(path, CHECKPOINT_HINT):
        state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(TrainConfig, state["config"], str(path))
    local_classes = len(state["classes"]) if cfg.local_head else 0
    model = LandmarkNet(create_backbone(cfg.model), cfg.dim, cfg.gem_p, local_classes, cfg.local_dim)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
