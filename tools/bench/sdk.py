"""`python tools/bench/sdk.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/sdk.py, as `python -m metaedge.bench.sdk` and `metaedge bench --suites sdk` do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.sdk import *  # noqa: E402,F401,F403 - imports from tools.bench.sdk keep working
from metaedge.bench.sdk import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
