"""Few-shot data: sources decoded once into an in-memory uint8 cache, and reproducible samplers.

- ``SyntheticGlyphs``: built-in procedural characters (offline default, seconds to build);
- ``Omniglot``: the original zips or the torchvision layout, alphabets as groups, rotations as classes;
- ``ImageFolderDataset``: one folder per class;
- ``UnlabelledImages``: images without labels (a folder, an image list, a video, or a labelled set's images);
- ``TaskSampler`` (N-way K-shot Q-query episodes), ``ClassBalancedBatchSampler`` (supervised batches).
"""
from metaedge.train.data.base import DataError, FewShotDataset, cache_images, resize_and_color
from metaedge.train.data.folder import ImageFolderDataset
from metaedge.train.data.omniglot import Omniglot
from metaedge.train.data.samplers import ClassBalancedBatchSampler, Episode, TaskSampler
from metaedge.train.data.synthetic import SyntheticGlyphs
from metaedge.train.data.unlabelled import UnlabelledImages

__all__ = ["DataError", "FewShotDataset", "cache_images", "resize_and_color", "ImageFolderDataset", "Omniglot",
           "SyntheticGlyphs", "UnlabelledImages", "TaskSampler", "ClassBalancedBatchSampler", "Episode"]
