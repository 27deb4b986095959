"""`python tools/bench/kernels_gpu.py [--help]` in a source checkout runs the suite that ships in the package:
metaedge/bench/kernels_gpu.py, as `python -m metaedge.bench.kernels_gpu` and `metaedge bench --suites kernels_gpu`
do."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from metaedge.bench.kernels_gpu import *  # noqa: E402,F401,F403 - imports from tools.bench.kernels_gpu keep working
from metaedge.bench.kernels_gpu import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
