"""Knowledge distillation: a small backbone (the student) learns to embed like a bigger trained one (the
teacher) while it meta-trains - so a device runs the small network with more of the big one's accuracy.

Two terms are added to the student's own loss (``metaedge train --distill-from TEACHER``):

* **embeddings**: ``1 - cos(W s - mean, t - mean)`` per image, where ``s`` is the student's embedding, ``t`` the
  teacher's, ``W`` a linear map learned with the student (their sizes differ; FitNets-style) and each side is
  centred on its batch mean. Centring matters: a ReLU network's embeddings all share one big positive mean, so
  the plain cosine of any two is near 1 (measured: 0.987 for a conv4 student that had learnt nothing) and the
  term taught nothing; centred, it asks for the teacher's *differences* between images. ``W`` is used only in
  training: the exported student keeps its own embedding.
* **episode logits**: the teacher classifies the episode's queries by its own prototypes (its metric), the
  student by its own; ``T^2 KL(softmax(z(teacher) / T) || softmax(z(student) / T))`` (Hinton et al.), where
  ``z`` standardises each query's logits to mean 0 and deviation 1 (Sun et al., "Logit standardization in
  knowledge distillation", CVPR 2024). Standardising matters too: squared-euclidean logits of two networks
  differ in scale by orders of magnitude (hundreds for a resnet18), so a fixed ``T`` left the teacher one-hot
  and the term in the tens, unrelated to how the teacher ranks the classes; standardised, the student matches the teacher's *ranking* of the
  episode's classes, which is what a few-shot device uses. Episodic methods whose support and query go through
  the backbone as one batch (ProtoNet) get this term; others (the Baseline) the first only.

Teacher embeddings are computed once per training image, on the clean (un-augmented) image pre-processed by
the *teacher's* spec, and cached: the teacher costs one pass over the images that training actually draws,
not a forward pass per step, so a distilled student gets nearly the episodes an undistilled one gets in the
same wall time. (The cache holds ``images x teacher dim`` float32: 21,760 Omniglot images x 512 = 45 MB.)
Unlabelled images of a semi-supervised run are distilled too (the terms need no labels), with their own cache.

In a run (``TrainConfig.distill_from``), the ``TrainingSession`` builds the ``Distiller`` on the training device,
trains ``W`` with the student, keeps it in the resumable state, and adds ``Distiller.terms`` to the method's
loss: from the embeddings and episode logits the method's own forward pass returned (``StepOutput``), else
from a pass of its own (MAML, Reptile, SimCLR/BYOL). The saved and exported student is the backbone alone.
"""
from __future__ import annotations

import dataclasses

import torch
from torch import nn

from metaedge.train.config import DISTILL_TEMPERATURE, DISTILL_WEIGHT


class DistillError(ValueError):
    """The teacher or the run cannot be used for distillation; the message says why."""


class Distiller(nn.Module):
    """The learned map ``W`` (a registered parameter: trained, checkpointed and resumed with the method) and
    the teacher (frozen, not registered: it is neither trained nor saved with the student)."""

    def __init__(self, teacher, student_dim: int, *, embedding_weight: float = DISTILL_WEIGHT,
                 logit_weight: float = DISTILL_WEIGHT, temperature: float = DISTILL_TEMPERATURE):
        super().__init__()
        if embedding_weight < 0 or logit_weight < 0 or embedding_weight + logit_weight == 0:
            raise DistillError(f"distill weights: expected >= 0 and not both 0, got embeddings {embedding_weight}, "
                               f"logits {logit_weight}")
        if temperature <= 0:
            raise DistillError(f"distill temperature: expected > 0, got {temperature}")
        self._teacher = (teacher.eval().requires_grad_(False),)   # a tuple: not a submodule
        self.teacher_dim = int(teacher.spec.embedding_dim)
        self.project = nn.Linear(int(student_dim), self.teacher_dim)
        self.embedding_weight, self.logit_weight = float(embedding_weight), float(logit_weight)
        self.temperature = float(temperature)
        self._caches: dict[int, tuple] = {}   # id(data set) -> (data set, embeddings, which are known)

    @property
    def teacher(self):
        return self._teacher[0]

    # ------------------------------------------------------------------------------------ teacher side
    @torch.no_grad()
    def teacher_embeddings(self, data, indices: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Teacher embeddings of the images ``indices`` of ``data`` (a ``FewShotDataset``), computed on first
        use from the clean cached images pre-processed by the teacher's own spec."""
        if id(data) not in self._caches:
            self._caches[id(data)] = (data, torch.zeros(len(data), self.teacher_dim),
                                      torch.zeros(len(data), dtype=torch.bool))
        _, cache, known = self._caches[id(data)]
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        missing = indices[~known[indices]].unique()
        if len(missing):
            teacher = self.teacher
            device = next(teacher.parameters()).device
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                x = teacher.spec.preprocess.apply(data.raw_images(chunk))
                cache[chunk] = teacher(torch.as_tensor(x).to(device)).float().cpu()
            known[missing] = True
        return cache[indices]

    # ------------------------------------------------------------------------------------------ losses
    def embedding_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean ``1 - cos(W s - mean, t - mean)``, each side centred on its batch mean (a batch of one is left
        as it is: its centred embedding would be zero)."""
        projected = self.project(student.float())
        teacher = teacher.to(projected)
        if projected.shape[0] > 1:
            projected = projected - projected.mean(dim=0, keepdim=True)
            teacher = teacher - teacher.mean(dim=0, keepdim=True)
        return (1 - nn.functional.cosine_similarity(projected, teacher, dim=-1, eps=1e-6)).mean()

    def teacher_logits(self, teacher: torch.Tensor, n_support: int, support_labels: torch.Tensor,
                       ways: int) -> torch.Tensor:
        """The teacher's nearest-prototype logits of the queries (its metric; cosine scaled by 10, the
        scale a cosine ProtoNet starts from)."""
        from metaedge.train.methods.base import prototypes, squared_euclidean
        protos = prototypes(teacher[:n_support], support_labels, ways)
        queries = teacher[n_support:]
        if self.teacher.spec.metric == "euclidean":
            return -squared_euclidean(queries, protos)
        q = nn.functional.normalize(queries, dim=-1)
        p = nn.functional.normalize(protos, dim=-1)
        return 10.0 * q @ p.t() if self.teacher.spec.metric == "cosine" else queries @ protos.t()

    @staticmethod
    def standardized(logits: torch.Tensor) -> torch.Tensor:
        """Each row to mean 0, deviation 1 (a row of equal logits stays all zeros)."""
        logits = logits.float()
        centred = logits - logits.mean(dim=-1, keepdim=True)
        return centred / (centred.pow(2).mean(dim=-1, keepdim=True).sqrt() + 1e-6)

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = nn.functional.softmax(self.standardized(teacher_logits) / t, dim=-1)
        log_student = nn.functional.log_softmax(self.standardized(student_logits) / t, dim=-1)
        return nn.functional.kl_div(log_student, target.to(log_student), reduction="batchmean") * t * t

    def loss(self, student: torch.Tensor, teacher: torch.Tensor, *, student_logits: torch.Tensor | None = None,
             n_support: int = 0, support_labels: torch.Tensor | None = None, ways: int = 0) -> dict:
        """``{"total", "embedding", "logits"}`` for the student's and teacher's embeddings of the same images
        (support first, then queries, when ``n_support``; ``student_logits``: the student's query logits)."""
        out = {"embedding": self.embedding_loss(student, teacher)}
        total = self.embedding_weight * out["embedding"]
        if student_logits is not None and n_support and self.logit_weight > 0:
            t_logits = self.teacher_logits(teacher.to(student_logits.device), n_support, support_labels, ways)
            out["logits"] = self.logit_loss(student_logits, t_logits)
            total = total + self.logit_weight * out["logits"]
        out["total"] = total
        return out

    # ---------------------------------------------------------------------------------- in a training step
    def terms(self, model, batch, embeddings: torch.Tensor | None = None,
              episode_logits: torch.Tensor | None = None) -> dict | None:
        """The distillation losses of a training ``Batch`` (None: its images have no data set to look the
        teacher up in). ``embeddings``/``episode_logits``: the student's, from the method's own forward pass;
        without them the student embeds the batch's images itself (embedding term only)."""
        if batch.images_of is None or batch.indices is None:
            return None
        if embeddings is None:
            images = batch.query if batch.support is None else torch.cat([batch.support, batch.query])
            embeddings, episode_logits = model(images), None
        teacher = self.teacher_embeddings(batch.images_of, batch.indices)
        n_support = 0 if batch.support is None or episode_logits is None else int(batch.support.shape[0])
        return self.loss(embeddings, teacher.to(embeddings.device), student_logits=episode_logits,
                         n_support=n_support, support_labels=batch.support_labels, ways=batch.ways)

    def add_to(self, model, batch, out):
        """``out`` (a method's ``StepOutput``) with the distillation losses added to its loss and logged in its
        ``extra`` (``distill``, ``distill_embedding``, ``distill_logits``)."""
        found = self.terms(model, batch, out.embeddings, out.episode_logits)
        if found is None:
            return out
        return dataclasses.replace(out, loss=out.loss + found["total"], extra={**out.extra, **self.logged(found)})

    @staticmethod
    def logged(found: dict) -> dict[str, float]:
        return {("distill" if k == "total" else f"distill_{k}"): float(v.detach()) for k, v in found.items()}


def load_teacher(path: str, device=None):
    """The teacher ``EmbeddingModel`` from a checkpoint or run directory, frozen, in eval mode."""
    from metaedge.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
    try:
        teacher = load_checkpoint(find_checkpoint(path))
    except (CheckpointError, OSError) as exc:
        raise DistillError(f"distill_from (--distill-from): the teacher cannot be loaded: {exc}") from None
    return teacher.to(device or "cpu").eval().requires_grad_(False)


def build_distiller(config, student, data, device) -> Distiller | None:
    """The ``Distiller`` of a run (None without ``distill_from``), its teacher on ``device``; refuses runs it
    cannot serve, naming the option."""
    if not config.distill_from:
        return None
    if config.command != "train":
        raise DistillError(f"distill_from (--distill-from): distillation belongs to `metaedge train`, not to "
                           f"`metaedge {config.command}` (pretrain first, then train with --init and --distill-from)")
    if data.unlabelled:
        raise DistillError("distill_from (--distill-from): the training data has no labels; distil in a labelled "
                           "run (unlabelled images can join it with --unlabelled)")
    teacher = load_teacher(config.distill_from, device)
    try:
        return Distiller(teacher, student.spec.embedding_dim, embedding_weight=config.distill_weight,
                         logit_weight=config.distill_logit_weight,
                         temperature=config.distill_temperature).to(device)
    except DistillError as exc:
        raise DistillError(f"{exc} (--distill-weight, --distill-logit-weight, --distill-temperature)") from None
