"""Episodic and class-balanced sampling, reproducible and stateless.

Every episode (or batch) is drawn from its own generator keyed by ``(seed, rank, index)``: episode ``i`` is
the same whatever ran before it, which makes resuming exact without saving sampler state, and gives every
distributed rank different episodes.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metaedge.train.data.base import DataError, FewShotDataset


@dataclass
class Episode:
    """Dataset indices of one N-way K-shot Q-query task; labels are episode-local 0..N-1, class-major."""
    support: torch.Tensor         # [N*K] dataset indices
    support_labels: torch.Tensor  # [N*K]
    query: torch.Tensor           # [N*Q]
    query_labels: torch.Tensor    # [N*Q]
    classes: torch.Tensor         # [N] dataset class ids, position = episode label

    @property
    def ways(self) -> int:
        return int(self.classes.numel())


def _generator(seed: int, rank: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(rank), int(index)])


class TaskSampler:
    """N-way K-shot Q-query episodes over the classes of ``dataset``.

    A class with fewer than ``shots + queries`` images is an error naming it, unless ``replacement=True``:
    then such classes repeat images (never the same image in support and query when the class has at least
    two images). ``sample(i)`` is deterministic in (seed, rank, i); iterating yields ``sample(start)``,
    ``sample(start + 1)``, ... forever (or ``episodes`` of them).
    """

    def __init__(self, dataset: FewShotDataset, ways: int, shots: int, queries: int, seed: int = 0,
                 replacement: bool = False, rank: int = 0, episodes: int | None = None, start: int = 0):
        ways, shots, queries = int(ways), int(shots), int(queries)
        if ways < 2:
            raise DataError(f"ways: expected >= 2, got {ways}")
        if shots < 1 or queries < 0:
            raise DataError(f"shots must be >= 1 and queries >= 0, got shots={shots}, queries={queries}")
        if ways > dataset.num_classes:
            raise DataError(f"ways={ways} but {dataset.name} has only {dataset.num_classes} classes")
        counts = dataset.counts
        small = [(dataset.class_names[c], int(n)) for c, n in enumerate(counts.tolist()) if n < shots + queries]
        if small and not replacement:
            listed = ", ".join(f"{name!r} ({n})" for name, n in small[:5]) + (" ..." if len(small) > 5 else "")
            raise DataError(f"{len(small)} class(es) of {dataset.name} have fewer than shots + queries = "
                            f"{shots + queries} images: {listed}. Lower shots/queries, drop those classes, or "
                            f"sample with replacement (replacement=True)")
        if (counts == 0).any():
            raise DataError(f"{dataset.name} has empty classes")
        self.dataset, self.ways, self.shots, self.queries = dataset, ways, shots, queries
        self.seed, self.rank, self.replacement = int(seed), int(rank), bool(replacement)
        self.episodes, self.start = episodes, int(start)
        self._indices = [dataset.class_indices(c).numpy() for c in range(dataset.num_classes)]

    def sample(self, index: int) -> Episode:
        rng = _generator(self.seed, self.rank, index)
        classes = rng.choice(len(self._indices), size=self.ways, replace=False)
        k, q = self.shots, self.queries
        support, query = np.empty((self.ways, k), np.int64), np.empty((self.ways, q), np.int64)
        for j, c in enumerate(classes):
            pool = self._indices[c]
            if len(pool) >= k + q:
                picked = rng.choice(pool, size=k + q, replace=False)
                support[j], query[j] = picked[:k], picked[k:]
            else:  # replacement: keep support and query apart when the class allows it
                perm = rng.permutation(pool)
                n_support = max(1, min(k, len(pool) - 1)) if len(pool) > 1 else 1
                s_pool, q_pool = perm[:n_support], (perm[n_support:] if len(pool) > 1 else perm)
                support[j] = rng.choice(s_pool, size=k, replace=len(s_pool) < k)
                query[j] = rng.choice(q_pool, size=q, replace=len(q_pool) < q)
        labels = np.arange(self.ways)
        return Episode(torch.from_numpy(support.reshape(-1)), torch.from_numpy(np.repeat(labels, k)),
                       torch.from_numpy(query.reshape(-1)), torch.from_numpy(np.repeat(labels, q)),
                       torch.from_numpy(classes.astype(np.int64)))

    def __iter__(self):
        i = self.start
        while self.episodes is None or i < self.start + self.episodes:
            yield self.sample(i)
            i += 1

    def __len__(self) -> int:
        if self.episodes is None:
            raise TypeError("an endless TaskSampler has no length (pass episodes=)")
        return int(self.episodes)


class ClassBalancedBatchSampler:
    """Batches of dataset indices for supervised pre-training (the Baseline) where every class is equally
    likely whatever its size: ``classes_per_batch`` classes x ``batch_size // classes_per_batch`` images, or
    (default) ``batch_size`` classes drawn uniformly with replacement, one random image each."""

    def __init__(self, dataset: FewShotDataset, batch_size: int, classes_per_batch: int | None = None,
                 seed: int = 0, rank: int = 0, batches: int | None = None, start: int = 0):
        if batch_size < 1:
            raise DataError(f"batch_size: expected >= 1, got {batch_size}")
        if classes_per_batch is not None:
            if not 1 <= classes_per_batch <= dataset.num_classes or batch_size % classes_per_batch:
                raise DataError(f"classes_per_batch={classes_per_batch} must divide batch_size={batch_size} and "
                                f"be <= the {dataset.num_classes} classes")
        self.dataset, self.batch_size, self.classes_per_batch = dataset, int(batch_size), classes_per_batch
        self.seed, self.rank, self.batches, self.start = int(seed), int(rank), batches, int(start)
        self._indices = [dataset.class_indices(c).numpy() for c in range(dataset.num_classes)]

    def sample(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(dataset indices [batch], dataset labels [batch])`` of batch ``index``."""
        rng = _generator(self.seed, self.rank, index)
        if self.classes_per_batch is None:
            classes = rng.integers(0, len(self._indices), size=self.batch_size)
            idx = np.array([self._indices[c][rng.integers(len(self._indices[c]))] for c in classes], np.int64)
        else:
            per = self.batch_size // self.classes_per_batch
            classes = rng.choice(len(self._indices), size=self.classes_per_batch, replace=False)
            idx = np.concatenate([rng.choice(self._indices[c], size=per, replace=len(self._indices[c]) < per)
                                  for c in classes]).astype(np.int64)
            classes = np.repeat(classes, per)
        return torch.from_numpy(idx), torch.from_numpy(classes.astype(np.int64))

    def __iter__(self):
        i = self.start
        while self.batches is None or i < self.start + self.batches:
            yield self.sample(i)
            i += 1
