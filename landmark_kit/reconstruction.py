"""The reconstruction baseline of the GE2E / ArcFace landmark-retrieval study: a U-Net-style decoder on the timm
encoder's feature pyramid learns to rebuild the (augmented) input image, with no labels.

The descriptor is the pooled bottleneck: the kit's neck (GeM, FC, BN) over the encoder's last feature map. To
train it, the decoder's deepest input is that embedding broadcast over the stride-32 grid, not the feature map
itself; the shallower pyramid levels reach the decoder through skip connections, as in U-Net. At inference the
decoder is dropped and the model describes images like any other (``LandmarkNet.describe``).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .losses import batch_nn_correct

RECONSTRUCTION = "reconstruction"  # the head name in recipes and on the command line
DECODER_CHANNELS = (128, 96, 64, 32, 16)  # the code at stride 32, then after each skip (strides 16, 8, 4, 2)


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(channels_out), nn.ReLU(inplace=True))


class UNetDecoder(nn.Module):
    """Embedding code at the deepest level, then per skip level (deepest first): upsample to its size, concatenate
    it, convolve; a last upsampling to the input size and a 3x3 convolution to RGB."""

    def __init__(self, dim: int, skip_channels: Sequence[int], channels: Sequence[int] = DECODER_CHANNELS) -> None:
        super().__init__()
        if len(channels) < len(skip_channels) + 1:
            raise ValueError(f"{len(skip_channels)} skip levels need {len(skip_channels) + 1} decoder widths, "
                             f"found {list(channels)}")
        self.code = nn.Linear(dim, channels[0])
        self.blocks = nn.ModuleList(_block(channels[i] + c, channels[i + 1])
                                    for i, c in enumerate(reversed(list(skip_channels))))
        self.out = nn.Conv2d(channels[len(skip_channels)], 3, 3, padding=1)

    def forward(self, embedding: torch.Tensor, skips: Sequence[torch.Tensor], deepest: tuple[int, int],
                size: tuple[int, int]) -> torch.Tensor:
        """``skips`` shallowest first (as timm returns them); ``deepest`` the stride-32 grid, ``size`` the input's."""
        x = self.code(embedding)[:, :, None, None].expand(-1, -1, *deepest)
        for block, skip in zip(self.blocks, reversed(list(skips))):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip.to(x.dtype)], dim=1))
        return self.out(F.interpolate(x, size=size, mode="bilinear", align_corners=False))


class ReconstructionHead(nn.Module):
    """Mean squared error between the decoder's output and the network's (normalised, augmented) input; returns
    (loss, the number of images whose nearest batch neighbour shares their label: a monitor, never a target)."""

    def __init__(self, feature_info: Sequence[dict], dim: int, channels: Sequence[int] = DECODER_CHANNELS) -> None:
        super().__init__()
        self.levels = list(range(len(feature_info) - 1))  # every pyramid level but the deepest is a skip
        self.decoder = UNetDecoder(dim, [feature_info[i]["num_chs"] for i in self.levels], channels)

    def forward(self, net: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        final, skips = net.backbone.forward_intermediates(x, indices=self.levels)
        embedding = net.bn(net.fc(net.pool(final)))
        rebuilt = self.decoder(embedding, skips, tuple(final.shape[-2:]), tuple(x.shape[-2:]))
        return F.mse_loss(rebuilt.float(), x.float()), batch_nn_correct(embedding, labels)
