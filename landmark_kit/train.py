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

import csv
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .artifacts import DamagedArtifact, atomic_path, discard, intact, read_chunks
from .augment import DeviceAugment
from .checkpoint import TrainConfig, checkpoint_errors, load_trained, resolve_device  # noqa: F401 (re-exported)
from .data import ImageDataset, collate_skip_bad, image_path, read_train_csv, upright_size
from .extract import ShapedDataset
from .heads import HEADS, margin_head, registered_head
from .losses import KINDS, MarginHead, WithAuxHead
from .models import LandmarkNet, create_backbone, input_normalisation
from .recipes import RecipeError, load_recipe, save_recipe, to_dict

log = logging.getLogger(__name__)
LOG_COLUMNS = ["epoch", "stage", "loss", "accuracy", "img_s", "lr", "val_gap", "val_map100"]


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
    head = registered_head(cfg.head)  # an unknown name lists the registered ones
    if head.batches == "balanced" and (cfg.per_class < 2 or cfg.batch_size % cfg.per_class
                                       or cfg.batch_size // cfg.per_class < 2):
        raise RecipeError(f"head {cfg.head} needs batch_size = N x per_class with N >= 2 landmarks and "
                          f"per_class >= 2; found batch_size {cfg.batch_size}, per_class {cfg.per_class}")
    if head.check is not None:
        head.check(cfg)
    if cfg.aux_head is not None and (head.batches != "balanced" or head.network or cfg.aux_head not in KINDS):
        embedding = ", ".join(h.name for h in HEADS.values() if h.batches == "balanced" and not h.network)
        raise RecipeError(f"aux_head is a margin head ({', '.join(KINDS)}) beside an embedding head ({embedding}); "
                          f"found aux_head {cfg.aux_head!r} with head {cfg.head!r}")
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
    """The epoch's batches for the configured head: N x M class-balanced when it asks for them (triplet, ge2e),
    plain otherwise."""
    if registered_head(cfg.head).batches == "balanced":
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
    """Backbone + neck and the registered head (:mod:`landmark_kit.heads`), wrapped with a weighted margin head
    beside an embedding loss when ``aux_head``."""
    backbone = create_backbone(cfg.model, cfg.weights, cfg.pretrained)
    net = LandmarkNet(backbone, cfg.dim, cfg.gem_p, len(counts) if cfg.local_head else 0, cfg.local_dim)
    head = registered_head(cfg.head).build(cfg, counts, backbone)
    if cfg.aux_head is None:
        return net, head
    return net, WithAuxHead(head, margin_head(cfg, cfg.aux_head, counts), cfg.aux_weight)


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
        self.network = registered_head(cfg.head).network  # the head runs the network itself
        self.criterion = nn.CrossEntropyLoss()

    def objective(self, embedding: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The head's loss and hit count (embedding heads: their own; margin heads: cross-entropy, argmax)."""
        if not isinstance(self.head, MarginHead):
            return self.head(embedding, labels)
        logits = self.head(embedding, labels)
        return self.criterion(logits, labels), (logits.argmax(1) == labels).sum()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.augment(images)
        if self.network:
            return self.head(self.net, x, labels)
        if self.net.local is None:
            return self.objective(self.net(x), labels)
        embedding, fmap = self.net.forward_with_local(x)
        loss, correct = self.objective(embedding, labels)
        attention, reconstruction = self.net.local.losses(fmap, labels)
        return loss + self.cfg.attention_weight * attention + self.cfg.reconstruction_weight * reconstruction, correct


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


def _epoch_sums() -> dict:
    """The running sums of an epoch: images seen, summed loss, hits and seconds."""
    return {"seen": 0, "loss": 0.0, "correct": 0, "seconds": 0.0}


class TrainingRun:
    """One run's state: data, model, optimizer, schedule, where it stands (``epoch``, ``step`` within it, the
    epoch's running sums ``acc``), the log ``history`` and the unreadable images met (``skipped``)."""

    def __init__(self, cfg: TrainConfig, data_root: str | os.PathLike, workdir: Path, world: World,
                 device: torch.device) -> None:
        """Set up: read the labels, build the model, optimizer and schedule, and resume from ``last.pt`` when
        there is one; every RNG draw in the order of an uninterrupted run."""
        self.cfg, self.data_root, self.workdir, self.world, self.device = cfg, data_root, workdir, world, device
        self.last = workdir / "last.pt"
        seed_everything(cfg.seed)
        counts = self._read_labels()
        self._build_model(counts)
        self._measure_images()
        self._build_optimizer()
        resumed_rng = self._resume()
        seed_everything(cfg.seed + 7919 * world.rank)  # augmentation draws: its own stream per process
        if resumed_rng is not None:
            set_rng_state(resumed_rng)

    def _read_labels(self) -> np.ndarray:
        """Classes, targets, the validation split and its distractors; returns the images per class."""
        cfg = self.cfg
        train_df = read_train_csv(cfg.train_csv or Path(self.data_root) / "train.csv")
        self.classes, self.targets_np, counts = np.unique(train_df["landmark_id"].to_numpy(), return_inverse=True,
                                                          return_counts=True)
        self.ids = train_df["id"].tolist()
        self.val_pos = split_validation(self.targets_np, cfg.val_queries, cfg.seed)
        self.val_distractors = (validation_distractors(self.data_root, cfg.val_distractors, cfg.seed)
                                if len(self.val_pos) else [])
        self.train_pos = np.setdiff1d(np.arange(len(self.ids)), self.val_pos)
        self.train_labels = self.targets_np[self.train_pos]
        self.targets = torch.as_tensor(self.targets_np)
        return counts

    def _build_model(self, counts: np.ndarray) -> None:
        """Network, head and augmentation as one module on the device."""
        cfg = self.cfg
        self.net, head = build_model(cfg, counts)
        self.frozen = freeze_stages(self.net.backbone, cfg.freeze_stages)
        augment = DeviceAugment(cfg.augment, *input_normalisation(self.net.backbone))
        self.module = Trainable(self.net, head, augment, cfg).to(self.device)
        self.net.to(memory_format=torch.channels_last)  # NHWC: faster convolutions

    def _measure_images(self) -> None:
        """Each epoch's sides, the train images' sizes (for the aspect buckets) and their dataset."""
        cfg, world = self.cfg, self.world
        self.stage_sides = [cfg.sides or [cfg.image_size]] * cfg.epochs + [cfg.final_sides] * cfg.final_epochs
        square = all(len(set(s)) == 1 for s in self.stage_sides)
        sizes = np.ones((len(self.ids), 2), np.int64) if square else image_sizes(
            self.data_root, self.ids, self.workdir / "image_sizes.npz", world.main)
        max_side = 2 * max(max(s) for s in self.stage_sides)
        self.base = ImageDataset(self.data_root, "train", [self.ids[i] for i in self.train_pos], max_side=max_side)
        self.sizes = sizes[self.train_pos]

    def _build_optimizer(self) -> None:
        """SGD (neck and head at ``head_lr_mult``), warm-up + cosine over every process's batches, the AMP scaler,
        and the DistributedDataParallel wrapper under torchrun."""
        cfg, world, net = self.cfg, self.world, self.net
        neck = [p for name, p in net.named_parameters() if not name.startswith("backbone.")]
        self.optimizer = torch.optim.SGD(
            [{"params": [p for p in net.backbone.parameters() if p.requires_grad], "lr": cfg.lr},
             {"params": neck + list(self.module.head.parameters()), "lr": cfg.lr * cfg.head_lr_mult}],
            momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        )
        self.per_epoch = [len(make_batches(cfg, assign_buckets(self.sizes, s)[0], self.train_labels, e)) // world.size
                          for e, s in enumerate(self.stage_sides)]
        if min(self.per_epoch) < 1:
            raise RecipeError(f"{len(self.train_pos)} train images give no batch per process ({world.size} processes)")
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(warmup_cosine, warmup=int(cfg.warmup_epochs * self.per_epoch[0]),
                                    total=sum(self.per_epoch)))
        self.use_amp = cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.model = self.module
        if world.size > 1:
            self.model = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _resume(self) -> dict | None:
        """Load ``last.pt`` into the run when there is one; returns this process's saved RNG states (None: fresh)."""
        world = self.world
        self.epoch, self.step, self.acc, self.history, self.skipped = 0, 0, _epoch_sums(), [], set()
        state = _resume_state(self.last)
        if state is None:
            return None
        if len(state["rng"]) != world.size:
            raise RecipeError(f"{self.last} was written by {len(state['rng'])} processes; resume with as many, not "
                              f"{world.size}")
        self.module.load_state_dict(state["module"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.acc, self.history = state["epoch"], state["step"], state["acc"], state["history"]
        self.skipped = set(state["skipped"])
        log.info("resuming %s at epoch %d step %d", self.workdir, self.epoch, self.step)
        return state["rng"][world.rank]

    @property
    def finished(self) -> bool:
        return self.epoch >= len(self.stage_sides)

    def run_epoch(self, progress: bool = True) -> None:
        """Train the current epoch from ``step`` on (checkpoints every ``checkpoint_every`` steps), then validate,
        log and checkpoint its end."""
        cfg, world, epoch = self.cfg, self.world, self.epoch
        final_stage = epoch >= cfg.epochs
        buckets, shapes = assign_buckets(self.sizes, self.stage_sides[epoch])
        dataset = ShapedDataset(self.base, [shapes[b] for b in buckets])
        batches = make_batches(cfg, buckets, self.train_labels, epoch)
        mine = batches[world.rank::world.size][: self.per_epoch[epoch]]
        loader = DataLoader(dataset, batch_sampler=mine[self.step:], num_workers=cfg.workers,
                            collate_fn=collate_skip_bad, pin_memory=self.device.type == "cuda",
                            generator=torch.Generator().manual_seed(cfg.seed * 1000 + epoch))
        self.module.train()
        for m in self.frozen:
            m.eval()
        if final_stage:
            for m in self.module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{len(self.stage_sides)}" + (" (final, BN frozen)" if final_stage
                                                                                 else ""),
                   unit="batch", disable=not (progress and world.main), initial=self.step, total=self.per_epoch[epoch])
        tick = time.perf_counter()
        for images, positions, bad in bar:
            self.skipped.update(f.image_id for f in bad)
            self.step += 1
            self.train_step(images, positions)
            now = time.perf_counter()
            acc = self.acc
            acc["seconds"] += now - tick
            tick = now
            if acc["seen"]:
                bar.set_postfix(loss=f"{acc['loss'] / acc['seen']:.3f}", acc=f"{acc['correct'] / acc['seen']:.3f}",
                                img_s=f"{acc['seen'] / max(acc['seconds'], 1e-9):.1f}")
            if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0 and self.step < self.per_epoch[epoch]:
                self.save_checkpoint()
        bar.close()
        self._end_epoch(final_stage)

    def train_step(self, images: torch.Tensor | None, positions: torch.Tensor) -> None:
        """One optimisation step on a batch (skipped by every process together when one has < 2 readable images),
        then one scheduler step."""
        cfg, world, device, acc = self.cfg, self.world, self.device, self.acc
        usable = torch.tensor([images is not None and len(images) >= 2], dtype=torch.int32)
        if world.size > 1:  # every process skips together, or DDP would wait forever
            dist.all_reduce(usable, op=dist.ReduceOp.MIN)
        if usable.item():
            images = images.to(device, non_blocking=True)
            labels = self.targets[self.train_pos[positions.numpy()]].to(device)
            with torch.autocast(device.type, enabled=self.use_amp):
                loss, correct = self.model(images, labels)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                               cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            acc["seen"] += len(images)
            acc["loss"] += float(loss.detach()) * len(images)
            acc["correct"] += int(correct)
        self.scheduler.step()

    def _end_epoch(self, final_stage: bool) -> None:
        """The epoch's log row (validated on the main process), ``log.csv``, the next epoch, ``last.pt``."""
        cfg, world, acc, epoch = self.cfg, self.world, self.acc, self.epoch
        row = {"epoch": epoch + 1, "stage": "final" if final_stage else "main",
               "loss": round(acc["loss"] / max(acc["seen"], 1), 4),
               "accuracy": round(acc["correct"] / max(acc["seen"], 1), 4),
               "img_s": round(acc["seen"] * world.size / max(acc["seconds"], 1e-9), 2),
               "lr": self.optimizer.param_groups[0]["lr"], "val_gap": "", "val_map100": ""}
        if world.main and len(self.val_pos):
            row.update(validate(self.net, cfg, self.data_root, self.ids, self.targets_np, self.val_pos, self.device,
                                self.stage_sides[epoch], self.val_distractors))
            self.module.train()
        self.history.append(row)
        if world.main:
            write_log(self.history, self.workdir)
        self.epoch, self.step, self.acc = epoch + 1, 0, _epoch_sums()
        self.save_checkpoint()

    def save_checkpoint(self) -> None:
        """``last.pt``, atomically: module, optimizer, scheduler, scaler, position, sums, log, skipped images and
        every process's RNG states (gathered to the main process, which writes)."""
        world = self.world
        rngs = [rng_state()]
        if world.size > 1:
            rngs = [None] * world.size
            dist.all_gather_object(rngs, rng_state())
        if world.main:
            with atomic_path(self.last) as tmp:
                torch.save({"module": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                            "epoch": self.epoch, "step": self.step, "acc": self.acc, "history": self.history,
                            "skipped": sorted(self.skipped), "rng": rngs}, tmp)
        world.barrier()

    def save_model(self, final: Path) -> None:
        """``model.pt``, atomically: the network's weights (no head), the class list, the config and the skipped
        images, each of which is logged."""
        if self.world.main:
            for image_id in sorted(self.skipped):
                log.warning("skipped unreadable train image %s", image_id)
            with atomic_path(final) as tmp:
                torch.save({"model": self.net.state_dict(), "classes": torch.as_tensor(self.classes),
                            "config": to_dict(self.cfg), "skipped": sorted(self.skipped)}, tmp)
        self.world.barrier()


def train(cfg: TrainConfig, data_root: str | os.PathLike, workdir: str | os.PathLike, progress: bool = True) -> Path:
    """Train (or resume) a model in ``workdir``; returns the path of ``model.pt``.

    Args:
        cfg: the training recipe, checked first (:func:`check_config`).
        data_root: a Kaggle-layout data root (its ``train/`` images; ``train.csv`` unless ``cfg.train_csv``).
        workdir: the run directory; one holding a run of the same config resumes it (an intact ``model.pt``:
            nothing to do), one of another config is refused.
        progress: a progress bar per epoch (on the main process).
    """
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
    run = TrainingRun(cfg, data_root, workdir, world, device)
    while not run.finished:
        run.run_epoch(progress)
    run.save_model(final)
    return final
