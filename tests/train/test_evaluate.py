import math

import numpy as np
import pytest
import torch

from metaedge.train.backbones import build_backbone
from metaedge.train.data import TaskSampler
from metaedge.train.evaluate import confidence_interval, embed_dataset, evaluate


def test_confidence_interval_formula():
    accs = [0.5, 0.75, 1.0, 0.25]
    mean, ci, std = confidence_interval(accs)
    sample_std = math.sqrt(sum((a - 0.625) ** 2 for a in accs) / 3)
    assert mean == pytest.approx(0.625) and std == pytest.approx(sample_std)
    assert ci == pytest.approx(1.96 * sample_std / 2)
    assert confidence_interval([0.8]) == (0.8, 0.0, 0.0)
    with pytest.raises(ValueError):
        confidence_interval([])


def test_prototype_evaluation_matches_plain_torch(glyphs):
    _, val = glyphs
    torch.manual_seed(0)
    model = build_backbone("conv4", hidden=8).eval()
    report = evaluate(model, val, ways=5, shots=2, queries=3, episodes=25, seed=5)
    emb = torch.from_numpy(embed_dataset(model, val))
    sampler = TaskSampler(val, 5, 2, 3, seed=5)
    expected = []
    for i in range(25):
        ep = sampler.sample(i)
        protos = torch.stack([emb[ep.support[ep.support_labels == c]].mean(0) for c in range(5)])
        pred = torch.cdist(emb[ep.query].double(), protos.double()).argmin(1)
        expected.append(float((pred == ep.query_labels).double().mean()))
    assert report.accuracies == pytest.approx(expected)
    assert report.mean == pytest.approx(np.mean(expected)) and report.episodes == 25
    assert report.metric == "euclidean" and "5-way 2-shot" in str(report)
    assert report.to_dict(per_episode=False).keys() >= {"mean", "ci95", "ways", "shots", "seed"}


def test_adapt_head_and_maml_paths(glyphs):
    _, val = glyphs
    torch.manual_seed(0)
    model = build_backbone("conv4", hidden=8, metric="cosine").eval()
    plain = evaluate(model, val, ways=5, shots=1, queries=2, episodes=10, method="prototype")
    zero_steps = evaluate(model, val, ways=5, shots=1, queries=2, episodes=10, method="adapt_head", adapt_steps=0)
    assert zero_steps.accuracies == plain.accuracies  # imprinted weights = prototypes, cosine top-1
    tuned = evaluate(model, val, ways=5, shots=3, queries=2, episodes=10, method="adapt_head", adapt_steps=20)
    assert tuned.options["steps"] == 20 and 0 <= tuned.mean <= 1
    maml = evaluate(model, val, ways=5, shots=1, queries=2, episodes=4, method="maml",
                    adaptation={"inner_steps": 1, "inner_lr": 0.1})
    assert len(maml.accuracies) == 4 and maml.options["inner_steps"] == 1
    with pytest.raises(ValueError, match="method"):
        evaluate(model, val, method="knn")
    big = build_backbone("conv4", input_size=32)
    with pytest.raises(ValueError, match="expects"):
        evaluate(big, val)
