"""The Baseline (Chen et al., 2019): plain supervised training over all base classes, then few-shot by
prototypes (``topk`` on the device) or a fine-tuned cosine head (``metaedge.kernels.adapt_head``).

``head="cosine"`` (Baseline++, default: scale * cosine, which is also how the device compares embeddings) or
``"linear"``. Batches come from the class-balanced sampler, so big classes do not dominate.
"""
from __future__ import annotations

import torch
from torch import nn

from metaedge.train.methods.base import Batch, Method, StepOutput, full_precision


class Baseline(Method):
    name = "baseline"
    episodic = False
    needs_labels = True

    def __init__(self, num_classes: int, embedding_dim: int, head: str = "cosine", scale: float = 10.0,
                 learn_scale: bool = True, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if head not in ("cosine", "linear"):
            raise ValueError(f"baseline head: expected 'cosine' or 'linear', got {head!r}")
        self.head_type, self.learn_scale = head, bool(learn_scale)
        self.num_classes, self.embedding_dim = int(num_classes), int(embedding_dim)
        self.metric = "cosine" if head == "cosine" else "euclidean"
        if head == "cosine":
            self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim) * embedding_dim ** -0.5)
            value = torch.tensor(float(scale)).log()
            if learn_scale:
                self.log_scale = nn.Parameter(value)
            else:
                self.register_buffer("log_scale", value)
        else:
            self.linear = nn.Linear(embedding_dim, num_classes)

    def options(self):
        opts = {"head": self.head_type, "num_classes": self.num_classes}
        if self.head_type == "cosine":
            opts.update(scale=float(self.log_scale.detach().exp()), learn_scale=self.learn_scale)
        return opts

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        emb = full_precision(model(batch.query))
        if self.head_type == "cosine":
            logits = self.log_scale.exp() * nn.functional.normalize(emb, dim=-1) @ \
                nn.functional.normalize(self.weight, dim=-1).t()
        else:
            logits = self.linear(emb)
        return StepOutput(self.cross_entropy(logits, batch.query_labels), logits.detach(), batch.query_labels)
