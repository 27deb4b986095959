"""`python tools/bench/preprocess.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/preprocess.py, as `python -m metaedge.bench.preprocess` and `metaedge bench --suites preprocess` do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.preprocess import *  # noqa: E402,F401,F403 - imports from tools.bench.preprocess keep working
from metaedge.bench.preprocess import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
