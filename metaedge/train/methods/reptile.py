"""Reptile (Nichol et al., 2018).

For each task the weights are copied and trained for ``inner_steps`` steps of SGD on the task's images
(support and query together, in mini-batches of ``inner_batch`` when given); the outer update moves the
initial weights towards the adapted ones. It is written as a pseudo-gradient ``theta - phi`` handed to the
outer optimizer: plain SGD with lr 1 is the paper's ``theta <- phi``; SGD with lr ``eps`` is
``theta <- theta + eps (phi - theta)``; Adam on the pseudo-gradient also works (Nichol et al. §6).
The per-task N-way head starts at zero or at the prototypes (see ``maml.py``); BatchNorm uses batch
statistics (transductive, as in the paper's experiments).
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from metaedge.train.methods.base import Batch, Method, StepOutput, full_precision, prototypes


class Reptile(Method):
    name = "reptile"
    ddp_compatible = False

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.05, inner_batch: int | None = None,
                 head_init: str = "zero", eval_inner_steps: int | None = None, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if head_init not in ("zero", "proto"):
            raise ValueError(f"reptile head_init: expected 'zero' or 'proto', got {head_init!r}")
        if inner_steps < 1:
            raise ValueError(f"inner_steps: expected >= 1, got {inner_steps}")
        self.inner_steps, self.inner_lr = int(inner_steps), float(inner_lr)
        self.inner_batch = int(inner_batch) if inner_batch else None
        self.head_init = head_init
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None else inner_steps)

    def options(self):
        return {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "inner_batch": self.inner_batch,
                "head_init": self.head_init, "eval_inner_steps": self.eval_inner_steps}

    def _head(self, model, params, x, y, ways):
        if self.head_init == "proto":
            with torch.no_grad():
                c = prototypes(full_precision(functional_call(model, params, (x,))), y, ways)
            return (2 * c).requires_grad_(), (-(c * c).sum(-1)).requires_grad_()
        dim = model.spec.embedding_dim if hasattr(model, "spec") else None
        if dim is None:
            with torch.no_grad():
                dim = functional_call(model, params, (x[:2],)).shape[-1]
        dtype = x.dtype if x.dtype == torch.float64 else torch.float32
        return (torch.zeros(ways, dim, device=x.device, dtype=dtype, requires_grad=True),
                torch.zeros(ways, device=x.device, dtype=dtype, requires_grad=True))

    def inner_loop(self, model, x, y, ways, steps, generator=None):
        """``steps`` SGD steps on (x, y) from the current weights; returns (fast params, head W, head b)."""
        fast = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
        w, b = self._head(model, fast, x, y, ways)
        n = x.shape[0]
        for step in range(steps):
            if self.inner_batch and self.inner_batch < n:
                idx = torch.randperm(n, generator=generator)[:self.inner_batch].to(x.device)
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x, y
            emb = full_precision(functional_call(model, fast, (xb,)))
            loss = self.cross_entropy(emb @ w.t() + b, yb)
            tensors = list(fast.values()) + [w, b]
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
            new = [(t if g is None else t - self.inner_lr * g).detach().requires_grad_(True)
                   for t, g in zip(tensors, grads)]
            fast = dict(zip(fast.keys(), new[:-2]))
            w, b = new[-2], new[-1]
        return fast, w, b, loss.detach()

    def forward_loss(self, model, batch: Batch) -> StepOutput:  # used for adversarial queries and validation
        fast, w, b, _ = self.inner_loop(model, batch.support, batch.support_labels, batch.ways, self.inner_steps)
        logits = full_precision(functional_call(model, fast, (batch.query,))) @ w.t() + b
        return StepOutput(self.cross_entropy(logits, batch.query_labels), logits.detach(), batch.query_labels)

    def compute_grads(self, model, batch: Batch, loss_fn, backward) -> StepOutput:
        x = torch.cat([batch.support, batch.query])
        y = torch.cat([batch.support_labels, batch.query_labels])
        fast, w, b, loss = self.inner_loop(model, x, y, batch.ways, self.inner_steps, batch.generator)
        with torch.no_grad():
            logits = full_precision(functional_call(model, fast, (batch.query,))) @ w.t() + b
            for name, p in model.named_parameters():
                delta = p.detach() - fast[name].detach()
                p.grad = delta if p.grad is None else p.grad + delta
        return StepOutput(loss, logits, batch.query_labels)

    def predict(self, model, batch: Batch, steps: int | None = None) -> torch.Tensor:
        was_training = model.training
        model.train()
        try:
            with torch.enable_grad():
                fast, w, b, _ = self.inner_loop(model, batch.support, batch.support_labels, batch.ways,
                                                self.eval_inner_steps if steps is None else steps)
            with torch.no_grad():
                return full_precision(functional_call(model, fast, (batch.query,))) @ w.t() + b
        finally:
            model.train(was_training)
