import pytest
import torch

from metaedge.train.backbones import build_backbone
from metaedge.train.methods import MAML, Batch, ProtoNet, Reptile, prototypes, squared_euclidean
from metaedge.train.trainer import fit


def tiny_batch(dtype=torch.float64, ways=2, shots=2, queries=3, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(support=torch.randn(ways * shots, 1, size, size, generator=g, dtype=dtype),
                 support_labels=torch.arange(ways).repeat_interleave(shots),
                 query=torch.randn(ways * queries, 1, size, size, generator=g, dtype=dtype),
                 query_labels=torch.arange(ways).repeat_interleave(queries), ways=ways)


def test_prototypes_and_distances():
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0]])
    assert torch.allclose(prototypes(emb, torch.tensor([0, 0, 1]), 2), torch.tensor([[1.0, 0.0], [0.0, 4.0]]))
    with pytest.raises(ValueError, match="every class"):
        prototypes(emb, torch.tensor([0, 0, 0]), 2)
    a, b = torch.randn(5, 3), torch.randn(4, 3)
    assert torch.allclose(squared_euclidean(a, b), torch.cdist(a, b) ** 2, atol=1e-5)


def test_protonet_logits_are_minus_squared_distance_and_cosine_scale():
    method = ProtoNet()
    s, q = torch.randn(4, 8), torch.randn(6, 8)
    labels = torch.tensor([0, 0, 1, 1])
    protos = torch.stack([s[:2].mean(0), s[2:].mean(0)])
    assert torch.allclose(method.logits(s, labels, q, 2), -torch.cdist(q, protos) ** 2, atol=1e-4)
    cos = ProtoNet(metric="cosine", scale=5.0)
    expected = 5.0 * torch.nn.functional.normalize(q, dim=1) @ torch.nn.functional.normalize(protos, dim=1).t()
    assert torch.allclose(cos.logits(s, labels, q, 2), expected, atol=1e-5)
    assert [n for n, _ in cos.named_parameters()] == ["log_scale"]


def _params(model):
    return [p for p in model.parameters()]


# the prototype head starts with large logits, so its loss is only smooth enough for a finite difference
# at a small inner learning rate
@pytest.mark.parametrize("head_init,inner_lr", [("proto", 0.01), ("zero", 0.3)])
def test_maml_second_order_gradient_matches_finite_differences(head_init, inner_lr):
    torch.manual_seed(0)
    model = build_backbone("conv4", input_size=16, hidden=3).double().train()
    method = MAML(inner_steps=2, inner_lr=inner_lr, head_init=head_init)
    batch = tiny_batch()
    params = _params(model)
    grads = torch.autograd.grad(method.forward_loss(model, batch).loss, params)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        eps = 1e-6
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(eps * d)
            plus = float(method.forward_loss(model, batch).loss)
            for p, d in zip(params, direction):
                p.sub_(2 * eps * d)
            minus = float(method.forward_loss(model, batch).loss)
            for p, d in zip(params, direction):
                p.add_(eps * d)
        numeric = (plus - minus) / (2 * eps)
        analytic = float(sum((gr * d).sum() for gr, d in zip(grads, direction)))
        assert analytic == pytest.approx(numeric, rel=1e-4, abs=1e-7)


def test_first_order_maml_gradient_is_query_gradient_at_adapted_weights():
    torch.manual_seed(0)
    model = build_backbone("conv4", input_size=16, hidden=3).double().train()
    batch = tiny_batch()
    fo = MAML(inner_steps=2, inner_lr=0.3, head_init="zero", first_order=True)
    so = MAML(inner_steps=2, inner_lr=0.3, head_init="zero", first_order=False)
    names = [n for n, _ in model.named_parameters()]
    fo_grads = torch.autograd.grad(fo.forward_loss(model, batch).loss, _params(model))
    so_grads = torch.autograd.grad(so.forward_loss(model, batch).loss, _params(model))
    body, w, b = fo.adapt_params(model, batch.support, batch.support_labels, 2, 2, False, True)
    fast = {n: body[n].detach().requires_grad_(True) for n in names}
    logits = torch.func.functional_call(model, fast, (batch.query,)) @ w.detach().t() + b.detach()
    direct = torch.autograd.grad(torch.nn.functional.cross_entropy(logits, batch.query_labels), list(fast.values()))
    for a, d in zip(fo_grads, direct):
        assert torch.allclose(a, d, atol=1e-10)
    assert any(not torch.allclose(a, s, atol=1e-6) for a, s in zip(fo_grads, so_grads))


def test_maml_learned_head_and_errors():
    m = MAML(head_init="learned", ways=2, embedding_dim=3)
    assert sorted(n for n, _ in m.named_parameters()) == ["head_bias", "head_weight"]
    with pytest.raises(ValueError, match="head_init"):
        MAML(head_init="random")
    with pytest.raises(ValueError, match="needs ways"):
        MAML(head_init="learned")


def test_reptile_pseudo_gradient_is_weight_difference():
    torch.manual_seed(0)
    model = build_backbone("conv4", input_size=16, hidden=3).train()
    method = Reptile(inner_steps=3, inner_lr=0.1)
    batch = tiny_batch(dtype=torch.float32)
    x, y = torch.cat([batch.support, batch.query]), torch.cat([batch.support_labels, batch.query_labels])
    fast, _, _, _ = method.inner_loop(model, x, y, 2, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.compute_grads(model, batch, None, None)
    for n, p in model.named_parameters():
        assert torch.allclose(p.grad, before[n] - fast[n].detach(), atol=1e-6)
    # the inner loop really trains: the task loss drops
    emb = torch.func.functional_call(model, dict(model.named_parameters()), (x,))
    assert float(method.inner_loop(model, x, y, 2, 8)[3]) < float(
        torch.nn.functional.cross_entropy(torch.zeros(len(y), 2), y))
    del emb


@pytest.mark.parametrize("method,options", [
    ("protonet", {}),
    ("protonet", {"metric": "cosine"}),
    ("fomaml", {"inner_steps": 1, "inner_lr": 0.5, "head_init": "proto"}),
    ("maml", {"inner_steps": 1, "inner_lr": 0.05, "head_init": "proto"}),
    ("reptile", {"inner_steps": 2, "inner_lr": 0.1, "head_init": "proto"}),
    ("baseline", {}),
])
def test_every_method_reduces_its_loss(glyphs, method, options):
    train, _ = glyphs
    losses = []
    fit("conv4", method, train, ways=5, shots=1, queries=2, batch_size=20, episodes=30, lr=3e-3,
        method_options=options, backbone_options={"hidden": 8}, progress=False, val_every=1000,
        callback=lambda info: losses.append(info["loss"]))
    assert len(losses) == 30
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.85 * first, (first, last)
