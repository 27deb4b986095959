"""Prototypical Networks (Snell et al., 2017).

Support and query go through the backbone as ONE batch (as in the paper's code, so BatchNorm sees the whole
episode), prototypes are the class means of the support embeddings, and logits are minus the SQUARED
euclidean distance (the paper's choice, a linear classifier in disguise) or, with ``metric="cosine"``, a
learned scale times the cosine similarity. (easyfsl embeds support and query separately and uses the plain
distance; results differ slightly.) On the device, ``topk(metric="euclidean")`` scores by minus the squared
distance too, so the trained geometry is the one used to classify.
"""
from __future__ import annotations

import torch

from metaedge.train.methods.base import Batch, Method, StepOutput, full_precision, prototypes, squared_euclidean


class ProtoNet(Method):
    name = "protonet"

    def __init__(self, metric: str = "euclidean", scale: float = 10.0, learn_scale: bool = True,
                 label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if metric not in ("euclidean", "cosine"):
            raise ValueError(f"protonet metric: expected 'euclidean' or 'cosine', got {metric!r}")
        self.metric = metric
        self.learn_scale = bool(learn_scale)
        if metric == "cosine":
            value = torch.tensor(float(scale))
            if learn_scale:
                self.log_scale = torch.nn.Parameter(value.log())
            else:
                self.register_buffer("log_scale", value.log())

    def options(self):
        opts = {"metric": self.metric}
        if self.metric == "cosine":
            opts.update(scale=float(self.log_scale.detach().exp()), learn_scale=self.learn_scale)
        return opts

    def logits(self, support_emb, support_labels, query_emb, ways):
        protos = prototypes(full_precision(support_emb), support_labels, ways)
        query_emb = full_precision(query_emb)
        if self.metric == "euclidean":
            return -squared_euclidean(query_emb, protos)
        q = torch.nn.functional.normalize(query_emb, dim=-1)
        p = torch.nn.functional.normalize(protos, dim=-1)
        return self.log_scale.exp() * q @ p.t()

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        n_support = batch.support.shape[0]
        emb = model(torch.cat([batch.support, batch.query]))
        logits = self.logits(emb[:n_support], batch.support_labels, emb[n_support:], batch.ways)
        return StepOutput(self.cross_entropy(logits, batch.query_labels), logits.detach(), batch.query_labels,
                          embeddings=emb, episode_logits=logits)
