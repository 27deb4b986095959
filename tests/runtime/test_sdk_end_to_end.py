"""End to end with a real exported bundle on ONNX Runtime: the device SDK reproduces train.evaluate's prototype
path on the same episodes (SyntheticGlyphs and the Omniglot development split), and the device side -
EdgeClassifier, gallery, CLI - runs in a process where torch cannot be imported."""
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from metaedge.runtime.classifier import EdgeClassifier  # noqa: E402
from metaedge.runtime.gallery import Gallery  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEV_ALPHABETS = ["Japanese_(katakana)", "Sanskrit", "Tagalog"]  # small2-only: the development evaluation split


def _export(model, path):
    from metaedge.export.onnx import export_bundle
    return export_bundle(model, path, overwrite=True)


@pytest.fixture(scope="module")
def glyph_bundle(tmp_path_factory):
    """An (untrained, seeded) conv4 exported for SyntheticGlyphs' 28x28 gray images: the equality checks below
    need the same network on both sides, not a good one."""
    from metaedge.train.backbones import build_backbone
    torch.manual_seed(0)
    model = build_backbone("conv4").eval()
    bundle = _export(model, tmp_path_factory.mktemp("glyphs") / "bundle")
    return model, bundle


def _hwc(images_chw_u8: "torch.Tensor") -> np.ndarray:
    return np.ascontiguousarray(images_chw_u8.numpy().transpose(0, 2, 3, 1))


def _sdk_episode_accuracy(bundle, backend, data, episode, ways, k=1):
    """Enroll an episode's support images (raw uint8, pre-processed by the device) into a fresh gallery and
    predict its queries."""
    with EdgeClassifier(bundle, backend=backend) as clf:
        support, s_lab = episode.support.numpy(), episode.support_labels.numpy()
        for j in range(ways):
            clf.enroll(f"class {j}", _hwc(data.images[support[s_lab == j]]))
        preds = clf.predict(_hwc(data.images[episode.query.numpy()]), k=k)
        truth = episode.query_labels.numpy()
        return np.mean([p.label == f"class {t}" for p, t in zip(preds, truth)]), preds, clf


def _compare_with_evaluate(model, bundle, data, ways, shots, queries, episodes, seed):
    from metaedge.train.data.samplers import TaskSampler
    from metaedge.train.evaluate import evaluate
    report = evaluate(model, data, ways=ways, shots=shots, queries=queries, episodes=episodes, seed=seed,
                      method="prototype")
    from metaedge.runtime.backends import open_backend
    sampler = TaskSampler(data, ways, shots, queries, seed=seed)
    with open_backend(bundle, "ort-cpu") as backend:
        ours = np.array([_sdk_episode_accuracy(bundle, backend, data, sampler.sample(i), ways)[0]
                         for i in range(episodes)])
    theirs = np.array(report.accuracies)
    # Same episodes, same maths (ONNX vs torch within the export's 1e-4 parity): only a query whose two best
    # classes tie to float precision could differ, by one query.
    assert np.all(np.abs(ours - theirs) <= 1.0 / (ways * queries) + 1e-12), (ours, theirs)
    assert abs(ours.mean() - theirs.mean()) <= 0.01
    return ours, theirs


@pytest.mark.parametrize("shots", [1, 5])
def test_synthetic_glyphs_accuracy_equals_train_evaluate(glyph_bundle, shots):
    from metaedge.train.data.synthetic import SyntheticGlyphs
    model, bundle = glyph_bundle
    data = SyntheticGlyphs(split="test", num_classes=100, samples_per_class=12)
    ours, theirs = _compare_with_evaluate(model, bundle, data, ways=5, shots=shots, queries=5, episodes=4, seed=7)
    assert ours.mean() > 0.4  # even an untrained conv4 is far above chance (0.2) on glyphs


def test_enrolled_prototypes_equal_torch_embeddings_of_the_same_images(glyph_bundle):
    from metaedge.train.data.synthetic import SyntheticGlyphs
    model, bundle = glyph_bundle
    data = SyntheticGlyphs(split="test", num_classes=50, samples_per_class=6)
    images = _hwc(data.images[:6])
    with torch.no_grad():
        reference = model(data.to_input(data.images[:6])).numpy().astype(np.float64).mean(0)
    with EdgeClassifier(str(bundle.path), backend="ort-cpu") as clf:
        clf.enroll("a", images)
        np.testing.assert_allclose(clf.gallery.prototypes()[0], reference, rtol=1e-4, atol=1e-4)
        assert clf.gallery.fingerprint == bundle.fingerprint and clf.gallery.metric == model.spec.metric


@pytest.mark.slow
def test_omniglot_development_split_accuracy_equals_train_evaluate(omniglot_dir, tmp_path):
    from metaedge.train.backbones import build_backbone
    from metaedge.train.data.omniglot import Omniglot
    data = Omniglot(os.path.join(omniglot_dir), sets="images_background_small2", alphabets=DEV_ALPHABETS)
    assert data.num_classes == 106
    torch.manual_seed(1)
    model = build_backbone("conv4", input_size=28, invert=True).eval()  # the protocol: inverted, 28x28
    bundle = _export(model, tmp_path / "bundle")
    assert bundle.spec.preprocess.invert
    for shots, ways in ((1, 20), (5, 5)):
        _compare_with_evaluate(model, bundle, data, ways=ways, shots=shots, queries=3, episodes=2, seed=3)
    # Raw 105x105 PNG files straight from the zip, decoded and resized by the device, embed like training's
    # view of the same files (its cache is resized by torch and rounded to uint8, hence the tolerance).
    from metaedge.runtime.images import load_images
    from metaedge.train.data.base import resize_and_color
    with zipfile.ZipFile(os.path.join(omniglot_dir, "images_background_small2.zip")) as z:
        raw = [z.read(n) for n in sorted(z.namelist()) if n.endswith(".png") and "/Tagalog/" in n][:40:2]
    with EdgeClassifier(str(bundle.path), backend="ort-cpu") as clf:
        device = clf.embed(raw)
    cached = resize_and_color(load_images(raw), (28, 28), "gray")
    with torch.no_grad():
        training = model(data.to_input(cached)).numpy()
    cos = (device * training).sum(1) / np.linalg.norm(device, axis=1) / np.linalg.norm(training, axis=1)
    assert cos.min() > 0.995, cos


BLOCK_TORCH = "import sys\nfor _m in ('torch', 'torchvision'):\n    sys.modules[_m] = None\n"


def test_device_side_runs_with_torch_blocked(glyph_bundle, tmp_path):
    """EdgeClassifier + ONNX Runtime + gallery + CLI in a process where `import torch` fails."""
    _, bundle = glyph_bundle
    from metaedge.train.data.synthetic import SyntheticGlyphs
    data = SyntheticGlyphs(split="test", num_classes=50, samples_per_class=6)
    np.save(tmp_path / "images.npy", _hwc(data.images[:18]))
    from PIL import Image
    for i in range(3):
        Image.fromarray(_hwc(data.images[i * 6:i * 6 + 1])[0, :, :, 0]).save(tmp_path / f"q{i}.png")
    script = BLOCK_TORCH + textwrap.dedent(f"""
        import json, numpy as np
        from metaedge.runtime.classifier import EdgeClassifier
        from metaedge.cli.main import main
        imgs = np.load({str(tmp_path / 'images.npy')!r})
        gallery = {str(tmp_path / 'g.metaedge')!r}
        with EdgeClassifier({str(bundle.path)!r}, gallery=gallery, backend="auto") as clf:
            for c in range(3):
                clf.enroll(f"glyph {{c}}", imgs[c * 6 + 1:c * 6 + 4])
            preds = clf.predict(imgs[[0, 6, 12]], k=2)
            report = clf.adapt(steps=10)
            out = {{"labels": [p.label for p in preds], "backend": clf.backend.name,
                   "loss": [report.loss_before, report.loss_after]}}
        code = main(["predict", {str(bundle.path)!r}, gallery, {str(tmp_path / 'q0.png')!r},
                     {str(tmp_path / 'q1.png')!r}, "--backend", "ort-cpu", "--json"])
        assert code == 0, code
        assert not [m for m, v in sys.modules.items() if m.split(".")[0] in ("torch", "torchvision") and v is not None]
        print("RESULT", json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.split("RESULT", 1)[1])
    cli = json.loads(proc.stdout.split("RESULT", 1)[0])
    assert result["labels"] == ["glyph 0", "glyph 1", "glyph 2"]
    assert result["backend"] == "ort-cpu" and result["loss"][1] < result["loss"][0]
    assert [p["label"] for p in cli["predictions"]] == ["glyph 0", "glyph 1"]
    assert Gallery.load(tmp_path / "g.metaedge", fingerprint=bundle.fingerprint).adapted


def test_cli_on_a_real_bundle_exit_codes(glyph_bundle, tmp_path, capsys):
    import shutil

    from metaedge.cli.main import main
    _, bundle = glyph_bundle
    from PIL import Image
    Image.fromarray(np.full((28, 28), 200, np.uint8)).save(tmp_path / "a.png")
    gallery = str(tmp_path / "g")
    assert main(["enroll", str(bundle.path), gallery, "a", str(tmp_path / "a.png"), "--backend", "ort-cpu"]) == 0
    # a backend that cannot run here: 3; a bundle whose model.onnx was modified after export: 4
    assert main(["predict", str(bundle.path), gallery, str(tmp_path / "a.png"), "--backend", "tensorrt"]) == 3
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle.path, tampered)
    data = bytearray((tampered / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tampered / "model.onnx").write_bytes(bytes(data))
    assert main(["predict", str(tampered), gallery, str(tmp_path / "a.png")]) == 4
    err = capsys.readouterr().err
    assert "tensorrt" in err.lower() and "sha256" in err.lower()
