"""What a training step learns from: episode ``i`` -> a ``Batch`` of pre-processed, augmented CPU tensors.

- labelled episodes (``TaskSampler``) for meta-learning methods, and for SimCLR/BYOL on labelled data;
- class-balanced batches (``ClassBalancedBatchSampler``) for the supervised Baseline;
- unsupervised episodes (``UnsupervisedEpisodeSampler``) of unlabelled images, for every method that does not
  need labels (SimCLR/BYOL: ``batch_size`` images x 2 views; meta-learning methods: N-way K-shot Q-query);
- a mix of labelled and unsupervised episodes (``unlabelled_ratio`` of them unsupervised, drawn per episode).

Every random choice comes from ``(seed, rank, episode)``: a resumed run sees the same batches.
"""
from __future__ import annotations

import numpy as np
import torch

from metaedge.train.augment import make_augment
from metaedge.train.data.base import DataError, FewShotDataset
from metaedge.train.data.samplers import ClassBalancedBatchSampler, TaskSampler
from metaedge.train.methods import Batch, Method
from metaedge.train.pretrain.episodes import UnsupervisedEpisodeSampler


class EpisodeBatches:
    """Episodes of a sampler (labelled or unsupervised) over ``data``; support and query augmented."""

    def __init__(self, data: FewShotDataset, sampler, augment, unsupervised: bool):
        self.data, self.sampler, self.augment, self.unsupervised = data, sampler, augment, unsupervised

    def __call__(self, episode: int, generator: torch.Generator) -> Batch:
        ep = self.sampler.sample(episode)
        return Batch(query=self.data.batch(ep.query, self.augment, generator), query_labels=ep.query_labels,
                     support=self.data.batch(ep.support, self.augment, generator),
                     support_labels=ep.support_labels, ways=ep.ways, generator=generator)


class SupervisedBatches:
    """Class-balanced batches of labelled images (the Baseline's); ``ways`` = every class of the data."""
    unsupervised = False

    def __init__(self, data: FewShotDataset, sampler: ClassBalancedBatchSampler, augment):
        self.data, self.sampler, self.augment = data, sampler, augment

    def __call__(self, episode: int, generator: torch.Generator) -> Batch:
        idx, labels = self.sampler.sample(episode)
        return Batch(query=self.data.batch(idx, self.augment, generator), query_labels=labels,
                     ways=self.data.num_classes, generator=generator)


class MixedBatches:
    """Labelled episodes, and with probability ``ratio`` (drawn per episode) an unsupervised one instead."""

    def __init__(self, labelled, unlabelled, ratio: float, seed: int, rank: int):
        self.labelled, self.unlabelled, self.ratio = labelled, unlabelled, float(ratio)
        self.seed, self.rank = int(seed), int(rank)

    def is_unsupervised(self, episode: int) -> bool:
        return bool(np.random.default_rng([self.seed & 0xFFFFFFFF, self.rank, episode, 0x51]).random() < self.ratio)

    def __call__(self, episode: int, generator: torch.Generator) -> Batch:
        return (self.unlabelled if self.is_unsupervised(episode) else self.labelled)(episode, generator)


def _episode_shape(config, method: Method) -> tuple[int, int, int]:
    return (config.batch_size, 1, 1) if method.self_supervised else (config.ways, config.shots, config.queries)


def unsupervised_batches(config, method: Method, data: FewShotDataset, augment, seed: int, rank: int):
    if method.needs_labels:
        raise DataError(f"method {config.method!r} needs labels; learn from unlabelled images with simclr, byol or "
                        f"a meta-learning method (unsupervised episodes)")
    ways, shots, queries = _episode_shape(config, method)
    if augment is None:
        raise DataError("unsupervised episodes need augmentation (their only notion of 'same class'): give an "
                        "augment preset such as 'auto', 'glyphs' or 'natural'")
    return EpisodeBatches(data, UnsupervisedEpisodeSampler(data, ways, shots, queries, seed=seed, rank=rank), augment,
                          unsupervised=True)


def make_batches(config, method: Method, data: FewShotDataset, unlabelled: FewShotDataset | None, rank: int):
    """The batch source of a run (see the module docstring)."""
    channels = data.preprocess.channels
    augment = make_augment(config.augment, channels)
    if data.unlabelled:
        return unsupervised_batches(config, method, data, augment, config.seed, rank)
    if not method.episodic:
        labelled = SupervisedBatches(data, ClassBalancedBatchSampler(
            data, config.batch_size, config.classes_per_batch, seed=config.seed, rank=rank), augment)
    else:
        labelled = EpisodeBatches(data, TaskSampler(data, config.ways, config.shots, config.queries, seed=config.seed,
                                                    replacement=config.replacement, rank=rank), augment, False)
    if unlabelled is None:
        return labelled
    # the unsupervised stream has its own seed, so adding it leaves the labelled episodes' draws unchanged
    extra = unsupervised_batches(config, method, unlabelled, make_augment(config.unlabelled_augment, channels),
                                 config.seed + 0x5EED, rank)
    return MixedBatches(labelled, extra, config.unlabelled_ratio, config.seed, rank)
