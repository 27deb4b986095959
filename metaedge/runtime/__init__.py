"""The device side of metaedge: bundles, inference backends, galleries and the EdgeClassifier.

Imports numpy, metaedge.kernels and one backend; never torch (a test enforces it)."""
