"""Frames that are already on the GPU - jetson-utils, torch, CuPy - go to metaedge without a copy.

Anything with ``__cuda_array_interface__`` is read in place (row pitch included) by metaedge's CUDA
pre-processing when the classifier's backend runs on the GPU (TensorRT, ONNX Runtime CUDA); with a CPU backend
the frame is copied to the host once. OpenCV frames on the host are BGR: say so instead of converting them.

    python examples/gpu_frames.py BUNDLE GALLERY [--source csi://0]
"""
import argparse

import metaedge as me

parser = argparse.ArgumentParser()
parser.add_argument("bundle"), parser.add_argument("gallery")
parser.add_argument("--source", default="csi://0")
args = parser.parse_args()

clf = me.EdgeClassifier(args.bundle, gallery=args.gallery)
print("pre-processing on", clf.pipeline.device, "-", clf.backend.describe())

try:  # 1. jetson-utils (dusty-nv/jetson-utils): cudaImage frames in GPU memory, zero copy
    from jetson_utils import videoSource
    camera = videoSource(args.source, options={"colorspace": "rgb8"})  # e.g. csi://0, /dev/video0, rtsp://...
    for _ in range(100):
        image = camera.Capture()                     # a cudaImage: rgb8 by default (rgba8 for "rgba")
        if image is None:                            # a capture timeout
            continue
        pred = clf.predict(image, pixel_format="rgb")  # read through __cuda_array_interface__
        print(pred.label, round(pred.score, 3), "unknown" if pred.unknown else "")
except ImportError:
    print("jetson-utils not installed (it comes with jetson-inference); showing torch and OpenCV instead")

try:  # 2. torch (or CuPy): a CUDA tensor [h, w, 3] uint8
    import torch
    if torch.cuda.is_available():
        frame = torch.randint(0, 256, (480, 640, 3), dtype=torch.uint8, device="cuda")
        print(clf.predict(frame, pixel_format="rgb", roi=(160, 80, 320, 320)))
except ImportError:
    pass

import cv2  # noqa: E402  3. OpenCV on the host: BGR frames, taken as they are (no cvtColor, no copy)
capture = cv2.VideoCapture(0)
ok, bgr = capture.read()
if ok:
    print(clf.predict(bgr, pixel_format="bgr"))
