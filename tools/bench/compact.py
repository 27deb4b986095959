"""Kept for `from tools.bench.compact import ...` in a source checkout: the module is metaedge/bench/compact.py."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.compact import *  # noqa: E402,F401,F403
