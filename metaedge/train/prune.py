"""Structured (channel) pruning of an ``EmbeddingModel`` and the record that rebuilds a pruned architecture.

Whole output channels are removed from convolutions (with their BatchNorm, the next layers' input channels,
and everything coupled to them: residual additions, depthwise groups, flattening) - so the result is an
ordinary, smaller dense network that every runtime runs faster, not a sparse one.

The dependency analysis and channel removal are Torch-Pruning's (``torch_pruning``, DepGraph: Fang et al.,
CVPR 2023). A hand-written pruner would have to know every backbone's couplings (resnet18's identity shortcuts
tie all blocks of a stage to one channel set; mobilenet's squeeze-excitation and depthwise groups; resnet12's
projected shortcuts); DepGraph finds them by tracing the network, for all four backbones and any added later.
Channels are ranked per coupled group by the L2 norm of their weights (``GroupMagnitudeImportance``), the same
fraction is removed from every group, and counts are rounded to multiples of ``round_to`` (vector widths).

A checkpoint records the pruned layer shapes in its backbone options (``pruned``: layer -> shape), so
``build_backbone`` rebuilds the dense architecture and shrinks those layers before the weights are loaded;
loading a pruned checkpoint needs no Torch-Pruning.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from metaedge._optional import require

PRUNABLE = (nn.Conv2d, nn.BatchNorm2d, nn.Linear)


class PruneError(ValueError):
    """A pruning ratio, model or pruned-shape record is unusable; the message says which."""


def layer_shapes(module: nn.Module) -> dict[str, dict[str, int]]:
    """The channel-defining shape of every Conv2d / BatchNorm2d / Linear, by module path."""
    out: dict[str, dict[str, int]] = {}
    for name, m in module.named_modules():
        if isinstance(m, nn.Conv2d):
            out[name] = {"out": m.out_channels, "in": m.in_channels, "groups": m.groups}
        elif isinstance(m, nn.BatchNorm2d):
            out[name] = {"features": m.num_features}
        elif isinstance(m, nn.Linear):
            out[name] = {"out": m.out_features, "in": m.in_features}
    return out


def _shrunk(m: nn.Module, shape: dict[str, int], name: str) -> nn.Module:
    try:
        if isinstance(m, nn.Conv2d):
            return nn.Conv2d(int(shape["in"]), int(shape["out"]), m.kernel_size, m.stride, m.padding, m.dilation,
                             int(shape["groups"]), m.bias is not None, m.padding_mode)
        if isinstance(m, nn.BatchNorm2d):
            return nn.BatchNorm2d(int(shape["features"]), m.eps, m.momentum, m.affine, m.track_running_stats)
        return nn.Linear(int(shape["in"]), int(shape["out"]), m.bias is not None)
    except (KeyError, TypeError, ValueError) as exc:
        raise PruneError(f"pruned shape of {name!r}: malformed {shape!r} for a {type(m).__name__} ({exc})") from None


def apply_pruned_shapes(trunk: nn.Module, shapes: dict[str, Any]) -> nn.Module:
    """Replace the layers named in ``shapes`` (``layer_shapes`` of a pruned trunk) by fresh ones of those
    shapes, in place; the weights are loaded afterwards (a checkpoint's ``load_state_dict`` checks them all)."""
    if not isinstance(shapes, dict):
        raise PruneError(f"pruned: expected {{layer: shape}}, got {type(shapes).__name__}")
    modules = dict(trunk.named_modules())
    for name, shape in shapes.items():
        m = modules.get(name)
        if not isinstance(m, PRUNABLE) or not isinstance(shape, dict):
            raise PruneError(f"pruned: {name!r} is not a Conv2d/BatchNorm2d/Linear of this backbone (or its shape "
                             f"{shape!r} is not an object); was the checkpoint made with another metaedge?")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else trunk
        setattr(parent, child, _shrunk(m, shape, name))
    return trunk


def prune_channels(model, ratio: float, *, round_to: int | None = 8, keep_embedding_dim: bool = False):
    """A copy of ``model`` (an ``EmbeddingModel``) with ``ratio`` of the channels of every coupled group of layers
    removed (lowest L2 weight norm first); returns ``(pruned model, report)``. The input convolution keeps its
    input channels; ``keep_embedding_dim`` also keeps the last layer's output channels (the embedding size).
    The pruned model's ``backbone_options["pruned"]`` records the new shapes (see the module docstring)."""
    from metaedge.train.model import EmbeddingModel
    tp = require("torch_pruning", "structured pruning (pip install torch-pruning)")
    if not isinstance(model, EmbeddingModel):
        raise PruneError(f"model: expected an EmbeddingModel, got {type(model).__name__}")
    if not 0.0 < float(ratio) < 1.0:
        raise PruneError(f"ratio: expected a fraction of channels in (0, 1), got {ratio!r}")
    if round_to is not None and (not isinstance(round_to, int) or round_to < 1):
        raise PruneError(f"round_to: expected a positive int or None, got {round_to!r}")
    pruned = copy.deepcopy(model).cpu().eval()
    trunk = pruned.backbone
    example = torch.zeros(2, *pruned.spec.input_shape)
    dense = layer_shapes(trunk)
    before = _count(trunk, example, tp)
    ignored = []
    if keep_embedding_dim:
        last = [m for m in trunk.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][-1]
        ignored.append(last)
    pruner = tp.pruner.BasePruner(trunk, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=float(ratio), ignored_layers=ignored, round_to=round_to,
                                  global_pruning=False)
    pruner.step()
    after = _count(trunk, example, tp)
    with torch.no_grad():
        dim = int(torch.flatten(trunk(example), 1).shape[1])
    import dataclasses
    changed = {k: v for k, v in layer_shapes(trunk).items() if v != dense.get(k)}
    pruned.backbone_options = {**pruned.backbone_options, "pruned": changed}
    pruned.spec = dataclasses.replace(pruned.spec, embedding_dim=dim,
                                      extra={**pruned.spec.extra, "pruned_ratio": float(ratio)})
    report = {"ratio": float(ratio), "round_to": round_to, "criterion": "L2 norm of each coupled channel group "
              "(torch_pruning GroupMagnitudeImportance p=2), the same ratio in every group",
              "library": f"torch-pruning {getattr(tp, '__version__', '?')}",
              "layers_changed": len(changed), "macs": [before[0], after[0]], "params": [before[1], after[1]],
              "macs_ratio": round(before[0] / max(after[0], 1), 3), "params_ratio": round(before[1] / max(after[1], 1), 3),
              "embedding_dim": [model.spec.embedding_dim, dim]}
    return pruned, report


def _count(trunk, example, tp) -> tuple[int, int]:
    macs, params = tp.utils.count_ops_and_params(trunk, example[:1])
    return int(macs), int(params)
