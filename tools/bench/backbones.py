"""`python tools/bench/backbones.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/backbones.py, as `python -m metaedge.bench.backbones` and `metaedge bench --suites backbones` do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.backbones import *  # noqa: E402,F401,F403 - imports from tools.bench.backbones keep working
from metaedge.bench.backbones import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
