"""matplotlib for PNG plots without a display, imported on first use; missing, it says what to install."""
from __future__ import annotations

from metaedge._optional import require

__all__ = ["pyplot"]


def pyplot(feature: str = "plotting"):
    """``matplotlib.pyplot`` on the Agg backend (files, no display), or MissingDependencyError naming ``feature``
    and the install line."""
    matplotlib = require("matplotlib", feature)
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt
