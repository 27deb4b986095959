"""`python tools/bench/gallery.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/gallery.py, as `python -m metaedge.bench.gallery` and `metaedge bench --suites gallery` do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.gallery import *  # noqa: E402,F401,F403 - imports from tools.bench.gallery keep working
from metaedge.bench.gallery import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
