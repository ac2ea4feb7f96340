"""Tests of the multi-scale backbones (CPU, small inputs)."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from model.backbones import Backbone, build_backbone
from model.backbones.efficientnet_lite import HEAD_KEY_PREFIXES, lite0_weights_path

CONFIGS = [
    ("efficientnet_lite0", "imagenet", (40, 112, 320), (8, 16, 32)),
    ("resnet18", "imagenet", (128, 256, 512), (8, 16, 32)),
    ("resnet18", "cifar", (128, 256, 512), (2, 4, 8)),
]


@pytest.fixture(scope="module", autouse=True)
def single_thread() -> Iterator[None]:
    """Runs single-threaded: tiny convs gain nothing from threads and stall on a busy CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lite0_rgb() -> Backbone:
    return build_backbone("efficientnet_lite0", in_chans=3, pretrained=True).eval()


@pytest.fixture(scope="module")
def lite0_gray() -> Backbone:
    return build_backbone("efficientnet_lite0", in_chans=1, pretrained=True).eval()


@pytest.mark.parametrize(("name", "stem", "channels", "strides"), CONFIGS)
@pytest.mark.parametrize("in_chans", [1, 3])
@pytest.mark.parametrize("size", [(160, 240), (45, 70)])
def test_output_shapes(
    name: str,
    stem: str,
    channels: tuple[int, ...],
    strides: tuple[int, ...],
    in_chans: int,
    size: tuple[int, int],
) -> None:
    torch.manual_seed(0)
    model = build_backbone(name, in_chans=in_chans, stem=stem).eval()
    if stem == "cifar" and size[0] > 64:
        size = (size[0] // 4, size[1] // 4)
    assert model.out_channels == channels
    assert model.strides == strides
    with torch.no_grad():
        features = model(torch.rand(2, in_chans, *size))
    assert len(features) == 3
    for feat, ch, stride in zip(features, channels, strides, strict=True):
        assert feat.shape == (2, ch, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
        assert torch.isfinite(feat).all()


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"efficientnet_lite0.*resnet18"):
        build_backbone("vgg16")


def test_invalid_options() -> None:
    with pytest.raises(ValueError, match="imagenet"):
        build_backbone("resnet18", stem="tiny")
    with pytest.raises(ValueError):
        build_backbone("resnet18", pretrained=True)
    with pytest.raises(ValueError):
        build_backbone("efficientnet_lite0", stem="cifar")
    with pytest.raises(ValueError, match="in_chans"):
        build_backbone("efficientnet_lite0", in_chans=2, pretrained=True)


def test_lite0_keys_match_weights_except_head() -> None:
    weights = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    head = {k for k in weights if k.startswith(HEAD_KEY_PREFIXES)}
    assert head, "expected the file to contain the classification head"
    model_state = build_backbone("efficientnet_lite0", in_chans=3).state_dict()
    assert set(model_state) == set(weights) - head
    for key, value in model_state.items():
        assert value.shape == weights[key].shape, key


def test_lite0_pretrained_differs_from_random(lite0_rgb: Backbone) -> None:
    torch.manual_seed(0)
    random_model = build_backbone("efficientnet_lite0", in_chans=3).eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        pretrained_out, random_out = lite0_rgb(x), random_model(x)
    for a, b in zip(pretrained_out, random_out, strict=True):
        assert not torch.allclose(a, b, atol=1e-2)


def test_lite0_pretrained_stem_weight_loaded(lite0_rgb: Backbone, lite0_gray: Backbone) -> None:
    weights = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    stem = weights["_conv_stem.weight"]
    torch.testing.assert_close(lite0_rgb.state_dict()["_conv_stem.weight"], stem)
    torch.testing.assert_close(lite0_gray.state_dict()["_conv_stem.weight"], stem.sum(1, keepdim=True))


def test_lite0_gray_equals_replicated_rgb(lite0_rgb: Backbone, lite0_gray: Backbone) -> None:
    gray = torch.rand(2, 1, 64, 96)
    with torch.no_grad():
        out_gray = lite0_gray(gray)
        out_rgb = lite0_rgb(gray.expand(-1, 3, -1, -1))
    for a, b in zip(out_gray, out_rgb, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["efficientnet_lite0", "resnet18"])
def test_freeze_keeps_bn_eval(name: str) -> None:
    model = build_backbone(name, in_chans=1)
    model.freeze()
    model.train()
    assert model.training
    assert all(not p.requires_grad for p in model.parameters())
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms and all(not m.training for m in norms)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model(torch.rand(2, 1, 64, 64))
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], msg=key)


def test_unfrozen_train_updates_bn() -> None:
    model = build_backbone("resnet18", in_chans=1).train()
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(m.training for m in norms)
    before = norms[0].state_dict()["running_mean"].clone()
    model(torch.rand(2, 1, 64, 64))
    assert not torch.equal(norms[0].state_dict()["running_mean"], before)


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_resnet_gradients_flow(stem: str) -> None:
    torch.manual_seed(0)
    model = build_backbone("resnet18", in_chans=3, stem=stem).train()
    features = model(torch.rand(2, 3, 32, 48))
    sum(f.square().mean() for f in features).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name
