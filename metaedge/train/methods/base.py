"""What every training method shares: the batch it sees, its output, gradient computation, adversarial
queries and the hooks the trainer calls."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn


@dataclass
class Batch:
    """One training step's data, already on the device and pre-processed.

    Episodic methods: ``support``/``support_labels`` and ``query``/``query_labels`` (episode labels 0..N-1).
    Supervised methods (the Baseline): ``query``/``query_labels`` hold the batch and its dataset labels.
    """
    query: torch.Tensor
    query_labels: torch.Tensor
    support: torch.Tensor | None = None
    support_labels: torch.Tensor | None = None
    ways: int = 0
    generator: torch.Generator | None = None   # for randomness inside the step (adversarial init)


@dataclass
class StepOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    targets: torch.Tensor
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float((self.logits.argmax(-1) == self.targets).float().mean())


def full_precision(x: torch.Tensor) -> torch.Tensor:
    """Half-precision activations (AMP) -> float32 for the loss; float32/float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def squared_euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[n, d] x [m, d] -> [n, m]`` squared distances (clamped at 0: the expansion can go slightly negative)."""
    return (a.pow(2).sum(-1, keepdim=True) - 2 * a @ b.t() + b.pow(2).sum(-1)[None]).clamp_min(0)


def prototypes(emb: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means (differentiable); labels must be 0..ways-1 and every class present."""
    one_hot = torch.nn.functional.one_hot(labels, ways).to(emb.dtype)
    counts = one_hot.sum(0)
    if bool((counts == 0).any()):
        raise ValueError(f"prototypes: every class 0..{ways - 1} needs a support example")
    return (one_hot.t() @ emb) / counts[:, None]


class Method(nn.Module):
    """Base class. Subclasses implement ``forward_loss``; parameters of the method itself (a learned scale, a
    classifier head) are registered on it and trained with the backbone."""
    name = "method"
    episodic = True            # trains on episodes (False: on class-balanced batches of labelled images)
    needs_labels = False       # True: cannot learn from unsupervised episodes (the Baseline's class head)
    self_supervised = False    # True: an episode is a batch of images x 2 augmented views (SimCLR, BYOL)
    metric = "euclidean"       # how the embeddings are compared on the device
    ddp_compatible = True      # the loss is a plain forward pass (DDP's gradient hooks work)

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)

    def options(self) -> dict[str, Any]:
        return {}

    def cross_entropy(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(full_precision(logits), targets, label_smoothing=self.label_smoothing)

    def forward_loss(self, model: nn.Module, batch: Batch) -> StepOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, model: nn.Module, batch: Batch) -> StepOutput:
        return self.forward_loss(model, batch)

    def setup(self, model: nn.Module) -> None:
        """Called once the backbone is built and placed (BYOL copies it into its target network)."""

    def after_step(self, model: nn.Module, progress: float) -> None:
        """Called after every optimizer step; ``progress`` is the fraction of the run done (BYOL's EMA)."""

    def compute_grads(self, model: nn.Module, batch: Batch, loss_fn, backward) -> StepOutput:
        """Fill ``.grad`` of the parameters to update. ``loss_fn(batch)`` runs the (possibly DDP-wrapped,
        autocast) forward; ``backward(loss)`` scales and back-propagates."""
        out = loss_fn(batch)
        backward(out.loss)
        return out

    def adversarial_query(self, loss_fn, batch: Batch, eps: float, steps: int, alpha: float | None,
                          random_start: bool) -> Batch:
        """FGSM (``steps=1``, no random start) or PGD (L-infinity, ``eps`` in network-input units) on the query
        images, maximising the method's own loss; support images stay clean."""
        alpha = float(alpha if alpha is not None else (eps if steps == 1 else 2.5 * eps / steps))
        x = batch.query.detach()
        if random_start:
            delta = (torch.rand(x.shape, generator=batch.generator) * 2 - 1).to(x) * eps
        else:
            delta = torch.zeros_like(x)
        for _ in range(int(steps)):
            delta.requires_grad_(True)
            out = loss_fn(replace(batch, query=x + delta))
            (grad,) = torch.autograd.grad(out.loss, delta)
            delta = (delta.detach() + alpha * grad.sign()).clamp_(-eps, eps)
        return replace(batch, query=(x + delta).detach())
