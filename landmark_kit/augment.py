"""Training augmentation, batched on the model's device with kornia: the loader only decodes and resizes
to the batch's bucket shape (uint8), so CPU workers stay cheap and every random draw comes from the torch
generator of the training process (checkpointed, so a resumed run draws exactly what the first one would).

"soft" (smlyaka 2019): random resized crop / scale + light colour jitter; "hard": + shear and stronger
brightness / contrast / saturation / hue; "none": resize and normalise only.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .recipes import RecipeError

AUGMENTS = ("soft", "hard", "none")


class DeviceAugment(nn.Module):
    """uint8 ``(B, 3, H, W)`` batch on the device -> augmented, normalised float batch of the same shape.
    One kornia pipeline per bucket shape (the crop keeps the bucket's aspect ratio)."""

    def __init__(self, kind: str, mean, std) -> None:
        super().__init__()
        if kind not in AUGMENTS:
            raise RecipeError(f"augment must be one of {', '.join(AUGMENTS)}, found {kind!r}")
        self.kind = kind
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, 3, 1, 1))
        self.pipelines: dict[tuple[int, int], nn.Module] = {}

    def _pipeline(self, height: int, width: int) -> nn.Module:
        import kornia.augmentation as K

        key = (height, width)
        if key not in self.pipelines:
            aspect = width / height
            ops = [K.RandomResizedCrop((height, width), scale=(0.4, 1.0), ratio=(0.75 * aspect, 1.333 * aspect))]
            if self.kind == "hard":
                ops += [K.RandomAffine(degrees=0.0, shear=15.0, p=1.0), K.ColorJitter(0.4, 0.3, 0.3, 0.03, p=1.0)]
            else:
                ops += [K.ColorJitter(0.2, 0.2, 0.1, 0.0, p=1.0)]
            self.pipelines[key] = nn.Sequential(*ops)
        return self.pipelines[key]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float().div_(255.0)
        if self.kind != "none" and self.training:
            x = self._pipeline(x.shape[2], x.shape[3])(x).clamp_(0.0, 1.0)
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)
