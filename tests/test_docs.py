"""docs/api.md is the current output of tools/gen_api_docs.py, and everything it documents has a docstring."""
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import gen_api_docs  # noqa: E402

ITEMS = gen_api_docs.public_items()


def test_api_reference_is_up_to_date():
    # A fresh interpreter: the output must not depend on what this test session imported or configured.
    proc = subprocess.run([sys.executable, "-c", "import sys; sys.path.insert(0, 'tools'); import gen_api_docs; "
                           "sys.stdout.write(gen_api_docs.render())"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (ROOT / "docs" / "api.md").read_text() == proc.stdout, \
        "docs/api.md is stale: run python tools/gen_api_docs.py"


def test_rendering_is_deterministic():
    assert gen_api_docs.render() == gen_api_docs.render()


def test_the_brief_s_public_names_are_all_documented():
    names = {qualname for _, qualname, _ in ITEMS}
    expected = {"metaedge.EdgeClassifier", "metaedge.Prediction", "metaedge.Gallery", "metaedge.Bundle",
                "metaedge.build_info", "metaedge.cuda.is_available", "metaedge.cuda.DeviceArray",
                "metaedge.runtime.spec.ModelSpec", "metaedge.runtime.spec.PreprocessSpec",
                "metaedge.runtime.backends.open_backend", "metaedge.runtime.backends.Backend",
                "metaedge.export.export_bundle", "metaedge.export.build_engine", "metaedge.train.fit",
                "metaedge.train.TrainConfig", "metaedge.train.evaluate", "metaedge.train.EvalReport",
                "metaedge.train.build_backbone", "metaedge.train.save_checkpoint", "metaedge.train.load_checkpoint",
                "metaedge.train.data.SyntheticGlyphs", "metaedge.train.data.Omniglot",
                "metaedge.train.data.ImageFolderDataset", "metaedge.train.data.TaskSampler"}
    kernels = {f"metaedge.kernels.{n}" for n in ("l2_normalize", "class_prototypes", "update_prototypes", "topk",
                                                  "adapt_head", "preprocess")}
    assert expected | kernels <= names


@pytest.mark.parametrize("qualname,obj", [(q, o) for _, q, o in ITEMS], ids=[q for _, q, _ in ITEMS])
def test_every_public_item_has_a_docstring(qualname, obj):
    assert (inspect.getdoc(obj) or "").strip(), f"{qualname} has no docstring"


def test_every_listed_item_appears_in_the_reference():
    text = (ROOT / "docs" / "api.md").read_text()
    for _, qualname, _ in ITEMS:
        assert f"### {qualname}\n" in text
