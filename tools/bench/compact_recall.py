"""`python tools/bench/compact_recall.py [--help]` in a source checkout runs metaedge/bench/compact_recall.py (the
same as `python -m metaedge.bench.compact_recall`; it needs Omniglot and trains a backbone, so `metaedge bench`
does not run it)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.compact_recall import *  # noqa: E402,F401,F403
from metaedge.bench.compact_recall import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
