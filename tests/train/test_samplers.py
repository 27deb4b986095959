import pytest
import torch

from metaedge.train.data import ClassBalancedBatchSampler, DataError, FewShotDataset, TaskSampler
from metaedge.runtime.spec import PreprocessSpec


def make_dataset(counts):
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    return FewShotDataset(images, labels, [f"c{c}" for c in range(len(counts))], PreprocessSpec(size=(4, 4), color="gray"))


def test_task_sampler_shapes_counts_and_no_leakage():
    ds = make_dataset([12] * 10)
    sampler = TaskSampler(ds, ways=5, shots=3, queries=4, seed=1)
    for i in range(50):
        ep = sampler.sample(i)
        assert ep.support.shape == (15,) and ep.query.shape == (20,)
        assert ep.support_labels.tolist() == [j for j in range(5) for _ in range(3)]
        assert ep.query_labels.tolist() == [j for j in range(5) for _ in range(4)]
        assert len(set(ep.classes.tolist())) == 5
        assert not set(ep.support.tolist()) & set(ep.query.tolist())
        assert len(set(ep.support.tolist() + ep.query.tolist())) == 35
        # every image really is from the class its episode label says
        for idx, lab in zip(torch.cat([ep.support, ep.query]), torch.cat([ep.support_labels, ep.query_labels])):
            assert int(ds.labels[idx]) == int(ep.classes[lab])


def test_task_sampler_reproducible_and_rank_dependent():
    ds = make_dataset([8] * 20)
    a = TaskSampler(ds, 5, 1, 2, seed=3)
    b = TaskSampler(ds, 5, 1, 2, seed=3)
    assert all(torch.equal(a.sample(i).support, b.sample(i).support) for i in range(10))
    assert torch.equal(list(TaskSampler(ds, 5, 1, 2, seed=3, start=4, episodes=1))[0].query, a.sample(4).query)
    other_rank = TaskSampler(ds, 5, 1, 2, seed=3, rank=1)
    other_seed = TaskSampler(ds, 5, 1, 2, seed=4)
    assert sum(torch.equal(a.sample(i).support, other_rank.sample(i).support) for i in range(10)) < 3
    assert sum(torch.equal(a.sample(i).support, other_seed.sample(i).support) for i in range(10)) < 3
    # all classes get used over many episodes (uniform class choice)
    seen = torch.cat([a.sample(i).classes for i in range(200)])
    assert torch.bincount(seen, minlength=20).min() > 20


def test_task_sampler_small_class_error_and_replacement():
    ds = make_dataset([10, 10, 3, 10])
    with pytest.raises(DataError, match=r"'c2' \(3\).*replacement"):
        TaskSampler(ds, 3, 2, 2)
    sampler = TaskSampler(ds, 4, 2, 2, replacement=True)
    for i in range(20):
        ep = sampler.sample(i)
        assert ep.support.shape == (8,) and ep.query.shape == (8,)
        assert not set(ep.support.tolist()) & set(ep.query.tolist())
    with pytest.raises(DataError, match="only 4 classes"):
        TaskSampler(ds, 5, 1, 1, replacement=True)


def test_class_balanced_batch_sampler():
    ds = make_dataset([100, 5, 5, 5])
    sampler = ClassBalancedBatchSampler(ds, batch_size=64, seed=0)
    labels = torch.cat([sampler.sample(i)[1] for i in range(100)])
    counts = torch.bincount(labels, minlength=4).float()
    assert (counts / counts.sum() - 0.25).abs().max() < 0.03  # balanced although class 0 has 20x the images
    idx, lab = sampler.sample(5)
    assert torch.equal(ds.labels[idx], lab) and torch.equal(sampler.sample(5)[0], idx)
    grouped = ClassBalancedBatchSampler(ds, batch_size=8, classes_per_batch=4)
    idx, lab = grouped.sample(0)
    assert sorted(torch.bincount(lab).tolist()) == [2, 2, 2, 2] and torch.equal(ds.labels[idx], lab)
    with pytest.raises(DataError, match="divide"):
        ClassBalancedBatchSampler(ds, batch_size=10, classes_per_batch=4)
