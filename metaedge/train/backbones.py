"""Embedding backbones for few-shot learning; every one exports cleanly to ONNX (static ops only).

``build_backbone(name, **options) -> EmbeddingModel``. Options (all JSON values, stored in checkpoints):

- ``input_size``: ``H`` or ``[H, W]`` (default 28 for conv4, 84 for the others);
- ``color``: ``"gray"`` (1 channel) or ``"rgb"`` (3), or ``channels=1|3``;
- ``invert``, ``mean``, ``std``: the rest of the pre-processing (see ``PreprocessSpec``), or a whole
  ``preprocess=PreprocessSpec | dict`` that overrides them;
- ``metric``: how embeddings are compared on the device (``euclidean`` for ProtoNet, ``cosine`` ...);
- ``embedding_dim``: adds a linear projection to this size when it differs from the trunk's output;
- ``hidden`` (conv4: 64), ``widths`` (resnet12: [64, 160, 320, 640]);
- ``weights``: a local file (``.safetensors``, or ``.pt``/``.pth`` read with ``weights_only=True``) of
  torchvision weights for resnet18 / mobilenet_v3_small; classifier keys are ignored, a 3-channel first
  convolution is summed over its input channels for gray inputs. Nothing is ever downloaded.
"""
from __future__ import annotations

import os
from typing import Any, Callable

import torch
from torch import nn

from metaedge.runtime.spec import ModelSpec, PreprocessSpec
from metaedge.train.config import BACKBONES
from metaedge.train.model import EmbeddingModel

_DEFAULT_SIZE = {"conv4": 28, "resnet12": 84, "resnet18": 84, "mobilenet_v3_small": 84}


class BackboneError(ValueError):
    """An unknown backbone, a bad option or unusable weights; the message says which."""


# --------------------------------------------------------------------------------------------- conv4
def conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


class Conv4(nn.Sequential):
    """4 x [conv3x3-hidden, BN, ReLU, maxpool 2] (Vinyals et al.; Snell et al.; Finn et al.), flattened:
    28x28 -> 1x1 (dim = hidden), 84x84 -> 5x5 (dim = 25 * hidden)."""

    def __init__(self, in_channels: int = 1, hidden: int = 64):
        super().__init__(conv_block(in_channels, hidden), conv_block(hidden, hidden), conv_block(hidden, hidden),
                         conv_block(hidden, hidden), nn.Flatten(1))


# ------------------------------------------------------------------------------------------- resnet12
class ResBlock12(nn.Module):
    """3 x conv3x3 + BN (LeakyReLU 0.1) with a 1x1 projected shortcut, then maxpool 2 (Oreshkin et al.;
    Lee et al.)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv2, self.bn2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.conv3, self.bn3 = nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.act = nn.LeakyReLU(0.1)
        self.pool = nn.MaxPool2d(2, ceil_mode=True)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.pool(self.act(out + self.shortcut(x)))


class ResNet12(nn.Module):
    def __init__(self, in_channels: int = 3, widths=(64, 160, 320, 640)):
        super().__init__()
        chans = [in_channels, *widths]
        self.layers = nn.Sequential(*[ResBlock12(chans[i], chans[i + 1]) for i in range(len(widths))])
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return torch.flatten(self.pool(self.layers(x)), 1)


# ---------------------------------------------------------------------------------------- torchvision
def _read_weights(path: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise BackboneError(f"weights: file not found: {path!r} (weights are only read locally, never downloaded)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:
            raise BackboneError(f"weights: cannot read {path!r} as a tensor state dict: {exc}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BackboneError(f"weights: {path!r} does not hold a flat name -> tensor state dict")
    return state


def _load_trunk_weights(trunk: nn.Module, path: str, first_conv: str, drop_prefixes: tuple[str, ...]) -> None:
    state = {k.removeprefix("module."): v for k, v in _read_weights(path).items()}
    state = {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}
    key = first_conv + ".weight"
    target = trunk.state_dict()
    if key in state and key in target and state[key].shape[1] != target[key].shape[1]:
        if target[key].shape[1] == 1:  # gray input from RGB weights: a gray image is R = G = B
            state[key] = state[key].sum(dim=1, keepdim=True)
        else:
            raise BackboneError(f"weights: {key} has {state[key].shape[1]} input channels, the model "
                                f"{target[key].shape[1]}")
    missing, unexpected = trunk.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise BackboneError(f"weights: {path!r} does not match the architecture: missing {missing[:5]}"
                            f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}"
                            f"{'...' if len(unexpected) > 5 else ''}")


def _resnet18(in_channels: int, weights: str | None) -> nn.Module:
    from metaedge._optional import require
    models = require("torchvision.models", "the resnet18 backbone")
    net = models.resnet18(weights=None)
    net.fc = nn.Identity()
    if in_channels != 3:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    if weights:
        _load_trunk_weights(net, weights, "conv1", ("fc.",))
    return net


class _MobileNetTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.features, self.avgpool = net.features, net.avgpool

    def forward(self, x):
        return torch.flatten(self.avgpool(self.features(x)), 1)


def _mobilenet_v3_small(in_channels: int, weights: str | None) -> nn.Module:
    from metaedge._optional import require
    models = require("torchvision.models", "the mobilenet_v3_small backbone")
    net = models.mobilenet_v3_small(weights=None)
    if in_channels != 3:
        old = net.features[0][0]
        net.features[0][0] = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                       bias=False)
    trunk = _MobileNetTrunk(net)
    if weights:
        _load_trunk_weights(trunk, weights, "features.0.0", ("classifier.",))
    return trunk


# ------------------------------------------------------------------------------------------- builder
def _as_size(value, name: str) -> tuple[int, int]:
    size = [value, value] if isinstance(value, int) else list(value)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise BackboneError(f"{name}: expected a positive int or [height, width], got {value!r}")
    return int(size[0]), int(size[1])


def _preprocess_from_options(name: str, options: dict[str, Any]) -> PreprocessSpec:
    given = options.pop("preprocess", None)
    size = options.pop("input_size", None)
    color = options.pop("color", None)
    channels = options.pop("channels", None)
    invert = options.pop("invert", None)
    mean, std = options.pop("mean", None), options.pop("std", None)
    if given is not None:
        pre = given if isinstance(given, PreprocessSpec) else PreprocessSpec.from_dict(dict(given))
        if any(v is not None for v in (size, color, channels, invert, mean, std)):
            raise BackboneError("give either preprocess= or input_size/color/channels/invert/mean/std, not both")
        return pre.validate()
    if channels is not None:
        if channels not in (1, 3):
            raise BackboneError(f"channels: expected 1 or 3, got {channels!r}")
        implied = "gray" if channels == 1 else "rgb"
        if color is not None and color != implied:
            raise BackboneError(f"channels={channels} contradicts color={color!r}")
        color = implied
    color = color or ("gray" if name == "conv4" else "rgb")
    n = 1 if color == "gray" else 3
    return PreprocessSpec(size=_as_size(size if size is not None else _DEFAULT_SIZE[name], "input_size"),
                          color=color, invert=bool(invert or False),
                          mean=tuple(float(v) for v in (mean if mean is not None else (0.0,) * n)),
                          std=tuple(float(v) for v in (std if std is not None else (1.0,) * n))).validate()


_TRUNKS: dict[str, Callable[..., nn.Module]] = {}


def build_backbone(name: str = "conv4", **options) -> EmbeddingModel:
    """Build an embedding network by name (see the module docstring for the options)."""
    if name not in BACKBONES:
        raise BackboneError(f"backbone: expected one of {BACKBONES}, got {name!r}")
    opts = dict(options)
    weights = opts.pop("weights", None)
    preprocess = _preprocess_from_options(name, opts)
    metric = opts.pop("metric", "euclidean")
    embedding_dim = opts.pop("embedding_dim", None)
    in_channels = preprocess.channels
    arch: dict[str, Any] = {}
    if name == "conv4":
        arch["hidden"] = int(opts.pop("hidden", 64))
        trunk = Conv4(in_channels, arch["hidden"])
    elif name == "resnet12":
        arch["widths"] = [int(w) for w in opts.pop("widths", (64, 160, 320, 640))]
        trunk = ResNet12(in_channels, tuple(arch["widths"]))
    elif name == "resnet18":
        trunk = _resnet18(in_channels, weights)
    else:
        trunk = _mobilenet_v3_small(in_channels, weights)
    if weights and name in ("conv4", "resnet12"):
        _load_trunk_weights(trunk, weights, "", ())
    if opts:
        raise BackboneError(f"unknown option(s) for backbone {name!r}: {sorted(opts)}")
    trunk_dim = _trunk_output_dim(trunk, in_channels, preprocess.size)
    if embedding_dim is not None and int(embedding_dim) != trunk_dim:
        trunk = nn.Sequential(trunk, nn.Linear(trunk_dim, int(embedding_dim)))
        trunk_dim = int(embedding_dim)
    stored = {"preprocess": preprocess.to_dict(), "metric": metric, **arch}
    if embedding_dim is not None:
        stored["embedding_dim"] = int(embedding_dim)
    spec = ModelSpec(backbone=name, embedding_dim=trunk_dim, preprocess=preprocess, metric=metric,
                     extra={k: v for k, v in stored.items() if k not in ("preprocess", "metric")})
    return EmbeddingModel(trunk, spec, backbone_name=name, backbone_options=stored)


def _trunk_output_dim(trunk: nn.Module, channels: int, size: tuple[int, int]) -> int:
    was_training = trunk.training
    trunk.eval()
    try:
        with torch.no_grad():
            out = trunk(torch.zeros(1, channels, *size))
    except RuntimeError as exc:
        raise BackboneError(f"input_size {list(size)} is too small for this backbone: {exc}") from None
    finally:
        trunk.train(was_training)
    return int(torch.flatten(out, 1).shape[1])
