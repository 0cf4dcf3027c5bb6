"""Batched descriptor extraction over a split: DataLoader workers decode while the model runs."""

from __future__ import annotations

import io
import logging
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .data import Failure, ImageDataset, ImageSource, collate_skip_bad

log = logging.getLogger(__name__)
DECODE_MODES = ("auto", "cpu", "device")  # where JPEGs are decoded: see describe_split


def extract_descriptors(
    dataset: ImageDataset,
    model: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int = 32,
    workers: int = 2,
    device: str | torch.device = "cpu",
    desc: str = "extract",
    amp: bool = True,
    batches: list[list[int]] | None = None,
    decoder: "GpuDecoder | None" = None,
) -> tuple[np.ndarray, list[Failure]]:
    """Run ``model`` over every image of ``dataset``; returns ``(N, D)`` float32 rows in dataset order.

    Unreadable images are skipped, reported (id + reason) and left as all-zero rows, so they match
    nothing instead of stopping a long run. On CUDA the model runs under float16 autocast unless ``amp`` is off.
    With ``decoder`` the dataset yields encoded JPEGs (:class:`EncodedDataset`) that it decodes on the device.
    """
    device = torch.device(device)
    loader = DataLoader(
        dataset,
        batch_size=batch_size if batches is None else 1,
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_skip_bad if decoder is None else collate_encoded,
        pin_memory=device.type == "cuda",
        persistent_workers=False,
    )
    out: np.ndarray | None = None
    failures: list[Failure] = []
    autocast = torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda")
    with torch.inference_mode(), autocast, tqdm(total=len(dataset), desc=desc, unit="img") as bar:
        for batch, positions, bad in loader:
            failures.extend(bad)
            if decoder is not None and batch is not None:
                batch, positions, undecodable = decoder(batch, positions)
                failures.extend(undecodable)
                bad = bad + undecodable  # counted once in the progress bar
            if batch is not None:
                batch = batch.to(device, non_blocking=True)
                if batch.dim() == 4:  # images (not histograms): NHWC like the model
                    batch = batch.contiguous(memory_format=torch.channels_last)
                feats = model(batch).float().cpu().numpy()
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


def _gpu_decodable(data: bytes) -> bool:
    """A plain upright RGB / grayscale JPEG with its end marker, within PIL's size limits: what the device
    decoder takes. Anything else (PNG, CMYK, EXIF-rotated, truncated, tiny, huge) is decoded on the worker."""
    from PIL import Image

    from .data import MIN_IMAGE_SIDE

    if not data.startswith(b"\xff\xd8") or not data.rstrip(b"\x00\r\n ").endswith(b"\xff\xd9"):
        return False
    try:
        with Image.open(io.BytesIO(data)) as img:
            ok = img.format == "JPEG" and img.mode in ("RGB", "L") and img.getexif().get(0x0112, 1) == 1
            limit = Image.MAX_IMAGE_PIXELS or 1 << 62
            return ok and min(img.size) >= MIN_IMAGE_SIDE and img.size[0] * img.size[1] <= limit
    except Exception:  # noqa: BLE001 - any header problem: let the worker's PIL path name it
        return False


class EncodedDataset:
    """Items for decoding on the device: the bytes of a plain JPEG as a 1-D uint8 tensor (checked from its
    header by the worker), or, for any other file, the item of ``fallback`` (the CPU path's dataset: a
    (3, H, W) uint8 tensor, or a failure). Workers then mostly just read files."""

    def __init__(self, fallback: ImageDataset | ShapedDataset) -> None:
        self.fallback = fallback
        self.split = fallback.split

    def __len__(self) -> int:
        return len(self.fallback)

    def __getitem__(self, position: int):
        base = self.fallback.base if isinstance(self.fallback, ShapedDataset) else self.fallback
        if base.box(position) is not None:  # a cropped image: the worker crops it, then resizes
            return self.fallback[position]
        try:
            data = base.path(position).read_bytes()
        except OSError:
            data = b""
        if _gpu_decodable(data):
            return torch.frombuffer(bytearray(data), dtype=torch.uint8), position, None
        return self.fallback[position]


def collate_encoded(batch):
    """Collate :class:`EncodedDataset` items: a list of tensors (encoded or decoded), positions, failures."""
    good = [(x, pos) for x, pos, err in batch if err is None]
    failures = [err for _, _, err in batch if err is not None]
    positions = torch.as_tensor([pos for _, pos in good], dtype=torch.long)
    return ([x for x, _ in good] or None), positions, failures


class GpuDecoder:
    """Decodes a batch of :class:`EncodedDataset` items on ``device`` (nvjpeg on CUDA, one batched call) and
    resizes each image to its shape there (antialiased ``mode``, the CPU path's filter, back to uint8 like
    it). An image the batched call cannot decode is retried alone and reported as a failure if it still fails."""

    def __init__(self, ids: list[str], shapes: list[tuple[int, int]], device: str | torch.device,
                 mode: str = "bilinear") -> None:
        self.ids, self.shapes, self.device, self.mode = ids, shapes, torch.device(device), mode

    def _decode(self, encoded: list[torch.Tensor]) -> list[torch.Tensor | Exception]:
        import warnings

        from torchvision.io import ImageReadMode, decode_jpeg

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchvision 0.29 marks its decoders deprecated (TorchCodec)
            try:
                return list(decode_jpeg(encoded, mode=ImageReadMode.RGB, device=self.device))
            except RuntimeError:
                out: list[torch.Tensor | Exception] = []
                for data in encoded:
                    try:
                        out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=self.device))
                    except RuntimeError as exc:
                        out.append(exc)
                return out

    def __call__(self, items: list[torch.Tensor], positions: torch.Tensor
                 ) -> tuple[torch.Tensor | None, torch.Tensor, list[Failure]]:
        encoded = [i for i, x in enumerate(items) if x.dim() == 1]
        images: list = [x.to(self.device, non_blocking=True) if x.dim() == 3 else None for x in items]
        for i, img in zip(encoded, self._decode([items[i] for i in encoded]) if encoded else []):
            images[i] = img
        keep, failures, out = [], [], []
        for i, img in enumerate(images):
            position = int(positions[i])
            if isinstance(img, Exception):
                failures.append(Failure(self.ids[position], f"corrupt JPEG (device decode: {img})"))
                continue
            shape = self.shapes[position]
            if tuple(img.shape[-2:]) != shape:
                img = torch.nn.functional.interpolate(img[None].float(), size=shape, mode=self.mode,
                                                      antialias=True, align_corners=False)[0]
                img = img.round_().clamp_(0, 255).to(torch.uint8)
            keep.append(i)
            out.append(img)
        if not out:
            return None, positions[:0], failures
        return torch.stack(out), positions[keep], failures


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


class Stacked(torch.nn.Module):
    """Several :class:`MultiScale` members on one input batch, their descriptors side by side: one decode
    pass feeds every member. ``dims`` holds each member's width after the first batch."""

    def __init__(self, members: list[MultiScale]) -> None:
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.dims: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [member(x) for member in self.members]
        self.dims = [o.shape[1] for o in outs]
        return torch.cat(outs, dim=1)


def member_tta(model: torch.nn.Module, size: int, scales, flip: bool, device) -> MultiScale:
    """A member's descriptor network as extraction runs it: test-time scales / flip around the model in eval
    mode, the backbone's input normalisation, on ``device`` in channels-last (NHWC: faster, bench_extract.py)."""
    from .models import input_normalisation

    inner = model.backbone if hasattr(model, "backbone") else model
    tta = MultiScale(model.eval(), size, tuple(scales), flip, *input_normalisation(inner))
    return tta.to(device, memory_format=torch.channels_last)


def describe_split_members(
    members: list[tuple[torch.nn.Module, int, tuple[float, ...], bool]],
    root,
    split: str,
    ids: list[str],
    batch_size: int = 32,
    workers: int = 2,
    device: str = "cpu",
    amp: bool = True,
    aspect: bool = False,
    decode: str = "auto",
    source: ImageSource | None = None,
) -> tuple[list[np.ndarray], list[Failure]]:
    """:func:`describe_split` for several members ``(model, size, scales, flip)`` sharing one input side
    (``round(size x max(scales))``) and one ``aspect`` setting: each image is read and decoded once for all of
    them, and each member's descriptors are exactly what it gets alone. ``source``: the ids name files (with
    crop boxes) of an :class:`ImageSource` instead of the Kaggle layout under ``root``."""
    if decode not in DECODE_MODES:
        raise ValueError(f"decode must be one of {', '.join(DECODE_MODES)}, found {decode!r}")
    ttas = [member_tta(model, size, scales, flip, device) for model, size, scales, flip in members]
    sides = {tta.input_size() for tta in ttas}
    if len(sides) != 1:
        raise ValueError(f"members decoded together need one input side, found {sorted(sides)}")
    side, batches = sides.pop(), None
    on_device = decode == "device" or (decode == "auto" and torch.device(device).type == "cuda" and workers < 8)
    if aspect:  # bicubic like ShapedDataset's PIL resize; the square path's torchvision Resize is bilinear
        headers = ImageDataset(root, split, ids, source=source)
        sizes = [headers.size(n) or (1, 1) for n in range(len(ids))]  # cropped; unreadable: fails at decode
        buckets = [aspect_bucket(w, h) for w, h in sizes]
        shapes = [bucket_shape(b, side) for b in buckets]
        batches = bucket_batches(buckets, batch_size)
        dataset = ShapedDataset(ImageDataset(root, split, ids, max_side=max(max(s) for s in shapes), source=source),
                                shapes)
    else:
        shapes = [(side, side)] * len(ids)
        dataset = ImageDataset(root, split, ids, square_transform(side), max_side=side, source=source)
    decoder = GpuDecoder(list(ids), shapes, device, "bicubic" if aspect else "bilinear") if on_device else None
    stacked = Stacked(ttas)
    feats, failures = extract_descriptors(EncodedDataset(dataset) if on_device else dataset, stacked, batch_size,
                                          workers, device, desc=f"extract {split}", amp=amp, batches=batches,
                                          decoder=decoder)
    return np.split(feats, np.cumsum(stacked.dims)[:-1], axis=1), failures


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
    decode: str = "auto",
) -> tuple[np.ndarray, list[Failure]]:
    """L2-normalised global descriptors of one split with a backbone's own input normalisation, and the images
    skipped as unreadable.

    Args:
        model: maps a normalised image batch to descriptors (a ``Describer``, a ``GlobalDescriptor``).
        root: a Kaggle-layout competition folder; split: ``train``, ``test`` or ``index``; ids: its images.
        size: input side; scales: multiples of it, descriptors averaged over them; flip: also average flips.
        batch_size, workers, device, amp: batching, DataLoader workers, where the model runs, float16 on CUDA.
        aspect: keep each image's aspect ratio (7 buckets of about ``size`` x ``size`` pixels, batches drawn per
            bucket) instead of squashing it into a square.
        decode: ``cpu`` (DataLoader workers decode with PIL), ``device`` (workers only read files; plain JPEGs
            are decoded on the model's device, nvjpeg on CUDA) or ``auto``: device on CUDA with fewer than 8
            workers, where nvjpeg's ~2100 img/s (H100, 320-448 px photos) beats the workers' ~185 img/s each;
            cpu otherwise (15 workers decoded 3390 img/s there).
    """
    feats, failures = describe_split_members([(model, size, tuple(scales), flip)], root, split, ids, batch_size,
                                             workers, device, amp, aspect, decode)
    return feats[0], failures
