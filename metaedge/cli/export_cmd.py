"""`metaedge export`: a training checkpoint -> a verified bundle for the device."""
from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser(
        "export", help="export a checkpoint to a verified ONNX bundle for the device",
        description="Export a checkpoint (the directory `metaedge train` wrote, with model.json and "
                    "model.safetensors) to a bundle: model.onnx (opset 18, dynamic batch) + manifest.json with the "
                    "model's input and every pre-processing step of its training data. The ONNX is checked "
                    "(onnx.checker, shape inference, opset) and compared with torch on seeded random inputs and, "
                    "with --images, on real images pre-processed as on the device; an fp32 difference above "
                    "--tolerance fails the export with the numbers. Needs torch, onnx, onnxscript, onnxruntime.")
    p.add_argument("checkpoint", help="checkpoint directory (or its model.json)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--images", metavar="PATH",
                   help="real images for the parity check: a directory, a .zip of images or one image file")
    p.add_argument("--num-images", type=int, default=32, metavar="N",
                   help="at most N of those images, spread over the set (default 32)")
    p.add_argument("--fp16-onnx", action="store_true",
                   help="also write model.fp16.onnx (fp16 maths, fp32 I/O): what TensorRT 11 builds fp16 engines from")
    p.add_argument("--tolerance", type=float, default=1e-4, metavar="ABS",
                   help="largest allowed fp32 |ONNX - torch| (default 1e-4)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle in DIR")
    p.add_argument("--json", action="store_true", help="print the manifest as JSON when done")
    p.set_defaults(func=run)


def run(args) -> int:
    from metaedge.cli.main import CliError
    from metaedge.export.onnx import ExportError, export_bundle
    from metaedge.runtime.bundle import BundleError
    try:
        from metaedge.train.checkpoint import CheckpointError
    except ImportError:
        CheckpointError = ExportError  # noqa: N806 - torch missing: export_bundle raises the install hint
    if args.num_images < 1:
        raise CliError(f"--num-images: expected >= 1, got {args.num_images}")
    try:
        from metaedge.train.checkpoint import load_checkpoint
        bundle = export_bundle(load_checkpoint(args.checkpoint), args.out, fp16_onnx=args.fp16_onnx, images=args.images,
                               num_images=args.num_images, tolerance=args.tolerance, overwrite=args.force,
                               progress=print)
    except (ExportError, CheckpointError, BundleError, ValueError) as exc:
        raise CliError(str(exc), 1) from None
    if args.json:
        print(json.dumps(bundle.manifest, indent=2))
    else:
        print(f"next: `metaedge info --bundle {args.out}`; on the device `metaedge build {args.out}` "
              "(TensorRT) or use it directly with ONNX Runtime")
    return 0
