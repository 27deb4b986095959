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
    q = p.add_argument_group(
        "INT8 (post-training quantisation; see the README's INT8 section)",
        "--int8 adds model.int8.onnx (ONNX Runtime CPUs: uint8 activations) and model.int8.trt.onnx (TensorRT: "
        "symmetric int8), both Q/DQ with per-channel weights, calibrated on images pre-processed exactly as on the "
        "device. Their embeddings are compared with fp32 (cosine) and both are evaluated on held-out classes "
        "(paired few-shot episodes, 95%% CI); the numbers go into the manifest and a loss past the tolerances "
        "fails the export. Layers that lose too much stay in float (per-layer sensitivity, recorded).")
    q.add_argument("--int8", action="store_true", help="also write and verify the INT8 models")
    q.add_argument("--calibrate", metavar="IMAGES",
                   help="calibration images: a directory, a .zip or an image file (default: the training data "
                        "recorded in the checkpoint)")
    q.add_argument("--calib-images", type=int, default=512, metavar="N",
                   help="at most N calibration images, spread over the set (default 512)")
    q.add_argument("--calib-method", choices=("minmax", "percentile", "entropy"), default="minmax",
                   help="how activation ranges are set from the calibration images (default minmax)")
    q.add_argument("--heldout", metavar="DIR",
                   help="held-out classes for the accuracy check: a directory with one sub-folder of images per "
                        "class (default: classes of the checkpoint's data source it did not train on)")
    q.add_argument("--int8-for", default="cpu,tensorrt", metavar="cpu,tensorrt",
                   help="which INT8 files to write (default both)")
    q.add_argument("--int8-max-loss", type=float, default=1.0, metavar="POINTS",
                   help="fail when INT8 5-way 1-shot accuracy is more than POINTS below fp32 (default 1.0)")
    q.add_argument("--int8-min-cosine", type=float, default=0.95, metavar="C",
                   help="fail when the mean fp32/INT8 embedding cosine is below C (default 0.95)")
    q.add_argument("--int8-target-cosine", type=float, default=0.99, metavar="C",
                   help="layers go back to float, most sensitive first, until the mean cosine reaches C "
                        "(default 0.99)")
    q.add_argument("--int8-sensitivity", choices=("auto", "always", "never"), default="auto",
                   help="measure per-layer sensitivity: auto = when the all-INT8 model misses the target (default)")
    q.add_argument("--int8-episodes", type=int, default=600, metavar="N",
                   help="paired episodes of the accuracy check (default 600)")
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
        model = load_checkpoint(args.checkpoint)
        int8 = _int8_options(args, model) if args.int8 else None
        bundle = export_bundle(model, args.out, fp16_onnx=args.fp16_onnx, images=args.images,
                               num_images=args.num_images, tolerance=args.tolerance, overwrite=args.force,
                               progress=print, int8=int8)
    except (ExportError, CheckpointError, BundleError, ValueError) as exc:
        raise CliError(str(exc), 1) from None
    if args.json:
        print(json.dumps(bundle.manifest, indent=2))
    else:
        print(f"next: `metaedge info --bundle {args.out}`; on the device `metaedge build {args.out}` "
              "(TensorRT) or use it directly with ONNX Runtime")
    return 0


def _int8_options(args, model):
    """``Int8Options`` from the flags; calibration and held-out images default to the checkpoint's own data."""
    from metaedge.cli._checkpoint_data import heldout_data, labelled_images, spread_images, training_data
    from metaedge.cli.main import CliError
    from metaedge.export.quantize import Int8Options
    if args.calib_images < 1 or args.int8_episodes < 1:
        raise CliError("--calib-images and --int8-episodes: expected >= 1")
    meta = getattr(model, "checkpoint_meta", None) or {}
    calibration = args.calibrate
    if calibration is None:
        train = training_data(meta)
        calibration = spread_images(train, args.calib_images)
        print(f"INT8 calibration: {len(calibration)} images of the training data ({train!r})")
    heldout, note = args.heldout, None
    if heldout is None:
        data, note = heldout_data(meta, model.spec.preprocess)
        if data is None:
            print(f"INT8: no held-out classes ({note}); only the embedding cosine is checked - give --heldout DIR "
                  "for the accuracy check")
        else:
            heldout = labelled_images(data)
    targets = tuple(t for t in (s.strip() for s in args.int8_for.split(",")) if t)
    return Int8Options(calibration=calibration, calib_images=args.calib_images, heldout=heldout,
                       heldout_description=note, targets=targets, calibrate_method=args.calib_method,
                       min_cosine=args.int8_min_cosine, max_loss_points=args.int8_max_loss,
                       target_cosine=args.int8_target_cosine, episodes=args.int8_episodes,
                       sensitivity={"auto": "auto", "always": True, "never": False}[args.int8_sensitivity])
