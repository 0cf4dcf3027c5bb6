"""Learned local features (DELG, Cao et al. 2020): attention + autoencoder head on the stride-16 feature map.

Trained beside the global head by ``02_train.py`` (``local_head: true``): the attention loss is the
cross-entropy of a classifier over attention-weighted, L2-normalised reconstructed features, the
reconstruction loss is the autoencoder's mean squared error. Gradients stop at the backbone, so the global
descriptor trains exactly as without the head. At extraction the strongest attention scores over an image
pyramid are the keypoints and their 128-d codes the descriptors, matched and verified like RootSIFT.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def local_level(backbone: nn.Module, reduction: int = 16) -> int:
    """Index (for timm ``forward_intermediates``) of the backbone level at ``reduction`` (DELG: conv4, stride 16)."""
    info = backbone.feature_info
    levels = [n for n, level in enumerate(info) if level["reduction"] == reduction]
    if not levels:
        raise ValueError(f"backbone has no feature level at stride {reduction}: {[i['reduction'] for i in info]}")
    return levels[-1]


class LocalHead(nn.Module):
    """Attention scorer, dimension-reducing autoencoder and the attention-pooled classifier that trains them."""

    def __init__(self, in_channels: int, num_classes: int, dim: int = 128) -> None:
        super().__init__()
        self.attention = nn.Sequential(nn.Conv2d(in_channels, 512, 1), nn.BatchNorm2d(512), nn.ReLU(inplace=True),
                                       nn.Conv2d(512, 1, 1), nn.Softplus())
        self.encoder = nn.Conv2d(in_channels, dim, 1)
        self.decoder = nn.Conv2d(dim, in_channels, 1)
        self.classifier = nn.Linear(in_channels, num_classes)

    def forward(self, fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention ``(B, 1, H, W)`` and L2-normalised local descriptors ``(B, dim, H, W)``."""
        return self.attention(fmap), F.normalize(self.encoder(fmap), dim=1)

    def losses(self, fmap: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(attention loss, reconstruction loss) on a detached feature map."""
        fmap = fmap.detach()
        recon = self.decoder(self.encoder(fmap))
        reconstruction = F.mse_loss(recon, fmap)
        pooled = (self.attention(fmap) * F.normalize(recon, dim=1)).mean(dim=(2, 3))
        return F.cross_entropy(self.classifier(pooled), labels), reconstruction


@torch.inference_mode()
def extract_delg(
    backbone: nn.Module, head: LocalHead, level: int, image: torch.Tensor, scales=(0.7071, 1.0, 1.4142),
    max_keypoints: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """Keypoints ``(N, 4)`` (x, y, scale, 0 in ``image`` pixels) and descriptors ``(N, dim)`` of one image.

    ``image`` is a normalised ``(1, 3, H, W)`` tensor on the model's device. Each pyramid level's feature-map
    cells are centred on their receptive field; the top ``max_keypoints`` attention scores over all levels win.
    """
    height, width = image.shape[-2:]
    points, descs, scores = [], [], []
    for scale in scales:
        x = image if scale == 1.0 else F.interpolate(image, scale_factor=scale, mode="bilinear", align_corners=False)
        fmap = backbone.forward_intermediates(x, indices=[level], intermediates_only=True, stop_early=True)[0]
        attn, desc = head(fmap.float())
        h, w = attn.shape[-2:]
        ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
        cx = (xs.flatten() + 0.5) * (width / w)
        cy = (ys.flatten() + 0.5) * (height / h)
        size = torch.full_like(cx, width / w, dtype=torch.float32)
        points.append(torch.stack([cx, cy, size, torch.zeros_like(size)], dim=1).float())
        descs.append(desc[0].flatten(1).T)
        scores.append(attn[0, 0].flatten())
    score = torch.cat(scores)
    top = score.topk(min(max_keypoints, len(score))).indices
    return torch.cat(points)[top].cpu().numpy(), torch.cat(descs)[top].cpu().numpy().astype(np.float32)
