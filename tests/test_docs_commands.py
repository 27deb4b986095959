"""Every command in README.md and docs/*.md runs, in the order written, or is listed here with the reason it cannot
run on this machine - so the documentation never rots.

How it works. Each fenced block tagged ``bash`` or ``python`` is looked up in ``DOCS`` by its *fingerprint*: its
first line that is not blank and not an import, stripped. A block is one of
  ``Run(...)``      executed. One temporary working directory per document; the document's fixtures (``Doc.fixtures``,
                    made by the ``fixture_*`` helpers below) are created there first, then its blocks run in order.
                    Shell blocks run command by command (continuation lines joined, comment lines dropped) with
                    ``metaedge`` = ``python -m metaedge`` of this tree; every command must exit 0. Python blocks run
                    with this interpreter, after the block's declared ``prelude`` (names the text assumes, such as
                    ``frame``). ``skip={command: reason}`` leaves out single commands that need hardware.
  ``NotHere(reason, digest)``   needs what this machine lacks (a Jetson, TensorRT, docker, sudo, a camera, a GPU).
  ``Covered(by, digest)``       executed by another test (the README's Python tour: tests/test_readme.py).
  ``Excerpt(source, digest)``   a sketch of library code, not a command: the calls it names must exist in ``source``.
The ``digest`` of a block that is not run pins its text: when the text changes the test fails, so that whoever
changed it re-checks the reason (the message gives the new digest). Long budgets are shortened only through the
document's ``subs`` table (each entry must still match the text, or the test fails as stale). Plain ``` blocks are
output, trees and synopses, never commands: a block of commands needs a language tag.

Adding a document or a block: add ``DOCS["docs/new.md"] = Doc(...)`` / one entry in its ``blocks``; the test names
the fingerprint and the digest to use. Select these tests with ``pytest -k docs_commands``.
"""
from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
GENERATED = {"docs/api.md", "docs/cli.md"}   # references generated from the code (tests/test_docs.py, test_cli_help.py)
FENCE = re.compile(r"^```(\w*)\n(.*?)^```[ \t]*$", re.S | re.M)
COMMAND_TIMEOUT_S = 240


# ----------------------------------------------------------------------------------------------------------------------
# Classification

@dataclass(frozen=True)
class Run:
    prelude: str = ""                               # Python: names the block assumes (declared, not hidden)
    skip: dict = field(default_factory=dict)        # shell: {command as written (no comment): reason}


@dataclass(frozen=True)
class NotHere:
    reason: str
    digest: str


@dataclass(frozen=True)
class Covered:
    by: str
    digest: str


@dataclass(frozen=True)
class Excerpt:
    source: str
    digest: str


@dataclass(frozen=True)
class Doc:
    blocks: dict                                    # fingerprint -> Run | NotHere | Covered | Excerpt
    fixtures: tuple = ()                            # names of fixture_* helpers, made in the document's directory
    subs: tuple = ()                                # (text, replacement): shortened budgets, each must match


JETSON = "a Jetson: JetPack's system packages, sudo and its power tools"
TENSORRT = "TensorRT and a GPU (metaedge build makes a TensorRT engine): tools/gpu_check.sh runs it where they exist"

DOCS: dict[str, Doc] = {
    "README.md": Doc(
        fixtures=("bundle", "gallery", "shots"),
        blocks={
            "make demo   # sets up .venv (pinned versions), builds metaedge, runs the main job: train -> export -> "
            "enroll -> predict": Covered(
                "tests/test_readme.py::test_quick_start_is_two_make_targets_and_ci_runs_the_test_one (the targets), "
                "tests/test_demo.py (the demo) and .ci/run (make test is the suite itself)", "8377ec5b44fe"),
            "# Workstation: meta-train on base classes, measure on never-seen ones, export a bundle.": Covered(
                "tests/test_readme.py::test_python_tour_runs", "f9eaed9f47f1"),
            'with me.EdgeClassifier("bundle/", gallery="classes.metaedge", pixel_format="bgr") as clf:   # OpenCV '
            "frames": NotHere("an RTSP camera stream (clf.stream on a video file: tests/runtime/test_camera_frames.py)",
                              "f9c0c308b55e"),
            "python3 -m venv --system-site-packages ~/me && . ~/me/bin/activate   # sees JetPack's TensorRT": Run(skip={
                "python3 -m venv --system-site-packages ~/me && . ~/me/bin/activate": JETSON,
                "METAEDGE_CUDA=1 METAEDGE_CUDA_ARCHS=87 pip install --no-build-isolation '.[jetson]'":
                    "a Jetson (CUDA build for sm_87 into JetPack's Python); the sdist -> wheel -> fresh venv path is "
                    "tests/test_packaging.py",
                "metaedge build bundle/ --precision fp16": TENSORRT,
                "docker/jetson/build.sh jp6": "docker and a Jetson (tests/test_jetson_recipe.py checks the recipe)"}),
            "pip install 'metaedge[serve,video]'                       # FastAPI + uvicorn + prometheus-client (+ "
            "OpenCV)": Run(skip={
                "pip install 'metaedge[serve,video]'": "installing from an index (the extras are checked by "
                                                       "tests/test_packaging.py; this environment has them)",
                "metaedge serve bundle/ classes.metaedge --source /dev/video0 --host 0.0.0.0 --certfile cert.pem "
                "--keyfile key.pem --alert 'unknown_rate > 0.5 over 60s' --alert 'no_frames for 10s'":
                    "a V4L2 camera and a server left running (tests/serve/ start it on 127.0.0.1 with TLS, alerts and "
                    "a video-file source, and drive it with a real client and Chromium)"}),
        }),
    "docs/architecture.md": Doc(blocks={}),
    "docs/serve.md": Doc(
        blocks={
            'T="Authorization: Bearer $(cat ~/.metaedge-operator-token)"': Covered(
                "tests/serve/test_api.py and test_access.py: the same requests from a real HTTP client against a real "
                "server on 127.0.0.1 (this block needs a server left running and an operator token file)",
                "f98ae2357179"),
            "metaedge token create line-3 --role operator      # prints the token once: store it safely": Run(),
            'openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 -subj "/CN=device-7" \\':
                Covered("tests/serve/test_access.py::test_tls_with_a_self_signed_certificate (a certificate made in "
                        "the test, a real TLS server and client; this block needs the name device-7.local)",
                        "7b1f856e46be"),
        }),   # diagrams and a directory map only
    "docs/camera.md": Doc(
        fixtures=("bundle", "gallery", "video"),
        blocks={
            'clf = me.EdgeClassifier("bundle/", gallery="classes.metaedge")': NotHere(
                "a V4L2 camera at /dev/video0 (the same loop over a video file: tests/runtime/test_camera_frames.py)",
                "a1cffca09a00"),
            "metaedge predict bundle/ classes.metaedge --source video.mp4 --save out.mp4      # labels drawn on every "
            "frame": Run(skip={
                "metaedge predict bundle/ classes.metaedge --source /dev/video0 --roi 200,120,240,240 --smooth 5":
                    "a V4L2 camera at /dev/video0",
                "metaedge predict bundle/ classes.metaedge --source rtsp://cam.local/live --every 0.5s --json":
                    "an RTSP stream (tests/runtime/test_cli_camera.py serves one from a real RTSP server where "
                    "available)",
                "metaedge enroll bundle/ classes.metaedge mug --source /dev/video0 --shots 10 --every 0.5s --roi "
                "200,120,240,240": "a V4L2 camera at /dev/video0"}),
        }),
    "docs/compress.md": Doc(
        fixtures=("r18_run", "photos", "new_classes"),
        subs=(("--finetune 5m -o", "--finetune 5m --finetune-episodes 2 -o"),
              ("--data omniglot:/data/omniglot --backbone resnet12 --time-budget 20m",
               "--data synthetic --backbone resnet12 --backbone-option widths=[8,16,16,32] --episodes 2 --val-every 2 --val-episodes 2"),
              ("--data omniglot:/data/omniglot --backbone conv4 --time-budget 5m",
               "--data synthetic --backbone conv4 --episodes 2 --val-every 2 --val-episodes 2")),
        blocks={
            "metaedge export runs/r18/best -o bundle/ --int8                   # calibration + checks from the "
            "checkpoint's data": Run(),
            "metaedge compress runs/r18/best --prune 0.5 --finetune 5m -o runs/r18-p50": Run(),
            "metaedge train --data omniglot:/data/omniglot --backbone resnet12 --time-budget 20m --run-dir "
            "runs/teacher": Run(),
        }),
    "docs/gallery.md": Doc(
        fixtures=("bundle", "legacy_gallery"),
        blocks={
            'g = me.Gallery.open("classes.metaedge", embedding_dim=64, fingerprint=bundle.fingerprint)  # or '
            "EdgeClassifier(bundle, gallery=path)": Run(prelude=textwrap.dedent("""\
                import numpy as np
                import metaedge as me
                bundle = me.Bundle.load("bundle")
                embeddings = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
                more_embeddings = embeddings[:3] + 0.5
                other = me.Gallery.open("other.metaedge", embedding_dim=64, fingerprint=bundle.fingerprint)
                """)),
        }),
    "docs/guide_enroll.md": Doc(
        subs=(("--episodes 300 --val-every 150 --val-episodes 50", "--episodes 2 --val-every 2 --val-episodes 2"),),
        blocks={
            "# make_pngs.py: 3 test-split classes (never seen in training), 20 PNGs each, in glyphs/<class>/": Run(),
            "metaedge train --data synthetic --episodes 300 --val-every 150 --val-episodes 50 --run-dir run "
            "--no-progress": Run(),
            "for c in 0 1 2; do mkdir -p known/glyph_$c && cp glyphs/glyph_$c/1[5-9].png known/glyph_$c/; done": Run(),
            "metaedge enroll bundle classes.metaedge glyph_0 glyphs/glyph_0/0[0-4].png    # a new class from 5 images":
                Run(),
            'with me.EdgeClassifier("bundle", gallery="app.metaedge", backend="auto") as clf:': Run(),
        }),
    "docs/guide_pretrain.md": Doc(
        fixtures=("frames", "site_video", "unlabelled_list", "labelled"),
        subs=(("--time-budget 30m", "--episodes 1 --batch-size 8"),
              ("--episodes 2000", "--episodes 1 --val-episodes 2"),
              ("--episodes 4000", "--episodes 1 --val-episodes 2"),
              ("time_budget_s=1800", "episodes=1, batch_size=8"),
              ("episodes=2000", "episodes=1, val_episodes=2")),
        blocks={
            "metaedge pretrain --data folder:frames/ --size 84 --time-budget 30m --run-dir runs/pre      # every "
            "image under frames/": Run(),
            "metaedge train --data labelled/ --init runs/pre/last --episodes 2000 --run-dir runs/fewshot": Run(),
            "metaedge train --data labelled/ --unlabelled video:site.mp4 --frame-step 10 --unlabelled-ratio 0.5 "
            "--episodes 4000": Run(),
            'labelled = ImageFolderDataset("labelled/", split="train")            # class folders, 84x84 RGB': Run(),
        }),
    "docs/guide_train_folder.md": Doc(
        fixtures=("myimages",),
        subs=(("--episodes 40 --val-every 20 --val-episodes 20", "--episodes 2 --val-every 2 --val-episodes 2"),
              ("--resume frun --episodes 60", "--resume frun --episodes 3"),
              ("--queries 5 --episodes 50", "--queries 5 --episodes 3")),
        blocks={
            "metaedge train --data myimages --size 32 --color rgb --augment standard \\": Run(),
            "metaedge train --resume frun --episodes 60      # continue exactly; only the length and a few run "
            "options may change": Run(),
            "metaedge eval frun/best --ways 3 --shots 1 5 --queries 5 --episodes 50 --plot eval.png": Run(),
            "metaedge export frun/best -o fbundle --images myimages/parts/item_10": Run(),
        }),
    "docs/jetson.md": Doc(
        fixtures=("bundle",),
        blocks={
            "# TensorRT, CUDA and their Python bindings come with JetPack (system packages, not pip):": NotHere(
                JETSON, "47584a5ca132"),
            "metaedge info                  # JetPack, build (CUDA archs), CUDA devices or why not, backends + what to "
            "install": Run(),
            "docker/jetson/build.sh jp6            # Orin, JetPack 6: nvcr.io/nvidia/l4t-jetpack:r36.4.0, sm_87, "
            "NumPy 1.x": NotHere("docker with NVIDIA's container runtime on a Jetson (tests/test_jetson_recipe.py "
                                 "checks the recipe and builds its context)", "b8ef1ebe7931"),
            "metaedge build bundle/                       # fp16, batch 1..32, tuned for batch 1 (frame by frame)":
                NotHere(TENSORRT, "694e4788caea"),
            "sudo nvpmodel -q               # current power mode": NotHere(JETSON, "ad98bd9cbd94"),
        }),
    "docs/matching.md": Doc(
        blocks={
            'm = kernels.CompactClassMatrix(512, "cosine")   # or CompactClassMatrix.from_rows(rows, "cosine")': Run(
                prelude=textwrap.dedent("""\
                    import numpy as np
                    _rng = np.random.default_rng(0)
                    prototypes = _rng.standard_normal((100, 512)).astype(np.float32)
                    adapted_row = _rng.standard_normal(512).astype(np.float32)
                    queries = _rng.standard_normal((4, 512)).astype(np.float32)
                    """)),
        }),
    "docs/sdk.md": Doc(
        fixtures=("bundle", "bolt_images"),
        blocks={
            'with me.EdgeClassifier("bundle/", gallery="classes.metaedge", backend="auto") as clf:': Run(
                prelude=textwrap.dedent("""\
                    from metaedge.train.data import SyntheticGlyphs
                    _glyphs = SyntheticGlyphs("test")
                    def _shots(c, a, b):
                        return list(_glyphs.raw_images(_glyphs.class_indices(c)[a:b]))
                    more_images, nut_images = _shots(0, 5, 8), _shots(1, 0, 5)
                    held_out_bolts, held_out_nuts, background = _shots(0, 10, 15), _shots(1, 10, 15), _shots(2, 0, 5)
                    frame = _shots(0, 15, 16)[0]
                    batch = _shots(1, 15, 18)
                    """)),
            'pre = me.kernels.Preprocessor((28, 28), mean=0.0, std=1.0, color="gray")': Run(
                prelude=textwrap.dedent("""\
                    import numpy as np
                    import metaedge as me
                    from metaedge.runtime.backends import open_backend
                    backend = open_backend("bundle/")
                    class_matrix = np.random.default_rng(0).standard_normal((10, 64)).astype(np.float32)
                    frame = np.random.default_rng(1).integers(0, 256, (120, 160), dtype=np.uint8)   # a gray camera frame
                    """)),
        }),
    "docs/training.md": Doc(
        blocks={
            "while not session.agree(stop.reason(state) is not None):      # every rank stops together": Excerpt(
                "metaedge/train/loop.py", "f53d9443adf2"),
            'distill_from: str | None = option(None, "teacher checkpoint whose embeddings the student matches",': Run(
                prelude="from metaedge.train.config import option\n"),
        }),
}


# ----------------------------------------------------------------------------------------------------------------------
# Reading the documents

@dataclass
class Block:
    doc: str
    line: int
    lang: str
    text: str

    @property
    def fingerprint(self) -> str:
        lines = [ln.strip() for ln in self.text.splitlines() if ln.strip()]
        meaningful = [ln for ln in lines if not ln.startswith(("import ", "from "))]
        return (meaningful or lines or [""])[0]

    @property
    def digest(self) -> str:
        normalized = "\n".join(ln.rstrip() for ln in self.text.strip().splitlines())
        return hashlib.sha256(normalized.encode()).hexdigest()[:12]

    def where(self) -> str:
        return f"{self.doc}:{self.line} ({self.lang} block {self.fingerprint[:70]!r})"


def documents() -> list[str]:
    docs = ["README.md"] + sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))
    return [d for d in docs if d not in GENERATED]


def blocks_of(doc: str) -> list[Block]:
    text = (ROOT / doc).read_text()
    return [Block(doc, text[:m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in FENCE.finditer(text)]


def command_blocks(doc: str) -> list[Block]:
    return [b for b in blocks_of(doc) if b.lang in ("bash", "sh", "shell", "python")]


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comment-only lines and blanks dropped."""
    commands, current = [], ""
    for line in text.splitlines():
        if line.rstrip().endswith("\\"):
            current += line.strip()[:-1].strip() + " "
            continue
        current += line.strip()
        if current.strip() and not current.strip().startswith("#"):
            commands.append(current.strip())
        current = ""
    return commands


def without_comment(command: str) -> str:
    """A command without its trailing `  # comment` (a '#' after two spaces; none of ours quotes one)."""
    return re.split(r"\s{2,}#|\s#\s", command, maxsplit=1)[0].strip()


def classification_problems() -> list[str]:
    problems = []
    listed = set(DOCS)
    for doc in documents():
        if doc not in DOCS:
            fps = "\n".join(f"    {b.fingerprint!r}: Run() / NotHere(reason, {b.digest!r})," for b in command_blocks(doc))
            problems.append(f"{doc} is not in DOCS of tests/test_docs_commands.py: add\n  DOCS[{doc!r}] = Doc("
                            f"fixtures=(...), blocks={{\n{fps}\n  }})")
            continue
        listed.discard(doc)
        spec, seen = DOCS[doc], set()
        for block in command_blocks(doc):
            fp = block.fingerprint
            if fp in seen:
                problems.append(f"{block.where()}: two command blocks of {doc} start with the same line; make the "
                                "first line of one of them different so that each can be classified")
            seen.add(fp)
            entry = spec.blocks.get(fp)
            if entry is None:
                problems.append(
                    f"{block.where()} is neither run nor listed. In tests/test_docs_commands.py add to DOCS[{doc!r}]"
                    f".blocks either\n    {fp!r}: Run(),   (executed in order; add fixtures/prelude it assumes)\nor"
                    f"\n    {fp!r}: NotHere('what it needs that this machine lacks', {block.digest!r}),")
            elif not isinstance(entry, Run) and entry.digest != block.digest:
                problems.append(f"{block.where()} changed since it was classified as {type(entry).__name__} "
                                f"({getattr(entry, 'reason', None) or getattr(entry, 'by', None) or entry.source}): "
                                f"check that still holds, then set its digest to {block.digest!r}")
        for fp in set(spec.blocks) - seen:
            problems.append(f"{doc}: DOCS lists a block starting {fp!r} that the document no longer has: remove or "
                            "update the entry")
    problems += [f"{doc}: listed in DOCS but not a document any more" for doc in listed]
    return problems


def test_every_command_block_is_run_or_listed_docs_commands():
    problems = classification_problems()
    assert not problems, "\n\n".join(problems)


def test_excerpts_name_calls_that_exist_docs_commands():
    for doc, spec in DOCS.items():
        for block in command_blocks(doc):
            entry = spec.blocks.get(block.fingerprint)
            if isinstance(entry, Excerpt):
                source = (ROOT / entry.source).read_text()
                calls = set(re.findall(r"\b([a-z_]+\.[a-z_]+)\(", block.text))
                assert calls, block.where()
                missing = sorted(c for c in calls if f"{c}(" not in source)
                assert not missing, f"{block.where()} sketches {entry.source}, which has no {missing}"


def test_shell_parsing_joins_continuations_and_drops_comments_docs_commands():
    text = "# setup\nmetaedge train --a 1 \\\n    --b 2   # why\n\nmetaedge eval x  # y\n"
    assert shell_commands(text) == ["metaedge train --a 1 --b 2   # why", "metaedge eval x  # y"]
    assert without_comment("metaedge eval x  # y") == "metaedge eval x"
    assert without_comment("metaedge classes rename g a \"b c\"") == 'metaedge classes rename g a "b c"'


def test_a_new_block_fails_with_instructions_docs_commands(monkeypatch):
    real = blocks_of
    extra = Block("docs/sdk.md", 999, "bash", "metaedge frobnicate bundle/\n")
    monkeypatch.setitem(globals(), "blocks_of", lambda doc: real(doc) + ([extra] if doc == "docs/sdk.md" else []))
    problems = classification_problems()
    assert any("metaedge frobnicate bundle/" in p and "NotHere(" in p and "Run()" in p for p in problems)


# ----------------------------------------------------------------------------------------------------------------------
# Fixtures a document assumes but does not create (all small and generated: SyntheticGlyphs, numpy, OpenCV)

def _glyphs(split="test"):
    from metaedge.train.data import SyntheticGlyphs
    return SyntheticGlyphs(split)


def _save_glyph_images(folder: Path, c: int, count: int, suffix=".png", prefix=""):
    from PIL import Image
    g = _glyphs()
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(g.raw_images(g.class_indices(c)[:count])):
        Image.fromarray(image.squeeze(-1)).convert("RGB" if suffix == ".jpg" else "L").save(
            folder / f"{prefix}{i:02d}{suffix}")


def _colour_images(folder: Path, count: int, seed: int, shape=(48, 48)):
    """Distinct small RGB pictures (a coloured disc on a noisy background) - real decodable image files."""
    from PIL import Image, ImageDraw
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colour = tuple(int(v) for v in rng.integers(0, 256, 3))
    for i in range(count):
        pixels = rng.integers(0, 80, (*shape, 3), dtype=np.uint8)
        image = Image.fromarray(pixels)
        r = int(rng.integers(shape[0] // 5, shape[0] // 3))
        cx, cy = (int(v) for v in rng.integers(r, shape[0] - r, 2))
        ImageDraw.Draw(image).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
        image.save(folder / f"{i:02d}.png")


@pytest.fixture(scope="module")
def glyph_bundle(tmp_path_factory) -> Path:
    """A real conv4 ProtoNet bundle (SyntheticGlyphs, 28x28 gray, 64-dim euclidean), briefly trained and exported."""
    import metaedge as me
    out = tmp_path_factory.mktemp("docs_bundle") / "bundle"
    model = me.train.fit(backbone="conv4", method="protonet", data=_glyphs("train"), ways=5, shots=1, queries=5,
                         episodes=2, progress=False, tensorboard=False)
    me.export.export_bundle(model, out, overwrite=True)
    return out


def fixture_bundle(cwd: Path, bundle: Path):
    """bundle/: the conv4 glyph bundle."""
    shutil.copytree(bundle, cwd / "bundle")


def fixture_gallery(cwd: Path, bundle: Path):
    """classes.metaedge: three glyph classes enrolled with the bundle."""
    import metaedge as me
    g = _glyphs()
    with me.EdgeClassifier(cwd / "bundle", gallery=str(cwd / "classes.metaedge")) as clf:
        for c in range(3):
            clf.enroll(f"glyph_{c}", list(g.raw_images(g.class_indices(c)[:5])))


def fixture_shots(cwd: Path, bundle: Path):
    """shots/*.jpg: photos of one object."""
    _save_glyph_images(cwd / "shots", 3, 5, suffix=".jpg")


def fixture_bolt_images(cwd: Path, bundle: Path):
    """bolt1.jpg, bolt2.jpg, bolt3.jpg."""
    from PIL import Image
    g = _glyphs()
    for i, image in enumerate(g.raw_images(g.class_indices(0)[:3]), start=1):
        Image.fromarray(image.squeeze(-1)).convert("RGB").save(cwd / f"bolt{i}.jpg")


def fixture_video(cwd: Path, bundle: Path):
    """video.mp4: 20 frames of glyphs on a 120x160 scene, encoded with OpenCV."""
    _write_video(cwd / "video.mp4", frames=20)


def fixture_site_video(cwd: Path, bundle: Path):
    """site.mp4: 100 frames of a drifting scene (the deployment site's camera), encoded with OpenCV."""
    _write_video(cwd / "site.mp4", frames=100)


def _write_video(path: Path, frames: int):
    import cv2
    g = _glyphs()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (160, 120))
    assert writer.isOpened(), "OpenCV cannot write mp4v here"
    rng = np.random.default_rng(0)
    for i in range(frames):
        scene = np.full((120, 160, 3), 255, np.uint8)
        scene[:, :, int(rng.integers(0, 3))] = 200
        glyph = g.raw_images(g.class_indices(i // 5 % 3)[:1])[0]
        big = np.kron(glyph.squeeze(-1), np.ones((3, 3), np.uint8))            # 84x84
        y, x = 18, 20 + (i % 10) * 4
        scene[y:y + 84, x:x + 84] = big[..., None]
        writer.write(scene)
    writer.release()


def fixture_frames(cwd: Path, bundle: Path):
    """frames/: 24 unlabelled pictures from a site camera."""
    _colour_images(cwd / "frames", 12, seed=1, shape=(96, 96))
    _colour_images(cwd / "frames" / "cam2", 12, seed=2, shape=(96, 96))


def fixture_unlabelled_list(cwd: Path, bundle: Path):
    """unlabelled.txt: image paths relative to the file (and the images)."""
    _colour_images(cwd / "unlabelled", 12, seed=3, shape=(64, 64))
    (cwd / "unlabelled.txt").write_text("".join(f"unlabelled/{i:02d}.png\n" for i in range(12)))


def fixture_labelled(cwd: Path, bundle: Path):
    """labelled/: 40 class folders of 16 images (enough for 5-way training and 5-way validation on 15 %)."""
    for c in range(40):
        _colour_images(cwd / "labelled" / f"object_{c:02d}", 16, seed=100 + c, shape=(32, 32))


def fixture_myimages(cwd: Path, bundle: Path):
    """myimages/: the page's tree - groups tools/ and parts/, 20 classes item_00..item_19 of 12 images."""
    for c in range(20):
        group = "tools" if c < 10 else "parts"
        _colour_images(cwd / "myimages" / group / f"item_{c:02d}", 12, seed=200 + c, shape=(40, 40))


def fixture_r18_run(cwd: Path, bundle: Path):
    """runs/r18/: a run of `metaedge train` (a small conv4 on synthetic glyphs; the page's resnet18 stands for
    any backbone), so that its checkpoint records the training data the INT8 calibration and compress reuse."""
    proc = subprocess.run([sys.executable, "-m", "metaedge", "train", "--data", "synthetic", "--episodes", "3",
                           "--val-every", "3", "--val-episodes", "2", "--run-dir", "runs/r18", "--no-progress"],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]


def fixture_photos(cwd: Path, bundle: Path):
    """photos/: 30 unlabelled images of the domain (INT8 calibration)."""
    for c in range(6):
        _save_glyph_images(cwd / "photos", c, 5, prefix=f"class{c}_")


def fixture_new_classes(cwd: Path, bundle: Path):
    """new_classes/: 6 class folders never seen in training (the INT8 held-out check)."""
    for c in range(6):
        _save_glyph_images(cwd / "new_classes" / f"glyph_{c}", c, 6)


def fixture_legacy_gallery(cwd: Path, bundle: Path):
    """old-classes.metaedge: a gallery written by metaedge 0.1 (the schema-1 file of the gallery tests)."""
    shutil.copy(ROOT / "tests" / "runtime" / "data" / "legacy_v1.metaedge", cwd / "old-classes.metaedge")


FIXTURES = {name.removeprefix("fixture_"): fn for name, fn in globals().items() if name.startswith("fixture_")}


def test_declared_fixtures_exist_docs_commands():
    for doc, spec in DOCS.items():
        unknown = [f for f in spec.fixtures if f not in FIXTURES]
        assert not unknown, f"{doc} declares fixtures {unknown}; there are {sorted(FIXTURES)}"


# ----------------------------------------------------------------------------------------------------------------------
# Running a document

def _environment(bin_dir: Path) -> dict:
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "PYTHONPATH": str(ROOT),
           "MPLBACKEND": "Agg", "METAEDGE_TOKENS": str(bin_dir / "tokens.json")}  # never the user's token store
    env.pop("METAEDGE_DEBUG", None)
    return env


def _shim(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "metaedge"
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m metaedge "$@"\n')
    shim.chmod(0o755)
    return bin_dir


def _substitute(text: str, subs, used: dict) -> str:
    for old, new in subs:
        used[old] += text.count(old)
        text = text.replace(old, new)
    return text


def _fail(block: Block, what: str, proc) -> str:
    return (f"{block.where()}: {what} exited {proc.returncode}\n--- stdout (tail)\n{proc.stdout[-2500:]}"
            f"\n--- stderr (tail)\n{proc.stderr[-2500:]}\nIf the documentation is wrong, fix the document; if the "
            "command needs hardware this machine lacks, list it in tests/test_docs_commands.py.")


def run_document(doc: str, cwd: Path, bundle: Path) -> list[str]:
    """Run the document's blocks in order in cwd; returns what ran (for the report)."""
    spec = DOCS[doc]
    env = _environment(_shim(cwd.parent))
    for name in spec.fixtures:
        FIXTURES[name](cwd, bundle)
    used = {old: 0 for old, _ in spec.subs}
    ran, skipped_seen = [], set()
    for block in command_blocks(doc):
        entry = spec.blocks[block.fingerprint]
        if not isinstance(entry, Run):
            continue
        if block.lang == "python":
            assert not entry.skip, f"{block.where()}: skip= is for shell commands"
            code = entry.prelude + _substitute(block.text, spec.subs, used)
            started = time.monotonic()
            proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                                  timeout=COMMAND_TIMEOUT_S)
            assert proc.returncode == 0, _fail(block, "the Python block", proc)
            ran.append((f"python: {block.fingerprint[:60]}", time.monotonic() - started))
            continue
        for command in shell_commands(block.text):
            bare = without_comment(command)
            if bare in entry.skip:
                skipped_seen.add(bare)
                continue
            command = _substitute(bare, spec.subs, used)
            started = time.monotonic()
            proc = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=cwd, env=env, capture_output=True,
                                  text=True, timeout=COMMAND_TIMEOUT_S)
            assert proc.returncode == 0, _fail(block, repr(command), proc)
            ran.append((command, time.monotonic() - started))
        stale = set(entry.skip) - skipped_seen
        assert not stale, f"{block.where()}: skip= lists commands the block no longer has: {sorted(stale)}"
    stale = [old for old, n in used.items() if n == 0]
    assert not stale, f"{doc}: substitutions {stale} match nothing any more: remove or update them in DOCS"
    return ran


RUNNABLE = [doc for doc, spec in DOCS.items() if any(isinstance(e, Run) for e in spec.blocks.values())]


@pytest.mark.slow
@pytest.mark.parametrize("doc", RUNNABLE)
def test_document_commands_run_docs_commands(doc, glyph_bundle, tmp_path):
    problems = [p for p in classification_problems() if p.startswith(doc)]
    assert not problems, "\n\n".join(problems)
    cwd = tmp_path / "work"
    cwd.mkdir()
    ran = run_document(doc, cwd, glyph_bundle)
    assert ran, f"{doc}: nothing ran"
    print("\n".join(f"{seconds:6.1f} s  {what}" for what, seconds in ran))   # shown with -rP: where the time goes
