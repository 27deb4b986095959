"""MAML (Finn et al., 2017), second order or first order (``first_order=True``).

The inner loop runs on a dictionary of "fast" weights through ``torch.func.functional_call``: the backbone
(``adapt="all"``, as in the paper; ``"head"`` adapts the classifier only, as ANIL) and an N-way linear head.
The head's initial value (``head_init``):

- ``"zero"`` (default): zero weights and bias (Kao et al., 2022's zeroing trick): any number of ways at test
  time, no learned head to store;
- ``"proto"``: Proto-MAML (Triantafillou et al., 2020): ``W = 2 c``, ``b = -||c||^2`` from the support
  prototypes ``c``, i.e. the inner loop starts at the ProtoNet classifier;
- ``"learned"``: the paper's meta-learned ``[ways, dim]`` head (fixed number of ways).

Second order keeps ``create_graph=True`` through the inner steps, so the outer gradient flows through them;
first order treats the inner gradients as constants (cheaper, usually as good).

BatchNorm follows the paper's transductive convention: it always normalises with the statistics of the
current batch (support batch in the inner loop, query batch for the outer loss and for predictions), in
training and at test time; running statistics are still tracked, and are what the exported embedding
network (eval mode) uses.
"""
from __future__ import annotations

import torch
from torch.func import functional_call

from metaedge.train.methods.base import Batch, Method, StepOutput, full_precision, prototypes

HEAD_INITS = ("zero", "proto", "learned")


class MAML(Method):
    name = "maml"
    ddp_compatible = False   # autograd.grad inside the forward: gradients are averaged by the trainer instead

    def __init__(self, inner_steps: int = 5, inner_lr: float = 0.1, first_order: bool = False,
                 head_init: str = "zero", adapt: str = "all", eval_inner_steps: int | None = None,
                 ways: int | None = None, embedding_dim: int | None = None, label_smoothing: float = 0.0):
        super().__init__(label_smoothing)
        if head_init not in HEAD_INITS:
            raise ValueError(f"head_init: expected one of {HEAD_INITS}, got {head_init!r}")
        if adapt not in ("all", "head"):
            raise ValueError(f"adapt: expected 'all' or 'head', got {adapt!r}")
        if inner_steps < 0:
            raise ValueError(f"inner_steps: expected >= 0, got {inner_steps}")
        self.inner_steps, self.inner_lr, self.first_order = int(inner_steps), float(inner_lr), bool(first_order)
        self.head_init, self.adapt = head_init, adapt
        self.eval_inner_steps = int(eval_inner_steps if eval_inner_steps is not None else inner_steps)
        self.ways = ways
        if head_init == "learned":
            if not ways or not embedding_dim:
                raise ValueError("head_init='learned' needs ways and embedding_dim")
            self.head_weight = torch.nn.Parameter(torch.zeros(int(ways), int(embedding_dim)))
            self.head_bias = torch.nn.Parameter(torch.zeros(int(ways)))

    def options(self):
        return {"inner_steps": self.inner_steps, "inner_lr": self.inner_lr, "first_order": self.first_order,
                "head_init": self.head_init, "adapt": self.adapt, "eval_inner_steps": self.eval_inner_steps}

    # ------------------------------------------------------------------------------------------ inner loop
    def _initial_head(self, support_emb, support_labels, ways):
        if self.head_init == "learned":
            if ways != self.head_weight.shape[0]:
                raise ValueError(f"head_init='learned' was trained for {self.head_weight.shape[0]} ways, got {ways}")
            return self.head_weight, self.head_bias
        if self.head_init == "proto":
            c = prototypes(support_emb, support_labels, ways)
            return 2 * c, -(c * c).sum(-1)
        dim = support_emb.shape[-1]
        zeros_w = torch.zeros(ways, dim, device=support_emb.device, dtype=support_emb.dtype, requires_grad=True)
        zeros_b = torch.zeros(ways, device=support_emb.device, dtype=support_emb.dtype, requires_grad=True)
        return zeros_w, zeros_b

    def adapt_params(self, model, support, support_labels, ways, steps, create_graph, first_order):
        """Run ``steps`` inner SGD steps on the support set; returns (fast backbone params, head W, head b).

        With ``create_graph`` the result is differentiable (second order) w.r.t. the initial weights."""
        with torch.enable_grad():  # the inner loop needs gradients even when called under no_grad
            return self._adapt_params(model, support, support_labels, ways, steps, create_graph, first_order)

    def _adapt_params(self, model, support, support_labels, ways, steps, create_graph, first_order):
        body = dict(model.named_parameters())
        fixed_emb = None
        if self.adapt == "head":
            fixed_emb = full_precision(model(support))
            w, b = self._initial_head(fixed_emb, support_labels, ways)
        else:
            w, b = self._initial_head(full_precision(model(support)), support_labels, ways) \
                if self.head_init == "proto" else self._initial_head(
                    torch.empty(0, _embedding_dim(model, body, support), device=support.device,
                                dtype=support.dtype if support.dtype == torch.float64 else torch.float32), support_labels, ways)
        for _ in range(steps):
            emb = fixed_emb if fixed_emb is not None else full_precision(functional_call(model, body, (support,)))
            loss = self.cross_entropy(emb @ w.t() + b, support_labels)
            names = list(body) if fixed_emb is None else []
            tensors = [body[n] for n in names] + [w, b]
            # retain_graph: the outer loss still needs the graph of the head's prototype initialisation
            grads = torch.autograd.grad(loss, tensors, create_graph=create_graph and not first_order,
                                        retain_graph=True, allow_unused=True)
            if first_order:
                grads = [g.detach() if g is not None else None for g in grads]
            new = [t if g is None else t - self.inner_lr * g for t, g in zip(tensors, grads)]
            body = {**body, **dict(zip(names, new[:len(names)]))}
            w, b = new[-2], new[-1]
        return body, w, b

    def logits_after_adaptation(self, model, batch: Batch, steps: int, create_graph: bool, first_order: bool):
        body, w, b = self.adapt_params(model, batch.support, batch.support_labels, batch.ways, steps,
                                       create_graph, first_order)
        emb = full_precision(functional_call(model, body, (batch.query,)))
        return emb @ w.t() + b

    def forward_loss(self, model, batch: Batch) -> StepOutput:
        logits = self.logits_after_adaptation(model, batch, self.inner_steps, create_graph=True,
                                              first_order=self.first_order)
        return StepOutput(self.cross_entropy(logits, batch.query_labels), logits.detach(), batch.query_labels)

    def predict(self, model, batch: Batch, steps: int | None = None) -> torch.Tensor:
        """Query logits after adapting on the support set (transductive BN, see the module docstring)."""
        was_training = model.training
        model.train()
        try:
            with torch.enable_grad():
                logits = self.logits_after_adaptation(model, batch, self.eval_inner_steps if steps is None else steps,
                                                      create_graph=False, first_order=True)
        finally:
            model.train(was_training)
        return logits.detach()


def _embedding_dim(model, params, support) -> int:
    spec = getattr(model, "spec", None)
    if spec is not None:
        return int(spec.embedding_dim)
    with torch.no_grad():
        return int(functional_call(model, params, (support[:2],)).shape[-1])
