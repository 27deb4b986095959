"""Self-supervised methods: SimCLR (contrastive) and BYOL (non-contrastive), written as training ``Method``s.

Both read a batch as an episode whose classes are images and whose shots/queries are augmented views of them
(``support`` = one view of every image, ``query`` = the other; more views per class work too): what an
unsupervised episode is. Given a *labelled* episode the same losses become their supervised variants (SimCLR's
is then SupCon's), which is what a mixed labelled + unlabelled run uses.

Why these two, for few-shot transfer:

- **SimCLR** (Chen et al., 2020): NT-Xent over the views of a batch, with a projection MLP whose input - the
  backbone embedding - is what transfers. Contrastive instance discrimination is the strongest simple
  self-supervised baseline on Omniglot/miniImageNet few-shot benchmarks (Jang et al. 2023, table 1), and its
  loss is a ProtoNet loss with one shot per image and a cosine metric: the geometry the device classifies with.
- **BYOL** (Grill et al., 2020): an online network with a predictor regresses a momentum (EMA) target's
  projection of the other view; no negatives, so it works with small batches (a CPU, a Jetson-sized GPU) and
  does not push apart near-duplicate images of one object (frames of one video), which a contrastive loss
  treats as negatives.

Both are our own few-line torch code rather than a library's (lightly 1.6 would add 16 packages, among them
pytorch-lightning, hydra-core and aiohttp, for two losses and two MLPs); the augmentations stay metaedge's
batched, generator-seeded ones, so a resumed run is bit-exact, which per-image torchvision-style pipelines
with a global RNG are not.
"""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from metaedge.train.methods.base import Batch, Method, StepOutput, full_precision


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear -> BN -> ReLU -> Linear: SimCLR's and BYOL's projection (and BYOL's prediction) head."""
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, dim_out))


def _views(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """All views as one batch (BatchNorm sees the whole episode) and their episode labels."""
    if batch.support is None:
        raise ValueError("self-supervised methods need an episode: two or more views per class")
    return torch.cat([batch.support, batch.query]), torch.cat([batch.support_labels, batch.query_labels])


def _class_scores(sim: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """``[n, ways]``: every view's highest similarity to each class (itself excluded), so that
    ``argmax == label`` means "its nearest other view is a view of the same image"."""
    index = labels[None].expand(sim.shape[0], -1)
    out = torch.full((sim.shape[0], ways), float("-inf"), dtype=sim.dtype, device=sim.device)
    return out.scatter_reduce(1, index, sim, reduce="amax")


class SimCLR(Method):
    """NT-Xent / SupCon: for every view, softmax over the other views of the batch at ``temperature``; the
    loss is minus the mean log-probability of its positives (the other views of the same class)."""
    name = "simclr"
    metric = "cosine"
    self_supervised = True

    def __init__(self, embedding_dim: int, projection_dim: int = 128, hidden_dim: int = 512,
                 temperature: float = 0.2, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if temperature <= 0:
            raise ValueError(f"temperature: expected > 0, got {temperature}")
        self.temperature = float(temperature)
        self.projection_dim, self.hidden_dim = int(projection_dim), int(hidden_dim)
        self.projector = mlp(int(embedding_dim), self.hidden_dim, self.projection_dim)

    def options(self):
        return {"projection_dim": self.projection_dim, "hidden_dim": self.hidden_dim,
                "temperature": self.temperature}

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        x, labels = _views(batch)
        z = nn.functional.normalize(self.projector(full_precision(model(x))), dim=-1)
        eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
        sim = (z @ z.t()).masked_fill(eye, float("-inf")) / self.temperature
        positives = (labels[:, None] == labels[None, :]) & ~eye
        if not bool(positives.any(1).all()):
            raise ValueError("simclr: every view needs another view of its class (2 or more views per class)")
        log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
        loss = -(log_prob.masked_fill(~positives, 0).sum(1) / positives.sum(1)).mean()
        return StepOutput(loss, _class_scores(sim.detach(), labels, batch.ways), labels)


class BYOL(Method):
    """Online backbone -> projector -> predictor regresses the target's (EMA of backbone and projector)
    projection of every other view of the same class; loss ``2 - 2 cos``, averaged over those pairs. The
    target's momentum rises from ``ema`` to 1 on a cosine over the run (the paper's schedule)."""
    name = "byol"
    metric = "cosine"
    self_supervised = True

    def __init__(self, embedding_dim: int, projection_dim: int = 128, hidden_dim: int = 512, ema: float = 0.99,
                 label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if not 0 <= ema < 1:
            raise ValueError(f"ema: expected in [0, 1), got {ema}")
        self.ema = float(ema)
        self.projection_dim, self.hidden_dim = int(projection_dim), int(hidden_dim)
        self.projector = mlp(int(embedding_dim), self.hidden_dim, self.projection_dim)
        self.predictor = mlp(self.projection_dim, self.hidden_dim, self.projection_dim)
        self.target_backbone: nn.Module | None = None
        self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def options(self):
        return {"projection_dim": self.projection_dim, "hidden_dim": self.hidden_dim, "ema": self.ema}

    def setup(self, model: nn.Module) -> None:
        """The target network starts as a copy of the online one (called once the backbone is built)."""
        self.target_backbone = copy.deepcopy(model).requires_grad_(False)

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        if self.target_backbone is None:
            raise RuntimeError("BYOL.setup(model) must be called before training")
        x, labels = _views(batch)
        p = nn.functional.normalize(self.predictor(self.projector(full_precision(model(x)))), dim=-1)
        with torch.no_grad():
            t = nn.functional.normalize(self.target_projector(full_precision(self.target_backbone(x))), dim=-1)
        sim = p @ t.t()
        eye = torch.eye(len(labels), dtype=torch.bool, device=p.device)
        pairs = (labels[:, None] == labels[None, :]) & ~eye
        loss = (2 - 2 * sim[pairs]).mean()
        return StepOutput(loss, _class_scores(sim.detach().masked_fill(eye, float("-inf")), labels, batch.ways),
                          labels)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float) -> None:
        tau = 1 - (1 - self.ema) * (math.cos(math.pi * min(1.0, max(0.0, progress))) + 1) / 2
        for online, target in ((model, self.target_backbone), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.lerp_(po.detach(), 1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)
