"""Misuses of the public API that mypy must report (tests/test_typing.py expects an error on each line marked
`# E:`): proof that the check sees real signatures, not Any. Never run."""
from __future__ import annotations

import metaedge as me

me.EdgeClassifier("bundle/", galery="classes.metaedge")  # E: Unexpected keyword argument "galery"
me.kernels.topk()  # E: Missing positional arguments
me.NoSuchThing  # E: has no attribute "NoSuchThing"
clf: me.EdgeClassifier = me.Bundle  # E: Incompatible types in assignment
me.train.fit(backbone=4)  # E: Argument "backbone" to "fit" has incompatible type "int"
me.export.build_engine("bundle/", precision=16)  # E: Argument "precision" to "build_engine" has incompatible type
version: int = me.__version__  # E: Incompatible types in assignment
