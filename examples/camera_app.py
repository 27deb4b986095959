"""A camera app: enroll an object from the camera, then recognise it in every frame, with an overlay.

    python examples/camera_app.py BUNDLE GALLERY --source /dev/video0 --roi 200,120,240,240 --enroll mug
    python examples/camera_app.py BUNDLE GALLERY --source video.mp4 --save out.mp4
"""
import argparse

import metaedge as me
from metaedge.video import VideoWriter, draw_predictions, open_source, to_bgr

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("bundle"), parser.add_argument("gallery")
parser.add_argument("--source", default="/dev/video0", help="camera, video file, folder or stream URI")
parser.add_argument("--roi", type=lambda s: tuple(map(int, s.split(","))), help="x,y,w,h of the object")
parser.add_argument("--enroll", metavar="LABEL", help="first capture 10 shots of LABEL (hold it in the box)")
parser.add_argument("--save", metavar="OUT.mp4", help="write the frames with the predictions drawn on")
args = parser.parse_args()

with me.EdgeClassifier(args.bundle, gallery=args.gallery) as clf, open_source(args.source) as source:
    if args.enroll:  # in-field enrollment: the next 10 frames of the camera are the shots
        shots = [frame.pixels for _, frame in zip(range(10), source)]
        clf.enroll(args.enroll, shots, roi=args.roi, pixel_format=source.pixel_format)
    writer = VideoWriter(args.save, fps=source.fps or 30) if args.save else None
    for result in clf.stream(source, roi=args.roi, smooth=5):  # the newest frame each time, labels smoothed
        print(result.frame.index, *(f"{p.label} {p.score:.2f}{' (unknown)' * p.unknown}" for p in result.predictions))
        if writer:
            writer.write(draw_predictions(to_bgr(result.frame), list(result.predictions), args.roi, fps=result.fps))
    if writer:
        writer.close()
