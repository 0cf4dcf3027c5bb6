"""Batched descriptor extraction over a split: DataLoader workers decode while the model runs."""

from __future__ import annotations

import logging
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import Failure, ImageDataset, collate_skip_bad

log = logging.getLogger(__name__)


def extract_descriptors(
    dataset: ImageDataset,
    model: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 32,
    workers: int = 2,
    device: str | torch.device = "cpu",
    desc: str = "extract",
    amp: bool = True,
    batches: list[list[int]] | None = None,
) -> tuple[np.ndarray, list[Failure]]:
    """Run ``model`` over every image of ``dataset``; returns ``(N, D)`` float32 rows in dataset order.

    Unreadable images are skipped, reported (id + reason) and left as all-zero rows, so they match
    nothing instead of stopping a long run. On CUDA the model runs under float16 autocast unless ``amp`` is off.
    """
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size if batches is None else 1,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_skip_bad,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    out: np.ndarray | None = None
    failures: list[Failure] = []
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    with torch.inference_mode(), autocast, tqdm(total=len(dataset), desc=desc, unit="img") as bar:
        for batch, positions, bad in loader:
            failures.extend(bad)
            if batch is not None:
                feats = model(batch.to(device, non_blocking=True)).float().cpu().numpy()
                if out is None:
                    out = np.zeros((len(dataset), feats.shape[1]), np.float32)
                out[positions.numpy()] = feats
            bar.update(len(positions) + len(bad))
    if out is None:
        raise RuntimeError(f"no readable image in {dataset.split} ({len(failures)} failed)")
    for f in failures:
        log.warning("skipped %s image %s: %s", dataset.split, f.image_id, f.reason)
    return out, failures


ASPECTS = (1 / 2, 2 / 3, 3 / 4, 1.0, 4 / 3, 3 / 2, 2.0)  # width / height of the extraction buckets


def aspect_bucket(width: int, height: int) -> int:
    """Index of the bucket aspect (in log space) nearest to ``width / height``."""
    return int(np.argmin(np.abs(np.log(np.array(ASPECTS)) - np.log(width / max(height, 1)))))


def bucket_shape(bucket: int, size: int, multiple: int = 32) -> tuple[int, int]:
    """(height, width) of a bucket: about ``size`` x ``size`` pixels, sides multiples of ``multiple``."""
    aspect = ASPECTS[bucket]
    height = max(multiple, round(size / np.sqrt(aspect) / multiple) * multiple)
    width = max(multiple, round(size * np.sqrt(aspect) / multiple) * multiple)
    return height, width


class ShapedDataset:
    """An :class:`ImageDataset` (returning PIL images) whose items are resized to precomputed (height, width)
    shapes as uint8 tensors; shapes come from the file headers, so a batch of one bucket always stacks."""

    def __init__(self, base: ImageDataset, shapes: list[tuple[int, int]]) -> None:
        self.base, self.shapes = base, shapes
        self.split = base.split

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, position: int):
        import torchvision.transforms.functional as TF

        img, position, failure = self.base[position]
        if failure is not None:
            return img, position, failure
        height, width = self.shapes[position]
        return TF.pil_to_tensor(img.resize((width, height), resample=3)), position, None  # bicubic, uint8


def bucket_batches(buckets: list[int], batch_size: int) -> list[list[int]]:
    """Batches of dataset positions that share a bucket (so their tensors stack), bucket by bucket."""
    order = np.argsort(np.asarray(buckets), kind="stable")
    batches, start = [], 0
    for n in range(1, len(order) + 1):
        if n == len(order) or buckets[order[n]] != buckets[order[start]] or n - start == batch_size:
            batches.append(order[start:n].tolist())
            start = n
    return batches


def square_transform(size: int):
    """Resize to ``size`` x ``size`` and make a uint8 tensor: the plain evaluation transform. Scaling and
    normalisation happen on the model's device (:class:`MultiScale`): 4x less data through worker IPC and
    pinned copies, and no per-pixel float work on the CPU workers."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((size, size)), T.PILToTensor()])


class MultiScale(torch.nn.Module):
    """Test-time augmentation: the descriptor averaged over image scales (and horizontal flips), re-normalised.

    Input batches come at the largest scale; the smaller ones are resized on the model's device
    (antialiased), so each image is decoded once. uint8 inputs are scaled to [0, 1] and normalised with
    ``mean``/``std`` on that device first; float inputs are taken as already normalised.
    ``scales=(1.0,)`` without flip is the plain model.
    """

    def __init__(self, model: torch.nn.Module, size: int, scales=(1.0,), flip: bool = False,
                 mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.model, self.size, self.scales, self.flip = model, size, tuple(scales), flip
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def input_size(self) -> int:
        return round(self.size * max(self.scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = (x.float() / 255 - self.mean) / self.std
        total = 0
        for scale in self.scales:
            factor = scale / max(self.scales)  # inputs come at the largest scale, square or bucketed
            shape = (round(x.shape[-2] * factor), round(x.shape[-1] * factor))
            xs = x if shape == tuple(x.shape[-2:]) else torch.nn.functional.interpolate(
                x, size=shape, mode="bilinear", antialias=True, align_corners=False)
            total = total + self.model(xs).float()
            if self.flip:
                total = total + self.model(xs.flip(3)).float()
        return torch.nn.functional.normalize(total, dim=1)


def describe_split(
    model: torch.nn.Module,
    root,
    split: str,
    ids: list[str],
    size: int = 224,
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
    scales=(1.0,),
    flip: bool = False,
    amp: bool = True,
    aspect: bool = False,
) -> tuple[np.ndarray, list[Failure]]:
    """L2-normalised global descriptors of one split with a backbone's own input normalisation,
    averaged over ``scales`` (multiples of ``size``) and optional flips. ``aspect`` keeps each image's
    aspect ratio (7 buckets of about ``size`` x ``size`` pixels, batches drawn per bucket) instead of squashing
    it into a square."""
    from .data import image_path, upright_size
    from .models import input_normalisation

    inner = model.backbone if hasattr(model, "backbone") else model
    tta = MultiScale(model.eval(), size, scales, flip, *input_normalisation(inner)).to(device)
    if not aspect:
        dataset = ImageDataset(root, split, ids, square_transform(tta.input_size()),
                               max_side=tta.input_size())
        return extract_descriptors(dataset, tta, batch_size, workers, device, desc=f"extract {split}", amp=amp)
    sizes = [upright_size(image_path(root, split, i)) or (1, 1) for i in ids]  # unreadable: fails at decode
    buckets = [aspect_bucket(w, h) for w, h in sizes]
    shapes = [bucket_shape(b, tta.input_size()) for b in buckets]
    dataset = ShapedDataset(ImageDataset(root, split, ids, max_side=max(max(s) for s in shapes)), shapes)
    return extract_descriptors(dataset, tta, batch_size, workers, device, desc=f"extract {split}", amp=amp,
                               batches=bucket_batches(buckets, batch_size))
