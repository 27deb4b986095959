"""Knowledge distillation: a small backbone (the student) learns to embed like a bigger trained one (the
teacher) while it meta-trains - so a device runs the small network with more of the big one's accuracy.

Two terms are added to the student's own loss (``metaedge train --distill-from TEACHER``):

* **embeddings**: ``1 - cos(W s, t)`` per image, where ``s`` is the student's embedding, ``t`` the teacher's and
  ``W`` a linear map learned with the student (their sizes differ; FitNets-style). ``W`` is used only in
  training: the exported student keeps its own embedding.
* **episode logits**: the teacher classifies the episode's queries by its own prototypes (its metric), the
  student by its own; ``T^2 KL(softmax(teacher / T) || softmax(student / T))`` (Hinton et al.) - the relations
  between the classes of an episode, which is what a few-shot device uses. Episodic methods whose support and
  query go through the backbone as one batch (ProtoNet) get this term; others (the Baseline) the first only.

Teacher embeddings are computed once per training image, on the clean (un-augmented) image pre-processed by
the *teacher's* spec, and cached: the teacher costs one pass over the images that training actually draws,
not a forward pass per step, so a distilled student gets nearly the episodes an undistilled one gets in the
same wall time. (The cache holds ``images x teacher dim`` float32: 21,760 Omniglot images x 512 = 45 MB.)
"""
from __future__ import annotations

import torch
from torch import nn


class DistillError(ValueError):
    """The teacher or the run cannot be used for distillation; the message says why."""


class Distiller(nn.Module):
    """The learned map ``W`` (a registered parameter: trained, checkpointed and resumed with the method) and
    the teacher (frozen, not registered: it is neither trained nor saved with the student)."""

    def __init__(self, teacher, student_dim: int, *, embedding_weight: float = 1.0, logit_weight: float = 1.0,
                 temperature: float = 4.0):
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
        self._cache: torch.Tensor | None = None
        self._known: torch.Tensor | None = None

    @property
    def teacher(self):
        return self._teacher[0]

    # ------------------------------------------------------------------------------------ teacher side
    @torch.no_grad()
    def teacher_embeddings(self, data, indices: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Teacher embeddings of the images ``indices`` of ``data`` (a ``FewShotDataset``), computed on first
        use from the clean cached images pre-processed by the teacher's own spec."""
        if self._cache is None or len(self._cache) != len(data):
            self._cache = torch.zeros(len(data), self.teacher_dim)
            self._known = torch.zeros(len(data), dtype=torch.bool)
        indices = torch.as_tensor(indices, dtype=torch.int64).cpu()
        missing = indices[~self._known[indices]].unique()
        if len(missing):
            teacher = self.teacher
            device = next(teacher.parameters()).device
            for start in range(0, len(missing), batch_size):
                chunk = missing[start:start + batch_size]
                x = teacher.spec.preprocess.apply(data.raw_images(chunk))
                self._cache[chunk] = teacher(torch.from_numpy(x).to(device)).float().cpu()
            self._known[missing] = True
        return self._cache[indices]

    # ------------------------------------------------------------------------------------------ losses
    def embedding_loss(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """Mean ``1 - cos(W s, t)``."""
        projected = self.project(student.float())
        return (1 - nn.functional.cosine_similarity(projected, teacher.to(projected), dim=-1)).mean()

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

    def logit_loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        t = self.temperature
        target = nn.functional.softmax(teacher_logits.float() / t, dim=-1)
        log_student = nn.functional.log_softmax(student_logits.float() / t, dim=-1)
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


def load_teacher(path: str, device=None):
    """The teacher ``EmbeddingModel`` from a checkpoint or run directory, frozen, in eval mode."""
    from metaedge.train.checkpoint import CheckpointError, find_checkpoint, load_checkpoint
    try:
        teacher = load_checkpoint(find_checkpoint(path))
    except CheckpointError as exc:
        raise DistillError(f"distill_from: {exc}") from None
    return teacher.to(device or "cpu").eval().requires_grad_(False)
