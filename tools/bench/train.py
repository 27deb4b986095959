"""`python tools/bench/train.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/train.py, as `python -m metaedge.bench.train` and `metaedge bench --suites train` do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.train import *  # noqa: E402,F401,F403 - imports from tools.bench.train keep working
from metaedge.bench.train import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
