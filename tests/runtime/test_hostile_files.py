"""Every file the device reads is hostile input: images, bundle manifests and models, engine sidecars and plans.
Special files are refused without blocking, sizes are bounded before reading, JSON depth before parsing, pixels
before decoding; an edited manifest is refused naming the field, and so is a manifest whose input does not match
the model. (Gallery files: test_gallery_files.py.)"""
import io
import json
import os
import resource
import shutil
import struct
import time
import zlib

import numpy as np
import pytest

from metaedge.runtime.bundle import Bundle, BundleError, compute_fingerprint, write_manifest
from metaedge.runtime.images import ImageError, load_images, max_pixels, set_max_pixels
from tests.runtime.fs import within

pytest.importorskip("onnx")
PIL = pytest.importorskip("PIL.Image")


@pytest.fixture
def bundle(tmp_path):
    from tests.runtime.bundles import make_bundle
    return make_bundle(tmp_path / "bundle")


def png_bomb(width: int, height: int) -> bytes:
    """A valid gray PNG of width x height black pixels, compressed row by row (never held decoded)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    z = zlib.compressobj(9)
    row = bytes(width + 1)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# ------------------------------------------------------------------------------------------ images
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_a_fifo_or_device_given_as_an_image_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "camera.png")
    with pytest.raises(ImageError, match="camera.png.*FIFO"):
        within(5, lambda: load_images(str(tmp_path / "camera.png")))
    with pytest.raises(ImageError, match="character device"):
        within(5, lambda: load_images("/dev/zero"))


def test_a_pixel_bomb_is_refused_before_decoding(tmp_path):
    bomb = png_bomb(12000, 12000)  # 144 megapixels in a few hundred KB
    assert len(bomb) < 1_000_000
    (tmp_path / "bomb.png").write_bytes(bomb)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for source in (str(tmp_path / "bomb.png"), bomb):
        with pytest.raises(ImageError, match=r"12000x12000 = 144,000,000 pixels, more than the limit of 16,777,216"):
            load_images(source)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB: nothing was decoded


def test_the_pixel_limit_is_configurable(tmp_path, monkeypatch):
    img = PIL.fromarray(np.zeros((40, 50), np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert load_images(buf.getvalue())[0].shape == (40, 50, 1)
    monkeypatch.setenv("METAEDGE_MAX_PIXELS", "1000")
    assert max_pixels() == 1000
    with pytest.raises(ImageError, match="50x40 = 2,000 pixels.*METAEDGE_MAX_PIXELS"):
        load_images(buf.getvalue())
    set_max_pixels(5000)
    try:
        assert load_images(buf.getvalue())[0].shape == (40, 50, 1)
    finally:
        set_max_pixels(None)
    monkeypatch.setenv("METAEDGE_MAX_PIXELS", "lots")
    with pytest.raises(ImageError, match="METAEDGE_MAX_PIXELS"):
        max_pixels()
    with pytest.raises(ValueError, match="limit"):
        set_max_pixels(0)


def test_an_image_file_larger_than_any_image_is_refused_unread(tmp_path):
    path = tmp_path / "huge.png"
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.truncate(300 * 1024 * 1024)  # sparse: 300 MiB claimed, nothing on disk
    start = time.perf_counter()
    with pytest.raises(ImageError, match="more than the .* this kind of file may have"):
        load_images(str(path))
    assert time.perf_counter() - start < 1


def test_the_classifier_refuses_hostile_images_and_changes_nothing(tmp_path):
    from tests.runtime.doubles import make_classifier
    clf = make_classifier(gallery=tmp_path / "g")
    clf.enroll("a", np.zeros((16, 16), np.uint8))
    (tmp_path / "bomb.png").write_bytes(png_bomb(5000, 5000))
    version = clf.gallery.version
    with pytest.raises(ImageError, match="bomb.png.*pixels"):
        clf.enroll("a", [np.zeros((16, 16), np.uint8), str(tmp_path / "bomb.png")])
    assert clf.gallery.version == version and clf.gallery.counts().tolist() == [1]


# ------------------------------------------------------------------------------------------ manifests, models
def _manifest(bundle):
    return json.loads((bundle / "manifest.json").read_text())


@pytest.mark.parametrize("field,value", [
    ("spec.preprocess.invert", True), ("spec.preprocess.mean", [0.4]), ("spec.preprocess.std", [0.5]),
    ("spec.metric", "dot"), ("spec.preprocess.color", "rgb"), ("model.sha256", "0" * 64)])
def test_an_edited_manifest_is_refused_naming_the_field(bundle, field, value):
    m = _manifest(bundle)
    node = m
    *parents, last = field.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    if field == "spec.preprocess.color":  # consistent with itself, so only the fingerprint can object
        m["spec"]["input_shape"][0] = 3
        m["model"]["input"]["shape"][1] = 3
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match=f"manifest fields? .*'{field}'.* changed after export"):
        Bundle.load(bundle, verify=False)


def test_edits_of_the_fingerprint_itself_and_removed_fields_are_named(bundle):
    m = _manifest(bundle)
    m["fingerprint"]["sha256"] = "f" * 64
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="'fingerprint.sha256' was edited"):
        Bundle.load(bundle)
    m = _manifest(bundle)
    m["fingerprint"] = compute_fingerprint(_manifest(bundle))
    del m["spec"]["output_name"]
    (bundle / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(BundleError, match="'spec.output_name' \\(removed\\)"):
        Bundle.load(bundle)


def test_a_bundle_without_a_recorded_fingerprint_gets_one_and_old_galleries_still_open(bundle, tmp_path):
    from metaedge.runtime.classifier import EdgeClassifier
    from metaedge.runtime.gallery import Gallery
    recorded = Bundle.load(bundle)
    m = _manifest(bundle)
    del m["fingerprint"]  # as metaedge 0.1 exported it
    (bundle / "manifest.json").write_text(json.dumps(m))
    old = Bundle.load(bundle)
    assert not old.fingerprint_recorded and old.fingerprint == recorded.fingerprint
    assert "computed at open" in old.summary()["fingerprint"]
    # a gallery of metaedge 0.1 recorded the ONNX sha256: accepted, and re-stamped with the full fingerprint
    Gallery(32, "cosine", old.onnx_sha256, path=tmp_path / "g").add("a", np.ones((1, 32), np.float32))
    with EdgeClassifier(bundle, gallery=tmp_path / "g", backend="ort-cpu") as clf:
        assert clf.labels == ["a"] and clf.gallery.fingerprint == old.fingerprint
    assert Gallery.load(tmp_path / "g").history()[-1].op == "fingerprint"


def test_a_manifest_claiming_another_input_than_the_model_is_refused(tmp_path):
    from tests.runtime.bundles import make_bundle
    make_bundle(tmp_path / "b", size=100000, onnx_input_size=16)  # a manifest with its own, valid fingerprint
    with pytest.raises(BundleError, match=r"'spec.preprocess'.*\[batch, 1, 100000, 100000\].*takes 'images' as "
                                          r"\['batch', 1, 16, 16\]"):
        Bundle.load(tmp_path / "b")
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["spec"]["preprocess"]["size"] == [100000, 100000] and "fingerprint" in m


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_special_deep_or_huge_manifests_and_models_are_refused(bundle):
    good = (bundle / "manifest.json").read_bytes()
    (bundle / "manifest.json").unlink()
    os.mkfifo(bundle / "manifest.json")
    with pytest.raises(BundleError, match="FIFO"):
        within(5, lambda: Bundle.load(bundle))
    os.unlink(bundle / "manifest.json")
    (bundle / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="nested more than 64 levels"):
        Bundle.load(bundle)
    with open(bundle / "manifest.json", "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(BundleError, match="1,073,741,824 bytes, more than"):
        Bundle.load(bundle)
    (bundle / "manifest.json").write_bytes(good)
    onnx = (bundle / "model.onnx").read_bytes()
    (bundle / "model.onnx").unlink()
    os.mkfifo(bundle / "model.onnx")
    with pytest.raises(BundleError, match="model.onnx.*FIFO"):
        within(5, lambda: Bundle.load(bundle))
    os.unlink(bundle / "model.onnx")
    (bundle / "model.onnx").write_bytes(b"\x00" * len(onnx))  # right size, not a model
    with pytest.raises(BundleError, match="modified after export"):
        Bundle.load(bundle)
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        Bundle.load(bundle, verify=False)


def test_export_side_writes_the_fingerprint_it_checks(bundle):
    m = _manifest(bundle)
    assert m["fingerprint"] == compute_fingerprint(m) and Bundle.load(bundle).fingerprint == m["fingerprint"]["sha256"]
    m["spec"]["preprocess"]["mean"] = [0.3]
    before = m["fingerprint"]["sha256"]
    write_manifest(bundle, m)  # a re-export: a new fingerprint, so galleries of the old one are refused
    assert m["fingerprint"]["sha256"] != before
    assert Bundle.load(bundle).fingerprint == compute_fingerprint(m)["sha256"]


# ------------------------------------------------------------------------------------------ engine cache
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs")
def test_special_or_deep_engine_sidecars_and_plans_are_skipped_without_blocking(tmp_path):
    from metaedge.runtime.engine_cache import EngineKey, find_engine, write_engine
    key = EngineKey("a" * 64, "10.3.0", "12.6", "Orin", "8.7", "fp16", 8)
    engines = tmp_path / "engines"
    write_engine(engines, key, b"plan bytes")
    assert find_engine(engines, key).path is not None
    plan = engines / (key.file_stem + ".plan")
    plan.unlink()
    os.mkfifo(plan)
    lookup = within(5, lambda: find_engine(engines, key))
    assert lookup.path is None and "FIFO" in " ".join(lookup.rebuild_reasons)
    os.unlink(plan)
    side = engines / (key.file_stem + ".json")
    side.unlink()
    os.mkfifo(side)
    plan.write_bytes(b"plan bytes")
    lookup = within(5, lambda: find_engine(engines, key))
    assert lookup.path is None and "FIFO" in " ".join(lookup.rebuild_reasons)
    os.unlink(side)
    side.write_text("[" * 100_000 + "]" * 100_000)
    lookup = find_engine(engines, key)
    assert lookup.path is None and "nested" in " ".join(lookup.rebuild_reasons)
    shutil.rmtree(engines)
