"""``EmbeddingModel``: a backbone plus the ``ModelSpec`` that says how its inputs were made.

The spec travels with the weights (checkpoint ``model.json``, then the bundle's ``manifest.json``), so the
device pre-processes raw images exactly as the training images were pre-processed.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from metaedge.runtime.spec import ModelSpec


class EmbeddingModel(nn.Module):
    """``forward(x[b, C, H, W] float32) -> [b, embedding_dim]``.

    ``spec``: input size/colour/inversion/mean/std, embedding dim and metric (see ``metaedge.runtime.spec``).
    ``backbone_name`` and ``backbone_options`` rebuild the same architecture through
    ``metaedge.train.build_backbone`` (that is what checkpoints store next to the weights).
    """

    def __init__(self, backbone: nn.Module, spec: ModelSpec, backbone_name: str | None = None,
                 backbone_options: dict[str, Any] | None = None):
        super().__init__()
        self.backbone = backbone
        self.spec = spec.validate()
        self.backbone_name = backbone_name or spec.backbone
        self.backbone_options = dict(backbone_options or {})

    @property
    def embedding_dim(self) -> int:
        return self.spec.embedding_dim

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.spec.input_shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.backbone(x), 1)

    @torch.no_grad()
    def embed_images(self, images_u8, batch_size: int = 256) -> torch.Tensor:
        """Raw uint8 images (``[b, h, w, c]`` numpy, any size) -> embeddings, pre-processed by
        ``metaedge.kernels.preprocess`` with this model's spec: the device's path, run here."""
        import numpy as np
        images_u8 = np.asarray(images_u8)
        if images_u8.ndim == 3 and images_u8.shape[-1] not in (1, 3, 4):
            images_u8 = images_u8[..., None]
        if images_u8.ndim == 3:
            images_u8 = images_u8[None]
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            out = []
            for start in range(0, len(images_u8), batch_size):
                x = torch.from_numpy(self.spec.preprocess.apply(images_u8[start:start + batch_size]))
                out.append(self(x.to(device)).float().cpu())
            return torch.cat(out) if out else torch.empty(0, self.embedding_dim)
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        p = self.spec.preprocess
        return (f"backbone={self.backbone_name!r}, input={list(self.input_shape)}, color={p.color!r}, "
                f"invert={p.invert}, embedding_dim={self.embedding_dim}, metric={self.spec.metric!r}")
