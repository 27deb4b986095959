"""`metaedge enroll / predict / adapt / classes`: outputs, JSON, exit codes. The network is the test double
(injected through metaedge.cli._sdk.open_classifier); a real bundle is used in test_sdk_end_to_end.py."""
import json
import os
import sqlite3

import numpy as np
import pytest

from metaedge.cli import _sdk
from metaedge.cli.main import main
from metaedge.runtime.gallery import Gallery
from tests.runtime.doubles import Glyphs, make_classifier

PIL = pytest.importorskip("PIL.Image")


class FakeBundle(str):
    """The bundle directory's path, plus a handle on the fingerprint the injected classifier reports."""


@pytest.fixture
def fake_bundle(tmp_path, monkeypatch):
    """A directory standing for a bundle; open_classifier builds the test-double classifier for it."""
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    fingerprint = {"value": None}

    def open_classifier(args, gallery, must_exist, autosave=True):
        if gallery is not None and must_exist and not os.path.exists(gallery):
            raise _sdk.CliError(f"{gallery}: no such gallery", _sdk.EXIT_DATA)
        kwargs = {"fingerprint": fingerprint["value"]} if fingerprint["value"] else {}
        return make_classifier(gallery=gallery, autosave=autosave, **kwargs)

    monkeypatch.setattr(_sdk, "open_classifier", open_classifier)
    fake = FakeBundle(bundle)
    fake.fingerprint = fingerprint
    return fake


@pytest.fixture
def images(tmp_path):
    glyphs = Glyphs(6, size=20, seed=2)
    root = tmp_path / "images"
    for k in range(6):
        (root / f"g{k}").mkdir(parents=True)
        for i, img in enumerate(glyphs.sample(k, 4)):
            PIL.fromarray(img[:, :, 0]).save(root / f"g{k}" / f"{i}.png")
    return root


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_enroll_predict_adapt_classes_round_trip(tmp_path, capsys, fake_bundle, images):
    gallery = tmp_path / "classes.metaedge"
    for k in range(4):
        code, out, err = run(capsys, "enroll", fake_bundle, gallery, f"glyph {k}",
                             *sorted((images / f"g{k}").glob("[012].png")))
        assert code == 0, err
        assert f"new class 'glyph {k}'" in out and "backbone" in out
    code, out, _ = run(capsys, "enroll", fake_bundle, gallery, "glyph 0", images / "g0" / "3.png", "--json")
    result = json.loads(out)
    assert code == 0 and result["new_class"] is False and result["class"]["shots"] == 4 and result["classes"] == 4
    assert set(result["timings"]) >= {"preprocessing_ms", "backbone_ms", "kernels_ms", "total_ms"}

    code, out, _ = run(capsys, "predict", fake_bundle, gallery, images / "g2" / "3.png", images / "g1", "--k", "2",
                       "--json")
    preds = json.loads(out)["predictions"]
    assert code == 0 and len(preds) == 5 and all(len(p["topk"]) == 2 for p in preds)
    assert [p["label"] for p in preds] == ["glyph 2"] + ["glyph 1"] * 4
    code, out, _ = run(capsys, "predict", fake_bundle, gallery, images / "g3" / "3.png")
    assert code == 0 and "glyph 3" in out.splitlines()[0]
    code, out, _ = run(capsys, "predict", fake_bundle, gallery, images / "g5" / "0.png", "--threshold", "0.999")
    assert code == 0 and "unknown (nearest" in out

    code, out, _ = run(capsys, "adapt", fake_bundle, gallery, "--steps", "10", "--json")
    report = json.loads(out)
    assert code == 0 and report["loss_after"] < report["loss_before"] and Gallery.load(gallery).adapted
    code, out, _ = run(capsys, "adapt", fake_bundle, gallery, "--reset")
    assert code == 0 and "removed" in out and not Gallery.load(gallery).adapted

    code, out, _ = run(capsys, "classes", "list", gallery, "--json")
    listing = json.loads(out)
    assert [c["label"] for c in listing["items"]] == [f"glyph {k}" for k in range(4)]
    assert listing["items"][0]["shots"] == 4 and listing["embedding_dim"] == 32
    code, out, _ = run(capsys, "classes", "list", gallery)
    assert code == 0 and "glyph 3" in out and "shots" in out
    assert run(capsys, "classes", "rename", gallery, "glyph 3", "bolt M6")[0] == 0
    assert run(capsys, "classes", "forget", gallery, "glyph 0", "glyph 1")[0] == 0
    assert Gallery.load(gallery).labels == ["glyph 2", "bolt M6"]


def test_calibrate_from_directories(tmp_path, capsys, fake_bundle, images):
    gallery = tmp_path / "g"
    known = tmp_path / "known"
    for k in range(3):
        assert run(capsys, "enroll", fake_bundle, gallery, f"g{k}", images / f"g{k}" / "0.png",
                   images / f"g{k}" / "1.png")[0] == 0
        (known / f"g{k}").mkdir(parents=True)
        for i in (2, 3):
            (known / f"g{k}" / f"{i}.png").write_bytes((images / f"g{k}" / f"{i}.png").read_bytes())
    code, out, err = run(capsys, "classes", "calibrate", fake_bundle, gallery, "--known", known, "--other",
                         images / "g4", images / "g5", "--target-fpr", "0.2", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["negatives"] == "others" and report["fpr"] <= 0.2
    assert Gallery.load(gallery).thresholds["prototypes"] == report["threshold"]


def test_bad_input_exit_code_2_and_gallery_untouched(tmp_path, capsys, fake_bundle, images):
    gallery = tmp_path / "g"
    assert run(capsys, "enroll", fake_bundle, gallery, "a", images / "g0" / "0.png")[0] == 0
    data = gallery.read_bytes()
    (tmp_path / "bad.png").write_text("not an image")
    cases = [
        ("enroll", fake_bundle, gallery, "a", images / "g0" / "1.png", tmp_path / "bad.png"),
        ("enroll", fake_bundle, gallery, "a", tmp_path / "nope.png"),
        ("enroll", fake_bundle, gallery, "", images / "g0" / "1.png"),
        ("enroll", fake_bundle, gallery, "x" * 500, images / "g0" / "1.png"),
        ("predict", fake_bundle, gallery, tmp_path / "bad.png"),
        ("predict", fake_bundle, gallery, images / "g0" / "1.png", "--k", "0"),
        ("classes", "forget", gallery, "nope"),
        ("classes", "rename", gallery, "nope", "b"),
        ("classes", "rename", gallery, "a", "\n"),
    ]
    for argv in cases:
        code, out, err = run(capsys, *argv)
        assert code == 2, (argv, code, err)
        assert "error:" in err and "Traceback" not in err
    code, _, err = run(capsys, "enroll", fake_bundle, gallery, "a", tmp_path / "bad.png")
    assert "bad.png" in err
    assert gallery.read_bytes() == data
    assert run(capsys, "classes", "forget", gallery, "nope", "--missing-ok")[0] == 0


def test_gallery_problems_exit_code_4(tmp_path, capsys, fake_bundle, images):
    img = images / "g0" / "0.png"
    code, _, err = run(capsys, "predict", fake_bundle, tmp_path / "missing", img)
    assert code == 4 and "no such gallery" in err
    gallery = tmp_path / "g"
    assert run(capsys, "enroll", fake_bundle, gallery, "a", img)[0] == 0
    fake_bundle.fingerprint["value"] = "other-bundle-" + "9" * 51
    code, _, err = run(capsys, "enroll", fake_bundle, gallery, "b", img)
    assert code == 4 and "another bundle" in err
    fake_bundle.fingerprint["value"] = None
    conn = sqlite3.connect(gallery)  # damage a prototype behind the store's back (its checksum no longer fits)
    conn.execute("UPDATE classes SET prototype = zeroblob(length(prototype))")
    conn.commit()
    conn.close()
    data = gallery.read_bytes()
    for argv in (("predict", fake_bundle, gallery, img), ("classes", "list", gallery),
                 ("enroll", fake_bundle, gallery, "a", img), ("classes", "check", gallery)):
        code, _, err = run(capsys, *argv)
        assert code == 4 and "fails its checksum" in err, argv
    assert gallery.read_bytes() == data  # a broken gallery is never changed by a command


def test_missing_dependency_exit_code_3(tmp_path, capsys, fake_bundle, images, monkeypatch):
    from metaedge._optional import MissingDependencyError
    gallery = tmp_path / "g"
    img = images / "g0" / "0.png"
    assert run(capsys, "enroll", fake_bundle, gallery, "a", img)[0] == 0

    def no_onnxruntime(*a, **k):
        raise MissingDependencyError("inference needs the package 'onnxruntime'. Install it with: pip install x")

    monkeypatch.setattr(_sdk, "open_classifier", no_onnxruntime)
    code, _, err = run(capsys, "predict", fake_bundle, gallery, img)
    assert code == 3 and "onnxruntime" in err


def test_history_export_import_migrate_and_check(tmp_path, capsys, fake_bundle, images):
    gallery, other = tmp_path / "g", tmp_path / "other"
    for k in range(3):
        assert run(capsys, "enroll", fake_bundle, gallery, f"glyph {k}", images / f"g{k}" / "0.png")[0] == 0
    assert run(capsys, "classes", "rename", gallery, "glyph 2", "two")[0] == 0
    code, out, _ = run(capsys, "classes", "history", gallery, "--json")
    entries = json.loads(out)["entries"]
    assert code == 0 and [e["op"] for e in entries] == ["create", "enroll", "enroll", "enroll", "rename"]
    assert "metaedge classes rename" in entries[-1]["actor"] and entries[1]["shots"] == 1
    code, out, _ = run(capsys, "classes", "history", gallery, "--limit", "2")
    assert code == 0 and len(out.splitlines()) == 2 and "rename" in out and "two" in out
    assert run(capsys, "classes", "export", gallery, tmp_path / "p.pack", "glyph 0", "two")[0] == 0
    code, out, _ = run(capsys, "classes", "import", other, tmp_path / "p.pack", "--json")  # a new gallery
    assert code == 0 and json.loads(out)["added"] == ["glyph 0", "two"]
    assert Gallery.load(other).labels == ["glyph 0", "two"]
    assert run(capsys, "enroll", fake_bundle, other, "two", images / "g1" / "1.png")[0] == 0
    code, _, err = run(capsys, "classes", "import", other, tmp_path / "p.pack")
    assert code == 2 and "'two'" in err and "--on-conflict" in err
    code, out, _ = run(capsys, "classes", "import", other, tmp_path / "p.pack", "--on-conflict", "replace")
    assert code == 0 and "1 replaced" in out and "1 unchanged" in out
    code, out, _ = run(capsys, "classes", "check", gallery)
    assert code == 0 and "sound" in out
    legacy = tmp_path / "old.metaedge"
    legacy.write_bytes(open(os.path.join(os.path.dirname(__file__), "data", "legacy_v1.metaedge"), "rb").read())
    code, out, _ = run(capsys, "classes", "list", legacy)
    assert code == 0 and "old format" in out
    code, _, err = run(capsys, "classes", "forget", legacy, "late")
    assert code == 4 and "metaedge classes migrate" in err
    code, out, _ = run(capsys, "classes", "migrate", legacy, "--json")
    assert code == 0 and json.loads(out)["classes"] == 5 and (tmp_path / "old.metaedge.v1-backup").exists()
    assert run(capsys, "classes", "forget", legacy, "late")[0] == 0


def test_real_open_classifier_refuses_a_missing_bundle(tmp_path, capsys, images):
    gallery = tmp_path / "g"
    code, _, err = run(capsys, "enroll", tmp_path / "no-bundle", gallery, "a", images / "g0" / "0.png")
    assert code == 4 and "not a bundle directory" in err


@pytest.mark.parametrize("command", [["enroll"], ["predict"], ["adapt"], ["classes"], ["classes", "calibrate"]])
def test_help_explains_and_lists_exit_codes(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main(command + ["--help"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "exit codes" in out and "gallery" in out.lower()


def test_directory_expansion_sorted_and_empty_directory_refused(tmp_path, images):
    files = _sdk.expand_images([str(images / "g1")])
    assert files == sorted(files) and len(files) == 4
    (tmp_path / "empty").mkdir()
    with pytest.raises(_sdk.CliError, match="no image files"):
        _sdk.expand_images([str(tmp_path / "empty")])
    np.testing.assert_equal(len(_sdk.expand_images([str(images)])), 24)
