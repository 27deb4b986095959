"""The gallery API under its established import path; the implementation lives in :mod:`metaedge.runtime.store`."""
from metaedge.runtime.store import *  # noqa: F401,F403
from metaedge.runtime.store import __all__  # noqa: F401
