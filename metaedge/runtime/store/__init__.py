"""The gallery store: enrolled classes shared by any number of processes, one SQLite database per gallery.

Modules (each one job): ``gallery`` (the :class:`Gallery`: opening, lock-free reads, catching up with other
processes, transactions), ``changes`` (enroll / forget / rename / adapt, one transaction each),
``calibration`` (the open-set record: calibration set, per-head thresholds, re-calibration after adapt),
``migrations`` (in-place upgrades of older store schemas),
``transfer`` (class packs, copies, conversion of old files), ``audit`` (who changed what), ``db`` (schema,
checked reads and writes of rows, the audit trail), ``checks`` (the range of every stored field), ``state``
(the immutable in-memory state and the class maths: running means, reservoir sampling), ``matrix`` (the
:class:`ClassMatrix` scoring snapshot and copy-on-write rows), ``notify`` (the memory-mapped change counter),
``packs`` (the class pack format), ``legacy`` (old single-file galleries), ``container`` (checked safetensors
files), ``files`` (the gallery's files on disk), ``labels`` and ``errors``. Design: docs/gallery.md.
"""
from metaedge.runtime.store.db import FORMAT, SCHEMA_VERSION
from metaedge.runtime.store.errors import (GalleryCorruptError, GalleryError, GalleryMismatchError,
                                           GalleryReadOnlyError, GalleryVersionError, GalleryWriteError,
                                           LabelConflictError, UnknownLabelError)
from metaedge.runtime.store.gallery import (CONFLICT_POLICIES, DEFAULT_SUPPORT_CAP, AuditEntry, Gallery, ImportReport,
                                            TrainingSet, default_actor)
from metaedge.runtime.store.labels import MAX_LABEL_LENGTH, check_label
from metaedge.runtime.store.matrix import ClassMatrix
from metaedge.runtime.store.state import ClassInfo

__all__ = ["Gallery", "ClassInfo", "ClassMatrix", "AuditEntry", "TrainingSet", "ImportReport", "GalleryError",
           "GalleryCorruptError", "GalleryMismatchError", "GalleryVersionError", "GalleryReadOnlyError",
           "GalleryWriteError", "UnknownLabelError", "LabelConflictError", "check_label", "default_actor",
           "SCHEMA_VERSION", "FORMAT", "MAX_LABEL_LENGTH", "DEFAULT_SUPPORT_CAP", "CONFLICT_POLICIES"]
