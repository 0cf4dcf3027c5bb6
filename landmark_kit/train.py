"""Metric-learning training: timm backbone + GeM + FC/BN neck + ArcFace/CosFace head (smlyaka 2019).

One run directory holds everything: ``config.yaml`` (the resolved recipe), ``last.pt`` (resumable state,
written atomically every ``checkpoint_every`` steps and at each epoch end), ``model.pt`` (final weights +
the class list + the config) and ``log.csv``. Re-running the same command on the same directory resumes.
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
import torch.nn as nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .artifacts import atomic_path
from .data import ImageDataset, collate_skip_bad, read_train_csv
from .losses import MarginHead
from .models import LandmarkNet, create_backbone, input_normalisation
from .recipes import RecipeError, from_dict, load_recipe, save_recipe, to_dict

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Training recipe. Defaults = ``training/synthetic-lite0.yaml`` (a useful model on the synthetic
    competition in minutes on a CPU) with nothing frozen; ``training/gldv2-smlyaka2019.yaml`` holds the
    paper's GLDv2 settings."""

    model: str = "tf_efficientnet_lite0"
    weights: str | None = "imagenet-lite"  # local file, "imagenet-lite", or None (random init / hub)
    pretrained: bool = False  # with weights None: download from timm's hub (online only)
    dim: int = 512
    gem_p: float = 3.0
    head: str = "arcface"  # arcface | cosface
    scale: float = 30.0
    margin: float = 0.3
    image_size: int = 128
    epochs: int = 12
    batch_size: int = 32
    lr: float = 2e-2
    head_lr_mult: float = 10.0  # the freshly initialised neck and head learn faster than the backbone
    momentum: float = 0.9
    weight_decay: float = 1e-5
    warmup_epochs: float = 1.0  # linear LR warm-up before the cosine decay
    grad_clip: float = 5.0  # max gradient norm (0 = off); keeps high-LR fine-tuning from diverging
    freeze_stages: int = 0  # stem + this many backbone stages keep their ImageNet weights and BN statistics
    local_head: bool = False  # also train a DELG attention + autoencoder local head (local backend "delg")
    local_dim: int = 128
    attention_weight: float = 1.0  # DELG's loss weights: attention cross-entropy, autoencoder reconstruction
    reconstruction_weight: float = 10.0
    augment: str = "soft"  # soft: crop/scale + light colour | hard: + shear, stronger brightness
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


def train_transform(cfg: TrainConfig, mean, std):
    """Random crop/scale (+ colour, + shear for "hard"), as in the 2019 soft/hard recipes."""
    from torchvision import transforms as T

    if cfg.augment not in ("soft", "hard"):
        raise RecipeError(f"augment must be soft or hard, found {cfg.augment!r}")
    ops = [T.RandomResizedCrop(cfg.image_size, scale=(0.4, 1.0), ratio=(0.75, 1.333))]
    if cfg.augment == "hard":
        ops += [T.RandomAffine(degrees=0, shear=(-15, 15)), T.ColorJitter(0.4, 0.3, 0.3, 0.03)]
    else:
        ops += [T.ColorJitter(0.2, 0.2, 0.1)]
    return T.Compose(ops + [T.ToTensor(), T.Normalize(mean, std)])


def build_model(cfg: TrainConfig, num_classes: int) -> tuple[LandmarkNet, MarginHead]:
    backbone = create_backbone(cfg.model, cfg.weights, cfg.pretrained)
    net = LandmarkNet(backbone, cfg.dim, cfg.gem_p, num_classes if cfg.local_head else 0, cfg.local_dim)
    return net, MarginHead(cfg.dim, num_classes, cfg.head, cfg.scale, cfg.margin)


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


def _atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def warmup_cosine(step: int, warmup: int, total: int) -> float:
    """LR factor: linear warm-up over ``warmup`` steps, then cosine annealing to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))


def _epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The sample order of one epoch: a pure function of (seed, epoch), so a resumed run replays it."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch)).tolist()


def train(cfg: TrainConfig, data_root: str | os.PathLike, workdir: str | os.PathLike, progress: bool = True) -> Path:
    """Train (or resume) a model in ``workdir``; returns the path of ``model.pt``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    final = workdir / "model.pt"
    saved_cfg = workdir / "config.yaml"
    if saved_cfg.is_file():
        previous = load_recipe(TrainConfig, saved_cfg)
        if to_dict(previous) != to_dict(cfg):
            raise RecipeError(f"{workdir} holds a run with a different config ({saved_cfg}); use a new --workdir")
    if final.is_file():
        log.info("%s already trained", final)
        return final
    save_recipe(cfg, saved_cfg)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)

    train_df = read_train_csv(cfg.train_csv or Path(data_root) / "train.csv")
    classes = np.sort(train_df["landmark_id"].unique())
    targets = torch.as_tensor(np.searchsorted(classes, train_df["landmark_id"].to_numpy()))
    model, head = build_model(cfg, len(classes))
    frozen = freeze_stages(model.backbone, cfg.freeze_stages)
    model.to(device, memory_format=torch.channels_last)  # NHWC: faster convolutions
    head.to(device)
    dataset = ImageDataset(data_root, "train", train_df["id"].tolist(),
                           train_transform(cfg, *input_normalisation(model.backbone)), max_side=cfg.image_size * 2)

    neck = [p for name, p in model.named_parameters() if not name.startswith("backbone.")]
    optimizer = torch.optim.SGD(
        [{"params": [p for p in model.backbone.parameters() if p.requires_grad], "lr": cfg.lr},
         {"params": neck + list(head.parameters()), "lr": cfg.lr * cfg.head_lr_mult}],
        momentum=cfg.momentum, weight_decay=cfg.weight_decay,
    )
    steps_per_epoch = -(-len(dataset) // cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, partial(warmup_cosine, warmup=int(cfg.warmup_epochs * steps_per_epoch),
                           total=cfg.epochs * steps_per_epoch))
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    epoch, step = 0, 0
    last = workdir / "last.pt"
    if last.is_file():
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        head.load_state_dict(state["head"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        epoch, step = state["epoch"], state["step"]
        log.info("resuming %s at epoch %d step %d", workdir, epoch, step)

    def checkpoint(epoch_: int, step_: int) -> None:
        _atomic_save({"model": model.state_dict(), "head": head.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict(), "epoch": epoch_, "step": step_}, last)

    criterion = nn.CrossEntropyLoss()
    skipped: set[str] = set()
    with open(workdir / "log.csv", "a", newline="") as log_fh:
        writer = csv.writer(log_fh)
        while epoch < cfg.epochs:
            order = _epoch_order(len(dataset), cfg.seed, epoch)[step * cfg.batch_size :]
            loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, num_workers=cfg.workers,
                                collate_fn=collate_skip_bad, pin_memory=device.type == "cuda", drop_last=False)
            model.train()
            head.train()
            for module in frozen:
                module.eval()
            seen, loss_sum, correct, start = 0, 0.0, 0, time.perf_counter()
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", disable=not progress,
                       initial=step, total=steps_per_epoch)
            for images, positions, bad in bar:
                skipped.update(f.image_id for f in bad)
                step += 1
                if images is None or len(images) < 2:  # BatchNorm needs two samples
                    continue
                images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                labels = targets[positions].to(device)
                with torch.autocast(device.type, enabled=use_amp):
                    if model.local is None:
                        logits = head(model(images), labels)
                        loss = criterion(logits, labels)
                    else:
                        embedding, fmap = model.forward_with_local(images)
                        logits = head(embedding, labels)
                        attention, reconstruction = model.local.losses(fmap, labels)
                        loss = (criterion(logits, labels) + cfg.attention_weight * attention
                                + cfg.reconstruction_weight * reconstruction)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]],
                                                   cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += len(images)
                loss_sum += float(loss.detach()) * len(images)
                correct += int((logits.argmax(1) == labels).sum())
                rate = seen / (time.perf_counter() - start)
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.1f}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < steps_per_epoch:
                    checkpoint(epoch, step)
            bar.close()
            epoch, step = epoch + 1, 0
            checkpoint(epoch, 0)
            writer.writerow([epoch, round(loss_sum / max(seen, 1), 4), round(correct / max(seen, 1), 4),
                             round(seen / (time.perf_counter() - start), 2), optimizer.param_groups[0]["lr"]])
            log_fh.flush()
    for image_id in sorted(skipped):
        log.warning("skipped unreadable train image %s", image_id)
    _atomic_save({"model": model.state_dict(), "classes": torch.as_tensor(classes),
                  "config": to_dict(cfg), "skipped": sorted(skipped)}, final)
    return final


def load_trained(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[LandmarkNet, TrainConfig]:
    """A trained LandmarkNet from ``model.pt`` (``weights_only=True``), in eval mode, with its config."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    cfg = from_dict(TrainConfig, state["config"], str(path))
    local_classes = len(state["classes"]) if cfg.local_head else 0
    model = LandmarkNet(create_backbone(cfg.model), cfg.dim, cfg.gem_p, local_classes, cfg.local_dim)
    model.load_state_dict(state["model"])
    return model.to(device).eval(), cfg
