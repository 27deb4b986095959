"""`python tools/bench/serve.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/serve.py, as `python -m metaedge.bench.serve` and `metaedge bench --suites serve` do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.serve import *  # noqa: E402,F401,F403 - imports from tools.bench.serve keep working
from metaedge.bench.serve import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
