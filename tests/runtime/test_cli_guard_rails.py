"""The CLI guards its user: one class per sub-folder only when asked (--per-folder), a folder of classes given as
one class refused with the hint; errors name the command's flags, not Python parameters; unknown rejection
survives adapt and every command says where the threshold comes from; scores come with their meaning; no
progress bar for sub-second work; calibrate --plot draws the histograms and rates. The network is the test
double (see test_cli_sdk.py)."""
import json
import re
import struct
import sys

import numpy as np
import pytest

from metaedge.runtime.gallery import Gallery
from tests.runtime.doubles import Glyphs
from tests.runtime.test_cli_sdk import PIL, fake_bundle, images, run  # noqa: F401 (fixtures)

# Python parameter names the device-side library uses; none may reach a CLI user.
PYTHON_NAMES = re.compile(r"`\w+`|images_of_\w+|target_fpr|weight_decay|unknown_threshold|pixel_format|"
                          r"calibrate_unknown|\w+\(\):")


def enroll_all(capsys, bundle, gallery, images, classes=range(4), shots="[012]"):
    for k in classes:
        code, _, err = run(capsys, "enroll", bundle, gallery, f"g{k}", *sorted((images / f"g{k}").glob(f"{shots}.png")))
        assert code == 0, err


# ------------------------------------------------------------------------------------------ enroll --per-folder
def test_per_folder_enrolls_one_class_per_sub_folder_in_one_transaction(tmp_path, capsys, fake_bundle, images):
    gallery = tmp_path / "g"
    code, out, err = run(capsys, "enroll", fake_bundle, gallery, "--per-folder", images)
    assert code == 0, err
    with Gallery.load(gallery) as g:
        assert g.labels == [f"g{k}" for k in range(6)] and g.counts().tolist() == [4] * 6
        assert [e.op for e in g.history()] == ["create"] + ["enroll"] * 6
        assert len({e.version for e in g.history() if e.op == "enroll"}) == 1  # one transaction
    assert "enrolled 6 class(es)" in out and "(6 new), 24 image(s)" in out and "ms" in out
    code, out, _ = run(capsys, "enroll", fake_bundle, gallery, "--per-folder", images, "--json")
    result = json.loads(out)
    assert code == 0 and result["classes"] == 6 and result["images"] == 24
    assert all(not c["new_class"] and c["class"]["shots"] == 8 for c in result["classes_enrolled"])
    code, out, _ = run(capsys, "predict", fake_bundle, gallery, images / "g3" / "1.png")
    assert code == 0 and out.startswith(str(images / "g3" / "1.png")) and "g3" in out.splitlines()[0]


def test_a_folder_of_classes_given_as_one_class_is_refused_with_the_hint(tmp_path, capsys, fake_bundle, images):
    gallery = tmp_path / "g"
    code, _, err = run(capsys, "enroll", fake_bundle, gallery, "characters", images)
    assert code == 2 and "holds 6 sub-folders of images" in err and f"--per-folder {images}" in err
    assert "--recursive" in err and not gallery.exists()
    code, _, err = run(capsys, "enroll", fake_bundle, gallery, images)  # the folder where LABEL goes
    assert code == 2 and f"--per-folder {images}" in err and not gallery.exists()
    code, out, _ = run(capsys, "enroll", fake_bundle, gallery, "characters", images, "--recursive")
    assert code == 0 and "24 image(s)" in out
    assert Gallery.load(gallery).labels == ["characters"]


@pytest.mark.parametrize("layout,words", [
    ("loose image", "outside the class sub-folders"),
    ("empty folder", "sub-folder 'empty' has no image files"),
    ("bad name", "sub-folder ' lead' is not a valid label"),
    ("with label", "give no LABEL"),
])
def test_per_folder_refuses_what_is_not_a_folder_of_classes(tmp_path, capsys, fake_bundle, images, layout, words):
    root = tmp_path / "classes"
    for k in (0, 1):
        (root / f"c{k}").mkdir(parents=True)
        (root / f"c{k}" / "0.png").write_bytes((images / f"g{k}" / "0.png").read_bytes())
    argv = ["enroll", fake_bundle, tmp_path / "g", "--per-folder", root]
    if layout == "loose image":
        (root / "x.png").write_bytes((images / "g0" / "1.png").read_bytes())
    elif layout == "empty folder":
        (root / "empty").mkdir()
    elif layout == "bad name":
        (root / " lead").mkdir()
        (root / " lead" / "0.png").write_bytes((images / "g2" / "0.png").read_bytes())
    else:
        argv.insert(3, "label")
    code, _, err = run(capsys, *argv)
    assert code == 2 and words in err, err
    assert not (tmp_path / "g").exists()  # nothing enrolled, no gallery made


# ------------------------------------------------------------------------------------------ errors name flags
@pytest.fixture
def known_dir(tmp_path, images):
    known = tmp_path / "known"
    for k in range(3):
        (known / f"g{k}").mkdir(parents=True)
        (known / f"g{k}" / "3.png").write_bytes((images / f"g{k}" / "3.png").read_bytes())
    return known


@pytest.mark.parametrize("argv,flag", [
    (["adapt", "{b}", "{g}", "--steps", "0"], "--steps: expected an int >= 1"),
    (["adapt", "{b}", "{g}", "--lr", "-1"], "--lr: expected a finite number > 0"),
    (["adapt", "{b}", "{g}", "--momentum", "1.5"], "--momentum: expected a value in [0, 1)"),
    (["adapt", "{b}", "{g}", "--weight-decay", "-1"], "--weight-decay: expected a finite number >= 0"),
    (["adapt", "{b}", "{g}", "--scale", "0"], "--scale: expected a finite number > 0"),
    (["classes", "calibrate", "{b}", "{g}", "--known", "{known}", "--target-fpr", "1.5"],
     "--target-fpr: expected a number in (0, 1)"),
    (["classes", "calibrate", "{b}", "{g}", "--known", "{zebra}", "--other", "{i}/g5"],
     "--known: 'zebra' is not an enrolled class"),
    (["classes", "calibrate", "{b}", "{one}", "--known", "{known1}"], "pass --other"),
    (["predict", "{b}", "{g}", "{i}/g0/0.png", "--threshold", "nan"], "--threshold: expected a finite number"),
    (["predict", "{b}", "{g}", "{i}/g0/0.png", "--roi", "10,10,50,50"], "--roi"),
    (["predict", "{b}", "{g}", "--source", "{i}/g0", "--every", "0"], "--every: expected"),
    (["enroll", "{b}", "{g}", " g9", "{i}/g0/0.png"], "LABEL: leading or trailing whitespace"),
    (["classes", "rename", "{g}", "g0", "a\tb"], "NEW: control characters"),
])
def test_errors_name_the_flags_not_python_parameters(tmp_path, capsys, fake_bundle, images, known_dir, argv, flag):
    gallery, one = tmp_path / "g", tmp_path / "one"
    enroll_all(capsys, fake_bundle, gallery, images, range(3))
    enroll_all(capsys, fake_bundle, one, images, range(1))
    (tmp_path / "known1" / "g0").mkdir(parents=True)
    (tmp_path / "known1" / "g0" / "3.png").write_bytes((images / "g0" / "3.png").read_bytes())
    (tmp_path / "zebra" / "zebra").mkdir(parents=True)
    (tmp_path / "zebra" / "zebra" / "0.png").write_bytes((images / "g4" / "0.png").read_bytes())
    values = {"b": fake_bundle, "g": gallery, "i": images, "known": known_dir, "zebra": tmp_path / "zebra",
              "one": one, "known1": tmp_path / "known1"}
    version = Gallery.load(gallery).version
    code, out, err = run(capsys, *[a.format(**values) for a in argv])
    assert code == 2 and flag in err, err
    assert not PYTHON_NAMES.search(err), err
    assert "Traceback" not in err and Gallery.load(gallery).version == version


# ------------------------------------------------------------------------------------------ open set through the CLI
def test_unknown_rejection_survives_adapt_and_every_command_says_where_it_comes_from(tmp_path, capsys, fake_bundle,
                                                                                     images, known_dir):
    gallery = tmp_path / "g"
    enroll_all(capsys, fake_bundle, gallery, images, range(3))
    code, out, _ = run(capsys, "classes", "list", gallery)
    assert code == 0 and "unknown rejection: prototypes head: no threshold - unknowns are not rejected" in out
    code, out, err = run(capsys, "classes", "calibrate", fake_bundle, gallery, "--known", known_dir, "--other",
                         images / "g4", images / "g5", "--target-fpr", "0.25")
    assert code == 0, err
    assert "(prototypes head)" in out and "adapt re-calibrates from them" in out
    code, out, _ = run(capsys, "classes", "list", gallery)
    assert "unknown rejection: prototypes head: threshold" in out and "calibrated from the stored calibration set" in out
    assert "target false-accept rate 25%" in out and "calibration set: 3 known + 8 other image(s)" in out
    assert re.search(r"\* prototypes +-?\d+\.\d{4}  calibrated +25\.0%", out), out

    code, out, _ = run(capsys, "adapt", fake_bundle, gallery, "--steps", "20")
    assert code == 0 and "unknown rejection: adapted head: threshold" in out and "re-calibrated after adapt" in out
    assert re.search(r"in 20 steps \(\d+\.\d ms\)", out), out  # sub-second work in milliseconds
    code, out, _ = run(capsys, "classes", "list", gallery, "--json")
    state = json.loads(out)["open_set"]
    assert state["head"] == "adapted" and state["source"] == "recalibrated" and state["target_fpr"] == 0.25
    assert state["heads"]["adapted"]["how"] == "recalibrated" and state["heads"]["prototypes"]["how"] == "calibrated"
    code, out, _ = run(capsys, "classes", "list", gallery)
    assert re.search(r"\* adapted +\d\.\d{4}  recalibrated", out), out

    code, out, _ = run(capsys, "predict", fake_bundle, gallery, images / "g5" / "0.png", images / "g1" / "0.png")
    lines = out.splitlines()
    assert code == 0 and "unknown (nearest" in lines[0] and "confidence" in lines[0]
    assert "# score: cosine similarity in [-1, 1], higher is nearer; confidence = (1 + score) / 2" in out
    assert "# unknown: adapted head: threshold" in out and " ms" in lines[-1]
    code, out, _ = run(capsys, "predict", fake_bundle, gallery, images / "g1" / "0.png", "--json")
    result = json.loads(out)
    assert result["threshold_source"] == "recalibrated" and result["score"].startswith("cosine similarity")
    p = result["predictions"][0]
    assert p["confidence"] == pytest.approx((1 + p["score"]) / 2)

    code, out, _ = run(capsys, "adapt", fake_bundle, gallery, "--reset", "--json")
    assert code == 0 and json.loads(out)["threshold_source"] == "calibrated"


def test_no_progress_bar_for_sub_second_work_and_one_for_long_work(tmp_path, capsys, fake_bundle, images,
                                                                   monkeypatch):
    gallery = tmp_path / "g"
    enroll_all(capsys, fake_bundle, gallery, images, range(3))
    code, _, err = run(capsys, "adapt", fake_bundle, gallery, "--steps", "50")
    assert code == 0 and err == ""  # a few milliseconds: nothing drawn
    code, _, err = run(capsys, "enroll", fake_bundle, tmp_path / "h", "--per-folder", images)
    assert code == 0 and err == ""
    monkeypatch.setenv("METAEDGE_PROGRESS_DELAY", "0")  # work that outlasts the delay gets its bar
    code, _, err = run(capsys, "adapt", fake_bundle, gallery, "--steps", "50")
    assert code == 0 and "adapt:" in err and "/50" in err and "step/s" in err
    code, _, err = run(capsys, "enroll", fake_bundle, tmp_path / "h", "--per-folder", images)
    assert code == 0 and "enroll" in err and "class" in err
    code, _, err = run(capsys, "adapt", fake_bundle, gallery, "--steps", "50", "--no-progress")
    assert code == 0 and err == ""


# ------------------------------------------------------------------------------------------ calibrate --plot
def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("with_other", [True, False])
def test_calibrate_plot_draws_histograms_threshold_and_rates(tmp_path, capsys, fake_bundle, images, known_dir,
                                                             with_other):
    pytest.importorskip("matplotlib")
    gallery = tmp_path / "g"
    enroll_all(capsys, fake_bundle, gallery, images, range(3))
    plot = tmp_path / "calibration.png"
    other = ["--other", images / "g4", images / "g5"] if with_other else []
    code, out, err = run(capsys, "classes", "calibrate", fake_bundle, gallery, "--known", known_dir, *other,
                         "--plot", plot, "--json")
    assert code == 0, err
    assert json.loads(out)["plot"] == str(plot)
    width, height = png_size(plot)
    assert (width, height) == (1100, 420) and 20_000 < plot.stat().st_size < 1_000_000


def test_calibrate_plot_without_matplotlib_says_what_to_install(tmp_path, capsys, fake_bundle, images, known_dir,
                                                                monkeypatch):
    gallery = tmp_path / "g"
    enroll_all(capsys, fake_bundle, gallery, images, range(3))
    version = Gallery.load(gallery).version
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, _, err = run(capsys, "classes", "calibrate", fake_bundle, gallery, "--known", known_dir, "--plot",
                       tmp_path / "p.png")
    assert code == 3 and "matplotlib" in err and "pip install 'metaedge[plot]'" in err
    assert Gallery.load(gallery).version == version and not (tmp_path / "p.png").exists()


def test_calibration_report_arrays_feed_the_plot_directly(tmp_path):
    pytest.importorskip("matplotlib")
    from metaedge.runtime.plots import calibration_plot
    from metaedge.runtime.results import CalibrationReport
    rng = np.random.default_rng(0)
    report = CalibrationReport(0.5, 0.05, 0.04, 0.9, None, "others", 100, 50, "prototypes", {}, "cosine similarity",
                               rng.normal(0.7, 0.1, 100), rng.normal(0.3, 0.1, 50))
    path = calibration_plot(report, tmp_path / "p.png")
    assert png_size(tmp_path / "p.png") == (1100, 420) and path == str(tmp_path / "p.png")


def test_glyph_images_fixture_is_what_these_tests_assume(images):
    assert sorted(p.name for p in images.iterdir()) == [f"g{k}" for k in range(6)]
    assert Glyphs  # (the synthetic classes behind the images)
