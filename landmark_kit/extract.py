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
) -> tuple[np.ndarray, list[Failure]]:
    """Run ``model`` over every image of ``dataset``; returns ``(N, D)`` float32 rows in dataset order.

    Unreadable images are skipped, reported (id + reason) and left as all-zero rows, so they match
    nothing instead of stopping a long run. On CUDA the model runs under float16 autocast unless ``amp`` is off.
    """
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
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


def square_transform(size: int, mean: tuple[float, ...], std: tuple[float, ...]):
    """Resize to ``size`` x ``size``, to tensor, normalise: the plain evaluation transform."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((size, size)), T.ToTensor(), T.Normalize(mean, std)])


class MultiScale(torch.nn.Module):
    """Test-time augmentation: the descriptor averaged over image scales (and horizontal flips), re-normalised.

    Input batches come at the largest scale; the smaller ones are resized on the model's device
    (antialiased), so each image is decoded once. ``scales=(1.0,)`` without flip is the plain model.
    """

    def __init__(self, model: torch.nn.Module, size: int, scales=(1.0,), flip: bool = False) -> None:
        super().__init__()
        self.model, self.size, self.scales, self.flip = model, size, tuple(scales), flip

    def input_size(self) -> int:
        return round(self.size * max(self.scales))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total = 0
        for scale in self.scales:
            side = round(self.size * scale)
            xs = x if side == x.shape[-1] else torch.nn.functional.interpolate(
                x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
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
) -> tuple[np.ndarray, list[Failure]]:
    """L2-normalised global descriptors of one split with a backbone's own input normalisation,
    averaged over ``scales`` (multiples of ``size``) and optional flips."""
    from .models import input_normalisation

    inner = model.backbone if hasattr(model, "backbone") else model
    tta = MultiScale(model.to(device).eval(), size, scales, flip)
    transform = square_transform(tta.input_size(), *input_normalisation(inner))
    dataset = ImageDataset(root, split, ids, transform, max_side=tta.input_size())
    return extract_descriptors(dataset, tta, batch_size, workers, device, desc=f"extract {split}", amp=amp)
