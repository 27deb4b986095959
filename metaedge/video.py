"""``metaedge.video``: frame sources and video output for device apps (see ``metaedge.runtime.video``)."""
from metaedge.runtime.video import *  # noqa: F401,F403
from metaedge.runtime.video import __all__  # noqa: F401
