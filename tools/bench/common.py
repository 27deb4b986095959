"""Kept for `from tools.bench.common import ...` in a source checkout: the module is metaedge/bench/common.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.common import *  # noqa: E402,F401,F403
