"""Self-supervised methods: SimCLR and PsCo (contrastive), BYOL (non-contrastive), written as training ``Method``s.

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
- **PsCo** (Jang et al., 2023): MoCo (momentum target + a queue of its past keys as negatives) plus a
  pseudo-supervised few-shot task per batch: each image's ``shots`` most similar queue keys, chosen by an
  optimal-transport (Sinkhorn) assignment that spreads the queue evenly over the batch, become its positives.
  Other drawings of the same character, other frames of the same object, join a class - what instance
  discrimination alone never learns; the best published unsupervised few-shot results on Omniglot.

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


class _MomentumTarget(Method):
    """An online backbone + projector + predictor, and a target network (backbone + projector) that follows it
    by an exponential moving average whose momentum rises from ``ema`` to 1 on a cosine over the run (BYOL's
    schedule). The target starts as a copy of the online network (``setup``)."""
    metric = "cosine"
    self_supervised = True

    def __init__(self, embedding_dim: int, projection_dim: int, hidden_dim: int, ema: float, label_smoothing: float):
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
        self.target_backbone = copy.deepcopy(model).requires_grad_(False)

    def online(self, model, x: torch.Tensor) -> torch.Tensor:
        if self.target_backbone is None:
            raise RuntimeError(f"{type(self).__name__}.setup(model) must be called before training")
        return nn.functional.normalize(self.predictor(self.projector(full_precision(model(x)))), dim=-1)

    @torch.no_grad()
    def target(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.target_projector(full_precision(self.target_backbone(x))), dim=-1)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float) -> None:
        tau = 1 - (1 - self.ema) * (math.cos(math.pi * min(1.0, max(0.0, progress))) + 1) / 2
        for online, target in ((model, self.target_backbone), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.lerp_(po.detach(), 1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)


class BYOL(_MomentumTarget):
    """Online backbone -> projector -> predictor regresses the target's projection of every other view of the
    same class; loss ``2 - 2 cos``, averaged over those pairs."""
    name = "byol"

    def __init__(self, embedding_dim: int, projection_dim: int = 128, hidden_dim: int = 512, ema: float = 0.99,
                 label_smoothing: float = 0.0):
        super().__init__(embedding_dim, projection_dim, hidden_dim, ema, label_smoothing)

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        x, labels = _views(batch)
        sim = self.online(model, x) @ self.target(x).t()
        eye = torch.eye(len(labels), dtype=torch.bool, device=sim.device)
        pairs = (labels[:, None] == labels[None, :]) & ~eye
        loss = (2 - 2 * sim[pairs]).mean()
        return StepOutput(loss, _class_scores(sim.detach().masked_fill(eye, float("-inf")), labels, batch.ways),
                          labels)


def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """``[n, m]`` similarities -> a transport plan whose rows (the n batch images) and columns (the m queue keys)
    each carry equal mass (Cuturi 2013; as SwAV/PsCo): every image gets a share of the queue, no key
    serves every image. Returned scaled so that a row sums to 1."""
    log_q = (scores.float() / epsilon).t()   # [m, n], in the log domain: no underflow for distant keys
    m, n = log_q.shape
    for _ in range(iterations):
        log_q = log_q - torch.logsumexp(log_q, dim=1, keepdim=True) - math.log(m)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(n)
    return (log_q.exp() * n).t()


class PsCo(_MomentumTarget):
    """MoCo + PsCo losses (see the module docstring). ``queue_size`` momentum keys; ``shots`` pseudo-positives
    per image from the queue once it is half full; ``temperature`` of both softmaxes. Under DDP the queue is a
    buffer that DistributedDataParallel broadcasts from rank 0 at every step: it holds rank 0's keys."""
    name = "psco"

    def __init__(self, embedding_dim: int, projection_dim: int = 128, hidden_dim: int = 512, ema: float = 0.99,
                 queue_size: int = 8192, shots: int = 4, temperature: float = 0.2, sinkhorn_epsilon: float = 0.05,
                 label_smoothing: float = 0.0):
        super().__init__(embedding_dim, projection_dim, hidden_dim, ema, label_smoothing)
        if queue_size < 1 or shots < 1 or temperature <= 0:
            raise ValueError(f"psco: expected queue_size >= 1, shots >= 1, temperature > 0; got {queue_size}, "
                             f"{shots}, {temperature}")
        self.shots, self.temperature, self.queue_size = int(shots), float(temperature), int(queue_size)
        self.sinkhorn_epsilon = float(sinkhorn_epsilon)
        self.register_buffer("queue", torch.zeros(self.queue_size, self.projection_dim))
        self.register_buffer("queued", torch.zeros((), dtype=torch.int64))   # keys pushed so far
        self._pending: torch.Tensor | None = None

    def options(self):
        return {**super().options(), "queue_size": self.queue_size, "shots": self.shots,
                "temperature": self.temperature, "sinkhorn_epsilon": self.sinkhorn_epsilon}

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        if batch.support is None or len(batch.support) != len(batch.query):
            raise ValueError("psco: expected two views of every image (support and query of equal size)")
        n = len(batch.query)
        q, k = self.online(model, batch.support), self.target(batch.query)
        filled = min(int(self.queued), self.queue_size)
        keys = self.queue[:filled]
        # MoCo: the other view's key against the queue's keys
        logits = torch.cat([(q * k).sum(1, keepdim=True), q @ keys.t()], dim=1) / self.temperature
        targets = torch.zeros(n, dtype=torch.int64, device=q.device)
        loss = nn.functional.cross_entropy(logits, targets)
        if filled >= max(self.shots * n, self.queue_size // 2):
            with torch.no_grad():   # the pseudo-labelled task: each image's shots nearest keys, by transport
                plan = sinkhorn(k @ keys.t(), self.sinkhorn_epsilon)
                support = keys[plan.topk(self.shots, dim=1).indices.reshape(-1)]           # [n * shots, d]
            task = (q @ support.t()) / self.temperature                                  # [n, n * shots]
            own = torch.arange(n, device=q.device).repeat_interleave(self.shots)
            positive = own[None, :] == torch.arange(n, device=q.device)[:, None]
            loss = loss + (torch.logsumexp(task, 1) - task.masked_fill(~positive, 0).sum(1) / self.shots).mean()
        self._pending = k.detach()
        labels = torch.arange(n, device=q.device)   # accuracy: is an image's nearest key its own other view?
        return StepOutput(loss, _class_scores(q.detach() @ k.t(), labels, n), labels)

    @torch.no_grad()
    def after_step(self, model: nn.Module, progress: float) -> None:
        super().after_step(model, progress)
        if self._pending is not None:   # enqueue this step's keys (a ring buffer)
            keys, self._pending = self._pending, None
            start = int(self.queued) % self.queue_size
            index = (torch.arange(len(keys), device=keys.device) + start) % self.queue_size
            self.queue[index] = keys.to(self.queue.dtype)
            self.queued += len(keys)
