"""Unsupervised episodes (UMTRA, Khodadadeh et al. 2019; the task construction of PsCo, Jang et al. 2023): an
N-way K-shot Q-query episode of *unlabelled* images whose N classes are N distinct images and whose K + Q
examples of a class are K + Q copies of that one image, each augmented independently when the batch is built.

With the augmentations as the only notion of "same class", every meta-learning method trains without labels,
and SimCLR/BYOL batches are the special case N = batch size, K = Q = 1. An image is never shared by two classes
of an episode, and (``UnlabelledImages`` removes exact duplicates) no two classes are the same picture.
"""
from __future__ import annotations

import numpy as np
import torch

from metaedge.train.data.base import DataError, FewShotDataset
from metaedge.train.data.samplers import Episode, _generator


class UnsupervisedEpisodeSampler:
    """Episodes over the images of ``dataset`` (labels, if any, are ignored). ``sample(i)`` is deterministic in
    ``(seed, rank, i)``, like ``TaskSampler``'s, so a resumed run draws the same episodes."""

    def __init__(self, dataset: FewShotDataset, ways: int, shots: int, queries: int, seed: int = 0, rank: int = 0):
        ways, shots, queries = int(ways), int(shots), int(queries)
        if ways < 2 or shots < 1 or queries < 1:
            raise DataError(f"unsupervised episodes need ways >= 2, shots >= 1, queries >= 1; got "
                            f"{ways}/{shots}/{queries}")
        if ways > len(dataset):
            raise DataError(f"{ways} classes per episode but {dataset.name} has only {len(dataset)} images")
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.seed, self.rank = int(seed), int(rank)

    def sample(self, index: int) -> Episode:
        rng = _generator(self.seed, self.rank, index)
        images = rng.choice(len(self.dataset), size=self.ways, replace=False).astype(np.int64)
        labels = np.arange(self.ways)
        return Episode(torch.from_numpy(np.repeat(images, self.shots)), torch.from_numpy(np.repeat(labels, self.shots)),
                       torch.from_numpy(np.repeat(images, self.queries)),
                       torch.from_numpy(np.repeat(labels, self.queries)), torch.from_numpy(images))
