"""`metaedge build`: the TensorRT engine of a bundle for this GPU, built once and cached in bundle/engines/."""
from __future__ import annotations

import logging


def register(sub) -> None:
    p = sub.add_parser(
        "build", help="build (or find cached) the TensorRT engine of a bundle for this GPU",
        description="Build the TensorRT engine for BUNDLE on this GPU and cache it in BUNDLE/engines/, keyed by "
                    "the ONNX sha256, TensorRT and CUDA versions, GPU and compute capability, precision and batch "
                    "range. A cached engine is reused; one built elsewhere or for another model is rebuilt, and the "
                    "log says why. Takes minutes on a Jetson (progress is printed); needs TensorRT and a CUDA build "
                    "of metaedge. On TensorRT 11, fp16 needs a bundle exported with --fp16-onnx.")
    p.add_argument("bundle", help="bundle directory (from `metaedge export`)")
    p.add_argument("--precision", choices=("fp16", "fp32", "int8", "auto"), default="fp16",
                   help="engine precision (default fp16; auto = fp16 when this TensorRT can build it, else fp32; "
                        "int8 = from the bundle's Q/DQ model, `metaedge export --int8`: explicit quantisation, "
                        "not yet verified on hardware)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N", help="largest batch the engine takes (32)")
    p.add_argument("--opt-batch", type=int, default=None, metavar="N",
                   help="batch size the kernels are tuned for (default 1: frame-by-frame latency)")
    p.add_argument("--workspace-mib", type=int, default=1024, metavar="MIB",
                   help="TensorRT scratch memory limit during the build (default 1024)")
    p.add_argument("--force", action="store_true", help="rebuild even if a valid engine is cached")
    p.add_argument("-v", "--verbose", action="store_true", help="show TensorRT's info messages")
    p.set_defaults(func=run)


def run(args) -> int:
    from metaedge.cli.main import CliError
    from metaedge.export.tensorrt import EngineBuildError, build_engine
    from metaedge.runtime.bundle import BundleError
    from metaedge.runtime.engine_cache import EngineCacheError
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    logging.getLogger("metaedge").setLevel(logging.INFO)
    try:
        path = build_engine(args.bundle, precision=args.precision, max_batch=args.max_batch,
                            opt_batch=args.opt_batch, workspace_mib=args.workspace_mib, force=args.force,
                            verbose=args.verbose)
    except (EngineBuildError, BundleError, EngineCacheError, ValueError) as exc:
        raise CliError(str(exc), 1) from None
    print(path)
    return 0
